// ggml tensor types as GGUF stores them: block geometry (elements and bytes per block), names, and
// torch-free conversion to float (dequantize) plus the few encoders bonsai writes itself (Q8_0,
// F16, BF16). Layouts follow ggml's block structs; every routine here is plain scalar C++ on
// little-endian bytes, so results do not depend on the CPU's SIMD features.
#pragma once

#include <cstdint>

namespace bonsai::gguf {

// ggml's numbering (ggml.h `enum ggml_type`). Values missing here (4, 5, 31-33, 36-38) were removed
// from ggml and are rejected as unknown.
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
  MXFP4 = 39,
};

// True when `raw` is a type ggml still defines (so its block geometry is known).
bool is_known_type(uint32_t raw);

// Elements per block and bytes per block; both throw bonsai::Error for an unknown type.
int64_t block_elems(GgmlType t);
int64_t block_bytes(GgmlType t);

// "Q4_K", "F16", ...; "unknown" for a value outside the enum.
const char* type_name(GgmlType t);

// Types dequantize() can decode: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K
// Q8_K.
bool is_supported_for_dequant(GgmlType t);

// Bytes used by `n` consecutive elements (one row). Throws when n is negative or not a multiple of
// the block size, or when the byte count would overflow.
uint64_t row_bytes(GgmlType t, int64_t n);

// Decodes `n` elements (a multiple of the block size) from `src` into `dst`. Throws bonsai::Error
// for an unsupported type or a bad n. `src` needs no particular alignment.
void dequantize(GgmlType t, const void* src, float* dst, int64_t n);

// Encodes `n` floats (a multiple of 32) as Q8_0 blocks, bit-identical to ggml's reference
// quantize_row_q8_0_ref: d = amax / 127, q = roundf(x * (1 / d)).
void quantize_q8_0(const float* src, void* dst, int64_t n);

// IEEE binary16 and bfloat16 conversions. Float -> half rounds to nearest, ties to even, handles
// subnormals, overflows to infinity and keeps NaN a (quiet) NaN.
uint16_t fp32_to_fp16(float f);
float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_bf16(float f);
float bf16_to_fp32(uint16_t h);

}  // namespace bonsai::gguf
