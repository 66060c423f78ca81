#include "distill/kd_loss.h"

#include <cmath>

#include "core/error.h"
#include "runtime/cuda_ops.h"

namespace bonsai {
namespace {

using torch::Tensor;

// A teacher's distribution over buckets for one chunk of rows: online, buckets are the vocabulary
// (c,Vc); offline, the top-k ids plus one tail bucket (c,K+1).
struct Buckets {
  Tensor logp;     // (c,B) teacher log-probabilities
  Tensor logq;     // (c,B) student log-probabilities of the same buckets
  Tensor indices;  // offline: (c,K) vocabulary ids of the first K buckets; undefined online
  double weight;
};

Tensor xlogy_diff(const Tensor& p, const Tensor& logp, const Tensor& logq) {
  // sum_b p_b (log p_b - log q_b), with 0 * anything = 0
  return torch::where(p > 0, p * (logp - logq), torch::zeros_like(p)).sum(-1);
}

Tensor log_mix(double a, const Tensor& loga, const Tensor& logb) {  // log(a*A + (1-a)*B)
  return torch::logaddexp(loga + std::log(a), logb + std::log1p(-a));
}

// Divergence per row, and the per-bucket coefficients A, B of its gradient: for vocabulary id j in
// bucket b, q_j * dD/dQ_b = q_j * A_b + (q_j / Q_b) * B_b (the second form stays finite when Q_b is tiny).
struct DivergenceGrad {
  Tensor loss, A, B;
};

DivergenceGrad divergence(const KdLossOptions& o, const Tensor& logp, const Tensor& logq) {
  // A or B left undefined means zero: fkl, the common case, then costs few passes over (c,V).
  Tensor p = logp.exp();
  DivergenceGrad d;
  if (o.kind == "fkl") {
    d.loss = xlogy_diff(p, logp, logq);
    d.B = -p;
  } else if (o.kind == "rkl") {
    Tensor q = logq.exp();
    d.loss = xlogy_diff(q, logq, logp);
    d.A = logq - logp + 1;
  } else if (o.kind == "jsd") {
    Tensor q = logq.exp();
    Tensor logm = log_mix(o.beta, logp, logq);
    d.loss = o.beta * xlogy_diff(p, logp, logm) + (1 - o.beta) * xlogy_diff(q, logq, logm);
    d.A = (1 - o.beta) * (logq - logm);
  } else if (o.kind == "skew_fkl") {
    Tensor logm = log_mix(o.skew, logp, logq);
    d.loss = xlogy_diff(p, logp, logm);
    d.B = -(1 - o.skew) * (logp + logq - logm).exp();
  } else {  // skew_rkl
    Tensor q = logq.exp();
    Tensor logm = log_mix(o.skew, logq, logp);
    d.loss = xlogy_diff(q, logq, logm);
    d.A = logq - logm + 1 - o.skew * (logq - logm).exp();
  }
  return d;
}

// Student log-softmax over the first Vc ids at temperature tau, and a teacher's buckets.
Buckets online_buckets(const OnlineTeacher& t, const Tensor& logq_full, int64_t r0, int64_t c, int64_t Vc, double tau) {
  Tensor zt = torch::matmul(t.hidden.narrow(0, r0, c), t.weight.narrow(0, 0, Vc).t()).to(logq_full.scalar_type());
  return {torch::log_softmax(zt / tau, -1), logq_full, Tensor(), t.weight_in_mix};
}

Buckets offline_buckets(const TopKTeacher& t, const Tensor& logq_full, int64_t r0, int64_t c) {
  Tensor idx = t.indices.narrow(0, r0, c);
  auto dt = logq_full.scalar_type();
  Tensor logp_k = t.values.narrow(0, r0, c).to(dt) - t.lse.narrow(0, r0, c).to(dt).unsqueeze(1);
  // Teacher tail mass 1 - sum(top-k), kept >= 1e-7 and the student's >= e^-80 so that the logs stay
  // finite when the top-k holds (almost) all the mass; negligible against any real tail.
  Tensor logp_tail = torch::log1p(-logp_k.exp().sum(-1).clamp_max(1 - 1e-7)).unsqueeze(1);
  Tensor logq_k = logq_full.gather(1, idx);
  Tensor logq_tail = logq_full.scatter(1, idx, -std::numeric_limits<float>::infinity()).logsumexp(-1, true).clamp_min(-80);
  return {torch::cat({logp_k, logp_tail}, 1), torch::cat({logq_k, logq_tail}, 1), idx, t.weight_in_mix};
}

// d(weighted divergence)/d(student tempered logits) for a chunk, (c,Vc): q * (g - <q,g>) with
// q*g = q*A + r*B per bucket (see DivergenceGrad), written with as few (c,V) passes as possible.
Tensor kd_grad(const Buckets& b, const DivergenceGrad& d, const Tensor& q) {
  if (!b.indices.defined()) {
    Tensor qg = d.A.defined() ? q * d.A : Tensor();
    if (d.B.defined()) qg = qg.defined() ? qg + d.B : d.B;
    return qg - q * qg.sum(-1, true);
  }
  const int64_t K = b.indices.size(1);
  Tensor Qb = b.logq.exp();
  Tensor A = d.A.defined() ? d.A : torch::zeros_like(Qb), B = d.B.defined() ? d.B : torch::zeros_like(Qb);
  Tensor S = (Qb * A + B).sum(-1, true);  // sum_j q_j g_j
  Tensor A_t = A.narrow(1, K, 1), B_t = B.narrow(1, K, 1), Q_t = Qb.narrow(1, K, 1);
  Tensor ds = q * ((A_t - S) + B_t / Q_t.clamp_min(1e-35));  // every id as if in the tail
  Tensor qk = q.gather(1, b.indices);
  Tensor top = qk * (A.narrow(1, 0, K) - S) + B.narrow(1, 0, K);
  return ds.scatter(1, b.indices, top);
}

struct ChunkResult {
  double kd_sum = 0, ce_sum = 0;
};

// Loss sums and gradient w.r.t. the student logits for rows [r0, r0+c); `valid` masks ignored rows.
Tensor chunk_grad(const Tensor& zs, const Tensor& labels, const Tensor& valid, const std::vector<OnlineTeacher>& online,
                  const std::vector<TopKTeacher>& offline, int64_t r0, int64_t c, int64_t Vc, const KdLossOptions& o,
                  ChunkResult& res) {
  const double tau = o.temperature, w_t2 = o.scale_by_t2 ? tau * tau : 1.0;
  Tensor dz = torch::zeros_like(zs);
  if (o.kd_weight > 0 && (!online.empty() || !offline.empty())) {
    Tensor logq = torch::log_softmax(zs.narrow(1, 0, Vc) / tau, -1);
    Tensor q = logq.exp();
    Tensor dkd;
    auto add = [&](const Buckets& b) {
      DivergenceGrad d = divergence(o, b.logp, b.logq);
      res.kd_sum += b.weight * (d.loss * valid).sum().item<double>();
      Tensor g = kd_grad(b, d, q);
      dkd = dkd.defined() ? dkd.add_(g, b.weight) : g.mul_(b.weight);
    };
    for (const auto& t : online) add(online_buckets(t, logq, r0, c, Vc, tau));
    for (const auto& t : offline) add(offline_buckets(t, logq, r0, c));
    dz.narrow(1, 0, Vc).add_(dkd * (o.kd_weight * w_t2 / tau));
  }
  if (o.kd_weight < 1) {
    Tensor logq1 = torch::log_softmax(zs, -1);
    Tensor safe = torch::where(valid > 0, labels, torch::zeros_like(labels));
    res.ce_sum += (-logq1.gather(1, safe.unsqueeze(1)).squeeze(1) * valid).sum().item<double>();
    Tensor dce = logq1.exp();
    dce.scatter_add_(1, safe.unsqueeze(1), -torch::ones({c, 1}, dce.options()));
    dz += dce * (1 - o.kd_weight);
  }
  return dz * valid.unsqueeze(1);
}

// Both fused losses compute their gradients in forward; backward only scales them by d(out)/d(loss)
// (a 0-dim fp32 tensor: the products keep the saved gradients' dtypes). In place, and handed over:
// the saved gradients are the size of the output matrix (V x C fp32 for gw), and a copy of them at
// the start of backward would be the step's largest transient. A second backward through the same
// loss (retain_graph) therefore gets a clear error instead of a silently rescaled gradient.
torch::autograd::variable_list scaled_saved_grads(torch::autograd::AutogradContext* ctx, const Tensor& g) {
  auto take = [&](const char* key) {
    auto it = ctx->saved_data.find(key);
    if (it == ctx->saved_data.end())
      throw Error("fused KD loss: backward ran twice through the same loss",
                  "the fused loss hands its precomputed gradients over once; compute the loss again instead of retain_graph");
    Tensor t = it->second.toTensor();
    ctx->saved_data.erase(it);
    return t.mul_(g);
  };
  Tensor gh = take("gh"), gw = take("gw");
  return {gh, gw, Tensor()};
}

struct FusedArgs {
  const Tensor* labels;
  const std::vector<OnlineTeacher>* online;
  const std::vector<TopKTeacher>* offline;
  const KdLossOptions* opt;
  KdLossParts* parts;
};

class FusedKdFn : public torch::autograd::Function<FusedKdFn> {
 public:
  static Tensor forward(torch::autograd::AutogradContext* ctx, Tensor hidden, Tensor weight, const FusedArgs* a) {
    const auto& o = *a->opt;
    const int64_t N = hidden.size(0), V = weight.size(0);
    int64_t Vc = V;
    for (const auto& t : *a->online) Vc = std::min(Vc, t.weight.size(0));
    // fp32 math (fp64 when the inputs are fp64: the finite-difference tests use that).
    auto ct = hidden.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
    Tensor h = hidden.to(ct), w = weight.to(ct);
    Tensor gh = torch::zeros_like(h), gw = torch::zeros_like(w);
    Tensor valid_all = (*a->labels != o.ignore_index).to(ct);
    const double n_valid = std::max(1.0, valid_all.sum().item<double>());
    ChunkResult res;
    for (int64_t r0 = 0; r0 < N; r0 += o.chunk_tokens) {
      const int64_t c = std::min(o.chunk_tokens, N - r0);
      Tensor hc = h.narrow(0, r0, c);
      Tensor zs = torch::matmul(hc, w.t());  // (c,V) fp32: the only logits alive at a time
      Tensor dz = chunk_grad(zs, a->labels->narrow(0, r0, c), valid_all.narrow(0, r0, c), *a->online, *a->offline,
                             r0, c, Vc, o, res);
      gh.narrow(0, r0, c).copy_(torch::matmul(dz, w));
      gw.addmm_(dz.t(), hc);
    }
    const double w_t2 = o.scale_by_t2 ? o.temperature * o.temperature : 1.0;
    a->parts->kd = res.kd_sum / n_valid;
    a->parts->ce = res.ce_sum / n_valid;
    a->parts->tokens = static_cast<int64_t>(valid_all.sum().item<double>());
    double total = (o.kd_weight * w_t2 * res.kd_sum + (1 - o.kd_weight) * res.ce_sum) / n_valid;
    ctx->saved_data["gh"] = gh.div_(n_valid).to(hidden.scalar_type());
    ctx->saved_data["gw"] = gw.div_(n_valid).to(weight.scalar_type());
    return torch::tensor(total, hidden.options().dtype(ct));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    return scaled_saved_grads(ctx, grad_out[0]);
  }
};

// The CUDA path: logits chunks stay in the compute dtype (bf16 GEMMs with fp32 accumulation), and one
// kernel per chunk (runtime/kernels/kd_loss.cu) computes the loss and writes d(loss)/d(logits) over
// the student chunk in place; the weight gradient accumulates in fp32. Online teachers (one) only.
bool cuda_path_applies(const Tensor& hidden, const std::vector<OnlineTeacher>& online,
                       const std::vector<TopKTeacher>& offline, const KdLossOptions& o) {
  return hidden.is_cuda() && cuda::built_with_cuda() && offline.empty() && online.size() <= 1 &&
         (o.kind == "fkl" || o.kind == "rkl" || o.kind == "jsd") && hidden.scalar_type() != torch::kDouble;
}

class FusedKdCudaFn : public torch::autograd::Function<FusedKdCudaFn> {
 public:
  static Tensor forward(torch::autograd::AutogradContext* ctx, Tensor hidden, Tensor weight, const FusedArgs* a) {
    const auto& o = *a->opt;
    const Tensor& labels = *a->labels;
    const int64_t N = hidden.size(0), V = weight.size(0);
    // bf16 keeps fp32's exponent range, so bf16 logits and gradients are fine; fp16 would flush the
    // ~1/V-sized gradients to subnormals, so fp16 (and fp32) inputs are computed in fp32.
    const auto cdt = hidden.scalar_type() == torch::kBFloat16 ? torch::kBFloat16 : torch::kFloat;
    Tensor h = hidden.detach().to(cdt).contiguous(), w = weight.detach().to(cdt).contiguous();
    Tensor th, tw;
    double mix = 1.0;
    if (!a->online->empty()) {
      th = (*a->online)[0].hidden.detach().to(h.device(), cdt);
      tw = (*a->online)[0].weight.detach().to(h.device(), cdt);
      mix = (*a->online)[0].weight_in_mix;
    }
    Tensor lab = labels.to(h.device(), torch::kLong).contiguous();
    Tensor valid = lab != o.ignore_index;
    const int64_t n_tok = valid.sum().item<int64_t>();
    if (((lab < 0) & valid).any().item<bool>() || ((lab >= V) & valid).any().item<bool>())
      throw Error("kd loss: a label is outside the student's vocabulary of " + std::to_string(V),
                  "labels must be token ids or ignore_index (" + std::to_string(o.ignore_index) + ")");
    const double n_valid = std::max<double>(1.0, static_cast<double>(n_tok));
    const double w_t2 = o.scale_by_t2 ? o.temperature * o.temperature : 1.0;
    cuda::KdChunkOptions ko;
    ko.kind = o.kind == "fkl" ? 0 : o.kind == "rkl" ? 1 : 2;
    ko.tau = o.temperature;
    ko.beta = o.beta;
    ko.kd_weight = o.kd_weight;
    ko.w_kd = w_t2 * mix;
    ko.grad_scale = 1.0 / n_valid;
    ko.ignore_index = o.ignore_index;
    Tensor gh = torch::empty_like(h), gw;
    Tensor kd_sum = torch::zeros({}, h.options().dtype(torch::kFloat)), ce_sum = torch::zeros_like(kd_sum);
    auto mm_f32 = [&](const Tensor& x, const Tensor& y) {
      if (cdt == torch::kFloat) return at::mm(x, y);
      try {
        return at::mm(x, y, torch::kFloat);  // bf16 operands, fp32 output (cuBLAS accumulates in fp32)
      } catch (const c10::Error&) {
        return at::mm(x, y).to(torch::kFloat);  // a device without the out_dtype kernel
      }
    };
    for (int64_t r0 = 0; r0 < N; r0 += o.chunk_tokens) {
      const int64_t c = std::min(o.chunk_tokens, N - r0);
      Tensor hc = h.narrow(0, r0, c);
      Tensor zs = at::mm(hc, w.t());  // (c,V): the only student logits alive; becomes the gradient
      Tensor zt = th.defined() ? at::mm(th.narrow(0, r0, c), tw.t()) : Tensor();
      auto [kd, ce] = cuda::kd_loss_chunk(zs, zt, lab.narrow(0, r0, c), zs, ko);
      zt = Tensor();
      kd_sum += kd.sum();
      ce_sum += ce.sum();
      gh.narrow(0, r0, c).copy_(at::mm(zs, w));
      Tensor gwc = mm_f32(zs.t(), hc);
      if (gw.defined()) gw.add_(gwc);
      else gw = gwc;
    }
    const double kd_total = mix * kd_sum.item<double>(), ce_total = ce_sum.item<double>();
    a->parts->kd = kd_total / n_valid;
    a->parts->ce = ce_total / n_valid;
    a->parts->tokens = n_tok;
    const double total = (ko.kd_weight * w_t2 * kd_total + (1 - ko.kd_weight) * ce_total) / n_valid;
    ctx->saved_data["gh"] = gh.to(hidden.scalar_type());
    ctx->saved_data["gw"] = gw.to(weight.scalar_type());
    return torch::tensor(total, hidden.options().dtype(torch::kFloat));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    return scaled_saved_grads(ctx, grad_out[0]);
  }
};

void check_inputs(const Tensor& hidden, const Tensor& weight, const Tensor& labels,
                  const std::vector<OnlineTeacher>& online, const std::vector<TopKTeacher>& offline) {
  const int64_t N = hidden.size(0);
  if (hidden.dim() != 2 || weight.dim() != 2 || hidden.size(1) != weight.size(1))
    throw Error("kd loss: student hidden (N,C) and weight (V,C) do not match");
  if (labels.dim() != 1 || labels.size(0) != N) throw Error("kd loss: labels must be (N,) with N = " + std::to_string(N));
  for (const auto& t : online) {
    if (t.hidden.size(0) != N || t.hidden.size(1) != t.weight.size(1))
      throw Error("kd loss: an online teacher's hidden (N,Ct) and weight (V,Ct) do not match the student's N");
  }
  for (const auto& t : offline) {
    if (t.values.size(0) != N || t.indices.sizes() != t.values.sizes() || t.lse.size(0) != N)
      throw Error("kd loss: a top-k teacher's values/indices/lse do not cover the student's N tokens");
    if (t.indices.max().item<int64_t>() >= weight.size(0))
      throw Error("kd loss: a top-k teacher index is outside the student's vocabulary of " + std::to_string(weight.size(0)),
                  "the shards were precomputed with another tokenizer");
  }
}

}  // namespace

void KdLossOptions::validate() const {
  if (kind != "fkl" && kind != "rkl" && kind != "jsd" && kind != "skew_fkl" && kind != "skew_rkl")
    throw Error("kd loss: unknown kind '" + kind + "'", "use fkl, rkl, jsd, skew_fkl or skew_rkl");
  if (temperature <= 0) throw Error("kd loss: temperature must be > 0");
  if (beta <= 0 || beta >= 1) throw Error("kd loss: beta must be in (0, 1), got " + std::to_string(beta));
  if (skew < 0 || skew >= 1) throw Error("kd loss: skew must be in [0, 1), got " + std::to_string(skew));
  if (kd_weight < 0 || kd_weight > 1) throw Error("kd loss: kd_weight must be in [0, 1]");
  if (chunk_tokens <= 0) throw Error("kd loss: chunk_tokens must be positive");
}

KdLossParts fused_kd_loss(const Tensor& hidden, const Tensor& weight, const Tensor& labels,
                          const std::vector<OnlineTeacher>& online, const std::vector<TopKTeacher>& offline,
                          const KdLossOptions& opt) {
  opt.validate();
  check_inputs(hidden, weight, labels, online, offline);
  KdLossParts parts;
  FusedArgs args{&labels, &online, &offline, &opt, &parts};
  parts.loss = cuda_path_applies(hidden, online, offline, opt) ? FusedKdCudaFn::apply(hidden, weight, &args)
                                                               : FusedKdFn::apply(hidden, weight, &args);
  return parts;
}

Tensor reference_kd_loss(const Tensor& hidden, const Tensor& weight, const Tensor& labels,
                         const std::vector<OnlineTeacher>& online, const std::vector<TopKTeacher>& offline,
                         const KdLossOptions& o) {
  auto ct = hidden.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
  Tensor zs = torch::matmul(hidden.to(ct), weight.to(ct).t());  // (N,V) all at once
  Tensor valid = (labels != o.ignore_index).to(ct);
  const double n_valid = std::max(1.0, valid.sum().item<double>()), tau = o.temperature;
  int64_t Vc = weight.size(0);
  for (const auto& t : online) Vc = std::min(Vc, t.weight.size(0));
  Tensor logq = torch::log_softmax(zs.narrow(1, 0, Vc) / tau, -1);
  Tensor kd = torch::zeros({zs.size(0)}, zs.options());
  for (const auto& t : online) {
    Tensor logp = torch::log_softmax(torch::matmul(t.hidden, t.weight.narrow(0, 0, Vc).t()).to(ct) / tau, -1);
    kd = kd + t.weight_in_mix * divergence(o, logp, logq).loss;
  }
  for (const auto& t : offline) {
    Buckets b = offline_buckets(t, logq, 0, zs.size(0));
    kd = kd + t.weight_in_mix * divergence(o, b.logp, b.logq).loss;
  }
  Tensor safe = torch::where(valid > 0, labels, torch::zeros_like(labels));
  Tensor ce = -torch::log_softmax(zs, -1).gather(1, safe.unsqueeze(1)).squeeze(1);
  const double w_t2 = o.scale_by_t2 ? tau * tau : 1.0;
  return ((o.kd_weight * w_t2 * kd + (1 - o.kd_weight) * ce) * valid).sum() / n_valid;
}

TopKTeacher topk_from_logits(const Tensor& logits, int64_t k, double temperature) {
  Tensor z = logits.to(torch::kFloat) / temperature;
  auto [values, indices] = z.topk(k, -1);
  return {values, indices, z.logsumexp(-1), 1.0};
}

}  // namespace bonsai
