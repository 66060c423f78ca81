#!/usr/bin/env python3
"""Single-thread encode throughput: bonsai's tokenizer against tiktoken and HF `tokenizers`.

    tokenizer_bench.py [BENCH_EXE] [--repeats N]

BENCH_EXE is the C++ timing program (tests/bench_tokenizer.cpp; default build/tests/bench_tokenizer).
The text is tinyshakespeare + tokenizer/texts/corpus.en from $BONSAI_SHARED_DATA (~1.25 MB), encoded
as one string. Peers, each on one thread:
  Llama 3 ranks:  tiktoken.Encoding (Llama 3 pattern)   vs  bonsai on llama3/tokenizer.model
  GPT-2:          HF tokenizers BPE + ByteLevel          vs  bonsai on gpt2_vocab.json + gpt2_merges.txt
Each is timed on the text as one string and line by line (a loop for tiktoken, encode_batch for HF).
Prints a table and a JSON line; MB/s are decimal megabytes of UTF-8 input per second, best of N
passes after one warm-up pass (bonsai also reports its first, cold-cache pass).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# One thread for the peers too: HF tokenizers parallelizes batches, RAYON_NUM_THREADS caps it.
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ref"))
from tokenizer_ref import LLAMA3_PATTERN, llama3_special_tokens  # noqa: E402


def best_of(fn, text, repeats):
    fn(text)  # warm-up
    best = float("inf")
    n = 0
    for _ in range(repeats):
        t = time.perf_counter()
        n = len(fn(text))
        best = min(best, time.perf_counter() - t)
    return len(text.encode("utf-8")) / 1e6 / best, n


def main():
    root = Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench_exe", nargs="?", default=str(root / "build" / "tests" / "bench_tokenizer"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    shared = Path(os.environ.get("BONSAI_SHARED_DATA", root / ".." / "shared" / "data"))
    tok = shared / "tokenizer"
    text = (shared / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8") + "\n" + \
           (tok / "texts" / "corpus.en").read_text(encoding="utf-8")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write(text)
        text_path = f.name

    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import BPE
    ranks = load_tiktoken_bpe(str(tok / "llama3" / "tokenizer.model"))
    enc = tiktoken.Encoding("llama3", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                            special_tokens={s: len(ranks) + i for i, s in enumerate(llama3_special_tokens())})
    hf = Tokenizer(BPE.from_file(str(tok / "gpt2" / "gpt2_vocab.json"), str(tok / "gpt2" / "gpt2_merges.txt")))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)

    lines = text.split("\n")
    peers = {
        ("llama3", "tiktoken", "whole"): enc.encode_ordinary,
        # tiktoken's batch call goes through a thread pool per line; a plain loop is faster on one thread.
        ("llama3", "tiktoken", "lines"): lambda _: [i for line in lines for i in enc.encode_ordinary(line)],
        ("gpt2", "hf-tokenizers", "whole"): lambda s: hf.encode(s, add_special_tokens=False).ids,
        ("gpt2", "hf-tokenizers", "lines"):
            lambda _: [i for e in hf.encode_batch(lines, add_special_tokens=False) for i in e.ids],
    }
    rows = []
    for (vocab, impl, mode), fn in peers.items():
        mbs, n = best_of(fn, text, args.repeats)
        rows.append({"vocab": vocab, "impl": impl, "mode": mode, "mb_s": mbs, "tokens": n})
    for vocab, spec in [("llama3", tok / "llama3" / "tokenizer.model"), ("gpt2", tok / "gpt2" / "gpt2_vocab.json")]:
        for mode in ["whole", "lines"]:
            out = subprocess.run([args.bench_exe, str(spec), text_path, str(args.repeats), mode], check=True,
                                 capture_output=True, text=True).stdout
            r = json.loads(out)
            rows.append({"vocab": vocab, "impl": "bonsai", "mode": mode, "mb_s": r["mb_s"], "tokens": r["tokens"],
                         "first_pass_mb_s": r["first_pass_mb_s"], "load_s": r["load_s"]})
    os.unlink(text_path)

    print(f"text: {len(text.encode('utf-8')) / 1e6:.2f} MB (tinyshakespeare + corpus.en), one thread, best of {args.repeats}")
    print(f"{'vocab':8} {'implementation':15} {'input':6} {'MB/s':>8} {'tokens':>9}  notes")
    for r in rows:
        note = f"first pass {r['first_pass_mb_s']:.1f} MB/s, load {r['load_s']:.2f} s" if r["impl"] == "bonsai" else ""
        print(f"{r['vocab']:8} {r['impl']:15} {r['mode']:6} {r['mb_s']:8.2f} {r['tokens']:9d}  {note}")
    by = {(r["vocab"], r["impl"], r["mode"]): r for r in rows}
    for (vocab, impl, mode), r in by.items():
        ours = by[(vocab, "bonsai", mode)]["tokens"]
        if r["tokens"] != ours:
            sys.exit(f"token counts differ on {vocab} ({mode}): bonsai {ours} vs {impl} {r['tokens']}")
    print(json.dumps({"tokenizer_bench": rows}))


if __name__ == "__main__":
    main()
