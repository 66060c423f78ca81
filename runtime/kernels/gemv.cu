// Small-batch matrix-vector products for decode: y (B,N) = x (B,K) @ W (N,K)^T. At batch 1..8 a
// decode step is bound by reading W once: one warp per output row, 16-byte streaming loads of W
// (evict-first, so x stays cached), every x row reused from L1 for all B accumulators. Variants
// (GemvOptions): a plain loop, or U loads of W per lane issued before any is used; either can be
// launched as a programmatic dependent of the kernel that writes x, reading W before waiting for it.
// Floor: N*K*sizeof(T) bytes / HBM bandwidth.
#include "runtime/kernels/common.cuh"

#include <map>
#include <mutex>

namespace bonsai::kernels {
namespace {

// loads == 0: the plain loop (load, use; the compiler unrolls it by 4).
template <typename T, int BN>
__device__ __forceinline__ void gemv_loop(const T* __restrict__ wr, const T* x, int64_t xs, int64_t K,
                                          int lane, float (&acc)[BN]) {
  constexpr int V = Vec<T>::N;
  // The first load of W goes out before waiting for the kernel that writes x.
  Vec<T> w0;
  const int64_t k0 = static_cast<int64_t>(lane) * V;
  if (k0 < K) w0.raw = __ldcs(reinterpret_cast<const uint4*>(wr + k0));
  pdl_wait();
  if (k0 < K) {
#pragma unroll
    for (int b = 0; b < BN; ++b) {
      Vec<T> xv;
      xv.raw = ld_coherent(x + b * xs + k0);
#pragma unroll
      for (int i = 0; i < V; ++i) acc[b] = fmaf(w0.get(i), xv.get(i), acc[b]);
    }
  }
#pragma unroll 4
  for (int64_t k = k0 + 32 * V; k < K; k += 32 * V) {
    Vec<T> w;
    w.raw = __ldcs(reinterpret_cast<const uint4*>(wr + k));
#pragma unroll
    for (int b = 0; b < BN; ++b) {
      Vec<T> xv;
      xv.raw = ld_coherent(x + b * xs + k);
#pragma unroll
      for (int i = 0; i < V; ++i) acc[b] = fmaf(w.get(i), xv.get(i), acc[b]);
    }
  }
}

// loads == U > 0: U loads of W per lane in flight, then their products.
template <typename T, int BN, int U>
__device__ __forceinline__ void gemv_batched(const T* __restrict__ wr, const T* x, int64_t xs, int64_t K,
                                             int lane, float (&acc)[BN]) {
  constexpr int V = Vec<T>::N;
  constexpr int STEP = 32 * V;  // elements a warp covers with one load per lane
  Vec<T> w[U];
  auto load = [&](int64_t k0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t k = k0 + u * STEP;
      if (k < K) w[u].raw = __ldcs(reinterpret_cast<const uint4*>(wr + k));
      else w[u].raw = make_uint4(0, 0, 0, 0);
    }
  };
  int64_t k0 = static_cast<int64_t>(lane) * V;
  load(k0);
  pdl_wait();
  while (true) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t k = k0 + u * STEP;
      if (k < K) {
#pragma unroll
        for (int b = 0; b < BN; ++b) {
          Vec<T> xv;
          xv.raw = ld_coherent(x + b * xs + k);
#pragma unroll
          for (int i = 0; i < V; ++i) acc[b] = fmaf(w[u].get(i), xv.get(i), acc[b]);
        }
      }
    }
    k0 += static_cast<int64_t>(STEP) * U;
    if (k0 >= K) break;
    load(k0);
  }
}

template <typename T, int BN, int U>
__global__ void __launch_bounds__(256) gemv_kernel(const T* __restrict__ W, const T* x, int64_t xs,
                                                   T* __restrict__ y, int64_t ys, int64_t N, int64_t K) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + warp;
  if (n >= N) return;
  const T* wr = W + n * K;
  float acc[BN];
#pragma unroll
  for (int b = 0; b < BN; ++b) acc[b] = 0.f;
  if constexpr (U == 0) gemv_loop<T, BN>(wr, x, xs, K, lane, acc);
  else gemv_batched<T, BN, U>(wr, x, xs, K, lane, acc);
#pragma unroll
  for (int b = 0; b < BN; ++b) acc[b] = warp_sum(acc[b]);
  if (lane == 0) {
#pragma unroll
    for (int b = 0; b < BN; ++b) y[b * ys + n] = from_f<T>(acc[b]);
  }
}

template <typename T, int BN>
cudaError_t launch(const T* W, const T* x, int64_t xs, T* y, int64_t ys, int64_t N, int64_t K, cudaStream_t s,
                   const GemvOptions& o) {
  const int warps = 8;
  const dim3 grid(static_cast<unsigned>((N + warps - 1) / warps)), block(warps * 32);
  switch (o.loads) {
    case 2: return launch_kernel(gemv_kernel<T, BN, 2>, grid, block, 0, s, o.overlap, W, x, xs, y, ys, N, K);
    case 4: return launch_kernel(gemv_kernel<T, BN, 4>, grid, block, 0, s, o.overlap, W, x, xs, y, ys, N, K);
    case 8: return launch_kernel(gemv_kernel<T, BN, 8>, grid, block, 0, s, o.overlap, W, x, xs, y, ys, N, K);
    default: return launch_kernel(gemv_kernel<T, BN, 0>, grid, block, 0, s, o.overlap, W, x, xs, y, ys, N, K);
  }
}

}  // namespace

bool pdl_capable(const void* kernel) {
  static std::mutex mu;
  static std::map<std::pair<int, const void*>, bool> known;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  std::lock_guard<std::mutex> lock(mu);
  auto it = known.find({dev, kernel});
  if (it != known.end()) return it->second;
  int major = 0;
  cudaFuncAttributes attr{};
  const bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major >= 9 &&
                  cudaFuncGetAttributes(&attr, kernel) == cudaSuccess && attr.ptxVersion >= 90;
  cudaGetLastError();  // a failed query is an answer (no), not an error for the next launch to report
  known[{dev, kernel}] = ok;
  return ok;
}

cudaError_t gemv(DType t, const void* W, const void* x, int64_t x_stride, void* y, int64_t y_stride, int64_t B,
                 int64_t N, int64_t K, cudaStream_t stream, const GemvOptions& opt) {
  if (!W || !x || !y || B < 1 || B > 8 || N <= 0 || K <= 0) return cudaErrorInvalidValue;
  if (opt.loads != 0 && opt.loads != 2 && opt.loads != 4 && opt.loads != 8) return cudaErrorInvalidValue;
  BONSAI_DISPATCH(t, {
    constexpr int V = Vec<scalar_t>::N;
    if (K % V != 0 || x_stride % V != 0 || !aligned16(W) || !aligned16(x)) return cudaErrorInvalidValue;
    auto* Wp = static_cast<const scalar_t*>(W);
    auto* xp = static_cast<const scalar_t*>(x);
    auto* yp = static_cast<scalar_t*>(y);
    switch (B) {
      case 1: return launch<scalar_t, 1>(Wp, xp, x_stride, yp, y_stride, N, K, stream, opt);
      case 2: return launch<scalar_t, 2>(Wp, xp, x_stride, yp, y_stride, N, K, stream, opt);
      case 3: return launch<scalar_t, 3>(Wp, xp, x_stride, yp, y_stride, N, K, stream, opt);
      case 4: return launch<scalar_t, 4>(Wp, xp, x_stride, yp, y_stride, N, K, stream, opt);
      case 5: return launch<scalar_t, 5>(Wp, xp, x_stride, yp, y_stride, N, K, stream, opt);
      case 6: return launch<scalar_t, 6>(Wp, xp, x_stride, yp, y_stride, N, K, stream, opt);
      case 7: return launch<scalar_t, 7>(Wp, xp, x_stride, yp, y_stride, N, K, stream, opt);
      default: return launch<scalar_t, 8>(Wp, xp, x_stride, yp, y_stride, N, K, stream, opt);
    }
  });
  return launch_status();
}

}  // namespace bonsai::kernels
