#!/usr/bin/env python3
"""A Llama-shaped HF checkpoint with random bf16 weights, written tensor by tensor (for pruning and
loading at scale without downloading a model).

    make_random_llama.py OUT_DIR [--shape 8b|tiny] [--seed 0] [--shard-gb 5]

--shape 8b is Llama 3.1 8B's config.json (hidden 4096, MLP 14336, 32 layers, 32/8 heads, head_dim
128, vocab 128256, untied, rope llama3 factor 8, theta 500000): 8.03e9 parameters, 16.06 GB.
Matrices are normal(0, 0.02), norm weights 1. Nothing larger than one chunk (CHUNK values) is ever
in memory: each shard's safetensors header is written first (its offsets are known from the shapes),
then every tensor's bytes in chunks of random float32 rounded to bf16 (round to nearest even).
Sharded like transformers (model-0000i-of-0000n.safetensors, <= --shard-gb each, plus
model.safetensors.index.json). No tokenizer: pair it with data.tokenizer and shards packed with any
tokenizer whose ids are below the vocabulary.
"""
import argparse
import json
import os
import struct
import sys
import time

import numpy as np

SHAPES = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False),
    # the same layout, small (for checking the writer itself)
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
                 num_key_value_heads=2, head_dim=32, vocab_size=1024, tie_word_embeddings=False),
}
CHUNK = 1 << 24  # values per generated chunk (64 MB of float32)


def config_json(s):
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
        "attention_dropout": 0.0, "mlp_bias": False, "hidden_act": "silu", "initializer_range": 0.02,
        "bos_token_id": 128000, "eos_token_id": 128001, "max_position_embeddings": 131072,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "torch_dtype": "bfloat16", "use_cache": True, **s,
    }


def tensor_specs(s):
    """HF names and shapes in transformers' save order."""
    C, I, V = s["hidden_size"], s["intermediate_size"], s["vocab_size"]
    q, kv = s["num_attention_heads"] * s["head_dim"], s["num_key_value_heads"] * s["head_dim"]
    out = [("model.embed_tokens.weight", (V, C))]
    for l in range(s["num_hidden_layers"]):
        p = f"model.layers.{l}."
        out += [(p + "input_layernorm.weight", (C,)), (p + "self_attn.q_proj.weight", (q, C)),
                (p + "self_attn.k_proj.weight", (kv, C)), (p + "self_attn.v_proj.weight", (kv, C)),
                (p + "self_attn.o_proj.weight", (C, q)), (p + "post_attention_layernorm.weight", (C,)),
                (p + "mlp.gate_proj.weight", (I, C)), (p + "mlp.up_proj.weight", (I, C)),
                (p + "mlp.down_proj.weight", (C, I))]
    out.append(("model.norm.weight", (C,)))
    if not s["tie_word_embeddings"]:
        out.append(("lm_head.weight", (V, C)))
    return out


def nbytes(shape):
    return int(np.prod(shape)) * 2


def bf16_bits(x):
    """float32 array -> uint16 bf16 bit patterns, round to nearest even."""
    u = x.view(np.uint32)
    u += np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))
    return (u >> 16).astype(np.uint16)


def write_tensor(f, shape, rng, std):
    n = int(np.prod(shape))
    if len(shape) == 1:  # a norm weight: ones
        f.write(np.full(n, 0x3F80, dtype=np.uint16).tobytes())
        return
    for i in range(0, n, CHUNK):
        x = rng.standard_normal(min(CHUNK, n - i), dtype=np.float32)
        x *= np.float32(std)
        f.write(bf16_bits(x).tobytes())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--std", type=float, default=0.02)
    ap.add_argument("--shard-gb", type=float, default=5.0)
    a = ap.parse_args()
    s = SHAPES[a.shape]
    specs = tensor_specs(s)
    limit = int(a.shard_gb * 1e9)
    shards, cur, size = [], [], 0  # greedy, in order, like transformers
    for name, shape in specs:
        if cur and size + nbytes(shape) > limit:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, shape))
        size += nbytes(shape)
    shards.append(cur)
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    weight_map, total, t0 = {}, 0, time.time()
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for name, shape in shard:
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + nbytes(shape)]}
            off += nbytes(shape)
            weight_map[name] = fname
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * (-len(hb) % 8)
        path = os.path.join(a.out, fname)
        with open(path + ".partial", "wb") as f:
            f.write(struct.pack("<Q", len(hb)))
            f.write(hb)
            for name, shape in shard:
                write_tensor(f, shape, rng, a.std)
        os.replace(path + ".partial", path)
        total += off
        print(f"{fname}: {len(shard)} tensors, {off / 1e9:.2f} GB ({time.time() - t0:.0f} s)", file=sys.stderr)
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config_json(s), f, indent=2)
    params = sum(int(np.prod(sh)) for _, sh in specs)
    print(f"{a.out}: {a.shape}, {params} parameters, {total / 1e9:.2f} GB in {len(shards)} shard(s), "
          f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
