// Shared-context log-likelihood scoring (see scorer.h). The layer arithmetic mirrors
// model/llama.cpp's block (rms_norm, apply_rope, SDPA with GQA, SwiGLU) so numbers match the
// model's own forward, which is tested against transformers.
#include "eval/scorer.h"

#include <algorithm>

#include "core/error.h"

namespace bonsai::eval {
namespace {

namespace F = torch::nn::functional;

torch::Tensor ids_tensor(const std::vector<int32_t>& ids, torch::Device dev) {
  return torch::tensor(std::vector<int64_t>(ids.begin(), ids.end()), torch::kLong).to(dev);
}

// One decoder layer on x (1,N,C) whose queries sit at the positions cos/sin (N,D/2) describe.
// k_prev/v_prev (1,Hkv,P,D) are earlier positions every query may see (undefined: none); `mask`
// ((N, P+N) bool, true = attend) or causal when undefined. Returns the new x; k/v are this
// chunk's keys and values (1,Hkv,N,D).
torch::Tensor layer(const LlamaLayer& l, const LlamaConfig& cfg, torch::Tensor x, const torch::Tensor& cos,
                    const torch::Tensor& sin, const torch::Tensor& k_prev, const torch::Tensor& v_prev,
                    const torch::Tensor& mask, torch::Tensor& k_out, torch::Tensor& v_out) {
  const int64_t N = x.size(1), D = cfg.head_dim, H = cfg.num_attention_heads, Hkv = cfg.num_key_value_heads;
  torch::Tensor h = rms_norm(x, l.attn_norm->weight, cfg.rms_norm_eps);
  torch::Tensor q = F::linear(h, l.q->weight).view({1, N, H, D}).transpose(1, 2);   // (1,H,N,D)
  torch::Tensor k = F::linear(h, l.k->weight).view({1, N, Hkv, D}).transpose(1, 2);  // (1,Hkv,N,D)
  torch::Tensor v = F::linear(h, l.v->weight).view({1, N, Hkv, D}).transpose(1, 2);
  q = apply_rope(q, cos, sin);
  k = apply_rope(k, cos, sin);
  k_out = k;
  v_out = v;
  torch::Tensor a;
  if (!mask.defined()) {
    a = at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true, std::nullopt, H != Hkv);
  } else {
    torch::Tensor kk = torch::cat({k_prev, k}, 2), vv = torch::cat({v_prev, v}, 2);  // (1,Hkv,P+N,D)
    a = at::scaled_dot_product_attention(q, kk, vv, mask.view({1, 1, N, -1}), 0.0, false, std::nullopt, H != Hkv);
  }
  a = a.transpose(1, 2).reshape({1, N, H * D});
  x = x + F::linear(a, l.o->weight);
  h = rms_norm(x, l.ffn_norm->weight, cfg.rms_norm_eps);
  return x + F::linear(F::silu(F::linear(h, l.gate->weight)) * F::linear(h, l.up->weight), l.down->weight);
}

// Log-probabilities (rows, V) fp32 of the final-normed hidden states h (rows, C).
torch::Tensor log_probs(Llama& model, const torch::Tensor& h) {
  return torch::log_softmax(F::linear(h, model->output_weight()).to(torch::kFloat), -1);
}

}  // namespace

std::vector<ContinuationScore> score_continuations(Llama& model, const std::vector<int32_t>& context,
                                                   const std::vector<std::vector<int32_t>>& conts) {
  torch::NoGradGuard ng;
  const LlamaConfig& cfg = model->config();
  const auto dev = model->embedding_weight().device();
  const auto dtype = model->embedding_weight().scalar_type();
  const int64_t T = static_cast<int64_t>(context.size());
  if (T == 0) throw Error("score_continuations: empty context");
  int64_t longest = 0;
  for (const auto& c : conts) {
    if (c.empty()) throw Error("score_continuations: empty continuation");
    longest = std::max<int64_t>(longest, static_cast<int64_t>(c.size()));
  }
  auto [cos_all, sin_all] = model->rope_cos_sin(0, T + longest, dev);  // (T+longest, D/2) fp32
  cos_all = cos_all.to(dtype);
  sin_all = sin_all.to(dtype);
  const auto& layers = model->layers();
  const size_t L = layers.size();

  // --- the context, once: x (1,T,C); keep each layer's K/V (1,Hkv,T,D)
  std::vector<torch::Tensor> k_ctx(L), v_ctx(L);
  torch::Tensor x = F::embedding(ids_tensor(context, dev).unsqueeze(0), model->embedding_weight());
  torch::Tensor cos = cos_all.narrow(0, 0, T), sin = sin_all.narrow(0, 0, T);
  for (size_t i = 0; i < L; ++i) x = layer(layers[i], cfg, x, cos, sin, {}, {}, {}, k_ctx[i], v_ctx[i]);
  torch::Tensor h_last = rms_norm(x.select(1, T - 1), model->final_norm_weight(), cfg.rms_norm_eps);  // (1,C)
  torch::Tensor lp_first = log_probs(model, h_last)[0];  // (V,): predicts every continuation's first token

  // --- all continuations packed into one sequence of S tokens: choice c contributes its tokens
  // 0..n_c-2 as inputs (its last token is only a target), at positions T..T+n_c-2.
  std::vector<int32_t> packed;
  std::vector<int64_t> pos, seg, offset(conts.size());
  for (size_t c = 0; c < conts.size(); ++c) {
    offset[c] = static_cast<int64_t>(packed.size());
    for (size_t j = 0; j + 1 < conts[c].size(); ++j) {
      packed.push_back(conts[c][j]);
      pos.push_back(T + static_cast<int64_t>(j));
      seg.push_back(static_cast<int64_t>(c));
    }
  }
  const int64_t S = static_cast<int64_t>(packed.size());
  torch::Tensor lp_packed;  // (S,V): row s predicts the token after packed[s]
  if (S > 0) {
    auto pos_t = torch::tensor(pos, torch::kLong).to(dev);
    auto seg_t = torch::tensor(seg, torch::kLong).to(dev);
    auto idx = torch::arange(S, torch::TensorOptions().dtype(torch::kLong).device(dev));
    // (S, T+S): the whole context, then earlier-or-same tokens of the same choice.
    torch::Tensor own = (seg_t.unsqueeze(1) == seg_t.unsqueeze(0)) & (idx.unsqueeze(0) <= idx.unsqueeze(1));
    torch::Tensor mask = torch::cat({torch::ones({S, T}, own.options()), own}, 1);
    torch::Tensor y = F::embedding(ids_tensor(packed, dev).unsqueeze(0), model->embedding_weight());  // (1,S,C)
    torch::Tensor pc = cos_all.index_select(0, pos_t), ps = sin_all.index_select(0, pos_t);          // (S,D/2)
    for (size_t i = 0; i < L; ++i) {
      torch::Tensor k_new, v_new;
      y = layer(layers[i], cfg, y, pc, ps, k_ctx[i], v_ctx[i], mask, k_new, v_new);
    }
    lp_packed = log_probs(model, rms_norm(y[0], model->final_norm_weight(), cfg.rms_norm_eps));
  }

  // --- gather: target j of choice c is predicted by lp_first (j = 0) or packed row offset_c + j - 1
  std::vector<ContinuationScore> out(conts.size());
  for (size_t c = 0; c < conts.size(); ++c) {
    const int64_t n = static_cast<int64_t>(conts[c].size());
    torch::Tensor rows = lp_first.unsqueeze(0);
    if (n > 1) rows = torch::cat({rows, lp_packed.narrow(0, offset[c], n - 1)}, 0);  // (n,V)
    auto tgt = ids_tensor(conts[c], dev).unsqueeze(1);                            // (n,1)
    out[c].logprob = rows.gather(1, tgt).to(torch::kDouble).sum().item<double>();
    out[c].greedy = rows.argmax(1).eq(tgt.squeeze(1)).all().item<bool>();
    out[c].tokens = n;
  }
  return out;
}

WindowScore score_window(Llama& model, const std::vector<int32_t>& ids, int64_t first_target) {
  torch::NoGradGuard ng;
  const int64_t T = static_cast<int64_t>(ids.size());
  if (first_target < 1 || first_target >= T)
    throw Error("score_window: first target " + std::to_string(first_target) + " outside [1, " + std::to_string(T) + ")");
  ForwardOptions opt;
  opt.compute_logits = false;
  const auto dev = model->embedding_weight().device();
  torch::Tensor h = model->forward(ids_tensor(ids, dev).unsqueeze(0), opt).last_hidden[0];  // (T,C), normed
  torch::Tensor tgt = ids_tensor(ids, dev);
  WindowScore s;
  // Row t predicts token t+1; chunks bound the (rows, V) logits.
  constexpr int64_t kChunk = 512;
  for (int64_t r = first_target - 1; r < T - 1; r += kChunk) {
    int64_t n = std::min(kChunk, T - 1 - r);
    torch::Tensor lp = log_probs(model, h.narrow(0, r, n));
    s.nll -= lp.gather(1, tgt.narrow(0, r + 1, n).unsqueeze(1)).to(torch::kDouble).sum().item<double>();
    s.tokens += n;
  }
  return s;
}

}  // namespace bonsai::eval
