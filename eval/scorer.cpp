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

// One decoder layer on x (1,N,C) whose tokens sit at the positions cos/sin (N,D/2) describe;
// `mask` (N,N) bool, true = may attend.
torch::Tensor layer(const LlamaLayer& l, const LlamaConfig& cfg, torch::Tensor x, const torch::Tensor& cos,
                    const torch::Tensor& sin, const torch::Tensor& mask) {
  const int64_t N = x.size(1), D = cfg.head_dim, H = cfg.num_attention_heads, Hkv = cfg.num_key_value_heads;
  torch::Tensor h = rms_norm(x, l.attn_norm->weight, cfg.rms_norm_eps);
  torch::Tensor q = F::linear(h, l.q->weight).view({1, N, H, D}).transpose(1, 2);   // (1,H,N,D)
  torch::Tensor k = F::linear(h, l.k->weight).view({1, N, Hkv, D}).transpose(1, 2);  // (1,Hkv,N,D)
  torch::Tensor v = F::linear(h, l.v->weight).view({1, N, Hkv, D}).transpose(1, 2);
  q = apply_rope(q, cos, sin);
  k = apply_rope(k, cos, sin);
  torch::Tensor a = at::scaled_dot_product_attention(q, k, v, mask.view({1, 1, N, N}), 0.0, false, std::nullopt, H != Hkv);
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

std::vector<std::vector<ContinuationScore>> score_requests(Llama& model, const std::vector<McRequest>& reqs) {
  torch::NoGradGuard ng;
  const LlamaConfig& cfg = model->config();
  const auto dev = model->embedding_weight().device();
  const auto dtype = model->embedding_weight().scalar_type();

  // --- pack: per question its context, then each choice's tokens 0..n-2 (the last is only a target)
  std::vector<int32_t> ids;
  std::vector<int64_t> pos, qid, seg;
  std::vector<int64_t> rows;                                  // positions whose logits are needed
  std::vector<std::vector<std::vector<int64_t>>> row_of(reqs.size());  // [q][c][j] -> index into rows
  int64_t max_pos = 0;
  for (size_t q = 0; q < reqs.size(); ++q) {
    const auto& r = reqs[q];
    const int64_t T = static_cast<int64_t>(r.context.size());
    if (T == 0) throw Error("score_requests: empty context");
    for (int64_t t = 0; t < T; ++t) {
      ids.push_back(r.context[t]);
      pos.push_back(t);
      qid.push_back(static_cast<int64_t>(q));
      seg.push_back(0);
    }
    const int64_t last_ctx_row = static_cast<int64_t>(rows.size());
    rows.push_back(static_cast<int64_t>(ids.size()) - 1);  // predicts every choice's first token
    row_of[q].resize(r.continuations.size());
    for (size_t c = 0; c < r.continuations.size(); ++c) {
      const auto& cont = r.continuations[c];
      if (cont.empty()) throw Error("score_requests: empty continuation");
      row_of[q][c].push_back(last_ctx_row);
      for (size_t j = 0; j + 1 < cont.size(); ++j) {
        ids.push_back(cont[j]);
        pos.push_back(T + static_cast<int64_t>(j));
        qid.push_back(static_cast<int64_t>(q));
        seg.push_back(static_cast<int64_t>(c) + 1);
        row_of[q][c].push_back(static_cast<int64_t>(rows.size()));
        rows.push_back(static_cast<int64_t>(ids.size()) - 1);
      }
      max_pos = std::max(max_pos, T + static_cast<int64_t>(cont.size()));
    }
  }
  const int64_t N = static_cast<int64_t>(ids.size());
  auto lopt = torch::TensorOptions().dtype(torch::kLong).device(dev);
  auto pos_t = torch::tensor(pos, torch::kLong).to(dev), q_t = torch::tensor(qid, torch::kLong).to(dev);
  auto seg_t = torch::tensor(seg, torch::kLong).to(dev);
  auto idx = torch::arange(N, lopt);
  // (N,N): token i sees token j of its own question at or before it, in the context or its own choice.
  torch::Tensor mask = (q_t.unsqueeze(1) == q_t.unsqueeze(0)) & (idx.unsqueeze(0) <= idx.unsqueeze(1)) &
                       ((seg_t.unsqueeze(0) == 0) | (seg_t.unsqueeze(0) == seg_t.unsqueeze(1)));
  auto [cos_all, sin_all] = model->rope_cos_sin(0, max_pos, dev);  // (max_pos, D/2) fp32
  torch::Tensor cos = cos_all.index_select(0, pos_t).to(dtype), sin = sin_all.index_select(0, pos_t).to(dtype);  // (N,D/2)

  torch::Tensor x = F::embedding(ids_tensor(ids, dev).unsqueeze(0), model->embedding_weight());  // (1,N,C)
  for (const auto& l : model->layers()) x = layer(l, cfg, x, cos, sin, mask);
  torch::Tensor h = rms_norm(x[0].index_select(0, torch::tensor(rows, torch::kLong).to(dev)), model->final_norm_weight(),
                             cfg.rms_norm_eps);
  torch::Tensor lp = log_probs(model, h);  // (R,V)

  // --- gather each continuation's targets from its rows
  std::vector<int64_t> g_rows, g_tok;
  for (size_t q = 0; q < reqs.size(); ++q)
    for (size_t c = 0; c < reqs[q].continuations.size(); ++c)
      for (size_t j = 0; j < reqs[q].continuations[c].size(); ++j) {
        g_rows.push_back(row_of[q][c][j]);
        g_tok.push_back(reqs[q].continuations[c][j]);
      }
  auto gr = torch::tensor(g_rows, torch::kLong).to(dev), gt = torch::tensor(g_tok, torch::kLong).to(dev);
  torch::Tensor sel = lp.index_select(0, gr);                                     // (G,V)
  torch::Tensor tok_lp = sel.gather(1, gt.unsqueeze(1)).squeeze(1).to(torch::kDouble).cpu();  // (G,)
  torch::Tensor is_max = sel.argmax(1).eq(gt).cpu();
  const double* lpp = tok_lp.data_ptr<double>();
  const bool* mx = is_max.data_ptr<bool>();
  std::vector<std::vector<ContinuationScore>> out(reqs.size());
  size_t k = 0;
  for (size_t q = 0; q < reqs.size(); ++q)
    for (const auto& cont : reqs[q].continuations) {
      ContinuationScore s;
      for (size_t j = 0; j < cont.size(); ++j, ++k) {
        s.logprob += lpp[k];
        s.greedy = s.greedy && mx[k];
      }
      s.tokens = static_cast<int64_t>(cont.size());
      out[q].push_back(s);
    }
  return out;
}

std::vector<ContinuationScore> score_continuations(Llama& model, const std::vector<int32_t>& context,
                                                   const std::vector<std::vector<int32_t>>& continuations) {
  return score_requests(model, {McRequest{context, continuations}})[0];
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
