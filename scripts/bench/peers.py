#!/usr/bin/env python3
"""Python peers for scripts/bench/foundation.sh, measured in the same run as bonsai_bench.

    peers.py make-checkpoint DIR          # ~1.1 GB bf16 Llama-shaped HF checkpoint, random weights
    peers.py load PATH [--repeat N]       # safetensors.torch.load_file
    peers.py forward MODEL_DIR [--tokens T] [--dtype f32|bf16] [--repeat N]   # transformers (sdpa)
Prints one JSON object per line, like bonsai_bench.
"""
import argparse
import json
import os
import statistics
import time

import torch


def make_checkpoint(d: str) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=1536, intermediate_size=4096, num_hidden_layers=18, num_attention_heads=12,
                      num_key_value_heads=4, head_dim=128, vocab_size=32000, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.save_pretrained(d, safe_serialization=True, max_shard_size="5GB")
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"what": "checkpoint", "params": n, "bytes": 2 * n}))


def load(path: str, repeat: int) -> None:
    from safetensors.torch import load_file
    f = path if path.endswith(".safetensors") else os.path.join(path, "model.safetensors")
    times, full = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        sd = load_file(f)
        t1 = time.perf_counter()
        # One byte per 4 KiB page, as bonsai_bench does: the data really read, not just mapped.
        check = sum(int(t.reshape(-1).view(torch.uint8)[::4096].sum()) for t in sd.values())
        t2 = time.perf_counter()
        times.append(t1 - t0)
        full.append(t2 - t0)
        del sd
    print(json.dumps({"what": "python safetensors.torch.load_file", "median_s": round(statistics.median(times), 4)}))
    print(json.dumps({"what": "python load_file + read every page", "median_s": round(statistics.median(full), 4),
                      "check": check % 7}))


def forward(model_dir: str, tokens: int, dtype: str, repeat: int) -> None:
    from transformers import AutoModelForCausalLM
    dt = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dt, attn_implementation="sdpa").eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=g)
    times = []
    with torch.no_grad():
        model(ids)
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = model(ids).logits
            out.sum().item()
            times.append(time.perf_counter() - t0)
    m = statistics.median(times)
    print(json.dumps({"what": "transformers forward (sdpa)", "tokens": tokens, "dtype": dtype,
                      "threads": torch.get_num_threads(), "median_s": round(m, 4), "tokens_per_s": round(tokens / m, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["make-checkpoint", "load", "forward"])
    ap.add_argument("path")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--dtype", default="f32")
    a = ap.parse_args()
    if a.what == "make-checkpoint":
        make_checkpoint(a.path)
    elif a.what == "load":
        load(a.path, a.repeat)
    else:
        forward(a.path, a.tokens, a.dtype, a.repeat)


if __name__ == "__main__":
    main()
