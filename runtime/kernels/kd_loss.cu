// Distillation loss over a chunk of logits, forward and backward together: one block per token row.
// Pass 1 reads the student and teacher rows once and keeps online (max, sum-exp) pairs plus the
// running sum the divergence needs; pass 2 (and for JSD a pass 3) re-reads the rows, now L2-resident,
// and writes the gradient over the student logits. Nothing of size (N,V) besides the two inputs.
// See distill/kd_loss.h for the definitions (the same as the LibTorch path's).
#include "runtime/kernels/common.cuh"

namespace bonsai::kernels {
namespace {

constexpr int kThreads = 512;

// Online log-sum-exp with an attached weighted sum: l = sum exp(x - m), a = sum exp(x - m) * y.
struct Lse {
  float m = -INFINITY, l = 0.f, a = 0.f;
  __device__ __forceinline__ void add(float x, float y) {
    if (x > m) {
      const float c = __expf(m - x);
      l = l * c + 1.f;
      a = a * c + y;
      m = x;
    } else {
      const float e = __expf(x - m);
      l += e;
      a += e * y;
    }
  }
  __device__ __forceinline__ void merge(const Lse& o) {
    if (o.m == -INFINITY) return;
    if (m == -INFINITY) { *this = o; return; }
    const float M = fmaxf(m, o.m), c1 = __expf(m - M), c2 = __expf(o.m - M);
    l = l * c1 + o.l * c2;
    a = a * c1 + o.a * c2;
    m = M;
  }
  __device__ __forceinline__ float lse() const { return m + logf(l); }
};

__device__ Lse block_merge(Lse v, float* sh) {  // sh: 3*32 floats
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Lse x;
    x.m = __shfl_xor_sync(0xffffffffu, v.m, o);
    x.l = __shfl_xor_sync(0xffffffffu, v.l, o);
    x.a = __shfl_xor_sync(0xffffffffu, v.a, o);
    v.merge(x);
  }
  __syncthreads();
  if (lane == 0) { sh[warp] = v.m; sh[32 + warp] = v.l; sh[64 + warp] = v.a; }
  __syncthreads();
  Lse r;
  for (int w = 0; w < nw; ++w) {
    Lse x;
    x.m = sh[w]; x.l = sh[32 + w]; x.a = sh[64 + w];
    r.merge(x);
  }
  return r;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) kd_kernel(const T* __restrict__ zs, int64_t ss, const T* __restrict__ zt,
                                                      int64_t ts, const int64_t* __restrict__ labels, T* grad,
                                                      int64_t gs, float* row_kd, float* row_ce, int64_t V, int64_t Vt,
                                                      KdParams p) {
  __shared__ float sh[96];
  const int64_t row = blockIdx.x;
  const T* s = zs + row * ss;
  const T* t = zt ? zt + row * ts : nullptr;
  T* g = grad + row * gs;
  const int64_t label = labels[row];
  if (label == p.ignore_index) {
    for (int64_t j = threadIdx.x; j < V; j += kThreads) g[j] = from_f<T>(0.f);
    if (threadIdx.x == 0) { row_kd[row] = 0.f; row_ce[row] = 0.f; }
    return;
  }
  // The label's logit, read before any thread overwrites the row (grad may alias zs).
  const float s_label = to_f(s[label]);
  const bool kd = t != nullptr && p.kd_weight > 0.f;
  const bool ce = p.kd_weight < 1.f;
  const int64_t Vc = kd ? min(V, Vt) : 0;
  const float it = 1.f / p.tau;
  const bool ce_own = ce && (!kd || p.tau != 1.f || Vc != V);  // CE needs its own lse of s at T=1

  // ---- pass 1
  Lse ls, lt, l1;  // student at tau (a: rkl sum), teacher at tau (a: fkl sum), student at 1
  for (int64_t j = threadIdx.x; j < V; j += kThreads) {
    const float sv = to_f(s[j]);
    if (j < Vc) {
      const float sp = sv * it, tp = to_f(t[j]) * it;
      ls.add(sp, sp - tp);
      lt.add(tp, tp - sp);
    }
    if (ce_own) l1.add(sv, 0.f);
  }
  ls = block_merge(ls, sh);
  lt = block_merge(lt, sh);
  if (ce_own) l1 = block_merge(l1, sh);
  const float lse_s = kd ? ls.lse() : 0.f, lse_t = kd ? lt.lse() : 0.f;
  const float lse_1 = ce_own ? l1.lse() : lse_s;
  float div = 0.f;
  if (kd && p.kind == 0) div = lt.a / lt.l + lse_s - lse_t;        // sum p (t' - s') + lse_s - lse_t
  if (kd && p.kind == 1) div = ls.a / ls.l + lse_t - lse_s;        // sum q (s' - t') + lse_t - lse_s
  float sqa = 0.f;
  const float lb = logf(p.beta), l1b = logf(1.f - p.beta);
  if (kd && p.kind == 2) {  // JSD: pass 2 for the loss and sum q*a
    float acc_loss = 0.f, acc_qa = 0.f;
    for (int64_t j = threadIdx.x; j < Vc; j += kThreads) {
      const float lq = to_f(s[j]) * it - lse_s, lp = to_f(t[j]) * it - lse_t;
      const float x1 = lb + lp, x2 = l1b + lq, mm = fmaxf(x1, x2);
      const float lm = mm + log1pf(__expf(fminf(x1, x2) - mm));
      const float q = __expf(lq), pp = __expf(lp);
      const float a = (1.f - p.beta) * (lq - lm);
      acc_loss += p.beta * pp * (lp - lm) + (1.f - p.beta) * q * (lq - lm);
      acc_qa += q * a;
    }
    div = block_sum(acc_loss, sh);
    sqa = block_sum(acc_qa, sh);
  }
  const float cks = p.grad_scale * p.kd_weight * p.w_kd * it;
  const float cce = p.grad_scale * (1.f - p.kd_weight);
  // ---- gradient pass
  for (int64_t j = threadIdx.x; j < V; j += kThreads) {
    const float sv = to_f(s[j]);
    float gj = 0.f;
    if (j < Vc) {
      const float lq = sv * it - lse_s, lp = to_f(t[j]) * it - lse_t;
      const float q = __expf(lq);
      float gk;
      if (p.kind == 0) {
        gk = q - __expf(lp);
      } else if (p.kind == 1) {
        gk = q * (lq - lp - div);
      } else {
        const float x1 = lb + lp, x2 = l1b + lq, mm = fmaxf(x1, x2);
        const float lm = mm + log1pf(__expf(fminf(x1, x2) - mm));
        gk = q * ((1.f - p.beta) * (lq - lm) - sqa);
      }
      gj += cks * gk;
    }
    if (ce) gj += cce * (__expf(sv - lse_1) - (j == label ? 1.f : 0.f));
    g[j] = from_f<T>(gj);
  }
  if (threadIdx.x == 0) {
    row_kd[row] = div;
    row_ce[row] = ce ? lse_1 - s_label : 0.f;
  }
}

}  // namespace

cudaError_t kd_loss_fwd_bwd(DType t, const void* zs, int64_t zs_stride, const void* zt, int64_t zt_stride,
                            const int64_t* labels, void* grad, int64_t grad_stride, float* row_kd, float* row_ce,
                            int64_t N, int64_t V, int64_t Vt, const KdParams& p, cudaStream_t stream) {
  if (!zs || !labels || !grad || !row_kd || !row_ce || N < 0 || V <= 0 || p.kind < 0 || p.kind > 2 || !(p.tau > 0.f) ||
      p.kd_weight < 0.f || p.kd_weight > 1.f || (p.kind == 2 && !(p.beta > 0.f && p.beta < 1.f)) ||
      (zt && Vt <= 0) || N > INT32_MAX)
    return cudaErrorInvalidValue;
  if (N == 0) return cudaSuccess;
  BONSAI_DISPATCH(t, {
    kd_kernel<scalar_t><<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
        static_cast<const scalar_t*>(zs), zs_stride, static_cast<const scalar_t*>(zt), zt_stride, labels,
        static_cast<scalar_t*>(grad), grad_stride, row_kd, row_ce, V, Vt, p);
  });
  return launch_status();
}

}  // namespace bonsai::kernels
