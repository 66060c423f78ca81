// Sampling on the device: one block per sequence, no host round trip (the sampled ids stay on the
// device for the next step's embedding lookup, so a CUDA graph can hold the whole decode step).
// top-k and top-p thresholds are found by radix selection over order-preserving 32-bit keys of the
// tempered logits (4 passes of 8 bits: counts for top-k, fixed-point masses for top-p), the draw by
// an inverse CDF over the kept tokens in vocabulary order. The logits row stays in L2 between passes.
#include "runtime/kernels/common.cuh"

namespace bonsai::kernels {
namespace {

constexpr int kThreads = 1024;
constexpr double kFix = 1099511627776.0;  // 2^40: w = exp(z - max) <= 1 as a 2^-40 fixed-point integer

__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
// exp(z - max) <= 1 as a 2^-40 fixed-point integer: one expression for every pass that sums masses.
__device__ __forceinline__ unsigned long long fixed_weight(float z, float mx) {
  return static_cast<unsigned long long>(static_cast<double>(__expf(z - mx)) * kFix);
}
__device__ __forceinline__ uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Block-wide inclusive scan of one uint64 per thread; returns the exclusive prefix, `total` gets the sum.
__device__ uint64_t block_exclusive_scan(uint64_t v, uint64_t* sh_warp, uint64_t& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint64_t inc = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint64_t n = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += n;
  }
  __syncthreads();
  if (lane == 31) sh_warp[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    uint64_t w = lane < (kThreads / 32) ? sh_warp[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint64_t n = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += n;
    }
    sh_warp[lane] = w;  // inclusive prefix of warp totals
  }
  __syncthreads();
  total = sh_warp[(kThreads / 32) - 1];
  const uint64_t before_warp = warp > 0 ? sh_warp[warp - 1] : 0;
  return before_warp + inc - v;
}

// The largest key K such that the weight of keys >= K (among keys >= floor_key) reaches `rem`:
// four 8-bit radix passes, each a shared-memory histogram of weight(z) per digit, the digit chosen by
// one thread scanning from the top. Weights are integers, so the sums do not depend on thread order.
template <typename T, typename WeightFn>
__device__ uint32_t radix_select(const T* z, int64_t V, float inv_t, uint32_t floor_key, uint64_t rem, WeightFn weight,
                                 unsigned long long* hist, uint32_t& sh_sel, unsigned long long& sh_rem) {
  uint32_t prefix = 0, mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += kThreads) hist[i] = 0;
    __syncthreads();
    for (int64_t j = threadIdx.x; j < V; j += kThreads) {
      const float zz = to_f(z[j]) * inv_t;
      const uint32_t key = order_key(zz);
      if (key >= floor_key && (key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], weight(zz));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int bin = 255;
      for (; bin > 0; --bin) {
        if (hist[bin] >= rem) break;
        rem -= hist[bin];
      }
      sh_sel = static_cast<uint32_t>(bin);
      sh_rem = rem;
    }
    __syncthreads();
    prefix |= sh_sel << shift;
    mask |= 255u << shift;
    rem = sh_rem;
    __syncthreads();
  }
  return prefix;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) sample_kernel(const T* __restrict__ logits, int64_t stride, int64_t V,
                                                          const float* temperature, const int32_t* top_k,
                                                          const float* top_p, const uint64_t* seed, uint64_t* counter,
                                                          int32_t* out) {
  __shared__ float sh_f[32];
  __shared__ int sh_i[32];
  __shared__ unsigned long long hist[256];
  __shared__ uint64_t sh_warp[32];
  __shared__ uint32_t sh_sel;
  __shared__ unsigned long long sh_rem;
  const int64_t row = blockIdx.x;
  const T* z = logits + row * stride;
  const float temp = temperature[row];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  if (!(temp > 0.f)) {  // greedy: the first index of the maximum, like torch.argmax
    float best = -INFINITY;
    int bi = INT_MAX;
    for (int64_t j = threadIdx.x; j < V; j += kThreads) {
      const float v = to_f(z[j]);
      if (v > best) {  // j grows: the first index of a thread's maximum is kept
        best = v;
        bi = static_cast<int>(j);
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, best, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ov > best || (ov == best && oi < bi)) { best = ov; bi = oi; }
    }
    if (lane == 0) { sh_f[warp] = best; sh_i[warp] = bi; }
    __syncthreads();
    if (warp == 0) {
      best = sh_f[lane];
      bi = sh_i[lane];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > best || (ov == best && oi < bi)) { best = ov; bi = oi; }
      }
      if (lane == 0) {
        out[row] = bi == INT_MAX ? 0 : bi;
        counter[row] += 1;
      }
    }
    return;
  }

  const float inv_t = 1.f / temp;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < V; j += kThreads) mx = fmaxf(mx, to_f(z[j]) * inv_t);
  mx = block_max(mx, sh_f);

  // --- top-k: the exact k-th largest key (ties with it are kept)
  uint32_t thr = 0;  // keep keys >= thr
  const int k = top_k[row];
  if (k > 0 && k < V)
    thr = radix_select(z, V, inv_t, 0u, static_cast<uint64_t>(k), [](float) { return 1ull; }, hist, sh_sel, sh_rem);

  // --- top-p over the top-k-filtered, renormalized distribution
  const float p = top_p[row];
  if (p < 1.f) {
    unsigned long long tot_local = 0;
    for (int64_t j = threadIdx.x; j < V; j += kThreads) {
      const float zz = to_f(z[j]) * inv_t;
      if (order_key(zz) >= thr) tot_local += fixed_weight(zz, mx);
    }
    uint64_t total;
    block_exclusive_scan(tot_local, sh_warp, total);
    const double want = fmax(1.0, ceil(static_cast<double>(p) * static_cast<double>(total)));
    const uint32_t prefix = radix_select(
        z, V, inv_t, thr, static_cast<uint64_t>(want),
        [mx](float zz) { return fixed_weight(zz, mx); }, hist,
        sh_sel, sh_rem);
    thr = max(thr, prefix);
  }

  // --- inverse CDF over kept tokens, in vocabulary order: each thread owns a contiguous range
  const int64_t per = (V + kThreads - 1) / kThreads;
  const int64_t j0 = threadIdx.x * per, j1 = min(V, j0 + per);
  unsigned long long mine = 0;
  for (int64_t j = j0; j < j1; ++j) {
    const float zz = to_f(z[j]) * inv_t;
    if (order_key(zz) >= thr) mine += fixed_weight(zz, mx);
  }
  uint64_t total;
  const uint64_t before = block_exclusive_scan(mine, sh_warp, total);
  const uint64_t r0 = splitmix64(seed[row] ^ splitmix64(counter[row] * 0x2545F4914F6CDD1Dull + 1));
  const double u = static_cast<double>(r0 >> 11) * (1.0 / 9007199254740992.0);  // [0,1)
  uint64_t r = static_cast<uint64_t>(u * static_cast<double>(total));
  if (r >= total) r = total - 1;
  if (r >= before && r < before + mine) {
    uint64_t c = before;
    int64_t pick = j1 - 1;
    for (int64_t j = j0; j < j1; ++j) {
      const float zz = to_f(z[j]) * inv_t;
      if (order_key(zz) < thr) continue;
      c += fixed_weight(zz, mx);
      if (r < c) { pick = j; break; }
    }
    out[row] = static_cast<int32_t>(pick);
  }
  __syncthreads();
  if (threadIdx.x == 0) counter[row] += 1;
}

}  // namespace

cudaError_t sample(DType t, const void* logits, int64_t stride, int64_t B, int64_t V, const float* temperature,
                   const int32_t* top_k, const float* top_p, const uint64_t* seed, uint64_t* counter,
                   int32_t* out_tokens, cudaStream_t stream) {
  if (!logits || !temperature || !top_k || !top_p || !seed || !counter || !out_tokens || B <= 0 || V <= 0 ||
      V > INT32_MAX || B > INT32_MAX)
    return cudaErrorInvalidValue;
  BONSAI_DISPATCH(t, {
    sample_kernel<scalar_t><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(logits), stride, V, temperature, top_k, top_p, seed, counter, out_tokens);
  });
  return launch_status();
}

}  // namespace bonsai::kernels
