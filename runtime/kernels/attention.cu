// Decode attention over the KV cache, split-K ("flash-decoding"): grid (splits, Hkv, B). A block
// reads one chunk of positions of one kv head once and serves all G = H/Hkv query heads of that
// group from it (GQA: K/V bytes are read once per group, not once per query head). Within a block,
// groups of D/8 lanes each own one position at a time (16-byte loads, a 128/256-byte row per group,
// coalesced), keep an online softmax per query head, and are merged through shared memory; a second
// kernel merges the splits, or (with `counters`) the last block of each (sequence, kv head) to finish
// does, so the step has one launch fewer per layer. Floor: the K and V bytes of the attended
// positions / HBM bandwidth.
//
// The chunk a split covers is computed on the device from the sequence's current length (not from
// the cache's capacity), so a captured graph spreads a short context over as many blocks as a long
// one: len 133 with 64 splits is 9 blocks per kv head of one 16-position step each, where chunks
// of max_seq/S left one block per head walking all 133 positions. Each group loads the next
// position's K/V row before using the current one, so two loads per lane are in flight.
#include "runtime/kernels/common.cuh"

namespace bonsai::kernels {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxG = 8;

// Positions per split for a sequence of L positions over S splits: a multiple of the block's
// positions per step (gran), at least one step. Both kernels compute it the same way.
__device__ __forceinline__ int split_chunk(int L, int S, int gran) {
  const int c = (L + S - 1) / S;
  return max(gran, (c + gran - 1) / gran * gran);
}

// The merge of a head's splits, shared by the combine kernel and the folded merge so both compute the
// same bits: mget(s) / lget(s) give split s's running maximum and sum, aget(s) its partial output.
template <class Fm, class Fl>
__device__ __forceinline__ void merge_stats(int ns, Fm&& mget, Fl&& lget, float& M, float& inv) {
  M = -INFINITY;
  for (int s = 0; s < ns; ++s) M = fmaxf(M, mget(s));
  float Ls = 0.f;
  for (int s = 0; s < ns; ++s) Ls += lget(s) * __expf(mget(s) - M);
  inv = ns > 0 ? 1.f / Ls : 0.f;
}
template <class Fm, class Fa>
__device__ __forceinline__ float merge_out(int ns, float M, float inv, Fm&& mget, Fa&& aget) {
  float A = 0.f;
#pragma unroll 8
  for (int s = 0; s < ns; ++s) A += aget(s) * __expf(mget(s) - M);
  return A * inv;
}

// The folded merge, run by every thread of each active split block after its partials are written:
// they are made visible device-wide, then counted; the block that brings the count to the number of
// active splits merges them all (reading through L2). The count wraps to zero on that last
// increment (atomicInc), ready for the next call or replay.
template <typename T, int GT>
__device__ __forceinline__ void fold_merge(const float* part_acc, const float* part_ml, T* out, unsigned* counters,
                                           int b, int kvh, int H, int Hkv, int G, int D, int S, int ns) {
  __shared__ bool s_last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();  // after the barrier: orders every thread's partials before the count
    const unsigned last = static_cast<unsigned>(ns - 1);
    s_last = atomicInc(counters + static_cast<int64_t>(b) * Hkv + kvh, last) == last;
    __threadfence();  // the other blocks' partials are read after the count that saw them all
  }
  __syncthreads();
  if (!s_last) return;
  __shared__ float s_M[GT], s_inv[GT];
  const int64_t h0 = static_cast<int64_t>(b) * H + kvh * G;
  if (threadIdx.x < G) {
    const int64_t h = h0 + threadIdx.x;
    merge_stats(ns, [&](int s) { return __ldcg(part_ml + (h * S + s) * 2); },
                [&](int s) { return __ldcg(part_ml + (h * S + s) * 2 + 1); }, s_M[threadIdx.x], s_inv[threadIdx.x]);
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < G * D; idx += kThreads) {
    const int g = idx / D, d = idx % D;
    const int64_t h = h0 + g;
    out[h * D + d] = from_f<T>(merge_out(ns, s_M[g], s_inv[g], [&](int s) { return __ldcg(part_ml + (h * S + s) * 2); },
                                         [&](int s) { return __ldcg(part_acc + (h * S + s) * D + d); }));
  }
}

// GT: query heads per kv head rounded up to 1, 2, 4 or 8 (registers and shared memory scale with it).
// FOLD: counters is non-null and the last block merges (a separate instantiation: the merge code
// costs registers the default path should not pay).
template <typename T, int D, int GT, bool FOLD>
__global__ void __launch_bounds__(kThreads) attn_split_kernel(const T* __restrict__ q, const T* __restrict__ kc,
                                                             const T* __restrict__ vc, const int32_t* __restrict__ slot,
                                                             const int32_t* __restrict__ len, float* part_acc,
                                                             float* part_ml, int H, int Hkv, int64_t max_seq,
                                                             int S, float scale, T* out, unsigned* counters) {
  pdl_trigger();  // with counters there is no combine: the output projection (a dependent GEMV) may start
  constexpr int V = Vec<T>::N;
  constexpr int LPP = D / V;  // lanes per position
  constexpr int GROUPS = kThreads / LPP;
  static_assert(LPP <= 32 && 32 % LPP == 0, "a position's lanes must sit in one warp");
  __shared__ float s_m[GROUPS][GT], s_l[GROUPS][GT];
  __shared__ float s_acc[GROUPS][GT][D];

  const int b = blockIdx.z, kvh = blockIdx.y, split = blockIdx.x;
  const int G = H / Hkv;
  const int L = len[b];
  const int chunk = split_chunk(L, S, GROUPS);
  const int s0 = split * chunk;
  if (s0 >= L) {  // the merge reads only splits that hold positions
    if (FOLD && L <= 0 && split == 0)  // an empty sequence: no block counts, split 0 writes the zeros
      for (int idx = threadIdx.x; idx < G * D; idx += kThreads)
        out[(static_cast<int64_t>(b) * H + kvh * G) * D + idx] = from_f<T>(0.f);
    return;
  }
  const int s1 = min(s0 + chunk, L);
  const int grp = threadIdx.x / LPP, gl = threadIdx.x % LPP;

  float qv[GT][V];
#pragma unroll
  for (int g = 0; g < GT; ++g) {
    if (g < G) {
      Vec<T> t;
      t.load(q + (static_cast<int64_t>(b) * H + kvh * G + g) * D + gl * V);
#pragma unroll
      for (int i = 0; i < V; ++i) qv[g][i] = t.get(i) * scale;
    }
  }
  float m[GT], l[GT], acc[GT][V];
#pragma unroll
  for (int g = 0; g < GT; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int i = 0; i < V; ++i) acc[g][i] = 0.f;
  }
  const int64_t base = (static_cast<int64_t>(slot[b]) * Hkv + kvh) * max_seq * D + gl * V;
  // The trip count is the same for every thread of the block (the shuffles below need the whole
  // warp); a group whose position is past the chunk reads nothing and skips the update.
  Vec<T> kv, vv;
  kv.raw = make_uint4(0, 0, 0, 0);
  vv.raw = kv.raw;
  if (s0 + grp < s1) {
    kv.load(kc + base + static_cast<int64_t>(s0 + grp) * D);
    vv.load(vc + base + static_cast<int64_t>(s0 + grp) * D);
  }
  for (int pb = s0; pb < s1; pb += GROUPS) {
    const int p = pb + grp;
    const bool live = p < s1;
    Vec<T> kn, vn;  // the next step's row, in flight while this one is used
    kn.raw = make_uint4(0, 0, 0, 0);
    vn.raw = kn.raw;
    if (p + GROUPS < s1) {
      kn.load(kc + base + static_cast<int64_t>(p + GROUPS) * D);
      vn.load(vc + base + static_cast<int64_t>(p + GROUPS) * D);
    }
#pragma unroll
    for (int g = 0; g < GT; ++g) {
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
    kv = kn;
    vv = vn;
  }
#pragma unroll
  for (int g = 0; g < GT; ++g) {
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
  if constexpr (FOLD) fold_merge<T, GT>(part_acc, part_ml, out, counters, b, kvh, H, Hkv, G, D, S, (L + chunk - 1) / chunk);
}

// One block per (sequence, query head): the splits' maxima and sums are staged in shared memory
// (2 * num_splits floats), so only the D-wide partial outputs are read from global memory, and
// those with independent loads.
template <typename T>
__global__ void attn_combine_kernel(const float* part_acc, const float* part_ml, const int32_t* len, T* out, int H,
                                    int D, int gran, int S) {
  pdl_trigger();  // the output projection (a dependent GEMV) may start loading its weights
  extern __shared__ float s_ml[];  // [0, S): maxima, [S, 2S): sums
  const int64_t h = blockIdx.x;    // b*H + head
  const int b = static_cast<int>(h / H);
  const int L = len[b];
  const int ns = L > 0 ? (L + split_chunk(L, S, gran) - 1) / split_chunk(L, S, gran) : 0;
  for (int s = threadIdx.x; s < ns; s += blockDim.x) {
    s_ml[s] = part_ml[(h * S + s) * 2];
    s_ml[S + s] = part_ml[(h * S + s) * 2 + 1];
  }
  __syncthreads();
  auto mget = [&](int s) { return s_ml[s]; };
  float M, inv;
  merge_stats(ns, mget, [&](int s) { return s_ml[S + s]; }, M, inv);
  for (int d = threadIdx.x; d < D; d += blockDim.x)
    out[h * D + d] = from_f<T>(merge_out(ns, M, inv, mget, [&](int s) { return part_acc[(h * S + s) * D + d]; }));
}

template <typename T, int D, int GT>
void launch(const T* q, const T* kc, const T* vc, const int32_t* slot, const int32_t* len, T* out, float* acc,
            float* ml, int B, int H, int Hkv, int64_t max_seq, int S, float scale, unsigned* counters, cudaStream_t s) {
  constexpr int gran = kThreads / (D / Vec<T>::N);  // positions per block step (GROUPS)
  const dim3 grid(S, Hkv, B);
  if (counters) {
    attn_split_kernel<T, D, GT, true><<<grid, kThreads, 0, s>>>(q, kc, vc, slot, len, acc, ml, H, Hkv, max_seq, S, scale,
                                                                 out, counters);
  } else {
    attn_split_kernel<T, D, GT, false><<<grid, kThreads, 0, s>>>(q, kc, vc, slot, len, acc, ml, H, Hkv, max_seq, S,
                                                                  scale, out, counters);
    attn_combine_kernel<T><<<B * H, D, 2 * S * sizeof(float), s>>>(acc, ml, len, out, H, D, gran, S);
  }
}

template <typename T, int D>
void launch_g(const T* q, const T* kc, const T* vc, const int32_t* slot, const int32_t* len, T* out, float* acc,
              float* ml, int B, int H, int Hkv, int64_t max_seq, int S, float scale, unsigned* counters,
              cudaStream_t s) {
  const int G = H / Hkv;
  if (G <= 1) launch<T, D, 1>(q, kc, vc, slot, len, out, acc, ml, B, H, Hkv, max_seq, S, scale, counters, s);
  else if (G <= 2) launch<T, D, 2>(q, kc, vc, slot, len, out, acc, ml, B, H, Hkv, max_seq, S, scale, counters, s);
  else if (G <= 4) launch<T, D, 4>(q, kc, vc, slot, len, out, acc, ml, B, H, Hkv, max_seq, S, scale, counters, s);
  else launch<T, D, 8>(q, kc, vc, slot, len, out, acc, ml, B, H, Hkv, max_seq, S, scale, counters, s);
}

}  // namespace

int64_t attention_workspace_bytes(int64_t B, int64_t H, int64_t D, int64_t num_splits) {
  return B * H * num_splits * (D + 2) * static_cast<int64_t>(sizeof(float)) + 256;
}

cudaError_t decode_attention(DType t, const void* q, const void* k_cache, const void* v_cache, const int32_t* slot,
                             const int32_t* len, void* out, void* workspace, int64_t B, int64_t H, int64_t Hkv,
                             int64_t D, int64_t max_seq, int64_t num_splits, float scale, cudaStream_t stream,
                             uint32_t* counters) {
  if (!q || !k_cache || !v_cache || !slot || !len || !out || !workspace || B <= 0 || Hkv <= 0 || H % Hkv != 0 ||
      H / Hkv > kMaxG || num_splits <= 0 || num_splits > 1024 || max_seq <= 0 || B > 65535)
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
    if (D == 64) launch_g<scalar_t, 64>(qp, kp, vp, slot, len, op, acc, ml, Bi, Hi, Hk, max_seq, S, scale, counters, stream);
    else launch_g<scalar_t, 128>(qp, kp, vp, slot, len, op, acc, ml, Bi, Hi, Hk, max_seq, S, scale, counters, stream);
  });
  return launch_status();
}

}  // namespace bonsai::kernels
