#!/usr/bin/env python3
"""llama.cpp (llama-cpp-python) decode throughput on a GGUF file, the peer of `bonsai_bench decode`.

    decode_peer.py MODEL.gguf [--tokens N] [--threads T] [--prompt P]
Greedy, EOS ignored, batch 1. Prints JSON: decode tokens/s (excluding the prompt) and prompt tokens/s.
"""
import argparse
import json
import time

from llama_cpp import Llama


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=16)
    a = ap.parse_args()
    n_ctx = max(1024, 2 * (a.prompt + a.tokens))
    # n_batch = n_ctx: llama-cpp-python keeps n_batch rows of scores when logits_all is off, and
    # indexes them by position, so a prompt of n_batch tokens would run past them.
    llm = Llama(model_path=a.gguf, n_ctx=n_ctx, n_batch=n_ctx, n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
    prompt = [(17 * (i + 1)) % 1000 + 100 for i in range(a.prompt)]
    for warm in (True, False):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        t1 = time.perf_counter()
        n = 4 if warm else a.tokens
        for _ in range(n):
            tok = int(llm.scores[llm.n_tokens - 1].argmax())
            llm.eval([tok])
        t2 = time.perf_counter()
    print(json.dumps({"what": "llama.cpp decode", "gguf": a.gguf, "threads": a.threads,
                      "decode_tokens_per_s": round(a.tokens / (t2 - t1), 1),
                      "prefill_tokens_per_s": round(a.prompt / (t1 - t0), 1)}))


if __name__ == "__main__":
    main()
