// The runtime's backend boundary: a backend owns the weights and a preallocated KV cache and runs
// one step (a prefill chunk or a batched decode) returning the last position's logits. The engine
// (engine.h) does scheduling, sampling and stopping, and never touches tensors' layout; the CPU
// backend uses LibTorch ops, a CUDA backend plugs in behind the same interface.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <vector>

#include "model/config.h"
#include "model/llama.h"

namespace bonsai {

class Backend {
 public:
  virtual ~Backend() = default;
  // Preallocates the KV cache: `max_batch` sequence slots of `max_seq` positions each.
  virtual void reserve(int64_t max_batch, int64_t max_seq) = 0;
  // tokens is (B,T) int64 for the sequences in cache slots `slots` (B); sequence b's first new token
  // is at position start[b] (its cache holds positions [0, start[b])). T > 1 (prefill) requires
  // B == 1. Appends the new K/V to the cache and returns the logits of each sequence's last new
  // token, (B,V) fp32.
  virtual torch::Tensor step(const torch::Tensor& tokens, const std::vector<int64_t>& slots,
                             const std::vector<int64_t>& start) = 0;
  virtual const LlamaConfig& config() const = 0;
  virtual int64_t max_seq() const = 0;
  virtual int64_t max_batch() const = 0;
};

// The argument checks every backend's step() makes (throws bonsai::Error naming `who`).
void check_step_args(const char* who, int64_t B, int64_t T, const std::vector<int64_t>& slots,
                     const std::vector<int64_t>& start, int64_t max_batch, int64_t max_seq);

// LibTorch ops on the CPU (or whatever device the model's weights are on), in the model's dtype. On
// CPUs with AVX2/FMA/F16C, decode steps (batch <= 8) run our own kernels for the projections, the
// attention and SwiGLU (runtime/cpu/gemv.h); cpu_kernels false, or BONSAI_CPU_GEMV=0 in the
// environment, keeps them off (LibTorch ops only, for comparisons).
std::unique_ptr<Backend> make_torch_backend(Llama model, bool cpu_kernels = true);

}  // namespace bonsai
