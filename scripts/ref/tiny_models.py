#!/usr/bin/env python3
"""Tiny random-weight Llama teacher and student over the GPT-2 vocabulary (50257 ids), for the
distillation CLI tests (fast on a CPU; the shards are packed with the GPT-2 tokenizer).

    python scripts/ref/tiny_models.py OUT_DIR      # writes OUT_DIR/teacher and OUT_DIR/student
"""
import os
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def make(path: str, seed: int, **kw) -> None:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=50257, bos_token_id=50256, eos_token_id=50256, rms_norm_eps=1e-5,
                      max_position_embeddings=512, initializer_range=0.05, **kw)
    LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    make(os.path.join(out, "teacher"), 1, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
         num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False)
    make(os.path.join(out, "student"), 2, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
         num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True)
    print(f"wrote tiny teacher and student to {out}")


if __name__ == "__main__":
    main()
