// bonsai's CUDA kernels: raw device pointers, sizes and a stream; no Torch headers. Every entry point
// checks its arguments, launches, and returns the launch's cudaError_t (cudaErrorInvalidValue for bad
// arguments) so callers (runtime/cuda_ops.cpp, the LibTorch adapters) can name what went wrong.
//
// Layouts are row-major with explicit row strides in elements. Arithmetic is fp32 inside every kernel;
// where a kernel replaces a chain of PyTorch ops it rounds intermediates to the storage dtype at the
// same points PyTorch does (so bf16 results match the eager model bit for bit in most elements).
//
// Shapes: B sequences, C hidden, H query heads, Hkv kv heads, D head dim, I MLP width, V vocab.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace bonsai::kernels {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };
const char* dtype_name(DType t);

// x (rows, C) is the residual stream: when `residual` is non-null, x += residual first (rounded to
// the dtype, written back to x). Then out = weight * rmsnorm(x) as transformers computes it
// (normalize in fp32, round, multiply by the weight). out may not alias x.
cudaError_t add_rmsnorm(DType t, void* x, int64_t x_stride, const void* residual, int64_t res_stride,
                        const void* weight, void* out, int64_t out_stride, int64_t rows, int64_t cols, float eps,
                        cudaStream_t stream);

// qkv (ntok, (H + 2*Hkv) * D): the fused q/k/v projection of ntok tokens. Rotates q and k by RoPE
// (transformers' rotate_half layout; `inv_freq` (D/2) fp32 carries any llama3 scaling) at position
// pos[i], writes q to q_out (ntok, H, D) and k, v into the caches (slots, Hkv, max_seq, D) at
// [slot[i], :, pos[i], :].
cudaError_t rope_qkv_to_cache(DType t, const void* qkv, int64_t qkv_stride, const int32_t* pos, const int32_t* slot,
                              const float* inv_freq, void* q_out, void* k_cache, void* v_cache, int64_t ntok,
                              int64_t H, int64_t Hkv, int64_t D, int64_t max_seq, cudaStream_t stream);

// gate_up (rows, 2*I) = [gate | up]; out (rows, I) = silu(gate) * up (rounded like F.silu(g) * u).
cudaError_t swiglu(DType t, const void* gate_up, int64_t in_stride, void* out, int64_t out_stride, int64_t rows,
                   int64_t I, cudaStream_t stream);

// y (B, N) = x (B, K) @ W (N, K)^T for small B (1..8): one pass over W with 16-byte loads, fp32
// accumulation. K must be a multiple of 16 bytes of elements.
struct GemvOptions {
  // 16-byte loads of W each lane issues before using any: 2, 4 or 8; 0 is a plain loop the
  // compiler unrolls (4).
  int loads = 0;
  // Launch as a programmatic dependent of the previous kernel on the stream (compute capability
  // 9.0+, else ignored): the first loads of W are issued before waiting for that kernel, which
  // writes x, so the weight reads and the launch overlap its tail. The previous kernel should call
  // pdl_trigger() early (add_rmsnorm, swiglu and the attention combine do).
  bool overlap = false;
};
// What the GEMV folds in around the product (decode: two kernels fewer per projection pair).
struct GemvFusion {
  // x is the residual stream and the product reads rmsnorm(x) without its weight: each block sums
  // the squares of x's rows (fp32) while it reads them for the products, and scales each output by
  // its row's 1/rms. The norm weight must be folded into W's columns beforehand (W * g): the result
  // equals weight * rmsnorm(x) @ W^T up to rounding (bf16/fp16 round W * g once, where the unfused
  // path rounds x * r and then its product with the weight).
  bool rms_norm = false;
  float eps = 1e-5f;
  // y += x @ W^T instead of y = x @ W^T: the product rounded to the dtype, then the sum rounded,
  // as add_rmsnorm's residual add (y is then the residual stream; it may not alias x).
  bool accumulate = false;
};
cudaError_t gemv(DType t, const void* W, const void* x, int64_t x_stride, void* y, int64_t y_stride, int64_t B,
                 int64_t N, int64_t K, cudaStream_t stream, const GemvOptions& opt = {}, const GemvFusion& fuse = {});

// Decode attention: one new query per sequence over its cached positions [0, len[b]) (GQA,
// split-K "flash-decoding"). q (B, H, D); caches (slots, Hkv, max_seq, D); out (B, H, D).
// `workspace` must hold attention_workspace_bytes(B, H, D, num_splits) bytes. A sequence's len
// positions are split into at most `num_splits` (1..1024) chunks, sized on the device from len;
// splits past the last chunk exit at once, so the launch shape is fixed for any lengths
// (CUDA-graph friendly). D in {64, 128}; H / Hkv <= 8.
// `counters`: null (a second kernel merges the splits), or B*Hkv zeroed uint32 in device memory:
// the last split block of each (sequence, kv head) to finish merges them (same result, bit for
// bit) and its counter wraps back to zero, so the same counters serve every call on the stream. A
// counter left non-zero (a kernel killed mid-call) would merge early: re-zero them after an error.
int64_t attention_workspace_bytes(int64_t B, int64_t H, int64_t D, int64_t num_splits);
cudaError_t decode_attention(DType t, const void* q, const void* k_cache, const void* v_cache, const int32_t* slot,
                             const int32_t* len, void* out, void* workspace, int64_t B, int64_t H, int64_t Hkv,
                             int64_t D, int64_t max_seq, int64_t num_splits, float scale, cudaStream_t stream,
                             uint32_t* counters = nullptr);

// Sampling on the device, one row per sequence, no host synchronisation. logits (B, V) of dtype t.
// temperature[b] <= 0: greedy (first index of the maximum). Otherwise softmax(logits / T) filtered
// by top_k[b] (0: off; ties with the k-th value are kept, as transformers does) and then top_p[b]
// (>= 1: off; the smallest set of highest-probability tokens whose mass reaches top_p, at least
// one), renormalized, and one draw from a counter-based generator keyed by (seed[b], counter[b]).
// counter[b] is incremented after the draw so a replayed graph draws fresh numbers. Deterministic:
// masses are summed as 2^-32 fixed-point integers, so the result does not depend on thread timing.
cudaError_t sample(DType t, const void* logits, int64_t stride, int64_t B, int64_t V, const float* temperature,
                   const int32_t* top_k, const float* top_p, const uint64_t* seed, uint64_t* counter,
                   int32_t* out_tokens, cudaStream_t stream);

// Distillation loss over one chunk of logits, forward and backward in one kernel (two or three reads
// of each row, no (N,V) temporaries). zs (N, V) student logits, zt (N, Vt) teacher logits; the KD part
// uses the first Vc = min(V, Vt) ids at temperature tau, CE uses all V student ids at temperature 1.
//   kind 0 forward KL(P||Q), 1 reverse KL(Q||P), 2 generalized JSD(beta).
// Writes, for rows whose label != ignore_index (others get zero gradient and zero losses):
//   row_kd[i] = divergence, row_ce[i] = cross-entropy (fp32),
//   grad[i,j] = grad_scale * (kd_weight * w_kd / tau * dKD/ds'_j + (1 - kd_weight) * dCE/ds_j)
// `grad` may alias zs (in place). zt may be null when kd_weight == 0.
struct KdParams {
  int kind = 0;
  float tau = 1.f, beta = 0.5f, kd_weight = 1.f, w_kd = 1.f, grad_scale = 1.f;
  int64_t ignore_index = -100;
};
cudaError_t kd_loss_fwd_bwd(DType t, const void* zs, int64_t zs_stride, const void* zt, int64_t zt_stride,
                            const int64_t* labels, void* grad, int64_t grad_stride, float* row_kd, float* row_ce,
                            int64_t N, int64_t V, int64_t Vt, const KdParams& p, cudaStream_t stream);

}  // namespace bonsai::kernels
