// LibTorch adapters for runtime/kernels: shape, dtype, device and contiguity checks, dtype dispatch,
// the current CUDA stream, and errors that name the op and the tensor. Inputs whose rows are not
// contiguous are copied to contiguous ones first (results are the same; speed is not). Declared
// everywhere; defined only in CUDA builds (BONSAI_CUDA), elsewhere every op throws.
#pragma once

#include <torch/torch.h>

#include <optional>

namespace bonsai::cuda {

// True when this binary was built with the CUDA kernels and a CUDA device is present.
bool available();
bool built_with_cuda();

// Returns weight * rmsnorm(x + residual); when residual is given, x is updated in place to x + residual.
torch::Tensor add_rmsnorm(torch::Tensor& x, const std::optional<torch::Tensor>& residual, const torch::Tensor& weight,
                          double eps);
// qkv (N, (H+2Hkv)*D); pos, slot (N,) int32; caches (slots, Hkv, max_seq, D). Returns q (N, H, D).
torch::Tensor rope_qkv_to_cache(const torch::Tensor& qkv, const torch::Tensor& pos, const torch::Tensor& slot,
                                const torch::Tensor& inv_freq, torch::Tensor& k_cache, torch::Tensor& v_cache,
                                int64_t H, int64_t Hkv, int64_t D);
torch::Tensor swiglu(const torch::Tensor& gate_up);  // (N, 2I) -> (N, I)
// (N,K), (B<=8,K) -> (B,N). loads: 16-byte loads of W in flight per lane (0 = plain loop, 2, 4, 8);
// overlap: launch as a programmatic dependent of the previous kernel on the stream (Hopper+), so
// W's first loads overlap that kernel (see kernels::GemvOptions).
torch::Tensor gemv(const torch::Tensor& W, const torch::Tensor& x, int loads = 0, bool overlap = false);
// The decode fusions (kernels::GemvFusion), loads 0 or 2:
//  gemv_rmsnorm: rmsnorm(x) @ W^T for a W whose columns already carry the norm's weight (W * g):
//    x (B<=8, K) is the residual stream, read once; no normalized copy is written.
//  gemv_accumulate: y += x @ W^T in place (y (B, N) with contiguous rows, the residual stream; it
//    may not overlap x), rounded as add_rmsnorm rounds x + residual.
torch::Tensor gemv_rmsnorm(const torch::Tensor& W, const torch::Tensor& x, double eps, int loads = 0, bool overlap = false);
void gemv_accumulate(torch::Tensor& y, const torch::Tensor& W, const torch::Tensor& x, int loads = 0, bool overlap = false);
// q (B, H, D); slot, len (B,) int32. num_splits 0 = default_attention_splits(B, Hkv, max_seq).
// counters: undefined (a second kernel merges the splits), or an int32 CUDA tensor of at least
// B*Hkv zeros that the last block of each (sequence, kv head) uses to merge them in the same
// kernel; it is all zeros again after the call (kernels::decode_attention). out: undefined (a new
// tensor), or a contiguous (B, H, D) tensor of q's dtype to write into (returned).
torch::Tensor decode_attention(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                               const torch::Tensor& slot, const torch::Tensor& len, int64_t num_splits = 0,
                               const torch::Tensor& counters = {}, const torch::Tensor& out = {});
// Splits for B sequences over Hkv kv heads: enough blocks to fill the GPU (each split's length is
// taken from the sequence's current length on the device, so this holds for any length).
int64_t default_attention_splits(int64_t B, int64_t Hkv, int64_t max_seq);
// logits (B,V); per-row settings on the device; counter is advanced in place. Returns (B,) int32.
torch::Tensor sample(const torch::Tensor& logits, const torch::Tensor& temperature, const torch::Tensor& top_k,
                     const torch::Tensor& top_p, const torch::Tensor& seed, torch::Tensor& counter);

struct KdChunkOptions {
  int kind = 0;  // 0 fkl, 1 rkl, 2 jsd
  double tau = 1, beta = 0.5, kd_weight = 1, w_kd = 1, grad_scale = 1;
  int64_t ignore_index = -100;
};
// zs (N,V), zt (N,Vt) or undefined; labels (N,) int64. Writes the gradient into `grad` (may be zs)
// and returns per-row (kd, ce) fp32 tensors.
std::pair<torch::Tensor, torch::Tensor> kd_loss_chunk(const torch::Tensor& zs, const torch::Tensor& zt,
                                                      const torch::Tensor& labels, torch::Tensor& grad,
                                                      const KdChunkOptions& o);

}  // namespace bonsai::cuda
