// Decode attention over the KV cache, split-K ("flash-decoding"): grid (splits, Hkv, B). A block
// reads one chunk of positions of one kv head once and serves all G = H/Hkv query heads of that
// group from it (GQA: K/V bytes are read once per group, not once per query head). Within a block,
// groups of D/8 lanes each own one position at a time (16-byte loads, a 128/256-byte row per group,
// coalesced), keep an online softmax per query head, and are merged through shared memory; a second
// kernel merges the splits. Floor: the K and V bytes of the attended positions / HBM bandwidth.
#include "runtime/kernels/common.cuh"

namespace bonsai::kernels {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxG = 8;

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attn_split_kernel(const T* __restrict__ q, const T* __restrict__ kc,
                                                             const T* __restrict__ vc, const int32_t* __restrict__ slot,
                                                             const int32_t* __restrict__ len, float* part_acc,
                                                             float* part_ml, int H, int Hkv, int64_t max_seq,
                                                             int chunk, int S, float scale) {
  constexpr int V = Vec<T>::N;
  constexpr int LPP = D / V;  // lanes per position
  constexpr int GROUPS = kThreads / LPP;
  static_assert(LPP <= 32 && 32 % LPP == 0, "a position's lanes must sit in one warp");
  __shared__ float s_m[GROUPS][kMaxG], s_l[GROUPS][kMaxG];
  __shared__ float s_acc[GROUPS][kMaxG][D];

  const int b = blockIdx.z, kvh = blockIdx.y, split = blockIdx.x;
  const int G = H / Hkv;
  const int L = len[b];
  const int s0 = split * chunk;
  if (s0 >= L) return;  // the combine kernel reads only splits that hold positions
  const int s1 = min(s0 + chunk, L);
  const int grp = threadIdx.x / LPP, gl = threadIdx.x % LPP;

  float qv[kMaxG][V];
#pragma unroll
  for (int g = 0; g < kMaxG; ++g) {
    if (g < G) {
      Vec<T> t;
      t.load(q + (static_cast<int64_t>(b) * H + kvh * G + g) * D + gl * V);
#pragma unroll
      for (int i = 0; i < V; ++i) qv[g][i] = t.get(i) * scale;
    }
  }
  float m[kMaxG], l[kMaxG], acc[kMaxG][V];
#pragma unroll
  for (int g = 0; g < kMaxG; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int i = 0; i < V; ++i) acc[g][i] = 0.f;
  }
  const int64_t base = (static_cast<int64_t>(slot[b]) * Hkv + kvh) * max_seq * D + gl * V;
  // The trip count is the same for every thread of the block (the shuffles below need the whole
  // warp); a group whose position is past the chunk reads nothing and skips the update.
  for (int pb = s0; pb < s1; pb += GROUPS) {
    const int p = pb + grp;
    const bool live = p < s1;
    Vec<T> kv, vv;
    if (live) {
      kv.load(kc + base + static_cast<int64_t>(p) * D);
      vv.load(vc + base + static_cast<int64_t>(p) * D);
    } else {
      kv.raw = make_uint4(0, 0, 0, 0);
      vv.raw = kv.raw;
    }
#pragma unroll
    for (int g = 0; g < kMaxG; ++g) {
      if (g < G) {
        float d = 0.f;
#pragma unroll
        for (int i = 0; i < V; ++i) d = fmaf(qv[g][i], kv.get(i), d);
#pragma unroll
        for (int o = LPP / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
        if (!live) continue;
        const float mn = fmaxf(m[g], d);
        const float corr = __expf(m[g] - mn), pe = __expf(d - mn);
        l[g] = l[g] * corr + pe;
#pragma unroll
        for (int i = 0; i < V; ++i) acc[g][i] = fmaf(acc[g][i], corr, pe * vv.get(i));
        m[g] = mn;
      }
    }
  }
#pragma unroll
  for (int g = 0; g < kMaxG; ++g) {
    if (g < G) {
      if (gl == 0) {
        s_m[grp][g] = m[g];
        s_l[grp][g] = l[g];
      }
#pragma unroll
      for (int i = 0; i < V; ++i) s_acc[grp][g][gl * V + i] = acc[g][i];
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < G * D; idx += kThreads) {
    const int g = idx / D, d = idx % D;
    float M = -INFINITY;
    for (int r = 0; r < GROUPS; ++r) M = fmaxf(M, s_m[r][g]);
    float Ls = 0.f, A = 0.f;
    for (int r = 0; r < GROUPS; ++r) {
      if (s_m[r][g] == -INFINITY) continue;  // a group that saw no position
      const float e = __expf(s_m[r][g] - M);
      Ls += s_l[r][g] * e;
      A += s_acc[r][g][d] * e;
    }
    const int64_t h = static_cast<int64_t>(b) * H + kvh * G + g;
    part_acc[(h * S + split) * D + d] = A;
    if (d == 0) {
      part_ml[(h * S + split) * 2] = M;
      part_ml[(h * S + split) * 2 + 1] = Ls;
    }
  }
}

template <typename T>
__global__ void attn_combine_kernel(const float* part_acc, const float* part_ml, const int32_t* len, T* out, int H,
                                    int D, int chunk, int S) {
  const int64_t h = blockIdx.x;  // b*H + head
  const int b = static_cast<int>(h / H);
  const int ns = min(S, (len[b] + chunk - 1) / chunk);
  float M = -INFINITY;
  for (int s = 0; s < ns; ++s) M = fmaxf(M, part_ml[(h * S + s) * 2]);
  float Ls = 0.f;
  for (int s = 0; s < ns; ++s) Ls += part_ml[(h * S + s) * 2 + 1] * __expf(part_ml[(h * S + s) * 2] - M);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float A = 0.f;
    for (int s = 0; s < ns; ++s) A += part_acc[(h * S + s) * D + d] * __expf(part_ml[(h * S + s) * 2] - M);
    out[h * D + d] = from_f<T>(ns > 0 ? A / Ls : 0.f);
  }
}

template <typename T, int D>
void launch(const T* q, const T* kc, const T* vc, const int32_t* slot, const int32_t* len, T* out, float* acc,
            float* ml, int B, int H, int Hkv, int64_t max_seq, int S, float scale, cudaStream_t s) {
  const int chunk = static_cast<int>((max_seq + S - 1) / S);
  attn_split_kernel<T, D><<<dim3(S, Hkv, B), kThreads, 0, s>>>(q, kc, vc, slot, len, acc, ml, H, Hkv, max_seq, chunk,
                                                                S, scale);
  attn_combine_kernel<T><<<B * H, D, 0, s>>>(acc, ml, len, out, H, D, chunk, S);
}

}  // namespace

int64_t attention_workspace_bytes(int64_t B, int64_t H, int64_t D, int64_t num_splits) {
  return B * H * num_splits * (D + 2) * static_cast<int64_t>(sizeof(float)) + 256;
}

cudaError_t decode_attention(DType t, const void* q, const void* k_cache, const void* v_cache, const int32_t* slot,
                             const int32_t* len, void* out, void* workspace, int64_t B, int64_t H, int64_t Hkv,
                             int64_t D, int64_t max_seq, int64_t num_splits, float scale, cudaStream_t stream) {
  if (!q || !k_cache || !v_cache || !slot || !len || !out || !workspace || B <= 0 || Hkv <= 0 || H % Hkv != 0 ||
      H / Hkv > kMaxG || num_splits <= 0 || num_splits > 65535 || max_seq <= 0 || B > 65535)
    return cudaErrorInvalidValue;
  if (D != 64 && D != 128) return cudaErrorInvalidValue;
  float* acc = static_cast<float*>(workspace);
  float* ml = acc + B * H * num_splits * D;
  const int Bi = static_cast<int>(B), Hi = static_cast<int>(H), Hk = static_cast<int>(Hkv), S = static_cast<int>(num_splits);
  BONSAI_DISPATCH(t, {
    auto* qp = static_cast<const scalar_t*>(q);
    auto* kp = static_cast<const scalar_t*>(k_cache);
    auto* vp = static_cast<const scalar_t*>(v_cache);
    auto* op = static_cast<scalar_t*>(out);
    if (D == 64) launch<scalar_t, 64>(qp, kp, vp, slot, len, op, acc, ml, Bi, Hi, Hk, max_seq, S, scale, stream);
    else launch<scalar_t, 128>(qp, kp, vp, slot, len, op, acc, ml, Bi, Hi, Hk, max_seq, S, scale, stream);
  });
  return launch_status();
}

}  // namespace bonsai::kernels
