// AVX2/FMA/F16C matrix-vector rows and single-query attention (see gemv.h). Compiled with -mavx2
// -mfma -mf16c; called only when gemv_supported() says the CPU has them.
#include "runtime/cpu/gemv.h"

#include <immintrin.h>

namespace bonsai::cpu {
namespace {

template <WType T> inline __m256 load8(const void* base, int64_t i);
template <> inline __m256 load8<WType::F32>(const void* base, int64_t i) {
  return _mm256_loadu_ps(static_cast<const float*>(base) + i);
}
template <> inline __m256 load8<WType::BF16>(const void* base, int64_t i) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
template <> inline __m256 load8<WType::F16>(const void* base, int64_t i) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i)));
}

template <WType T> inline float load1(const void* base, int64_t i);
template <> inline float load1<WType::F32>(const void* base, int64_t i) { return static_cast<const float*>(base)[i]; }
template <> inline float load1<WType::BF16>(const void* base, int64_t i) {
  uint32_t u = static_cast<uint32_t>(static_cast<const uint16_t*>(base)[i]) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
template <> inline float load1<WType::F16>(const void* base, int64_t i) {
  return _cvtsh_ss(static_cast<const uint16_t*>(base)[i]);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline int64_t elem_size(WType t) { return t == WType::F32 ? 4 : 2; }

// One row of W against B vectors; 4 independent accumulators per vector hide the FMA latency.
template <WType T, int B>
void rows_kernel(const void* W, const float* x, int64_t K, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  const int64_t K32 = K / 32 * 32, K8 = K / 8 * 8;
  for (int64_t n = n0; n < n1; ++n) {
    const void* w = static_cast<const char*>(W) + n * K * elem_size(T);
    __m256 acc[B][4];
    for (int b = 0; b < B; ++b)
      for (int u = 0; u < 4; ++u) acc[b][u] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k < K32; k += 32) {
      const __m256 w0 = load8<T>(w, k), w1 = load8<T>(w, k + 8), w2 = load8<T>(w, k + 16), w3 = load8<T>(w, k + 24);
      for (int b = 0; b < B; ++b) {
        const float* xb = x + b * K + k;
        acc[b][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xb), acc[b][0]);
        acc[b][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xb + 8), acc[b][1]);
        acc[b][2] = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xb + 16), acc[b][2]);
        acc[b][3] = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xb + 24), acc[b][3]);
      }
    }
    for (; k < K8; k += 8) {
      const __m256 w0 = load8<T>(w, k);
      for (int b = 0; b < B; ++b) acc[b][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + b * K + k), acc[b][0]);
    }
    for (int b = 0; b < B; ++b) {
      float s = hsum(_mm256_add_ps(_mm256_add_ps(acc[b][0], acc[b][1]), _mm256_add_ps(acc[b][2], acc[b][3])));
      for (int64_t kk = k; kk < K; ++kk) s += load1<T>(w, kk) * x[b * K + kk];
      y[b * ldy + n] = s;
    }
  }
}

template <WType T>
void dispatch_b(int B, const void* W, const float* x, int64_t K, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  switch (B) {
    case 1: return rows_kernel<T, 1>(W, x, K, n0, n1, y, ldy);
    case 2: return rows_kernel<T, 2>(W, x, K, n0, n1, y, ldy);
    case 3: return rows_kernel<T, 3>(W, x, K, n0, n1, y, ldy);
    case 4: return rows_kernel<T, 4>(W, x, K, n0, n1, y, ldy);
    default:  // 5..8: two passes of at most 4 vectors (W is read twice, still from cache per row)
      rows_kernel<T, 4>(W, x, K, n0, n1, y, ldy);
      return dispatch_b<T>(B - 4, W, x + 4 * K, K, n0, n1, y + 4 * ldy, ldy);
  }
}

// dot(q, row) over D (q fp32).
template <WType T>
inline float dot_row(const float* q, const void* row, int64_t D) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t d = 0;
  for (; d + 16 <= D; d += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8<T>(row, d), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d + 8), load8<T>(row, d + 8), a1);
  }
  for (; d + 8 <= D; d += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8<T>(row, d), a0);
  float s = hsum(_mm256_add_ps(a0, a1));
  for (; d < D; ++d) s += q[d] * load1<T>(row, d);
  return s;
}

template <WType T>
void attend_kernel(const float* q, const void* k, const void* v, int64_t L, int64_t D, float scale, float* p,
                   float* out) {
  const int64_t es = elem_size(T);
  float mx = -__builtin_inff();
  for (int64_t j = 0; j < L; ++j) {
    p[j] = dot_row<T>(q, static_cast<const char*>(k) + j * D * es, D) * scale;
    mx = p[j] > mx ? p[j] : mx;
  }
  float sum = 0.f;
  for (int64_t j = 0; j < L; ++j) sum += (p[j] = __builtin_expf(p[j] - mx));
  const float inv = 1.f / sum;
  for (int64_t d = 0; d < D; ++d) out[d] = 0.f;
  for (int64_t j = 0; j < L; ++j) {
    const void* row = static_cast<const char*>(v) + j * D * es;
    const float w = p[j] * inv;
    const __m256 wv = _mm256_set1_ps(w);
    int64_t d = 0;
    for (; d + 8 <= D; d += 8) _mm256_storeu_ps(out + d, _mm256_fmadd_ps(wv, load8<T>(row, d), _mm256_loadu_ps(out + d)));
    for (; d < D; ++d) out[d] += w * load1<T>(row, d);
  }
}

}  // namespace

void attend_row(WType t, const float* q, const void* k, const void* v, int64_t L, int64_t D, float scale,
                float* scratch, float* out) {
  switch (t) {
    case WType::F32: return attend_kernel<WType::F32>(q, k, v, L, D, scale, scratch, out);
    case WType::BF16: return attend_kernel<WType::BF16>(q, k, v, L, D, scale, scratch, out);
    case WType::F16: return attend_kernel<WType::F16>(q, k, v, L, D, scale, scratch, out);
  }
}

bool gemv_supported() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return ok;
}

void gemv_rows(WType wt, const void* W, const float* x, int B, int64_t K, int64_t n0, int64_t n1, float* y,
               int64_t ldy) {
  switch (wt) {
    case WType::F32: return dispatch_b<WType::F32>(B, W, x, K, n0, n1, y, ldy);
    case WType::BF16: return dispatch_b<WType::BF16>(B, W, x, K, n0, n1, y, ldy);
    case WType::F16: return dispatch_b<WType::F16>(B, W, x, K, n0, n1, y, ldy);
  }
}

}  // namespace bonsai::cpu
