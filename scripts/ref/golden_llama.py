#!/usr/bin/env python3
"""Golden logits for tiny random-weight Llamas, computed by Hugging Face transformers.

    python scripts/ref/golden_llama.py OUT_DIR

Writes OUT_DIR/<case>/ as an HF checkpoint (config.json + model.safetensors, fp32) plus
golden.safetensors with `input_ids` (B,T int64), `logits_f32` (transformers in fp32) and `logits_bf16`
(transformers with the model cast to bf16). The C++ tests (tests/test_llama.cpp) load the checkpoint
with bonsai's own loader and compare every logit. Cases cover GQA, head_dim != hidden/heads, tied and
untied embeddings, llama3 RoPE scaling with positions far beyond the original context, and several
sequence lengths (1, 7, 19, 300). Eager attention is used so the reference shares no kernel with
bonsai's SDPA path.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

CASES = {
    # name: (config overrides, batch, seq_len)
    "gqa_untied": (dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=16, vocab_size=97, tie_word_embeddings=False), 2, 19),
    "headdim_tied": (dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                          num_key_value_heads=1, head_dim=24, vocab_size=131, tie_word_embeddings=True), 3, 7),
    "llama3_long": (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, head_dim=16, vocab_size=113, tie_word_embeddings=True,
                         rope_theta=500000.0, max_position_embeddings=1024,
                         rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                           high_freq_factor=4.0, original_max_position_embeddings=64)), 1, 300),
    "single_token": (dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=1, head_dim=16, vocab_size=50, tie_word_embeddings=False), 4, 1),
}


def make_case(out_dir: str, name: str, overrides: dict, batch: int, seq: int, seed: int) -> None:
    torch.manual_seed(seed)
    cfg = LlamaConfig(rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, initializer_range=0.1,
                      attn_implementation="eager", **overrides)
    model = LlamaForCausalLM(cfg).eval()
    # Norm weights default to 1; perturb them so a wrong norm placement cannot hide.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    case_dir = os.path.join(out_dir, name)
    model.save_pretrained(case_dir, safe_serialization=True)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), dtype=torch.int64)
    with torch.no_grad():
        logits_f32 = model(ids).logits.float()
        logits_bf16 = model.to(torch.bfloat16)(ids).logits.float()
    save_file({"input_ids": ids, "logits_f32": logits_f32.contiguous(), "logits_bf16": logits_bf16.contiguous()},
              os.path.join(case_dir, "golden.safetensors"))


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for i, (name, (ov, b, t)) in enumerate(CASES.items()):
        make_case(out, name, ov, b, t, seed=1234 + i)
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(sorted(CASES), f)
    print(f"wrote {len(CASES)} golden cases to {out}")


if __name__ == "__main__":
    main()
