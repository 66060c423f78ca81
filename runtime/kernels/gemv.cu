// Small-batch matrix-vector products for decode: y (B,N) = x (B,K) @ W (N,K)^T. At batch 1..8 a
// decode step is bound by reading W once: one warp per output row, 16-byte streaming loads of W
// (evict-first, so x stays cached), every x row reused from L1 for all B accumulators. Variants
// (GemvOptions): a plain loop, or U loads of W per lane issued before any is used; either can be
// launched as a programmatic dependent of the kernel that writes x, reading W before waiting for it.
// Fusions (GemvFusion): an RMSNorm of x whose weight is folded into W, and a residual add into y
// (y += the rounded product): a decode layer's two add_rmsnorm launches disappear. The norm costs no
// extra pass over x: warp w < B also sums the squares of row w of x, which it loads anyway for its
// products, and the block shares the B sums once, before the epilogue scales each output by its 1/rms.
// Floor: N*K*sizeof(T) bytes / HBM bandwidth.
#include "runtime/kernels/common.cuh"

#include <map>
#include <mutex>

namespace bonsai::kernels {
namespace {

// The products of one x vector with one W vector; with NORM, row `sq` also adds its squares to ss.
template <typename T, int BN, bool NORM>
__device__ __forceinline__ void gemv_fma(const Vec<T>& w, const T* x, int64_t xs, int64_t k, float (&acc)[BN], int sq,
                                         float& ss) {
  constexpr int V = Vec<T>::N;
#pragma unroll
  for (int b = 0; b < BN; ++b) {
    Vec<T> xv;
    xv.raw = ld_coherent(x + b * xs + k);
#pragma unroll
    for (int i = 0; i < V; ++i) acc[b] = fmaf(w.get(i), xv.get(i), acc[b]);
    if constexpr (NORM) {
      if (b == sq) {
#pragma unroll
        for (int i = 0; i < V; ++i) ss = fmaf(xv.get(i), xv.get(i), ss);
      }
    }
  }
}

// loads == 0: the plain loop (load, use; the compiler unrolls it by 4).
template <typename T, int BN, bool NORM>
__device__ __forceinline__ void gemv_loop(const T* __restrict__ wr, const T* x, int64_t xs, int64_t K,
                                          int lane, float (&acc)[BN], int sq, float& ss) {
  constexpr int V = Vec<T>::N;
  // The first load of W goes out before waiting for the kernel that writes x.
  Vec<T> w0;
  const int64_t k0 = static_cast<int64_t>(lane) * V;
  if (k0 < K) w0.raw = __ldcs(reinterpret_cast<const uint4*>(wr + k0));
  pdl_wait();
  if (k0 < K) gemv_fma<T, BN, NORM>(w0, x, xs, k0, acc, sq, ss);
#pragma unroll 4
  for (int64_t k = k0 + 32 * V; k < K; k += 32 * V) {
    Vec<T> w;
    w.raw = __ldcs(reinterpret_cast<const uint4*>(wr + k));
    gemv_fma<T, BN, NORM>(w, x, xs, k, acc, sq, ss);
  }
}

// loads == U > 0: U loads of W per lane in flight, then their products.
template <typename T, int BN, int U, bool NORM>
__device__ __forceinline__ void gemv_batched(const T* __restrict__ wr, const T* x, int64_t xs, int64_t K,
                                             int lane, float (&acc)[BN], int sq, float& ss) {
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
      if (k < K) gemv_fma<T, BN, NORM>(w[u], x, xs, k, acc, sq, ss);
    }
    k0 += static_cast<int64_t>(STEP) * U;
    if (k0 >= K) break;
    load(k0);
  }
}

// y is neither const nor __restrict__: with ACC it is read (after the wait) and written, and its
// loads must go through the coherent path.
template <typename T, int BN, int U, bool NORM, bool ACC>
__global__ void __launch_bounds__(256) gemv_kernel(const T* __restrict__ W, const T* x, int64_t xs, T* y, int64_t ys,
                                                   int64_t N, int64_t K, float eps) {
  pdl_trigger();  // a dependent GEMV (the next projection of a fused decode) may start loading its weights
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + warp;
  const bool live = n < N;
  if constexpr (!NORM) {
    if (!live) return;
  }
  // With NORM every warp of the block must reach the barrier below, and warp w < BN must sum row w's
  // squares: a warp past the last row repeats the last row's products and stores nothing.
  const T* wr = W + (live ? n : N - 1) * K;
  float acc[BN];
#pragma unroll
  for (int b = 0; b < BN; ++b) acc[b] = 0.f;
  float ss = 0.f;
  if constexpr (U == 0) gemv_loop<T, BN, NORM>(wr, x, xs, K, lane, acc, NORM ? warp : -1, ss);
  else gemv_batched<T, BN, U, NORM>(wr, x, xs, K, lane, acc, NORM ? warp : -1, ss);
#pragma unroll
  for (int b = 0; b < BN; ++b) acc[b] = warp_sum(acc[b]);
  [[maybe_unused]] float r[BN];
  if constexpr (NORM) {
    __shared__ float scale[BN];  // blockDim has 8 warps >= BN
    ss = warp_sum(ss);
    if (warp < BN && lane == 0) scale[warp] = rsqrtf(ss / static_cast<float>(K) + eps);
    __syncthreads();
#pragma unroll
    for (int b = 0; b < BN; ++b) r[b] = scale[b];
  }
  if (lane == 0 && live) {
#pragma unroll
    for (int b = 0; b < BN; ++b) {
      float v = acc[b];
      if constexpr (NORM) v *= r[b];
      T* yp = y + b * ys + n;
      if constexpr (ACC) v = to_f<T>(*yp) + rnd<T>(v);  // x + r as PyTorch rounds it (add_rmsnorm)
      *yp = from_f<T>(v);
    }
  }
}

template <typename T, int BN, bool NORM, bool ACC>
cudaError_t launch(const T* W, const T* x, int64_t xs, T* y, int64_t ys, int64_t N, int64_t K, cudaStream_t s,
                   const GemvOptions& o, float eps) {
  const int warps = 8;
  const dim3 grid(static_cast<unsigned>((N + warps - 1) / warps)), block(warps * 32);
  if constexpr (NORM || ACC) {  // the fused kernels come in two variants (fewer instantiations)
    if (o.loads == 2)
      return launch_kernel(gemv_kernel<T, BN, 2, NORM, ACC>, grid, block, 0, s, o.overlap, W, x, xs, y, ys, N, K, eps);
    return launch_kernel(gemv_kernel<T, BN, 0, NORM, ACC>, grid, block, 0, s, o.overlap, W, x, xs, y, ys, N, K, eps);
  } else {
    switch (o.loads) {
      case 2: return launch_kernel(gemv_kernel<T, BN, 2, false, false>, grid, block, 0, s, o.overlap, W, x, xs, y, ys, N, K, eps);
      case 4: return launch_kernel(gemv_kernel<T, BN, 4, false, false>, grid, block, 0, s, o.overlap, W, x, xs, y, ys, N, K, eps);
      case 8: return launch_kernel(gemv_kernel<T, BN, 8, false, false>, grid, block, 0, s, o.overlap, W, x, xs, y, ys, N, K, eps);
      default: return launch_kernel(gemv_kernel<T, BN, 0, false, false>, grid, block, 0, s, o.overlap, W, x, xs, y, ys, N, K, eps);
    }
  }
}

template <typename T, int BN>
cudaError_t launch(const T* W, const T* x, int64_t xs, T* y, int64_t ys, int64_t N, int64_t K, cudaStream_t s,
                   const GemvOptions& o, const GemvFusion& f) {
  if (f.rms_norm) return launch<T, BN, true, false>(W, x, xs, y, ys, N, K, s, o, f.eps);
  if (f.accumulate) return launch<T, BN, false, true>(W, x, xs, y, ys, N, K, s, o, f.eps);
  return launch<T, BN, false, false>(W, x, xs, y, ys, N, K, s, o, f.eps);
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
                 int64_t N, int64_t K, cudaStream_t stream, const GemvOptions& opt, const GemvFusion& fuse) {
  if (!W || !x || !y || B < 1 || B > 8 || N <= 0 || K <= 0) return cudaErrorInvalidValue;
  if (opt.loads != 0 && opt.loads != 2 && opt.loads != 4 && opt.loads != 8) return cudaErrorInvalidValue;
  // fused: loads 0 or 2 only, one fusion at a time, y not x, and the norm over a whole row of x
  if ((fuse.rms_norm || fuse.accumulate) && (opt.loads == 4 || opt.loads == 8 || (fuse.rms_norm && fuse.accumulate) || x == y))
    return cudaErrorInvalidValue;
  if (fuse.rms_norm && !(fuse.eps >= 0.f)) return cudaErrorInvalidValue;
  BONSAI_DISPATCH(t, {
    constexpr int V = Vec<scalar_t>::N;
    if (K % V != 0 || x_stride % V != 0 || !aligned16(W) || !aligned16(x)) return cudaErrorInvalidValue;
    auto* Wp = static_cast<const scalar_t*>(W);
    auto* xp = static_cast<const scalar_t*>(x);
    auto* yp = static_cast<scalar_t*>(y);
    switch (B) {
      case 1: return launch<scalar_t, 1>(Wp, xp, x_stride, yp, y_stride, N, K, stream, opt, fuse);
      case 2: return launch<scalar_t, 2>(Wp, xp, x_stride, yp, y_stride, N, K, stream, opt, fuse);
      case 3: return launch<scalar_t, 3>(Wp, xp, x_stride, yp, y_stride, N, K, stream, opt, fuse);
      case 4: return launch<scalar_t, 4>(Wp, xp, x_stride, yp, y_stride, N, K, stream, opt, fuse);
      case 5: return launch<scalar_t, 5>(Wp, xp, x_stride, yp, y_stride, N, K, stream, opt, fuse);
      case 6: return launch<scalar_t, 6>(Wp, xp, x_stride, yp, y_stride, N, K, stream, opt, fuse);
      case 7: return launch<scalar_t, 7>(Wp, xp, x_stride, yp, y_stride, N, K, stream, opt, fuse);
      default: return launch<scalar_t, 8>(Wp, xp, x_stride, yp, y_stride, N, K, stream, opt, fuse);
    }
  });
  return launch_status();
}

}  // namespace bonsai::kernels
