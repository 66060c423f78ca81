#!/usr/bin/env python3
"""Reference vectors for bonsai's ggml dequantizers (tests/test_gguf.cpp, DequantReference.*).

  gguf_dequant_ref.py OUT_DIR    writes one <TYPE>.bin per ggml type into OUT_DIR

The C++ test reads OUT_DIR from the environment variable BONSAI_GGUF_REF_DIR.

For each type, a fixed seeded float array (256*3 elements for K-quants, 32*5 otherwise) is quantized
with gguf.quants.quantize when the gguf package can quantize that type. gguf-py cannot quantize the
K-quants; for those the blocks are random bytes with finite f16 scales patched in, so every bit
pattern of the quants and packed scales is exercised. The dequantized values always come from
gguf.quants.dequantize, an implementation independent of bonsai's.

File layout, all little-endian:
  magic   b"BGQR"
  u32     format version (1)
  u32     ggml type number
  u32     flags: bit 0 = a float32 source array is present (the data were quantized from it)
  u64     n_elems
  u64     n_bytes
  f32[n_elems]  source             (only when flag bit 0 is set)
  u8[n_bytes]   quantized bytes
  f32[n_elems]  gguf.quants.dequantize(quantized bytes)
"""
import os
import struct
import sys

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf import quants

MAGIC = b"BGQR"
FORMAT_VERSION = 1
SEED = 20240611

# Types quantized from floats where gguf-py can, else built from random blocks.
QUANT_TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]

# Byte offsets of the f16 scale fields inside one block of each K-quant (ggml's block structs).
K_SCALE_OFFSETS = {
    T.Q2_K: [80, 82],  # d, dmin after scales[16] and qs[64]
    T.Q3_K: [108],     # d after hmask[32], qs[64], scales[12]
    T.Q4_K: [0, 2],    # d, dmin first
    T.Q5_K: [0, 2],
    T.Q6_K: [208],     # d after ql[128], qh[64], scales[16]
}


def source_floats(qtype, rng):
    """A seeded array of normals with one all-zero block (the d == 0 path) and one large block."""
    block = GGML_QUANT_SIZES[qtype][0]
    n_blocks = 3 if block == 256 else 5
    x = rng.standard_normal(n_blocks * block).astype(np.float32)
    x[block:2 * block] = 0.0
    x[2 * block:3 * block] *= 1000.0
    return x


def random_k_blocks(qtype, rng, n_blocks):
    """Random block bytes with finite f16 scales (one block gets subnormal f16 scales)."""
    _, type_size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for b in range(n_blocks):
        for off in K_SCALE_OFFSETS[qtype]:
            if b == 1:
                scale = np.float16(rng.integers(1, 1024) * 2.0 ** -24)  # subnormal half
            else:
                scale = np.float16(rng.standard_normal() * 0.05)
            raw[b, off:off + 2] = np.frombuffer(scale.tobytes(), dtype=np.uint8)
    return raw.reshape(-1)


def special_floats(rng, n):
    """Values that stress float -> f16/bf16 rounding: ties, subnormals, overflow, inf, NaN."""
    specials = np.array([
        0.0, -0.0, np.inf, -np.inf, np.nan, 65504.0, 65519.996, 65520.0, -65520.0, 1e-8,
        2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26, 2.0 ** -25 * 1.0000001, 2.0 ** -14, 2.0 ** -15,
        1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, 1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8,
        1.0 + 2.0 ** -8 + 2.0 ** -20, 3.0e38, -3.4e38, 1e-40, -1e-45,
    ], dtype=np.float32)
    rest = (rng.standard_normal(n - len(specials)) *
            np.exp2(rng.integers(-30, 20, n - len(specials)))).astype(np.float32)
    return np.concatenate([specials, rest])


def write_ref(out_dir, qtype, source, raw, deq):
    n_elems = deq.size
    flags = 1 if source is not None else 0
    path = os.path.join(out_dir, qtype.name + ".bin")
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<IIIQQ", FORMAT_VERSION, int(qtype), flags, n_elems, raw.size))
        if source is not None:
            f.write(source.astype("<f4").tobytes())
        f.write(raw.astype(np.uint8).tobytes())
        f.write(deq.astype("<f4").tobytes())
    return path


def quant_case(qtype, rng):
    source = source_floats(qtype, rng)
    try:
        raw = quants.quantize(source.reshape(1, -1), qtype).reshape(-1)
    except NotImplementedError:
        n_blocks = source.size // GGML_QUANT_SIZES[qtype][0]
        source, raw = None, random_k_blocks(qtype, rng, n_blocks)
    deq = quants.dequantize(raw.reshape(1, -1), qtype).reshape(-1)
    return source, raw, deq


def float_case(qtype, rng):
    source = special_floats(rng, 160)
    with np.errstate(all="ignore"):
        raw = quants.quantize(source.reshape(1, -1), qtype).reshape(-1).view(np.uint8)
        deq = quants.dequantize(raw.reshape(1, -1), qtype).reshape(-1)
    return source, raw, deq


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: gguf_dequant_ref.py OUT_DIR")
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(SEED)
    for qtype in QUANT_TYPES:
        source, raw, deq = quant_case(qtype, rng)
        path = write_ref(out_dir, qtype, source, raw, deq)
        how = "quantized by gguf" if source is not None else "random blocks"
        print(f"{path}: {deq.size} elements, {raw.size} bytes ({how})")
    for qtype in (T.F16, T.BF16):
        source, raw, deq = float_case(qtype, rng)
        path = write_ref(out_dir, qtype, source, raw, deq)
        print(f"{path}: {deq.size} elements, {raw.size} bytes (converted by gguf)")


if __name__ == "__main__":
    main()
