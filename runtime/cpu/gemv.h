// CPU kernels for decode. Matrix-vector products at batch 1..8: y (B, N) = x (B, K) @ W (N, K)^T with W in
// fp32, bf16 or fp16, read once per call with 256-bit loads (AVX2 + FMA + F16C; bf16 widened by a
// shift), fp32 accumulation. A decode step reads every weight once, so this is memory-bound: the goal
// is the machine's bandwidth. No Torch headers; runtime/torch_backend.cpp threads it over rows.
#pragma once

#include <cstdint>

namespace bonsai::cpu {

enum class WType : int { F32 = 0, BF16 = 1, F16 = 2 };

// True when this CPU has AVX2, FMA and F16C (checked once at run time).
bool gemv_supported();

// Rows [n0, n1) of y = x W^T. x is fp32 (B, K) contiguous, W (N, K) contiguous of type wt, y fp32
// (B, N) with row stride ldy. B <= 8.
void gemv_rows(WType wt, const void* W, const float* x, int B, int64_t K, int64_t n0, int64_t n1, float* y,
               int64_t ldy);

// One query against L cached positions of one KV head: out (D) = softmax(scale * q . k_j) v_j over
// j in [0, L), fp32 accumulation. q fp32 (D); k, v (L, D) contiguous rows of type t; scratch holds L
// floats. Same AVX2/FMA/F16C requirement as gemv_rows.
void attend_row(WType t, const float* q, const void* k, const void* v, int64_t L, int64_t D, float scale,
                float* scratch, float* out);

}  // namespace bonsai::cpu
