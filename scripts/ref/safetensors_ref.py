#!/usr/bin/env python3
"""Reference side of bonsai's safetensors interop test (tests/test_safetensors.cpp).

  safetensors_ref.py write DIR   writes a few files with the Python `safetensors` package
                                 (numpy and torch front ends) and prints a JSON summary of them
  safetensors_ref.py check FILE  loads a file bonsai wrote with safetensors.torch.load_file and
                                 prints a JSON summary of it

A summary is {"metadata": {...}, "tensors": {name: {"dtype", "shape", "sha256"}}} where sha256 is
over the tensor's raw little-endian bytes; write prints {"files": {file name: summary}}. The C++
test compares these against what its own reader/writer sees, so both directions are checked by the
same independent implementation.
"""
import hashlib
import json
import os
import sys

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file as save_torch

# torch dtype -> the dtype name in a safetensors header.
TORCH_TO_NAME = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2", torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64",
}


def tensor_bytes(t):
    # reshape(-1) first: a 0-d tensor cannot be viewed as bytes directly.
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def summarize(tensors, metadata):
    return {
        "metadata": metadata or {},
        "tensors": {
            name: {
                "dtype": TORCH_TO_NAME[t.dtype],
                "shape": list(t.shape),
                "sha256": hashlib.sha256(tensor_bytes(t)).hexdigest(),
            }
            for name, t in tensors.items()
        },
    }


def read_metadata(path):
    with safe_open(path, framework="pt") as f:
        return f.metadata()


def write(out_dir):
    rng = np.random.default_rng(1234)
    numpy_tensors = {
        "f32.weight": rng.standard_normal((19, 3)).astype(np.float32),
        "f16.weight": rng.standard_normal((2, 3, 4)).astype(np.float16),
        "i64.ids": rng.integers(-(2**40), 2**40, size=(5,), dtype=np.int64),
        "i32.scalar": np.array(-7, dtype=np.int32),
        "u8.empty": np.zeros((0,), dtype=np.uint8),
        "u8.bytes": rng.integers(0, 256, size=(3, 7), dtype=np.uint8),
        "bool.mask": rng.integers(0, 2, size=(7,)).astype(np.bool_),
    }
    numpy_meta = {"writer": "safetensors.numpy", "note": "h\u00e9llo \u2713"}
    save_numpy(numpy_tensors, os.path.join(out_dir, "numpy_mixed.safetensors"), metadata=numpy_meta)

    gen = torch.Generator().manual_seed(99)
    torch_tensors = {
        "bf16.weight": torch.randn(111, 9, generator=gen).to(torch.bfloat16),
        "bf16.one": torch.randn(1, generator=gen).to(torch.bfloat16),
        "f32.bias": torch.randn(3, generator=gen),
        "i64.pos": torch.arange(12, dtype=torch.int64).reshape(3, 4),
    }
    save_torch(torch_tensors, os.path.join(out_dir, "torch_bf16.safetensors"))

    files = {}
    for name in ("numpy_mixed.safetensors", "torch_bf16.safetensors"):
        path = os.path.join(out_dir, name)
        files[name] = summarize(load_file(path), read_metadata(path))
    print(json.dumps({"files": files}, sort_keys=True))


def check(path):
    print(json.dumps(summarize(load_file(path), read_metadata(path)), sort_keys=True))


def main(argv):
    if len(argv) != 3 or argv[1] not in ("write", "check"):
        sys.stderr.write(__doc__)
        return 2
    if argv[1] == "write":
        write(argv[2])
    else:
        check(argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
