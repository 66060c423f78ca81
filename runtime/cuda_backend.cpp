// The CUDA backend (cuda_backend.h). Decode step for B sequences (one new token each):
//   x = embed[tok]; per layer: h = rmsnorm(x (+= pending residual)); qkv = h Wqkv^T;
//   q = rope(q), cache[k,v] <- rope(k), v; a = attention(q, cache); x += a Wo^T (fused into the next
//   norm); h = rmsnorm(x); x += swiglu(h Wgu^T) Wdown^T; logits = rmsnorm(x) Wout^T; tok = sample(logits)
// With fuse_norm (batch <= 8) the norm weights live in Wqkv and Wgu, and the add_rmsnorm launches go:
//   qkv = rmsnorm(x) Wqkv'^T and gu = rmsnorm(x) Wgu'^T normalize x inside the GEMV; x += a Wo^T and
//   x += swiglu(gu) Wdown^T are the GEMVs' epilogues; only the final norm before Wout stays a kernel.
// Prefill (one sequence, T tokens) is the same with SDPA (flash) for the attention.
#include "runtime/cuda_backend.h"

#include "bonsai_build_config.h"
#include "core/error.h"
#include "runtime/cuda_ops.h"

#ifdef BONSAI_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>

#include <map>
#endif

namespace bonsai {

#ifndef BONSAI_CUDA
std::unique_ptr<CudaBackend> make_cuda_backend(Llama, const CudaBackendOptions&) {
  throw Error("the CUDA backend is not in this build (it was built without nvcc)",
              "rebuild with nvcc on PATH (cmake -DBONSAI_CUDA=ON), or use the CPU backend");
}
#else
namespace {

using torch::Tensor;

class CudaBackendImpl : public CudaBackend {
 public:
  CudaBackendImpl(Llama model, const CudaBackendOptions& opt) : cfg_(model->config()), opt_(opt) {
    if (!cuda::available()) throw Error("the CUDA backend needs a CUDA device, and none is visible", "use the CPU backend");
    if (opt.attention_splits < 0 || opt.attention_splits > 1024)
      throw Error("CUDA backend: attention_splits=" + std::to_string(opt.attention_splits) + " is outside 0..1024",
                  "0 chooses from the batch");
    if (opt.gemv_loads != 0 && opt.gemv_loads != 2 && opt.gemv_loads != 4 && opt.gemv_loads != 8)
      throw Error("CUDA backend: gemv_loads=" + std::to_string(opt.gemv_loads) + " is not one of 0, 2, 4, 8");
    if (opt.fuse_norm && (!opt.gemv || (opt.gemv_loads != 0 && opt.gemv_loads != 2)))
      throw Error("CUDA backend: fuse_norm needs gemv=true and gemv_loads 0 or 2 (got gemv=" +
                      std::string(opt.gemv ? "true" : "false") + ", gemv_loads=" + std::to_string(opt.gemv_loads) + ")",
                  "set fuse_norm=false, or gemv_loads=2");
    dev_ = torch::Device(torch::kCUDA, opt.device);
    c10::cuda::CUDAGuard guard(dev_);
    auto to = [&](const Tensor& t) { return t.detach().to(dev_, opt.dtype).contiguous(); };
    H_ = cfg_.num_attention_heads;
    Hkv_ = cfg_.num_key_value_heads;
    D_ = cfg_.head_dim;
    if (H_ % Hkv_ != 0 || H_ / Hkv_ > 8 || (D_ != 64 && D_ != 128))
      throw Error("the CUDA backend supports head_dim 64 or 128 and up to 8 query heads per kv head; this model has head_dim " +
                      std::to_string(D_) + " and " + std::to_string(H_ / Hkv_),
                  "use the CPU backend");
    embed_ = to(model->embedding_weight());
    final_norm_ = to(model->final_norm_weight());
    lm_head_ = cfg_.tie_word_embeddings ? embed_ : to(model->output_weight());
    for (const auto& l : model->layers()) {
      Layer x;
      x.attn_norm = to(l.attn_norm->weight);
      x.wqkv = torch::cat({to(l.q->weight), to(l.k->weight), to(l.v->weight)}, 0).contiguous();
      x.wo = to(l.o->weight);
      x.ffn_norm = to(l.ffn_norm->weight);
      x.wgu = torch::cat({to(l.gate->weight), to(l.up->weight)}, 0).contiguous();
      x.wdown = to(l.down->weight);
      if (opt.fuse_norm) {
        // rmsnorm(h) * g @ W^T == rmsnorm(h) @ (W * g)^T: g moves into W's columns (fp32, rounded once);
        // the unit norm weights left behind keep prefill (add_rmsnorm + matmul) consistent with it.
        auto fold = [&](Tensor& W, Tensor& g) {
          W = (W.to(torch::kFloat) * g.to(torch::kFloat).unsqueeze(0)).to(opt.dtype).contiguous();
          g = torch::ones_like(g);
        };
        fold(x.wqkv, x.attn_norm);
        fold(x.wgu, x.ffn_norm);
      }
      layers_.push_back(std::move(x));
    }
    inv_freq_ = model->inv_freq().to(dev_, torch::kFloat).contiguous();
  }

  void reserve(int64_t max_batch, int64_t max_seq) override {
    if (max_batch <= max_batch_ && max_seq <= max_seq_) return;
    c10::cuda::CUDAGuard guard(dev_);
    graphs_.clear();
    max_batch_ = std::max(max_batch, max_batch_);
    max_seq_ = std::max(max_seq, max_seq_);
    k_.clear();
    v_.clear();
    auto o = embed_.options();
    // one extra slot: graph warm-up writes there, never into a live sequence's cache
    for (size_t l = 0; l < layers_.size(); ++l) {
      k_.push_back(torch::zeros({max_batch_ + 1, Hkv_, max_seq_, D_}, o));
      v_.push_back(torch::zeros({max_batch_ + 1, Hkv_, max_seq_, D_}, o));
    }
    splits_ = opt_.attention_splits;  // 0: chosen per call from the batch (cuda::default_attention_splits)
    // the folded merge's counters: zero between calls, shared by the layers (they run in stream order)
    if (opt_.fold_combine)
      counters_ = torch::zeros({(max_batch_ + 1) * Hkv_}, torch::TensorOptions().dtype(torch::kInt).device(dev_));
  }

  Tensor step(const Tensor& tokens, const std::vector<int64_t>& slots, const std::vector<int64_t>& start) override {
    torch::NoGradGuard ng;
    c10::cuda::CUDAGuard guard(dev_);
    const int64_t B = tokens.size(0), T = tokens.size(1);
    check_step(B, T, slots, start);
    if (T > 1) {
      Tensor tok = tokens.reshape({-1}).to(torch::kInt).to(dev_);
      return prefill(tok, slots[0], start[0]).to(torch::kFloat).cpu();
    }
    std::vector<int32_t> tok(B), pos(B), slot(B);
    const Tensor ids = tokens.reshape({-1}).to(torch::kCPU, torch::kLong).contiguous();
    for (int64_t b = 0; b < B; ++b) {
      tok[b] = static_cast<int32_t>(ids.data_ptr<int64_t>()[b]);
      pos[b] = static_cast<int32_t>(start[b]);
      slot[b] = static_cast<int32_t>(slots[b]);
    }
    if (opt_.graphs) {
      Graph& g = graph_for(B);
      g.tok.copy_(host_int(tok));
      g.pos.copy_(host_int(pos));
      g.slot.copy_(host_int(slot));
      g.graph.replay();
      return g.logits.to(torch::kFloat).cpu();
    }
    Tensor t = host_int(tok).to(dev_), p = host_int(pos).to(dev_), s = host_int(slot).to(dev_);
    return decode_forward(t, p, s).to(torch::kFloat).cpu();
  }

  Tensor decode_loop(const std::vector<int32_t>& first, const std::vector<int64_t>& slots,
                     const std::vector<int64_t>& start, int64_t steps, const std::vector<DeviceSampling>& sampling) override {
    torch::NoGradGuard ng;
    c10::cuda::CUDAGuard guard(dev_);
    const int64_t B = static_cast<int64_t>(first.size());
    if (static_cast<int64_t>(sampling.size()) != B) throw Error("decode_loop: one sampling setting per sequence");
    check_step(B, 1, slots, start);
    for (int64_t b = 0; b < B; ++b)
      if (start[b] + steps > max_seq_)
        throw Error("decode_loop: " + std::to_string(steps) + " steps from position " + std::to_string(start[b]) +
                        " pass the KV cache's " + std::to_string(max_seq_) + " positions",
                    "reserve a longer cache");
    std::vector<int32_t> pos(B), slot(B), topk(B);
    std::vector<float> temp(B), topp(B);
    std::vector<int64_t> seed(B), zero(B, 0);
    for (int64_t b = 0; b < B; ++b) {
      pos[b] = static_cast<int32_t>(start[b]);
      slot[b] = static_cast<int32_t>(slots[b]);
      temp[b] = sampling[b].temperature;
      topk[b] = sampling[b].top_k;
      topp[b] = sampling[b].top_p;
      seed[b] = static_cast<int64_t>(sampling[b].seed);
    }
    Graph local;
    Graph& g = opt_.graphs ? graph_for(B) : (make_buffers(local, B), local);
    g.tok.copy_(host_int(first));
    g.pos.copy_(host_int(pos));
    g.slot.copy_(host_int(slot));
    g.temp.copy_(torch::tensor(temp));
    g.topk.copy_(host_int(topk));
    g.topp.copy_(torch::tensor(topp));
    g.seed.copy_(torch::tensor(seed));
    g.counter.copy_(torch::tensor(zero));
    Tensor hist = torch::empty({B, steps}, g.tok.options());
    for (int64_t i = 0; i < steps; ++i) {
      if (opt_.graphs) g.graph.replay();
      else run_graph_body(g);
      hist.select(1, i).copy_(g.tok);
    }
    return hist.cpu();
  }

  int64_t weight_bytes_per_step() const override {
    int64_t n = final_norm_.numel() + lm_head_.numel();
    for (const auto& l : layers_) n += l.attn_norm.numel() + l.wqkv.numel() + l.wo.numel() + l.ffn_norm.numel() + l.wgu.numel() + l.wdown.numel();
    return n * static_cast<int64_t>(embed_.element_size());
  }

  const LlamaConfig& config() const override { return cfg_; }
  int64_t max_seq() const override { return max_seq_; }
  int64_t max_batch() const override { return max_batch_; }

 private:
  struct Layer {
    Tensor attn_norm, wqkv, wo, ffn_norm, wgu, wdown;
  };
  struct Graph {
    at::cuda::CUDAGraph graph;
    Tensor tok, pos, slot, temp, topk, topp, seed, counter, logits;
  };

  static Tensor host_int(const std::vector<int32_t>& v) { return torch::tensor(std::vector<int32_t>(v), torch::kInt); }

  void check_step(int64_t B, int64_t T, const std::vector<int64_t>& slots, const std::vector<int64_t>& start) const {
    check_step_args("cuda runtime step", B, T, slots, start, max_batch_, max_seq_);
  }


  Tensor linear(const Tensor& x, const Tensor& W) const {
    if (opt_.gemv && x.size(0) <= 8) return cuda::gemv(W, x, opt_.gemv_loads, opt_.overlap);
    return at::mm(x, W.t());
  }

  // One token for each of B sequences: tok, pos, slot (B,) int32 on the device. Returns (B,V) logits.
  Tensor decode_forward(const Tensor& tok, const Tensor& pos, const Tensor& slot) {
    const int64_t B = tok.size(0);
    Tensor x = embed_.index_select(0, tok);
    Tensor len = pos + 1;
    if (opt_.fuse_norm && B <= 8) {  // x, the residual stream, is normalized and updated by the GEMVs
      const double eps = cfg_.rms_norm_eps;
      const int ld = opt_.gemv_loads;
      const bool ov = opt_.overlap;
      for (size_t i = 0; i < layers_.size(); ++i) {
        const Layer& l = layers_[i];
        Tensor q = cuda::rope_qkv_to_cache(cuda::gemv_rmsnorm(l.wqkv, x, eps, ld, ov), pos, slot, inv_freq_, k_[i], v_[i],
                                           H_, Hkv_, D_);
        Tensor a = cuda::decode_attention(q, k_[i], v_[i], slot, len, splits_, counters_);
        cuda::gemv_accumulate(x, l.wo, a.view({B, H_ * D_}), ld, ov);
        cuda::gemv_accumulate(x, l.wdown, cuda::swiglu(cuda::gemv_rmsnorm(l.wgu, x, eps, ld, ov)), ld, ov);
      }
      return linear(cuda::add_rmsnorm(x, std::nullopt, final_norm_, eps), lm_head_);
    }
    Tensor resid;
    for (size_t i = 0; i < layers_.size(); ++i) {
      const Layer& l = layers_[i];
      Tensor h = resid.defined() ? cuda::add_rmsnorm(x, resid, l.attn_norm, cfg_.rms_norm_eps)
                                 : cuda::add_rmsnorm(x, std::nullopt, l.attn_norm, cfg_.rms_norm_eps);
      Tensor q = cuda::rope_qkv_to_cache(linear(h, l.wqkv), pos, slot, inv_freq_, k_[i], v_[i], H_, Hkv_, D_);
      Tensor a = cuda::decode_attention(q, k_[i], v_[i], slot, len, splits_, counters_);
      h = cuda::add_rmsnorm(x, linear(a.view({B, H_ * D_}), l.wo), l.ffn_norm, cfg_.rms_norm_eps);
      resid = linear(cuda::swiglu(linear(h, l.wgu)), l.wdown);
    }
    Tensor h = cuda::add_rmsnorm(x, resid, final_norm_, cfg_.rms_norm_eps);
    return linear(h, lm_head_);
  }

  // One sequence's T new tokens at positions [start, start+T) of cache slot `s`. Returns (1,V).
  Tensor prefill(const Tensor& tok, int64_t s, int64_t start) {
    const int64_t T = tok.size(0), L = start + T;
    Tensor x = embed_.index_select(0, tok);
    auto iopt = torch::TensorOptions().dtype(torch::kInt).device(dev_);
    Tensor pos = torch::arange(start, L, iopt);
    Tensor slot = torch::full({T}, s, iopt);
    Tensor mask;
    if (start > 0) {
      auto lopt = torch::TensorOptions().dtype(torch::kLong).device(dev_);
      mask = (torch::arange(L, lopt).view({1, L}) <= torch::arange(start, L, lopt).view({T, 1})).view({1, 1, T, L});
    }
    Tensor resid;
    for (size_t i = 0; i < layers_.size(); ++i) {
      const Layer& l = layers_[i];
      Tensor h = resid.defined() ? cuda::add_rmsnorm(x, resid, l.attn_norm, cfg_.rms_norm_eps)
                                 : cuda::add_rmsnorm(x, std::nullopt, l.attn_norm, cfg_.rms_norm_eps);
      Tensor q = cuda::rope_qkv_to_cache(at::mm(h, l.wqkv.t()), pos, slot, inv_freq_, k_[i], v_[i], H_, Hkv_, D_);
      Tensor q4 = q.view({1, T, H_, D_}).transpose(1, 2);
      Tensor k4 = k_[i].select(0, s).narrow(1, 0, L).unsqueeze(0), v4 = v_[i].select(0, s).narrow(1, 0, L).unsqueeze(0);
      Tensor a = at::scaled_dot_product_attention(q4, k4, v4, mask.defined() ? std::optional<Tensor>(mask) : std::nullopt,
                                                  0.0, !mask.defined(), std::nullopt, H_ != Hkv_);
      a = a.transpose(1, 2).reshape({T, H_ * D_});
      h = cuda::add_rmsnorm(x, at::mm(a, l.wo.t()), l.ffn_norm, cfg_.rms_norm_eps);
      resid = at::mm(cuda::swiglu(at::mm(h, l.wgu.t())), l.wdown.t());
    }
    Tensor h = cuda::add_rmsnorm(x, resid, final_norm_, cfg_.rms_norm_eps);
    return linear(h.narrow(0, T - 1, 1).contiguous(), lm_head_);
  }

  void make_buffers(Graph& g, int64_t B) {
    auto i32 = torch::TensorOptions().dtype(torch::kInt).device(dev_);
    auto f32 = torch::TensorOptions().dtype(torch::kFloat).device(dev_);
    auto i64 = torch::TensorOptions().dtype(torch::kLong).device(dev_);
    g.tok = torch::zeros({B}, i32);
    g.pos = torch::zeros({B}, i32);
    g.slot = torch::full({B}, max_batch_, i32);  // the scratch slot
    g.temp = torch::zeros({B}, f32);
    g.topk = torch::zeros({B}, i32);
    g.topp = torch::ones({B}, f32);
    g.seed = torch::zeros({B}, i64);
    g.counter = torch::zeros({B}, i64);
  }

  // The captured body: forward, sample into tok, advance pos.
  void run_graph_body(Graph& g) {
    g.logits = decode_forward(g.tok, g.pos, g.slot);
    g.tok.copy_(cuda::sample(g.logits, g.temp, g.topk, g.topp, g.seed, g.counter));
    g.pos.add_(1);
  }

  Graph& graph_for(int64_t B) {
    auto it = graphs_.find(B);
    if (it != graphs_.end()) return *it->second;
    auto g = std::make_unique<Graph>();
    make_buffers(*g, B);
    // Warm up (cuBLAS handles, workspaces) and capture on a side stream, writing to the scratch slot.
    auto side = at::cuda::getStreamFromPool(false, dev_.index());
    auto main = at::cuda::getCurrentCUDAStream(dev_.index());
    {
      at::cuda::CUDAEvent ready;
      ready.record(main);
      ready.block(side);
    }
    {
      c10::cuda::CUDAStreamGuard sg(side);
      run_graph_body(*g);
      g->pos.zero_();
      side.synchronize();
      g->graph.capture_begin();
      run_graph_body(*g);
      g->graph.capture_end();
    }
    {
      at::cuda::CUDAEvent done;
      done.record(side);
      done.block(main);
    }
    auto& ref = *g;
    graphs_[B] = std::move(g);
    return ref;
  }

  LlamaConfig cfg_;
  CudaBackendOptions opt_;
  torch::Device dev_{torch::kCUDA, 0};
  int64_t H_ = 0, Hkv_ = 0, D_ = 0, splits_ = 1;
  Tensor embed_, final_norm_, lm_head_, inv_freq_;
  std::vector<Layer> layers_;
  std::vector<Tensor> k_, v_;
  Tensor counters_;  // defined with fold_combine
  int64_t max_batch_ = 0, max_seq_ = 0;
  std::map<int64_t, std::unique_ptr<Graph>> graphs_;
};

}  // namespace

std::unique_ptr<CudaBackend> make_cuda_backend(Llama model, const CudaBackendOptions& opt) {
  return std::make_unique<CudaBackendImpl>(std::move(model), opt);
}
#endif

}  // namespace bonsai
