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

// x (..., K) @ W_j (N_j, K)^T for each j, concatenated: (M, sum N_j) fp32, on the CPU at
// M = batch*time <= 8 (decode) through our AVX2 GEMV (runtime/cpu/gemv.h): one pass over the weights at
// memory speed, where LibTorch's bf16 path reached ~10 GB/s; several projections of the same x (q/k/v,
// gate/up) share one conversion of x and one parallel loop over all their rows. Undefined where the
// kernel does not apply (prefill, batches, GPUs, CPUs without AVX2/FMA/F16C, autograd) or `enabled`
// is false.
torch::Tensor gemv_f32(const torch::Tensor& x, const std::vector<torch::Tensor>& Ws, bool enabled) {
  const int64_t K = Ws[0].size(1);
  const int64_t M = x.numel() / std::max<int64_t>(K, 1);
  const auto wt = Ws[0].scalar_type();
  bool ok = enabled && cpu::gemv_supported() && x.device().is_cpu() && M >= 1 && M <= 8 &&
            (wt == torch::kFloat || wt == torch::kBFloat16 || wt == torch::kHalf) &&
            !(torch::GradMode::is_enabled() && x.requires_grad());
  for (const auto& W : Ws)
    ok = ok && W.size(1) == K && W.scalar_type() == wt && W.is_contiguous() &&
         !(torch::GradMode::is_enabled() && W.requires_grad());
  if (!ok) return {};
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
  return y;
}

// The same products as tensors of x's dtype and shape (..., N_j); F::linear where gemv_f32 does not apply.
std::vector<torch::Tensor> decode_linear_multi(const torch::Tensor& x, const std::vector<torch::Tensor>& Ws,
                                               bool kernels) {
  std::vector<torch::Tensor> out;
  torch::Tensor y = gemv_f32(x, Ws, kernels);
  if (!y.defined()) {
    for (const auto& W : Ws) out.push_back(F::linear(x, W));
    return out;
  }
  torch::Tensor yc = y.to(x.scalar_type());
  int64_t off = 0;
  for (const auto& W : Ws) {
    auto shape = x.sizes().vec();
    shape.back() = W.size(0);
    out.push_back(yc.narrow(1, off, W.size(0)).reshape(shape));
    off += W.size(0);
  }
  return out;
}

torch::Tensor decode_linear(const torch::Tensor& x, const torch::Tensor& W, bool kernels) {
  return decode_linear_multi(x, {W}, kernels)[0];
}

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

torch::Tensor decode_rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps, bool kernels) {
  const auto t = x.scalar_type();
  if (!kernels || !x.device().is_cpu() || !x.is_contiguous() || !w.is_contiguous() || w.scalar_type() != t ||
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
  TorchBackend(Llama model, bool cpu_kernels) : model_(std::move(model)), cfg_(model_->config()) {
    const char* e = std::getenv("BONSAI_CPU_GEMV");  // 0: LibTorch ops only (for comparisons)
    kernels_ = cpu_kernels && !(e && std::string(e) == "0");
    opts_ = model_->embedding_weight().options().requires_grad(false);
    fused_decode_ = kernels_ && opts_.device().is_cpu() && (opts_.dtype() == torch::kFloat || opts_.dtype() == torch::kBFloat16);
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
    auto cos = freqs.cos().unsqueeze(1).to(opts_.dtype()).contiguous();  // (B,1,T,D/2)
    auto sin = freqs.sin().unsqueeze(1).to(opts_.dtype()).contiguous();
    const int64_t L = *std::max_element(start.begin(), start.end()) + T;
    Attend at{slot_t, pos, start, slots, L, T, {}};
    torch::Tensor x = F::embedding(tokens.to(dev), model_->embedding_weight());  // (B,T,C)
    const auto& layers = model_->layers();
    for (size_t i = 0; i < layers.size(); ++i) x = layer(layers[i], i, x, cos, sin, at);
    x = x.select(1, T - 1);  // (B,C): only the last position's logits are needed
    x = decode_rms_norm(x.contiguous(), model_->final_norm_weight(), cfg_.rms_norm_eps, kernels_);
    return decode_linear(x, model_->output_weight(), kernels_).to(torch::kFloat);  // (B,V)
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
    mutable torch::Tensor mask;  // (B,1,T,L), built by the first layer that needs it, once per step
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
    if (!at.mask.defined()) {  // query t of sequence b (at position pos[b,t]) sees cache positions j <= pos[b,t]
      auto j = torch::arange(at.L, at.pos.options());
      at.mask = (j.view({1, 1, at.L}) <= at.pos.unsqueeze(-1)).unsqueeze(1);
    }
    return at::scaled_dot_product_attention(q, k, v, at.mask, 0.0, false, std::nullopt, gqa);
  }

  // One decode step's attention on the CPU (T == 1), from the fp32 q/k/v rows of one GEMV, y (B, (H +
  // 2 Hkv) D): RoPE on q and k, k and v written into the cache at each sequence's position, then each
  // query head against its KV head's positions [0, pos] (runtime/cpu/gemv.h attend_row), in parallel
  // over (sequence, head). Replaces the ~20 LibTorch ops per layer of the general path (RoPE, cache
  // index_put, masked SDPA, transposes), which at batch 1 cost more than the arithmetic. Values are
  // rounded to the model's dtype where that path rounds them (q, k, v, RoPE's products and sums, the
  // output); the attention itself accumulates in fp32, as SDPA's CPU kernels do. Returns (B, 1, H D).
  template <typename T>
  torch::Tensor attend_decode(torch::Tensor& y, size_t i, const torch::Tensor& cos, const torch::Tensor& sin,
                              const Attend& at) {
    const int64_t B = y.size(0), N = y.size(1), D = cfg_.head_dim, half = D / 2, S = max_seq_;
    const int64_t H = cfg_.num_attention_heads, Hkv = cfg_.num_key_value_heads, group = H / Hkv;
    auto rnd = [](float f) { return static_cast<float>(static_cast<T>(f)); };
    float* yp = y.data_ptr<float>();
    T* kc = k_[i].data_ptr<T>();
    T* vc = v_[i].data_ptr<T>();
    const T* cp = cos.data_ptr<T>();  // (B, D/2)
    const T* sp = sin.data_ptr<T>();
    for (int64_t b = 0; b < B; ++b) {
      float* r = yp + b * N;
      for (int64_t n = 0; n < N; ++n) r[n] = rnd(r[n]);
      for (int64_t hd = 0; hd < H + Hkv; ++hd) {  // the q heads, then the k heads
        float* v = r + hd * D;
        for (int64_t d = 0; d < half; ++d) {
          const float x1 = v[d], x2 = v[d + half], c = static_cast<float>(cp[b * half + d]), s = static_cast<float>(sp[b * half + d]);
          v[d] = rnd(rnd(x1 * c) - rnd(x2 * s));
          v[d + half] = rnd(rnd(x2 * c) + rnd(x1 * s));
        }
      }
      for (int64_t g = 0; g < Hkv; ++g) {
        const int64_t row = ((at.slots[b] * Hkv + g) * S + at.start[b]) * D;
        for (int64_t d = 0; d < D; ++d) {
          kc[row + d] = static_cast<T>(r[(H + g) * D + d]);
          vc[row + d] = static_cast<T>(r[(H + Hkv + g) * D + d]);
        }
      }
    }
    torch::Tensor out = torch::empty({B, 1, H * D}, opts_);
    T* op = out.data_ptr<T>();
    const auto wt = std::is_same_v<T, float> ? cpu::WType::F32 : cpu::WType::BF16;
    const float scale = 1.f / std::sqrt(static_cast<float>(D));
    at::parallel_for(0, B * H, 1, [&](int64_t lo, int64_t hi) {
      std::vector<float> buf(at.L + D);
      for (int64_t bh = lo; bh < hi; ++bh) {
        const int64_t b = bh / H, h = bh % H, kv = ((at.slots[b] * Hkv + h / group) * S) * D;
        cpu::attend_row(wt, yp + b * N + h * D, kc + kv, vc + kv, at.start[b] + 1, D, scale, buf.data(), buf.data() + at.L);
        for (int64_t d = 0; d < D; ++d) op[bh * D + d] = static_cast<T>(buf[at.L + d]);
      }
    });
    return out;
  }

  // silu(gate) * up from the fp32 (B, 2 I) rows of one GEMV, rounded as F::silu(g) * u rounds in the
  // model's dtype. Returns (B, 1, I).
  template <typename T>
  torch::Tensor swiglu_decode(const torch::Tensor& gu) {
    const int64_t B = gu.size(0), I = gu.size(1) / 2;
    auto rnd = [](float f) { return static_cast<float>(static_cast<T>(f)); };
    torch::Tensor out = torch::empty({B, 1, I}, opts_);
    const float* g = gu.data_ptr<float>();
    T* op = out.data_ptr<T>();
    at::parallel_for(0, B * I, 2048, [&](int64_t lo, int64_t hi) {
      for (int64_t n = lo; n < hi; ++n) {
        const int64_t b = n / I, j = n % I;
        const float a = rnd(g[b * 2 * I + j]), u = rnd(g[b * 2 * I + I + j]);
        op[n] = static_cast<T>(rnd(a / (1.f + std::exp(-a))) * u);
      }
    });
    return out;
  }

  torch::Tensor layer(const LlamaLayer& l, size_t i, torch::Tensor x, const torch::Tensor& cos,
                      const torch::Tensor& sin, const Attend& at) {
    const int64_t B = x.size(0), T = x.size(1), D = cfg_.head_dim;
    const int64_t H = cfg_.num_attention_heads, Hkv = cfg_.num_key_value_heads;
    const bool bf16 = opts_.dtype() == torch::kBFloat16;
    const bool fused = fused_decode_ && T == 1;
    torch::Tensor h = decode_rms_norm(x, l.attn_norm->weight, cfg_.rms_norm_eps, kernels_);
    torch::Tensor a;  // (B,T,H*D)
    if (fused) {
      torch::Tensor y = gemv_f32(h, {l.q->weight, l.k->weight, l.v->weight}, kernels_);
      if (y.defined()) a = bf16 ? attend_decode<at::BFloat16>(y, i, cos, sin, at) : attend_decode<float>(y, i, cos, sin, at);
    }
    if (!a.defined()) {
      auto qkv = decode_linear_multi(h, {l.q->weight, l.k->weight, l.v->weight}, kernels_);
      torch::Tensor q = qkv[0].reshape({B, T, H, D}).transpose(1, 2);
      torch::Tensor k = qkv[1].reshape({B, T, Hkv, D}).transpose(1, 2);
      torch::Tensor v = qkv[2].reshape({B, T, Hkv, D}).transpose(1, 2);
      q = apply_rope(q, cos, sin);
      k = apply_rope(k, cos, sin);
      write_cache(k_[i], k, at);
      write_cache(v_[i], v, at);
      a = attention(q, gather(k_[i], at), gather(v_[i], at), at);
      a = a.transpose(1, 2).reshape({B, T, H * D});
    }
    x = x + decode_linear(a, l.o->weight, kernels_);
    h = decode_rms_norm(x, l.ffn_norm->weight, cfg_.rms_norm_eps, kernels_);
    torch::Tensor act;  // silu(gate) * up, (B,T,I)
    if (fused) {
      torch::Tensor gu = gemv_f32(h, {l.gate->weight, l.up->weight}, kernels_);
      if (gu.defined()) act = bf16 ? swiglu_decode<at::BFloat16>(gu) : swiglu_decode<float>(gu);
    }
    if (!act.defined()) {
      auto gu = decode_linear_multi(h, {l.gate->weight, l.up->weight}, kernels_);
      act = swiglu(gu[0], gu[1]);
    }
    return x + decode_linear(act, l.down->weight, kernels_);
  }

  Llama model_;
  LlamaConfig cfg_;
  bool kernels_ = true;  // the CPU decode kernels (GEMV, fused attention and SwiGLU) where they apply
  bool fused_decode_ = false;  // and the model is on the CPU in fp32 or bf16: decode steps take attend_decode / swiglu_decode
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
    if (start[b] < 0) throw Error(w + ": sequence " + std::to_string(b) + " starts at position " + std::to_string(start[b]));
    for (int64_t c = 0; c < b; ++c)
      if (slots[c] == slots[b])
        throw Error(w + ": sequences " + std::to_string(c) + " and " + std::to_string(b) + " share cache slot " +
                    std::to_string(slots[b]), "give each sequence of a batch its own slot");
    if (start[b] + T > max_seq)
      throw Error(w + ": sequence needs " + std::to_string(start[b] + T) + " positions, the KV cache holds " +
                      std::to_string(max_seq),
                  "reserve a longer cache (max tokens + prompt length)");
  }
}

std::unique_ptr<Backend> make_torch_backend(Llama model, bool cpu_kernels) {
  return std::make_unique<TorchBackend>(std::move(model), cpu_kernels);
}

}  // namespace bonsai
