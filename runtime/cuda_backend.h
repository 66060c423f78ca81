// The CUDA backend of the runtime: the same Backend interface as the LibTorch one (engine.h callers
// do not change), built from runtime/kernels: fused residual-add + RMSNorm, one fused QKV projection
// whose RoPE and KV-cache write are one kernel, split-K decode attention, SwiGLU, small-batch GEMV
// (cuBLAS above batch 8), and on-device sampling. A decode step for a batch size is captured once as
// a CUDA graph and replayed; decode_loop() runs many steps with no host synchronisation at all.
#pragma once

#include <memory>
#include <vector>

#include "runtime/backend.h"

namespace bonsai {

struct CudaBackendOptions {
  torch::ScalarType dtype = torch::kBFloat16;  // weights, activations and KV cache
  bool graphs = true;        // capture decode steps as CUDA graphs
  bool gemv = true;          // our GEMV kernel at batch <= 8 (else cuBLAS through at::mm)
  int gemv_loads = 2;        // its variant (cuda::gemv's loads: 0, 2, 4, 8; 2 was fastest on an H200)
  bool overlap = true;       // GEMVs launched as programmatic dependents (Hopper+): weight reads overlap the kernel before
  // Decode at batch <= 8 without the per-layer add_rmsnorm launches: the norm weights are folded into
  // the q/k/v and gate/up weights (rounded once), those GEMVs normalize x themselves, and the o and
  // down GEMVs add into the residual stream (cuda::gemv_rmsnorm / gemv_accumulate). Needs gemv with
  // gemv_loads 0 or 2. Off by default until an H100/H200 run has measured it (scripts/gpu/check.sh).
  bool fuse_norm = false;
  // Decode attention merges its splits in the last block of each (sequence, kv head) instead of a
  // second kernel (kernels::decode_attention's counters): one launch fewer per layer, same bits.
  // Off by default until a GPU run has measured it.
  bool fold_combine = false;
  int64_t attention_splits = 0;  // 0 = per call, from the batch and kv heads (fill the GPU)
  int device = 0;
};

// Per-sequence device sampling for decode_loop (temperature <= 0: greedy).
struct DeviceSampling {
  float temperature = 0.f;
  int32_t top_k = 0;
  float top_p = 1.f;
  uint64_t seed = 0;
};

class CudaBackend : public Backend {
 public:
  ~CudaBackend() override = default;
  // Runs `steps` decode steps for the sequences in `slots` (their caches hold positions [0, start[b])),
  // feeding each sampled token to the next step on the device. first (B,) ids are the tokens at
  // positions start[b]. Returns the (B, steps) sampled ids (on the CPU); waits for the device once.
  virtual torch::Tensor decode_loop(const std::vector<int32_t>& first, const std::vector<int64_t>& slots,
                                    const std::vector<int64_t>& start, int64_t steps,
                                    const std::vector<DeviceSampling>& sampling) = 0;
  // Bytes of weights a decode step reads (every matrix once, plus the norms).
  virtual int64_t weight_bytes_per_step() const = 0;
};

// Moves (copies) the model's weights to the GPU in opt.dtype, fusing q/k/v and gate/up.
std::unique_ptr<CudaBackend> make_cuda_backend(Llama model, const CudaBackendOptions& opt = {});

}  // namespace bonsai
