// Fused elementwise kernels of the decoder layer: residual add + RMSNorm, RoPE + KV-cache write,
// SwiGLU. Each is one pass over its rows (memory-bound: bytes in + bytes out is the floor).
#include "runtime/kernels/common.cuh"

namespace bonsai::kernels {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
  }
  return "?";
}

namespace {

// One block per row. Pass 1 adds the residual (rounded to T, as `x + r` in PyTorch), writes it
// back and sums squares; pass 2 re-reads the row (L1/L2-resident) and normalizes.
template <typename T, bool kVec>
__global__ void add_rmsnorm_kernel(T* x, int64_t xs, const T* res, int64_t rs, const T* w, T* out, int64_t os,
                                   int64_t cols, float eps) {
  pdl_trigger();  // a dependent GEMV (the next projection) may start loading its weights
  __shared__ float sh[32];
  const int64_t row = blockIdx.x;
  T* xr = x + row * xs;
  const T* rr = res ? res + row * rs : nullptr;
  T* orow = out + row * os;
  float ss = 0.f;
  if constexpr (kVec) {
    constexpr int N = Vec<T>::N;
    for (int64_t c = threadIdx.x * N; c < cols; c += blockDim.x * N) {
      Vec<T> a;
      a.load(xr + c);
      if (rr) {
        Vec<T> b;
        b.load(rr + c);
#pragma unroll
        for (int i = 0; i < N; ++i) a.set(i, a.get(i) + b.get(i));
        a.store(xr + c);
      }
#pragma unroll
      for (int i = 0; i < N; ++i) ss += a.get(i) * a.get(i);
    }
  } else {
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      float v = to_f(xr[c]);
      if (rr) {
        v = rnd<T>(v + to_f(rr[c]));
        xr[c] = from_f<T>(v);
      }
      ss += v * v;
    }
  }
  const float r = rsqrtf(block_sum(ss, sh) / static_cast<float>(cols) + eps);
  if constexpr (kVec) {
    constexpr int N = Vec<T>::N;
    for (int64_t c = threadIdx.x * N; c < cols; c += blockDim.x * N) {
      Vec<T> a, g;
      a.load(xr + c);
      g.load(w + c);
#pragma unroll
      for (int i = 0; i < N; ++i) a.set(i, rnd<T>(a.get(i) * r) * g.get(i));
      a.store(orow + c);
    }
  } else {
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
      orow[c] = from_f<T>(rnd<T>(to_f(xr[c]) * r) * to_f(w[c]));
  }
}

// Grid (tokens, items / block): one thread per item of a token, the (H + Hkv) * D/2 rotary pairs
// of q/k then the Hkv*D values of v (a Llama-3.2-1B decode token spreads over 14 blocks, not one).
template <typename T>
__global__ void rope_qkv_kernel(const T* qkv, int64_t qs, const int32_t* pos, const int32_t* slot, const float* inv_freq,
                                T* q_out, T* kc, T* vc, int H, int Hkv, int D, int64_t max_seq) {
  const int64_t tok = blockIdx.x;
  const T* in = qkv + tok * qs;
  const int p = pos[tok];
  const int64_t s = slot[tok];
  const int half = D / 2;
  const int pairs = (H + Hkv) * half;
  const int i = blockIdx.y * blockDim.x + threadIdx.x;
  if (i < pairs) {
    const int head = i / half, d = i % half;
    // cos/sin in fp32 from fp32 angles, then rounded to T (transformers casts cos/sin to the dtype).
    float sn, cs;
    sincosf(static_cast<float>(p) * inv_freq[d], &sn, &cs);
    cs = rnd<T>(cs);
    sn = rnd<T>(sn);
    const T* src = in + head * D;  // q heads then k heads, contiguous
    const float x1 = to_f(src[d]), x2 = to_f(src[d + half]);
    // q*cos + rotate_half(q)*sin, each product and the sum rounded as in eager PyTorch
    const float o1 = rnd<T>(rnd<T>(x1 * cs) + rnd<T>(-x2 * sn));
    const float o2 = rnd<T>(rnd<T>(x2 * cs) + rnd<T>(x1 * sn));
    T* dst;
    if (head < H) {
      dst = q_out + (tok * H + head) * D;
    } else {
      dst = kc + ((s * Hkv + (head - H)) * max_seq + p) * D;
    }
    dst[d] = from_f<T>(o1);
    dst[d + half] = from_f<T>(o2);
  } else if (i - pairs < Hkv * D) {
    const int j = i - pairs, head = j / D, d = j % D;
    vc[((s * Hkv + head) * max_seq + p) * D + d] = in[(H + Hkv) * D + j];
  }
}

template <typename T, bool kVec>
__global__ void swiglu_kernel(const T* in, int64_t is, T* out, int64_t os, int64_t I) {
  pdl_trigger();  // the down projection (a dependent GEMV) may start loading its weights
  const int64_t row = blockIdx.y;
  const T* g = in + row * is;
  const T* u = g + I;
  T* o = out + row * os;
  if constexpr (kVec) {
    constexpr int N = Vec<T>::N;
    for (int64_t c = (blockIdx.x * blockDim.x + threadIdx.x) * N; c < I; c += gridDim.x * blockDim.x * N) {
      Vec<T> a, b;
      a.load(g + c);
      b.load(u + c);
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const float gv = a.get(i);
        a.set(i, rnd<T>(gv / (1.f + expf(-gv))) * b.get(i));
      }
      a.store(o + c);
    }
  } else {
    for (int64_t c = blockIdx.x * blockDim.x + threadIdx.x; c < I; c += gridDim.x * blockDim.x) {
      const float gv = to_f(g[c]);
      o[c] = from_f<T>(rnd<T>(gv / (1.f + expf(-gv))) * to_f(u[c]));
    }
  }
}

}  // namespace

cudaError_t add_rmsnorm(DType t, void* x, int64_t x_stride, const void* residual, int64_t res_stride,
                        const void* weight, void* out, int64_t out_stride, int64_t rows, int64_t cols, float eps,
                        cudaStream_t stream) {
  if (!x || !weight || !out || rows < 0 || cols <= 0 || x == out) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  BONSAI_DISPATCH(t, {
    constexpr int N = Vec<scalar_t>::N;
    const bool vec = cols % N == 0 && x_stride % N == 0 && out_stride % N == 0 && (!residual || res_stride % N == 0) &&
                     aligned16(x) && aligned16(weight) && aligned16(out) && (!residual || aligned16(residual));
    const int threads = static_cast<int>(std::min<int64_t>(1024, std::max<int64_t>(32, ((vec ? cols / N : cols) + 31) / 32 * 32)));
    auto* xp = static_cast<scalar_t*>(x);
    auto* rp = static_cast<const scalar_t*>(residual);
    auto* wp = static_cast<const scalar_t*>(weight);
    auto* op = static_cast<scalar_t*>(out);
    if (vec)
      add_rmsnorm_kernel<scalar_t, true><<<rows, threads, 0, stream>>>(xp, x_stride, rp, res_stride, wp, op, out_stride, cols, eps);
    else
      add_rmsnorm_kernel<scalar_t, false><<<rows, threads, 0, stream>>>(xp, x_stride, rp, res_stride, wp, op, out_stride, cols, eps);
  });
  return launch_status();
}

cudaError_t rope_qkv_to_cache(DType t, const void* qkv, int64_t qkv_stride, const int32_t* pos, const int32_t* slot,
                              const float* inv_freq, void* q_out, void* k_cache, void* v_cache, int64_t ntok,
                              int64_t H, int64_t Hkv, int64_t D, int64_t max_seq, cudaStream_t stream) {
  if (!qkv || !pos || !slot || !inv_freq || !q_out || !k_cache || !v_cache || ntok < 0 || H <= 0 || Hkv <= 0 ||
      D <= 0 || D % 2 != 0 || max_seq <= 0)
    return cudaErrorInvalidValue;
  if (ntok == 0) return cudaSuccess;
  const int threads = 128;
  const int64_t items = (H + Hkv) * D / 2 + Hkv * D;
  if (ntok > 2147483647 || (items + threads - 1) / threads > 65535) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(ntok), static_cast<unsigned>((items + threads - 1) / threads));
  BONSAI_DISPATCH(t, {
    rope_qkv_kernel<scalar_t><<<grid, threads, 0, stream>>>(
        static_cast<const scalar_t*>(qkv), qkv_stride, pos, slot, inv_freq, static_cast<scalar_t*>(q_out),
        static_cast<scalar_t*>(k_cache), static_cast<scalar_t*>(v_cache), static_cast<int>(H), static_cast<int>(Hkv),
        static_cast<int>(D), max_seq);
  });
  return launch_status();
}

cudaError_t swiglu(DType t, const void* gate_up, int64_t in_stride, void* out, int64_t out_stride, int64_t rows,
                   int64_t I, cudaStream_t stream) {
  if (!gate_up || !out || rows < 0 || I <= 0 || rows > 65535) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  BONSAI_DISPATCH(t, {
    constexpr int N = Vec<scalar_t>::N;
    const bool vec = I % N == 0 && in_stride % N == 0 && out_stride % N == 0 && aligned16(gate_up) && aligned16(out);
    const int threads = 256;
    const int64_t per_block = threads * (vec ? N : 1);
    const unsigned bx = static_cast<unsigned>(std::min<int64_t>(1024, (I + per_block - 1) / per_block));
    dim3 grid(bx, static_cast<unsigned>(rows));
    auto* ip = static_cast<const scalar_t*>(gate_up);
    auto* op = static_cast<scalar_t*>(out);
    if (vec) swiglu_kernel<scalar_t, true><<<grid, threads, 0, stream>>>(ip, in_stride, op, out_stride, I);
    else swiglu_kernel<scalar_t, false><<<grid, threads, 0, stream>>>(ip, in_stride, op, out_stride, I);
  });
  return launch_status();
}

}  // namespace bonsai::kernels
