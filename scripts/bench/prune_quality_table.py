#!/usr/bin/env python3
"""Markdown tables of scripts/bench/prune_quality.sh's runs (their report.json files).

    python scripts/bench/prune_quality_table.py OUT_DIR

Exit code 1 when bonsai's selection (activation importance for width, Block Importance for depth)
is not better than every random seed.
"""
import json
import math
import os
import sys


def load(out, name):
    with open(os.path.join(out, name, "report.json")) as f:
        return json.load(f)


def table(out, title, rows, ours, randoms):
    teacher = load(out, "width-activation")
    print(f"\n### {title}\n")
    print("| selection | parameters | calibration loss | WikiText-2 perplexity |")
    print("|---|---|---|---|")
    print(f"| teacher (SmolLM2-135M-Instruct) | {teacher['teacher']['params'] / 1e6:.1f}M | "
          f"{teacher['calibration']['loss_teacher']:.3f} | {teacher['eval']['ppl_teacher']:.2f} |")
    ppl = {}
    for name, label in rows:
        r = load(out, name)
        ppl[name] = r["eval"]["ppl_student"]
        print(f"| {label} | {r['student']['params'] / 1e6:.1f}M | {r['calibration']['loss_student']:.3f} | "
              f"{ppl[name]:.1f} |")
    worst_margin = min(math.log(ppl[r]) - math.log(ppl[ours]) for r in randoms)
    ok = worst_margin > 0
    print(f"\n{'ours' if ok else 'NOT'} better than every random seed: smallest margin "
          f"{worst_margin:.2f} nats/token ({math.exp(worst_margin):.1f}x perplexity)")
    return ok


def main():
    out = sys.argv[1]
    w = table(out, "Width (hidden 576 -> 384, MLP 1536 -> 1024, heads 9 -> 6; no retraining)",
              [("width-activation", "activation importance (bonsai)"), ("width-magnitude", "weight magnitude"),
               ("width-random-1", "random, seed 1"), ("width-random-2", "random, seed 2"),
               ("width-random-3", "random, seed 3")],
              "width-activation", ["width-random-1", "width-random-2", "width-random-3"])
    d = table(out, "Depth (30 -> 20 layers; no retraining)",
              [("depth-block", "Block Importance (bonsai default)"), ("depth-contiguous", "contiguous block"),
               ("depth-random-1", "random layers, seed 1"), ("depth-random-2", "random layers, seed 2"),
               ("depth-random-3", "random layers, seed 3")],
              "depth-block", ["depth-random-1", "depth-random-2", "depth-random-3"])
    return 0 if w and d else 1


if __name__ == "__main__":
    sys.exit(main())
