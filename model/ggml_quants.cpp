// ggml block formats: geometry table, scalar dequantizers and the Q8_0 / F16 / BF16 encoders.
//
// Exactness: every quantized format here decodes as (f16 scale) x (small integer) [x small
// integer], which is exact in float32 (at most 11 + 8 + 6 significant bits), followed by at most
// one add or subtract. So there is exactly one rounding per element and the result is bit-identical
// to ggml's and to gguf-py's numpy code whatever the operation order or FMA contraction.
#include "model/ggml_quants.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "bonsai's GGUF code reads little-endian data directly and needs a little-endian host"
#endif

namespace bonsai::gguf {
namespace {

constexpr int64_t kQK = 32;    // elements in a legacy block (Q4_0 ... Q8_1)
constexpr int64_t kQKK = 256;  // elements in a K-quant super-block

struct TypeTraits {
  const char* name;
  int64_t elems;
  int64_t bytes;
  bool dequant;
};

// Geometry of every type ggml still defines, indexed by type number; a null name marks a number
// ggml has retired (4, 5, 31-33, 36-38).
constexpr TypeTraits kTypes[] = {
    {"F32", 1, 4, true},           // 0
    {"F16", 1, 2, true},           // 1
    {"Q4_0", kQK, 18, true},       // 2
    {"Q4_1", kQK, 20, true},       // 3
    {nullptr, 0, 0, false},        // 4  (Q4_2, removed)
    {nullptr, 0, 0, false},        // 5  (Q4_3, removed)
    {"Q5_0", kQK, 22, true},       // 6
    {"Q5_1", kQK, 24, true},       // 7
    {"Q8_0", kQK, 34, true},       // 8
    {"Q8_1", kQK, 36, false},      // 9  (ggml: 2 halves + 32; gguf-py 0.17 still says 40)
    {"Q2_K", kQKK, 84, true},      // 10
    {"Q3_K", kQKK, 110, true},     // 11
    {"Q4_K", kQKK, 144, true},     // 12
    {"Q5_K", kQKK, 176, true},     // 13
    {"Q6_K", kQKK, 210, true},     // 14
    {"Q8_K", kQKK, 292, true},     // 15
    {"IQ2_XXS", kQKK, 66, false},  // 16
    {"IQ2_XS", kQKK, 74, false},   // 17
    {"IQ3_XXS", kQKK, 98, false},  // 18
    {"IQ1_S", kQKK, 50, false},    // 19
    {"IQ4_NL", kQK, 18, false},    // 20
    {"IQ3_S", kQKK, 110, false},   // 21
    {"IQ2_S", kQKK, 82, false},    // 22
    {"IQ4_XS", kQKK, 136, false},  // 23
    {"I8", 1, 1, false},           // 24
    {"I16", 1, 2, false},          // 25
    {"I32", 1, 4, false},          // 26
    {"I64", 1, 8, false},          // 27
    {"F64", 1, 8, false},          // 28
    {"IQ1_M", kQKK, 56, false},    // 29
    {"BF16", 1, 2, true},          // 30
    {nullptr, 0, 0, false},        // 31 (Q4_0_4_4, removed)
    {nullptr, 0, 0, false},        // 32 (Q4_0_4_8, removed)
    {nullptr, 0, 0, false},        // 33 (Q4_0_8_8, removed)
    {"TQ1_0", kQKK, 54, false},    // 34
    {"TQ2_0", kQKK, 66, false},    // 35
    {nullptr, 0, 0, false},        // 36 (IQ4_NL_4_4, removed)
    {nullptr, 0, 0, false},        // 37 (IQ4_NL_4_8, removed)
    {nullptr, 0, 0, false},        // 38 (IQ4_NL_8_8, removed)
    {"MXFP4", kQK, 17, false},     // 39
};

bool lookup(uint32_t raw, TypeTraits* out) {
  if (raw >= sizeof(kTypes) / sizeof(kTypes[0]) || kTypes[raw].name == nullptr) return false;
  *out = kTypes[raw];
  return true;
}

TypeTraits traits_or_throw(GgmlType t) {
  TypeTraits tr{};
  if (!lookup(static_cast<uint32_t>(t), &tr)) {
    throw Error("unknown ggml tensor type " + std::to_string(static_cast<uint32_t>(t)),
                "the file was written by a newer ggml or is corrupt");
  }
  return tr;
}

uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Exact half -> float by bit manipulation; used to fill the lookup table below.
float fp16_to_fp32_bits(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (mant << 13));  // inf / NaN
  if (exp == 0) {
    if (mant == 0) return bits_float(sign);  // signed zero
    // Subnormal: shift the mantissa up until its leading one becomes the implicit bit.
    int e = -1;
    do {
      mant <<= 1;
      ++e;
    } while ((mant & 0x400u) == 0);
    mant &= 0x3ffu;
    return bits_float(sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (mant << 13));
  }
  return bits_float(sign | (exp + 127 - 15) << 23 | (mant << 13));
}

// All 65536 halves decoded once: dequantizing F16 weights and block scales becomes one load each.
const float* fp16_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t i = 0; i < 65536; ++i) t[i] = fp16_to_fp32_bits(static_cast<uint16_t>(i));
    return t;
  }();
  return table.data();
}

// ---- dequantizers: one function per type, `nb` blocks from `x` into `y` ----

void deq_f16(const uint8_t* x, float* y, int64_t n, const float* h2f) {
  for (int64_t i = 0; i < n; ++i) y[i] = h2f[load_u16(x + 2 * i)];
}

void deq_bf16(const uint8_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    y[i] = bits_float(static_cast<uint32_t>(load_u16(x + 2 * i)) << 16);
}

// Q4_0: f16 d, 16 bytes of nibbles; low nibbles are elements 0..15, high nibbles 16..31; value
// (q-8)*d.
void deq_q4_0(const uint8_t* x, float* y, int64_t nb, const float* h2f) {
  for (int64_t b = 0; b < nb; ++b, x += 18, y += kQK) {
    const float d = h2f[load_u16(x)];
    const uint8_t* qs = x + 2;
    for (int j = 0; j < 16; ++j) {
      y[j] = static_cast<float>((qs[j] & 0x0f) - 8) * d;
      y[j + 16] = static_cast<float>((qs[j] >> 4) - 8) * d;
    }
  }
}

// Q4_1: f16 d, f16 m, 16 bytes of nibbles; value q*d + m.
void deq_q4_1(const uint8_t* x, float* y, int64_t nb, const float* h2f) {
  for (int64_t b = 0; b < nb; ++b, x += 20, y += kQK) {
    const float d = h2f[load_u16(x)];
    const float m = h2f[load_u16(x + 2)];
    const uint8_t* qs = x + 4;
    for (int j = 0; j < 16; ++j) {
      y[j] = static_cast<float>(qs[j] & 0x0f) * d + m;
      y[j + 16] = static_cast<float>(qs[j] >> 4) * d + m;
    }
  }
}

// Q5_0 / Q5_1: like Q4_x with a fifth bit per element in a little-endian u32 (bit j = element j).
void deq_q5_0(const uint8_t* x, float* y, int64_t nb, const float* h2f) {
  for (int64_t b = 0; b < nb; ++b, x += 22, y += kQK) {
    const float d = h2f[load_u16(x)];
    const uint32_t qh = load_u32(x + 2);
    const uint8_t* qs = x + 6;
    for (int j = 0; j < 16; ++j) {
      const int lo = (qs[j] & 0x0f) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      y[j] = static_cast<float>(lo - 16) * d;
      y[j + 16] = static_cast<float>(hi - 16) * d;
    }
  }
}

void deq_q5_1(const uint8_t* x, float* y, int64_t nb, const float* h2f) {
  for (int64_t b = 0; b < nb; ++b, x += 24, y += kQK) {
    const float d = h2f[load_u16(x)];
    const float m = h2f[load_u16(x + 2)];
    const uint32_t qh = load_u32(x + 4);
    const uint8_t* qs = x + 8;
    for (int j = 0; j < 16; ++j) {
      const int lo = (qs[j] & 0x0f) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      y[j] = static_cast<float>(lo) * d + m;
      y[j + 16] = static_cast<float>(hi) * d + m;
    }
  }
}

// Q8_0: f16 d, 32 int8; value q*d.
void deq_q8_0(const uint8_t* x, float* y, int64_t nb, const float* h2f) {
  for (int64_t b = 0; b < nb; ++b, x += 34, y += kQK) {
    const float d = h2f[load_u16(x)];
    const int8_t* qs = reinterpret_cast<const int8_t*>(x + 2);
    for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(qs[j]) * d;
  }
}

// Q2_K: 16 scale bytes (low nibble scale, high nibble min, one per 16 elements), 64 bytes of 2-bit
// quants, f16 d, f16 dmin. Element 128*h + 32*s + l takes bits 2s..2s+1 of qs[32*h + l].
void deq_q2_k(const uint8_t* x, float* y, int64_t nb, const float* h2f) {
  for (int64_t b = 0; b < nb; ++b, x += 84, y += kQKK) {
    const uint8_t* sc = x;
    const uint8_t* qs = x + 16;
    const float d = h2f[load_u16(x + 80)];
    const float dmin = h2f[load_u16(x + 82)];
    for (int h = 0; h < 2; ++h) {
      for (int s = 0; s < 4; ++s) {
        for (int g = 0; g < 2; ++g) {
          const int group = 8 * h + 2 * s + g;
          const float dl = d * static_cast<float>(sc[group] & 0x0f);
          const float ml = dmin * static_cast<float>(sc[group] >> 4);
          float* out = y + 16 * group;
          const uint8_t* q = qs + 32 * h + 16 * g;
          for (int l = 0; l < 16; ++l) out[l] = dl * static_cast<float>((q[l] >> (2 * s)) & 3) - ml;
        }
      }
    }
  }
}

// Q3_K's 16 six-bit signed scales: low 4 bits are nibble (i / 8) of byte (i % 8), high 2 bits are
// bits 2*(i / 4).. of byte 8 + (i % 4); stored with a +32 bias.
void unpack_q3_k_scales(const uint8_t* s, int* out) {
  for (int i = 0; i < 16; ++i) {
    const int lo = (s[i % 8] >> (4 * (i / 8))) & 0x0f;
    const int hi = (s[8 + i % 4] >> (2 * (i / 4))) & 0x03;
    out[i] = (lo | (hi << 4)) - 32;
  }
}

// Q3_K: 32 bytes hmask, 64 bytes of 2-bit quants, 12 scale bytes, f16 d. Element 128*h + 32*s + l
// has low bits (qs[32*h + l] >> 2s) & 3 and subtracts 4 unless bit 4*h + s of hmask[l] is set.
void deq_q3_k(const uint8_t* x, float* y, int64_t nb, const float* h2f) {
  for (int64_t b = 0; b < nb; ++b, x += 110, y += kQKK) {
    const uint8_t* hmask = x;
    const uint8_t* qs = x + 32;
    const float d = h2f[load_u16(x + 108)];
    int scales[16];
    unpack_q3_k_scales(x + 96, scales);
    for (int h = 0; h < 2; ++h) {
      for (int s = 0; s < 4; ++s) {
        const int hbit = 4 * h + s;
        for (int g = 0; g < 2; ++g) {
          const int group = 8 * h + 2 * s + g;
          const float dl = d * static_cast<float>(scales[group]);
          float* out = y + 16 * group;
          for (int l = 16 * g; l < 16 * g + 16; ++l) {
            const int q = ((qs[32 * h + l] >> (2 * s)) & 3) - (((hmask[l] >> hbit) & 1) ? 0 : 4);
            out[l - 16 * g] = dl * static_cast<float>(q);
          }
        }
      }
    }
  }
}

// Q4_K / Q5_K pack 8 six-bit scales and 8 six-bit mins into 12 bytes: entries 0..3 sit in the low 6
// bits of bytes 0..3 (scales) and 4..7 (mins); entries 4..7 take their low 4 bits from the nibbles
// of bytes 8..11 and their top 2 bits from the top bits of bytes 0..3 (scales) / 4..7 (mins).
void unpack_k_scales(const uint8_t* s, int* sc, int* mn) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = s[j] & 63;
    mn[j] = s[j + 4] & 63;
    sc[j + 4] = (s[j + 8] & 0x0f) | ((s[j] >> 6) << 4);
    mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
  }
}

// Q4_K: f16 d, f16 dmin, 12 scale bytes, 128 bytes of nibbles. Chunk c (64 elements) uses
// qs[32c..]: low nibbles are sub-block 2c, high nibbles sub-block 2c+1; value (d*sc)*q - dmin*m.
void deq_q4_k(const uint8_t* x, float* y, int64_t nb, const float* h2f) {
  for (int64_t b = 0; b < nb; ++b, x += 144, y += kQKK) {
    const float d = h2f[load_u16(x)];
    const float dmin = h2f[load_u16(x + 2)];
    int sc[8], mn[8];
    unpack_k_scales(x + 4, sc, mn);
    const uint8_t* qs = x + 16;
    for (int c = 0; c < 4; ++c) {
      const float d1 = d * static_cast<float>(sc[2 * c]), m1 = dmin * static_cast<float>(mn[2 * c]);
      const float d2 = d * static_cast<float>(sc[2 * c + 1]);
      const float m2 = dmin * static_cast<float>(mn[2 * c + 1]);
      const uint8_t* q = qs + 32 * c;
      float* out = y + 64 * c;
      for (int l = 0; l < 32; ++l) out[l] = d1 * static_cast<float>(q[l] & 0x0f) - m1;
      for (int l = 0; l < 32; ++l) out[32 + l] = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

// Q5_K: Q4_K plus 32 bytes qh; the fifth bit of sub-block k's element l is bit k of qh[l].
void deq_q5_k(const uint8_t* x, float* y, int64_t nb, const float* h2f) {
  for (int64_t b = 0; b < nb; ++b, x += 176, y += kQKK) {
    const float d = h2f[load_u16(x)];
    const float dmin = h2f[load_u16(x + 2)];
    int sc[8], mn[8];
    unpack_k_scales(x + 4, sc, mn);
    const uint8_t* qh = x + 16;
    const uint8_t* qs = x + 48;
    for (int c = 0; c < 4; ++c) {
      const int k1 = 2 * c, k2 = 2 * c + 1;
      const float d1 = d * static_cast<float>(sc[k1]), m1 = dmin * static_cast<float>(mn[k1]);
      const float d2 = d * static_cast<float>(sc[k2]), m2 = dmin * static_cast<float>(mn[k2]);
      const uint8_t* q = qs + 32 * c;
      float* out = y + 64 * c;
      for (int l = 0; l < 32; ++l) {
        const int v = (q[l] & 0x0f) | (((qh[l] >> k1) & 1) << 4);
        out[l] = d1 * static_cast<float>(v) - m1;
      }
      for (int l = 0; l < 32; ++l) {
        const int v = (q[l] >> 4) | (((qh[l] >> k2) & 1) << 4);
        out[32 + l] = d2 * static_cast<float>(v) - m2;
      }
    }
  }
}

// Q6_K: 128 bytes low nibbles, 64 bytes high 2-bit pairs, 16 int8 scales, f16 d. In half h, element
// 32*s + l takes nibble (s / 2) of ql[64*h + 32*(s % 2) + l] and bits 2s..2s+1 of qh[32*h + l];
// value (d*scale[e / 16]) * (q - 32).
void deq_q6_k(const uint8_t* x, float* y, int64_t nb, const float* h2f) {
  for (int64_t b = 0; b < nb; ++b, x += 210, y += kQKK) {
    const uint8_t* ql = x;
    const uint8_t* qh = x + 128;
    const int8_t* scales = reinterpret_cast<const int8_t*>(x + 192);
    const float d = h2f[load_u16(x + 208)];
    for (int h = 0; h < 2; ++h) {
      for (int s = 0; s < 4; ++s) {
        const uint8_t* lo = ql + 64 * h + 32 * (s & 1);
        const int lo_shift = 4 * (s >> 1);
        for (int g = 0; g < 2; ++g) {
          const int group = 8 * h + 2 * s + g;
          const float dl = d * static_cast<float>(scales[group]);
          float* out = y + 16 * group;
          for (int l = 16 * g; l < 16 * g + 16; ++l) {
            const int q = ((lo[l] >> lo_shift) & 0x0f) | (((qh[32 * h + l] >> (2 * s)) & 3) << 4);
            out[l - 16 * g] = dl * static_cast<float>(q - 32);
          }
        }
      }
    }
  }
}

// Q8_K: float32 d, 256 int8, 16 int16 block sums (unused for decoding).
void deq_q8_k(const uint8_t* x, float* y, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, x += 292, y += kQKK) {
    const float d = bits_float(load_u32(x));
    const int8_t* qs = reinterpret_cast<const int8_t*>(x + 4);
    for (int j = 0; j < kQKK; ++j) y[j] = d * static_cast<float>(qs[j]);
  }
}

}  // namespace

bool is_known_type(uint32_t raw) {
  TypeTraits tr{};
  return lookup(raw, &tr);
}

int64_t block_elems(GgmlType t) { return traits_or_throw(t).elems; }
int64_t block_bytes(GgmlType t) { return traits_or_throw(t).bytes; }

const char* type_name(GgmlType t) {
  TypeTraits tr{};
  return lookup(static_cast<uint32_t>(t), &tr) ? tr.name : "unknown";
}

bool is_supported_for_dequant(GgmlType t) {
  TypeTraits tr{};
  return lookup(static_cast<uint32_t>(t), &tr) && tr.dequant;
}

uint64_t row_bytes(GgmlType t, int64_t n) {
  const TypeTraits tr = traits_or_throw(t);
  if (n < 0 || n % tr.elems != 0) {
    throw Error(std::string("a row of ") + std::to_string(n) + " elements cannot be stored as " +
                    tr.name + ": the count must be a non-negative multiple of its block size " +
                    std::to_string(tr.elems),
                "quantized types store whole blocks; pick a type whose block divides the row");
  }
  const uint64_t blocks = static_cast<uint64_t>(n / tr.elems);
  if (blocks > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(tr.bytes)) {
    throw Error(std::string("a row of ") + std::to_string(n) + " " + tr.name +
                " elements overflows a 64-bit byte count");
  }
  return blocks * static_cast<uint64_t>(tr.bytes);
}

void dequantize(GgmlType t, const void* src, float* dst, int64_t n) {
  const TypeTraits tr = traits_or_throw(t);
  if (!tr.dequant) {
    throw Error(std::string("dequantizing ggml type ") + tr.name + " is not supported",
                "supported: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K Q8_K; "
                "re-quantize the model to one of them");
  }
  row_bytes(t, n);  // validates n against the block size
  const auto* x = static_cast<const uint8_t*>(src);
  const int64_t nb = n / tr.elems;
  const float* h2f = fp16_table();
  switch (t) {
    case GgmlType::F32:
      std::memcpy(dst, x, static_cast<size_t>(n) * 4);
      break;
    case GgmlType::F16:
      deq_f16(x, dst, n, h2f);
      break;
    case GgmlType::BF16:
      deq_bf16(x, dst, n);
      break;
    case GgmlType::Q4_0:
      deq_q4_0(x, dst, nb, h2f);
      break;
    case GgmlType::Q4_1:
      deq_q4_1(x, dst, nb, h2f);
      break;
    case GgmlType::Q5_0:
      deq_q5_0(x, dst, nb, h2f);
      break;
    case GgmlType::Q5_1:
      deq_q5_1(x, dst, nb, h2f);
      break;
    case GgmlType::Q8_0:
      deq_q8_0(x, dst, nb, h2f);
      break;
    case GgmlType::Q2_K:
      deq_q2_k(x, dst, nb, h2f);
      break;
    case GgmlType::Q3_K:
      deq_q3_k(x, dst, nb, h2f);
      break;
    case GgmlType::Q4_K:
      deq_q4_k(x, dst, nb, h2f);
      break;
    case GgmlType::Q5_K:
      deq_q5_k(x, dst, nb, h2f);
      break;
    case GgmlType::Q6_K:
      deq_q6_k(x, dst, nb, h2f);
      break;
    case GgmlType::Q8_K:
      deq_q8_k(x, dst, nb);
      break;
    default:
      break;  // unreachable: tr.dequant is false for every other type
  }
}

void quantize_q8_0(const float* src, void* dst, int64_t n) {
  row_bytes(GgmlType::Q8_0, n);
  auto* y = static_cast<uint8_t*>(dst);
  for (int64_t b = 0; b < n / kQK; ++b, src += kQK, y += 34) {
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::fmax(amax, std::fabs(src[j]));
    // ggml multiplies by the reciprocal instead of dividing by d; doing the same keeps the bytes
    // identical to llama.cpp's and gguf-py's (x/d and x*(1/d) can round differently).
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const uint16_t dh = fp32_to_fp16(d);
    std::memcpy(y, &dh, 2);
    for (int j = 0; j < kQK; ++j) {
      const auto q = static_cast<int8_t>(std::lround(src[j] * id));  // |x*id| <= 127: fits
      y[2 + j] = static_cast<uint8_t>(q);
    }
  }
}

uint16_t fp32_to_fp16(float f) {
  const uint32_t x = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t a = x & 0x7fffffffu;
  if (a >= 0x7f800000u) {  // inf stays inf; NaN keeps its top payload bits and is made quiet
    return a == 0x7f800000u ? static_cast<uint16_t>(sign | 0x7c00u)
                            : static_cast<uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  }
  if (a >= 0x47800000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65536: infinity
  const uint32_t e = a >> 23;
  const uint32_t m = (a & 0x7fffffu) | 0x800000u;  // with the implicit bit
  if (e >= 113) {  // normal half (>= 2^-14): rebias the exponent, drop 13 mantissa bits
    uint32_t h = ((e - 112) << 10) | ((a >> 13) & 0x3ffu);
    const uint32_t rem = a & 0x1fffu;
    // A carry out of the mantissa bumps the exponent, up to infinity, which is the IEEE result.
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  if (e < 102) return sign;  // below 2^-25: rounds to (signed) zero
  // Subnormal half: value = m * 2^(e-150) = k * 2^-24, so k = m >> (126 - e), rounded to even.
  const uint32_t shift = 126 - e;  // 14 .. 24
  uint32_t h = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (h & 1u))) ++h;  // 1024 becomes the smallest normal: correct
  return static_cast<uint16_t>(sign | h);
}

float fp16_to_fp32(uint16_t h) { return fp16_table()[h]; }

uint16_t fp32_to_bf16(float f) {
  const uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((x >> 16) | 0x40u);  // NaN: truncate and force the quiet bit
  }
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);  // ties to even
}

float bf16_to_fp32(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

}  // namespace bonsai::gguf
