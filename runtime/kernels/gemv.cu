// Small-batch matrix-vector products for decode: y (B,N) = x (B,K) @ W (N,K)^T. At batch 1..8 a
// decode step is bound by reading W once: one warp per output row, 16-byte streaming loads of W
// (evict-first, so x stays cached), every x row reused from L1 for all B accumulators.
// Floor: N*K*sizeof(T) bytes / HBM bandwidth.
#include "runtime/kernels/common.cuh"

namespace bonsai::kernels {
namespace {

template <typename T, int BN>
__global__ void __launch_bounds__(256) gemv_kernel(const T* __restrict__ W, const T* __restrict__ x, int64_t xs,
                                                   T* __restrict__ y, int64_t ys, int64_t N, int64_t K) {
  constexpr int V = Vec<T>::N;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + warp;
  if (n >= N) return;
  const T* wr = W + n * K;
  float acc[BN];
#pragma unroll
  for (int b = 0; b < BN; ++b) acc[b] = 0.f;
#pragma unroll 4
  for (int64_t k = lane * V; k < K; k += 32 * V) {
    Vec<T> w;
    w.raw = __ldcs(reinterpret_cast<const uint4*>(wr + k));
#pragma unroll
    for (int b = 0; b < BN; ++b) {
      Vec<T> xv;
      xv.load(x + b * xs + k);
#pragma unroll
      for (int i = 0; i < V; ++i) acc[b] = fmaf(w.get(i), xv.get(i), acc[b]);
    }
  }
#pragma unroll
  for (int b = 0; b < BN; ++b) acc[b] = warp_sum(acc[b]);
  if (lane == 0) {
#pragma unroll
    for (int b = 0; b < BN; ++b) y[b * ys + n] = from_f<T>(acc[b]);
  }
}

template <typename T, int BN>
void launch(const T* W, const T* x, int64_t xs, T* y, int64_t ys, int64_t N, int64_t K, cudaStream_t s) {
  const int warps = 8;
  const unsigned blocks = static_cast<unsigned>((N + warps - 1) / warps);
  gemv_kernel<T, BN><<<blocks, warps * 32, 0, s>>>(W, x, xs, y, ys, N, K);
}

}  // namespace

cudaError_t gemv(DType t, const void* W, const void* x, int64_t x_stride, void* y, int64_t y_stride, int64_t B,
                 int64_t N, int64_t K, cudaStream_t stream) {
  if (!W || !x || !y || B < 1 || B > 8 || N <= 0 || K <= 0) return cudaErrorInvalidValue;
  BONSAI_DISPATCH(t, {
    constexpr int V = Vec<scalar_t>::N;
    if (K % V != 0 || x_stride % V != 0 || !aligned16(W) || !aligned16(x)) return cudaErrorInvalidValue;
    auto* Wp = static_cast<const scalar_t*>(W);
    auto* xp = static_cast<const scalar_t*>(x);
    auto* yp = static_cast<scalar_t*>(y);
    switch (B) {
      case 1: launch<scalar_t, 1>(Wp, xp, x_stride, yp, y_stride, N, K, stream); break;
      case 2: launch<scalar_t, 2>(Wp, xp, x_stride, yp, y_stride, N, K, stream); break;
      case 3: launch<scalar_t, 3>(Wp, xp, x_stride, yp, y_stride, N, K, stream); break;
      case 4: launch<scalar_t, 4>(Wp, xp, x_stride, yp, y_stride, N, K, stream); break;
      case 5: launch<scalar_t, 5>(Wp, xp, x_stride, yp, y_stride, N, K, stream); break;
      case 6: launch<scalar_t, 6>(Wp, xp, x_stride, yp, y_stride, N, K, stream); break;
      case 7: launch<scalar_t, 7>(Wp, xp, x_stride, yp, y_stride, N, K, stream); break;
      default: launch<scalar_t, 8>(Wp, xp, x_stride, yp, y_stride, N, K, stream); break;
    }
  });
  return launch_status();
}

}  // namespace bonsai::kernels
