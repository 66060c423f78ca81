#!/usr/bin/env python3
"""Reads a bonsai token shard (data/shards.h, format tokens-v1) with h5py and prints one JSON object:
root attributes, every dataset's shape and dtype, the first tokens and the sum of each token
dataset. tests/test_shards.cpp compares this with its own reading, so the files stay readable by
the Python ecosystem, not only by bonsai.

usage: read_shard.py SHARD.h5 [N_FIRST]
"""
import json
import sys

import h5py
import numpy as np


def attr_value(v):
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.generic):
        return v.item()
    return v


def main():
    path = sys.argv[1]
    n_first = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    out = {"attrs": {}, "datasets": {}}
    with h5py.File(path, "r") as f:
        for k, v in f.attrs.items():
            out["attrs"][k] = attr_value(v)

        def visit(name, obj):
            if not isinstance(obj, h5py.Dataset):
                return
            data = obj[()]
            entry = {"shape": list(obj.shape), "dtype": str(obj.dtype)}
            entry["first"] = [int(x) for x in data[:n_first]]
            entry["sum"] = int(data.astype(np.uint64).sum())
            entry["compression"] = obj.compression
            entry["shuffle"] = bool(obj.shuffle)
            entry["fletcher32"] = bool(obj.fletcher32)
            out["datasets"][name] = entry

        f.visititems(visit)
    json.dump(out, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
