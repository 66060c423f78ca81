// The LibTorch backend: the same arithmetic as model/llama.cpp's forward (so greedy decoding matches
// transformers token for token), plus a preallocated KV cache written by index.
//
// Cache layout per layer: k, v (max_batch, Hkv, max_seq, D). Shapes: B batch, T new tokens,
// L attended positions, C hidden, H/Hkv heads, D head dim, V vocab.
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>

#include "core/error.h"
#include "runtime/backend.h"
#include "runtime/cpu/gemv.h"

namespace bonsai {
namespace {

namespace F = torch::nn::functional;
using torch::indexing::Slice;

// x (..., K) @ W_j (N_j, K)^T for each j: on the CPU at batch*time <= 8 (decode), our AVX2 GEMV
// (runtime/cpu/gemv.h): one pass over the weights at memory speed, where LibTorch's bf16 path reached
// ~10 GB/s; several projections of the same x (q/k/v, gate/up) share one conversion of x, one parallel
// loop over all their rows and one conversion back. Elsewhere (prefill, batches, GPUs, CPUs without
// AVX2/FMA/F16C) F::linear. BONSAI_CPU_GEMV=0 turns the kernel off (for comparisons).
std::vector<torch::Tensor> decode_linear_multi(const torch::Tensor& x, const std::vector<torch::Tensor>& Ws) {
  const int64_t K = Ws[0].size(1);
  const int64_t M = x.numel() / std::max<int64_t>(K, 1);
  const auto wt = Ws[0].scalar_type();
  bool fused = cpu::gemv_supported() && x.device().is_cpu() && M >= 1 && M <= 8 &&
               (wt == torch::kFloat || wt == torch::kBFloat16 || wt == torch::kHalf) &&
               !(torch::GradMode::is_enabled() && x.requires_grad());
  static const bool enabled = [] {
    const char* e = std::getenv("BONSAI_CPU_GEMV");
    return !(e && std::string(e) == "0");
  }();
  fused = fused && enabled;
  for (const auto& W : Ws)
    fused = fused && W.size(1) == K && W.scalar_type() == wt && W.is_contiguous() &&
            !(torch::GradMode::is_enabled() && W.requires_grad());
  std::vector<torch::Tensor> out;
  if (!fused) {
    for (const auto& W : Ws) out.push_back(F::linear(x, W));
    return out;
  }
  std::vector<int64_t> off{0};
  for (const auto& W : Ws) off.push_back(off.back() + W.size(0));
  const int64_t N = off.back();
  torch::Tensor xf = x.reshape({M, K}).to(torch::kFloat).contiguous();
  torch::Tensor y = torch::empty({M, N}, xf.options());
  const cpu::WType t = wt == torch::kFloat ? cpu::WType::F32 : wt == torch::kBFloat16 ? cpu::WType::BF16 : cpu::WType::F16;
  const int64_t grain = std::max<int64_t>(8, 65536 / (K * Ws[0].element_size()));
  const float* xp = xf.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    for (size_t j = 0; j < Ws.size(); ++j) {
      const int64_t lo = std::max(n0, off[j]), hi = std::min(n1, off[j + 1]);
      if (lo < hi) cpu::gemv_rows(t, Ws[j].data_ptr(), xp, static_cast<int>(M), K, lo - off[j], hi - off[j], yp + off[j], N);
    }
  });
  torch::Tensor yc = y.to(x.scalar_type());
  for (size_t j = 0; j < Ws.size(); ++j) {
    auto shape = x.sizes().vec();
    shape.back() = off[j + 1] - off[j];
    out.push_back(yc.narrow(1, off[j], off[j + 1] - off[j]).reshape(shape));
  }
  return out;
}

torch::Tensor decode_linear(const torch::Tensor& x, const torch::Tensor& W) { return decode_linear_multi(x, {W})[0]; }

// transformers' RMSNorm (normalize in fp32, round to the dtype, multiply by the weight) in one pass
// over each row, for inference on the CPU: at decode the LibTorch version's seven small ops per
// norm cost more than the arithmetic. Same roundings; only the order of the sum of squares differs.
template <typename T>
void rms_rows(const T* x, const T* w, T* out, int64_t rows, int64_t C, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;
    T* o = out + r * C;
    float ss = 0.f;
    for (int64_t c = 0; c < C; ++c) {
      const float v = static_cast<float>(xr[c]);
      ss += v * v;
    }
    const float inv = 1.f / std::sqrt(ss / static_cast<float>(C) + eps);
    for (int64_t c = 0; c < C; ++c)
      o[c] = static_cast<T>(static_cast<float>(w[c]) * static_cast<float>(static_cast<T>(static_cast<float>(xr[c]) * inv)));
  }
}

torch::Tensor decode_rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  const auto t = x.scalar_type();
  if (!x.device().is_cpu() || !x.is_contiguous() || !w.is_contiguous() || w.scalar_type() != t ||
      (t != torch::kFloat && t != torch::kBFloat16) || x.numel() > 8 * x.size(-1) ||
      (torch::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad())))
    return rms_norm(x, w, eps);
  torch::Tensor out = torch::empty_like(x);
  const int64_t C = x.size(-1), rows = x.numel() / C;
  if (t == torch::kFloat)
    rms_rows(x.data_ptr<float>(), w.data_ptr<float>(), out.data_ptr<float>(), rows, C, static_cast<float>(eps));
  else
    rms_rows(x.data_ptr<at::BFloat16>(), w.data_ptr<at::BFloat16>(), out.data_ptr<at::BFloat16>(), rows, C,
             static_cast<float>(eps));
  return out;
}

class TorchBackend : public Backend {
 public:
  explicit TorchBackend(Llama model) : model_(std::move(model)), cfg_(model_->config()) {
    opts_ = model_->embedding_weight().options().requires_grad(false);
    inv_freq_ = model_->inv_freq().to(opts_.device());
  }

  void reserve(int64_t max_batch, int64_t max_seq) override {
    if (max_batch <= max_batch_ && max_seq <= max_seq_) return;
    max_batch_ = std::max(max_batch, max_batch_);
    max_seq_ = std::max(max_seq, max_seq_);
    k_.clear();
    v_.clear();
    for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
      k_.push_back(torch::zeros({max_batch_, cfg_.num_key_value_heads, max_seq_, cfg_.head_dim}, opts_));
      v_.push_back(torch::zeros({max_batch_, cfg_.num_key_value_heads, max_seq_, cfg_.head_dim}, opts_));
    }
  }

  torch::Tensor step(const torch::Tensor& tokens, const std::vector<int64_t>& slots,
                     const std::vector<int64_t>& start) override {
    torch::NoGradGuard ng;
    const int64_t B = tokens.size(0), T = tokens.size(1);
    check_step(B, T, slots, start);
    auto dev = opts_.device();
    auto slot_t = torch::tensor(slots, torch::kLong).to(dev);
    auto start_t = torch::tensor(start, torch::kLong).to(dev);
    auto pos = start_t.unsqueeze(1) + torch::arange(T, torch::TensorOptions().dtype(torch::kLong).device(dev));  // (B,T)
    auto freqs = pos.to(torch::kFloat).unsqueeze(-1) * inv_freq_;  // (B,T,D/2), fp32 as in the forward
    auto cos = freqs.cos().unsqueeze(1).to(opts_.dtype());          // (B,1,T,D/2)
    auto sin = freqs.sin().unsqueeze(1).to(opts_.dtype());
    const int64_t L = *std::max_element(start.begin(), start.end()) + T;
    Attend at{slot_t, pos, start, slots, L, T, {}};
    if (!(T > 1 && start[0] == 0)) {
      // Query t of sequence b (at position pos[b,t]) sees cache positions j <= pos[b,t].
      auto j = torch::arange(L, pos.options());
      at.mask = (j.view({1, 1, L}) <= pos.unsqueeze(-1)).unsqueeze(1);
    }
    torch::Tensor x = F::embedding(tokens.to(dev), model_->embedding_weight());  // (B,T,C)
    const auto& layers = model_->layers();
    for (size_t i = 0; i < layers.size(); ++i) x = layer(layers[i], i, x, cos, sin, at);
    x = x.select(1, T - 1);  // (B,C): only the last position's logits are needed
    x = decode_rms_norm(x.contiguous(), model_->final_norm_weight(), cfg_.rms_norm_eps);
    return decode_linear(x, model_->output_weight()).to(torch::kFloat);  // (B,V)
  }

  const LlamaConfig& config() const override { return cfg_; }
  int64_t max_seq() const override { return max_seq_; }
  int64_t max_batch() const override { return max_batch_; }

 private:
  struct Attend {
    torch::Tensor slot_t, pos;  // (B,), (B,T)
    const std::vector<int64_t>& start;
    const std::vector<int64_t>& slots;
    int64_t L, T;
    torch::Tensor mask;  // (B,1,T,L), built once per step; undefined for a fresh prompt (causal)
  };

  void check_step(int64_t B, int64_t T, const std::vector<int64_t>& slots, const std::vector<int64_t>& start) const {
    check_step_args("runtime step", B, T, slots, start, max_batch_, max_seq_);
  }


  // K or V of the attended sequences: a view when the slots are one contiguous run, else a gather.
  static torch::Tensor gather(const torch::Tensor& cache, const Attend& at) {
    bool contiguous = true;
    for (size_t b = 1; b < at.slots.size(); ++b) contiguous &= at.slots[b] == at.slots[b - 1] + 1;
    torch::Tensor c = contiguous ? cache.narrow(0, at.slots[0], at.slots.size()) : cache.index_select(0, at.slot_t);
    return c.narrow(2, 0, at.L);  // (B,Hkv,L,D)
  }

  void write_cache(torch::Tensor& cache, const torch::Tensor& kv, const Attend& at) {
    if (at.T == 1) {
      // kv (B,Hkv,1,D) -> cache[slot_b, :, pos_b, :]
      cache.index_put_({at.slot_t, Slice(), at.pos.select(1, 0)}, kv.squeeze(2));
    } else {
      cache.select(0, at.slots[0]).narrow(1, at.start[0], at.T).copy_(kv.squeeze(0));
    }
  }

  torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const Attend& at) {
    const bool gqa = cfg_.num_attention_heads != cfg_.num_key_value_heads;
    if (at.T > 1 && at.start[0] == 0) {  // a fresh prompt: plain causal attention (flash kernel)
      return at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true, std::nullopt, gqa);
    }
    return at::scaled_dot_product_attention(q, k, v, at.mask, 0.0, false, std::nullopt, gqa);
  }

  torch::Tensor layer(const LlamaLayer& l, size_t i, torch::Tensor x, const torch::Tensor& cos,
                      const torch::Tensor& sin, const Attend& at) {
    const int64_t B = x.size(0), T = x.size(1), D = cfg_.head_dim;
    const int64_t H = cfg_.num_attention_heads, Hkv = cfg_.num_key_value_heads;
    torch::Tensor h = decode_rms_norm(x, l.attn_norm->weight, cfg_.rms_norm_eps);
    auto qkv = decode_linear_multi(h, {l.q->weight, l.k->weight, l.v->weight});
    torch::Tensor q = qkv[0].reshape({B, T, H, D}).transpose(1, 2);
    torch::Tensor k = qkv[1].reshape({B, T, Hkv, D}).transpose(1, 2);
    torch::Tensor v = qkv[2].reshape({B, T, Hkv, D}).transpose(1, 2);
    q = apply_rope(q, cos, sin);
    k = apply_rope(k, cos, sin);
    write_cache(k_[i], k, at);
    write_cache(v_[i], v, at);
    torch::Tensor a = attention(q, gather(k_[i], at), gather(v_[i], at), at);
    a = a.transpose(1, 2).reshape({B, T, H * D});
    x = x + decode_linear(a, l.o->weight);
    h = decode_rms_norm(x, l.ffn_norm->weight, cfg_.rms_norm_eps);
    auto gu = decode_linear_multi(h, {l.gate->weight, l.up->weight});
    torch::Tensor act = F::silu(gu[0]) * gu[1];
    return x + decode_linear(act, l.down->weight);
  }

  Llama model_;
  LlamaConfig cfg_;
  torch::TensorOptions opts_;
  torch::Tensor inv_freq_;
  std::vector<torch::Tensor> k_, v_;
  int64_t max_batch_ = 0, max_seq_ = 0;
};

}  // namespace

void check_step_args(const char* who, int64_t B, int64_t T, const std::vector<int64_t>& slots,
                     const std::vector<int64_t>& start, int64_t max_batch, int64_t max_seq) {
  const std::string w = who;
  if (static_cast<int64_t>(slots.size()) != B || static_cast<int64_t>(start.size()) != B)
    throw Error(w + ": " + std::to_string(B) + " sequences but " + std::to_string(slots.size()) + " slots");
  if (T > 1 && B != 1) throw Error(w + ": prefill (T=" + std::to_string(T) + ") takes one sequence at a time");
  for (int64_t b = 0; b < B; ++b) {
    if (slots[b] < 0 || slots[b] >= max_batch)
      throw Error(w + ": slot " + std::to_string(slots[b]) + " outside the cache's " + std::to_string(max_batch) + " slots");
    if (start[b] + T > max_seq)
      throw Error(w + ": sequence needs " + std::to_string(start[b] + T) + " positions, the KV cache holds " +
                      std::to_string(max_seq),
                  "reserve a longer cache (max tokens + prompt length)");
  }
}

std::unique_ptr<Backend> make_torch_backend(Llama model) { return std::make_unique<TorchBackend>(std::move(model)); }

}  // namespace bonsai
