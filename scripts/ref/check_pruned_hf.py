#!/usr/bin/env python3
"""Checks that a checkpoint written by `bonsai prune` loads in Hugging Face transformers and that its
logits match bonsai's.

    python scripts/ref/check_pruned_hf.py PRUNE_OUT_DIR [--rtol 1e-5]

PRUNE_OUT_DIR is a `bonsai prune` output: `student/` (the HF checkpoint) and
`check_logits.safetensors` (`input_ids` and the logits bonsai computed from student/ in fp32). The
script loads student/ with transformers (fp32, eager attention: no kernel shared with bonsai's SDPA),
checks that every layer has the config's shape (transformers refuses mismatched tensors), runs the
same ids, and compares: relative L2 error <= rtol (fp32; bonsai and transformers agree to ~1e-7 on the
unpruned golden models, a wrong RoPE frequency, head grouping or norm slice gives > 1e-2). Exit code 0
when it matches.
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--rtol", type=float, default=1e-5)
    a = ap.parse_args()
    student = os.path.join(a.out_dir, "student")
    ref = load_file(os.path.join(a.out_dir, "check_logits.safetensors"))
    with open(os.path.join(student, "config.json")) as f:
        cfg = json.load(f)
    model, info = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32, attn_implementation="eager",
                                                       output_loading_info=True)
    model.eval()
    # from_pretrained only warns about missing or unexpected tensors (and initialises missing ones
    # randomly): treat any as a failure. A tied model has no lm_head.weight in the file.
    missing = [k for k in info.get("missing_keys", []) if not (k == "lm_head.weight" and cfg.get("tie_word_embeddings"))]
    bad = missing + list(info.get("unexpected_keys", [])) + [str(m) for m in info.get("mismatched_keys", [])]
    if bad:
        print(f"FAILED: transformers could not load every tensor of {student}: {bad[:5]}")
        return 1
    n_params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        logits = model(ref["input_ids"]).logits.float()
    want = ref["logits"].float()
    if logits.shape != want.shape:
        print(f"FAILED: transformers logits {tuple(logits.shape)}, bonsai {tuple(want.shape)}")
        return 1
    err = ((logits.double() - want.double()).norm() / want.double().norm()).item()
    shape = (f"hidden {cfg['hidden_size']}, MLP {cfg['intermediate_size']}, {cfg['num_hidden_layers']} layers, "
             f"{cfg['num_attention_heads']}/{cfg['num_key_value_heads']} heads, head_dim {cfg['head_dim']}, "
             f"{'tied' if cfg.get('tie_word_embeddings') else 'untied'}")
    status = "ok" if err <= a.rtol else "FAILED"
    print(f"{status}: {student} ({shape}; {n_params} parameters in transformers): relative error {err:.3e} "
          f"(bound {a.rtol:g})")
    return 0 if err <= a.rtol else 1


if __name__ == "__main__":
    sys.exit(main())
