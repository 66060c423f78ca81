#!/usr/bin/env python3
"""Logits and greedy continuations from llama.cpp (llama-cpp-python) for a GGUF file.

    python scripts/ref/llamacpp_logits.py MODEL.gguf OUT.safetensors [--new-tokens 16]

Uses the same prompts as hf_logits.py, tokenized by the GGUF's own tokenizer. For prompt i writes
`ids_i` (1,T int64), `logits_i` (1,T,V fp32, every position) and `greedy_i` (N int64, argmax decoding,
no EOS stop). tests/test_gguf_export.cpp compares bonsai against them.
"""
import argparse
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from hf_logits import PROMPTS  # noqa: E402


def check_metadata(path: str) -> None:
    """The `gguf` package's reader must see the value types llama.cpp requires."""
    import gguf
    r = gguf.GGUFReader(path)
    want = {"general.architecture": gguf.GGUFValueType.STRING, "llama.block_count": gguf.GGUFValueType.UINT32,
            "llama.context_length": gguf.GGUFValueType.UINT32, "llama.embedding_length": gguf.GGUFValueType.UINT32,
            "llama.feed_forward_length": gguf.GGUFValueType.UINT32,
            "llama.attention.head_count": gguf.GGUFValueType.UINT32,
            "llama.attention.head_count_kv": gguf.GGUFValueType.UINT32,
            "llama.rope.freq_base": gguf.GGUFValueType.FLOAT32,
            "llama.attention.layer_norm_rms_epsilon": gguf.GGUFValueType.FLOAT32,
            "tokenizer.ggml.model": gguf.GGUFValueType.STRING, "tokenizer.ggml.tokens": gguf.GGUFValueType.ARRAY,
            "tokenizer.ggml.merges": gguf.GGUFValueType.ARRAY, "tokenizer.ggml.pre": gguf.GGUFValueType.STRING,
            "tokenizer.chat_template": gguf.GGUFValueType.STRING}
    for key, typ in want.items():
        f = r.fields.get(key)
        if f is None or f.types[0] != typ:
            sys.exit(f"{path}: metadata {key}: expected {typ.name}, found {None if f is None else f.types[0].name}")
    names = {t.name for t in r.tensors}
    if "output.weight" in names:
        sys.exit(f"{path}: tied model written with output.weight")
    norms = [t for t in r.tensors if t.name.endswith("norm.weight")]
    if any(t.tensor_type != gguf.GGMLQuantizationType.F32 for t in norms):
        sys.exit(f"{path}: norm weights must be F32")
    print(f"gguf metadata ok: {len(r.fields)} keys, {len(r.tensors)} tensors")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("out")
    ap.add_argument("--new-tokens", type=int, default=16)
    a = ap.parse_args()
    check_metadata(a.gguf)
    from llama_cpp import Llama
    llm = Llama(model_path=a.gguf, n_ctx=256, logits_all=True, n_threads=int(os.environ.get("OMP_NUM_THREADS", "2")),
                verbose=False, seed=0)
    out = {}
    for i, p in enumerate(PROMPTS):
        ids = llm.tokenize(p.encode("utf-8"), add_bos=False, special=False)
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
        out[f"ids_{i}"] = torch.tensor([ids], dtype=torch.int64)
        out[f"logits_{i}"] = torch.from_numpy(logits).unsqueeze(0).contiguous()
        gen = []
        for _ in range(a.new_tokens):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            gen.append(nxt)
            llm.eval([nxt])
        out[f"greedy_{i}"] = torch.tensor(gen, dtype=torch.int64)
    save_file(out, a.out)
    print(f"wrote {len(PROMPTS)} prompts to {a.out}")


if __name__ == "__main__":
    main()
