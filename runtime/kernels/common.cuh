// Shared device helpers for runtime/kernels/*.cu: dtype conversion, 16-byte vector loads, warp and
// block reductions, argument checks.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "runtime/kernels/kernels.h"

namespace bonsai::kernels {

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Round a float to T's precision and back (emulates PyTorch rounding each op's output to the dtype).
template <typename T> __device__ __forceinline__ float rnd(float v) { return to_f<T>(from_f<T>(v)); }

// N elements of T in one 16-byte access.
template <typename T> struct Vec {
  static constexpr int N = 16 / sizeof(T);
  uint4 raw;
  __device__ __forceinline__ void load(const T* p) { raw = *reinterpret_cast<const uint4*>(p); }
  __device__ __forceinline__ void store(T* p) const { *reinterpret_cast<uint4*>(p) = raw; }
  __device__ __forceinline__ float get(int i) const { return to_f<T>(reinterpret_cast<const T*>(&raw)[i]); }
  __device__ __forceinline__ void set(int i, float v) { reinterpret_cast<T*>(&raw)[i] = from_f<T>(v); }
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide sum; every thread gets the result. `sh` holds >= 32 floats. Contains __syncthreads.
__device__ __forceinline__ float block_sum(float v, float* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : 0.f;
  return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = lane < nw ? sh[lane] : -INFINITY;
  return warp_max(v);
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

inline cudaError_t launch_status() { return cudaGetLastError(); }

// Programmatic dependent launch (Hopper and later; no-ops elsewhere and in kernels launched without
// the attribute). pdl_trigger(): this grid's dependents may start launching (their blocks run up to
// their pdl_wait()). pdl_wait(): block until the grid this one depends on has completed and its
// writes are visible. A kernel launched as a dependent reads nothing its predecessor writes, and
// writes nothing, before pdl_wait().
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// A 16-byte load of data a predecessor grid writes, for use after pdl_wait(): the volatile asm keeps
// it after the wait, and it reads through the coherent path. (ld.global.nc, which the compiler picks
// for const __restrict__ pointers, assumes the data is constant for the kernel's whole lifetime; a
// dependent grid is alive while its predecessor still writes, and such loads read stale values.)
__device__ __forceinline__ uint4 ld_coherent(const void* p) {
  uint4 r;
  asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  return r;
}

// Launches kernel<<<grid, block, smem, stream>>>(args...); with `dependent` on a device of compute
// capability 9.0 or later, as a programmatic dependent of the previous kernel on the stream (it may
// start before that one ends; it must pdl_wait() before touching what that one writes).
// Whether `kernel` on the current device runs code compiled for compute capability 9.0 or later,
// where pdl_wait() is a real wait: on a newer GPU that JIT-compiles the sm_80 PTX it is compiled
// out, and a dependent launch would race. Cached per (device, kernel).
bool pdl_capable(const void* kernel);

template <typename... P, typename... A>
cudaError_t launch_kernel(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          bool dependent, A&&... args) {
  if (dependent && pdl_capable(reinterpret_cast<const void*>(kernel))) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    return cudaLaunchKernelEx(&cfg, kernel, static_cast<P>(args)...);
  }
  kernel<<<grid, block, smem, stream>>>(static_cast<P>(args)...);
  return cudaGetLastError();
}

// Dispatch on the dtype: F(type_tag) is called with a value of the element type.
#define BONSAI_DISPATCH(t, ...)                                   \
  switch (t) {                                                    \
    case DType::F32: { using scalar_t = float; __VA_ARGS__; break; }          \
    case DType::F16: { using scalar_t = __half; __VA_ARGS__; break; }         \
    case DType::BF16: { using scalar_t = __nv_bfloat16; __VA_ARGS__; break; } \
    default: return cudaErrorInvalidValue;                        \
  }

}  // namespace bonsai::kernels
