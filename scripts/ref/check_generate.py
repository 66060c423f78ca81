#!/usr/bin/env python3
"""Checks `bonsai generate` through the real binary against transformers on the same HF export.

    check_generate.py BONSAI_BIN EXPORT_DIR

EXPORT_DIR is a `bonsai export --format hf` directory (with its tokenizer.json); both sides load it.
  1. greedy, 16 new tokens, 3 prompts, plain and --chat: `bonsai generate --json` gives the ids that
     transformers' generate(do_sample=False) gives on the prompt transformers tokenizes from the
     exported tokenizer files (tokenizer(text) / apply_chat_template(add_generation_prompt=True)),
     the same prompt length, and the text transformers decodes from those ids;
  2. --prompt-file (the 3 prompts as one batch) gives the same ids as one prompt at a time;
  3. seeded sampling: two runs with the same seed give the same ids, another seed other ids.
Runs transformers in fp32 with eager attention; bonsai with --dtype f32. Exits 1 on any mismatch.
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PROMPTS = [
    "What is the capital of France?",  # the chat reply ends (<|im_end|>) within 16 tokens
    "Once upon a time, there was a little",
    "Write a haiku about the sea.",
]
NEW_TOKENS = 16
SAMPLING = ["--temperature", "1.0", "--top-k", "50", "--top-p", "0.95"]


def generate(bonsai, model, args):
    """bonsai generate --json: one parsed object per prompt."""
    cmd = [bonsai, "generate", "--model", model, "--dtype", "f32", "--json", "--max-tokens", str(NEW_TOKENS)] + args
    p = subprocess.run(cmd, capture_output=True)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr.decode(errors='replace')}")
    sys.stderr.write(p.stderr.decode(errors="replace"))
    return [json.loads(line) for line in p.stdout.decode().splitlines()]


def transformers_greedy(model, tok, ids, stop_ids):
    import torch
    x = torch.tensor([ids], dtype=torch.int64)
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=NEW_TOKENS,
                             eos_token_id=stop_ids, pad_token_id=stop_ids[0])
    return [int(t) for t in out[0, len(ids):]]


def chat_ids(tok, prompt):
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)  # transformers 5: a BatchEncoding


class Report:
    def __init__(self):
        self.checks, self.failures = 0, []

    def expect(self, ok, what):
        self.checks += 1
        print(("ok    " if ok else "FAIL  ") + what.split("\n")[0])
        if not ok:
            self.failures.append(what)


def check_greedy(bonsai, export, rep):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32, attn_implementation="eager").eval()
    eot = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else None
    single = {}
    for chat in (False, True):
        mode = "chat" if chat else "plain"
        stop = [tok.eos_token_id] + ([eot] if chat and eot is not None else [])
        for i, prompt in enumerate(PROMPTS):
            ours = generate(bonsai, export, ["--prompt", prompt] + (["--chat"] if chat else []))[0]
            ids = chat_ids(tok, prompt) if chat else tok(prompt)["input_ids"]
            theirs = transformers_greedy(model, tok, ids, stop)
            single[(chat, i)] = ours["token_ids"]
            rep.expect(ours["token_ids"] == theirs,
                       f"{mode} greedy, prompt {i}: bonsai ids == transformers ids\n  bonsai:       {ours['token_ids']}"
                       f"\n  transformers: {theirs}")
            rep.expect(ours["prompt_tokens"] == len(ids),
                       f"{mode} prompt {i}: {ours['prompt_tokens']} prompt tokens (transformers: {len(ids)})")
            reason = "stop" if theirs and theirs[-1] in stop else "length"
            rep.expect(ours["finish_reason"] == reason, f"{mode} prompt {i}: finish_reason {ours['finish_reason']} ({reason} expected)")
            text = tok.decode(theirs, skip_special_tokens=True)
            rep.expect(ours["text"] == text, f"{mode} prompt {i}: text {ours['text']!r} (transformers: {text!r})")
    return single


def check_batch(bonsai, export, single, rep):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8") as f:
        f.write("\n".join(PROMPTS) + "\n")
        f.flush()
        for chat in (False, True):
            batch = generate(bonsai, export, ["--prompt-file", f.name] + (["--chat"] if chat else []))
            rep.expect([b["prompt"] for b in batch] == PROMPTS, f"--prompt-file{' --chat' if chat else ''}: one output per prompt, in order")
            for i, b in enumerate(batch):
                rep.expect(b["token_ids"] == single[(chat, i)],
                           f"--prompt-file{' --chat' if chat else ''} prompt {i}: batched ids == single-prompt ids")


def check_seeded(bonsai, export, rep):
    args = ["--prompt", PROMPTS[1], "--chat"] + SAMPLING
    a = generate(bonsai, export, args + ["--seed", "1234"])[0]["token_ids"]
    b = generate(bonsai, export, args + ["--seed", "1234"])[0]["token_ids"]
    c = generate(bonsai, export, args + ["--seed", "4321"])[0]["token_ids"]
    rep.expect(a == b, f"seed 1234 twice: same ids\n  {a}\n  {b}")
    rep.expect(a != c, f"seed 1234 vs 4321: different ids\n  {a}\n  {c}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bonsai")
    ap.add_argument("export_dir")
    a = ap.parse_args()
    if not (Path(a.export_dir) / "tokenizer.json").exists():
        sys.exit(f"{a.export_dir} has no tokenizer.json: export it with a bonsai that writes one")
    rep = Report()
    single = check_greedy(a.bonsai, a.export_dir, rep)
    check_batch(a.bonsai, a.export_dir, single, rep)
    check_seeded(a.bonsai, a.export_dir, rep)
    for what in rep.failures:
        print("MISMATCH", what)
    print(f"{rep.checks - len(rep.failures)}/{rep.checks} checks passed")
    sys.exit(1 if rep.failures else 0)


if __name__ == "__main__":
    main()
