#!/usr/bin/env python3
"""Checks a training run's metrics.jsonl (used by CTest).

    check_metrics.py RUN_DIR --pinned L1,L2,...  [--rtol R]   losses equal pinned values
    check_metrics.py RUN_DIR --same-as OTHER_RUN_DIR          losses bit-identical to another run
    check_metrics.py RUN_DIR --close-to OTHER_RUN_DIR [--rtol R]  losses equal within rtol
    check_metrics.py RUN_DIR --tensorboard                    TensorBoard reads the same train/loss
Exit status 0 only when every requested check holds.
"""
import argparse
import json
import math
import os
import subprocess
import sys


def losses(run: str) -> list:
    with open(os.path.join(run, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    return [(r["step"], r["loss"]) for r in recs if r["split"] == "train"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--pinned")
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--same-as")
    ap.add_argument("--close-to")
    ap.add_argument("--tensorboard", action="store_true")
    a = ap.parse_args()
    got = losses(a.run)
    print("losses:", ",".join(f"{v:.8g}" for _, v in got))
    ok = True
    if a.pinned:
        want = [float(x) for x in a.pinned.split(",")]
        if len(want) != len(got):
            print(f"FAIL: {len(got)} steps logged, {len(want)} pinned")
            ok = False
        for (step, v), w in zip(got, want):
            if not math.isclose(v, w, rel_tol=a.rtol):
                print(f"FAIL: step {step}: loss {v!r}, pinned {w!r} (rtol {a.rtol})")
                ok = False
    if a.same_as:
        other = losses(a.same_as)
        if other != got:
            print(f"FAIL: losses differ from {a.same_as}: {other}")
            ok = False
    if a.close_to:
        other = losses(a.close_to)
        if [s for s, _ in other] != [s for s, _ in got] or any(
                not math.isclose(v, w, rel_tol=a.rtol) for (_, v), (_, w) in zip(got, other)):
            print(f"FAIL: losses not within rtol {a.rtol} of {a.close_to}: {other}")
            ok = False
    if a.tensorboard:
        script = os.path.join(os.path.dirname(__file__), "..", "scripts", "ref", "read_tb_events.py")
        out = json.loads(subprocess.check_output([sys.executable, script, os.path.join(a.run, "tb")]))
        tb = [(s, v) for s, v in out.get("train/loss", [])]
        if [s for s, _ in tb] != [s for s, _ in got] or any(
                not math.isclose(v, w, rel_tol=1e-6) for (_, v), (_, w) in zip(tb, got)):
            print(f"FAIL: TensorBoard train/loss {tb} != metrics.jsonl {got}")
            ok = False
        for tag in ("train/kd", "train/ce", "train/lr", "train/grad_norm", "train/tokens_per_s"):
            if tag not in out:
                print(f"FAIL: TensorBoard has no {tag}")
                ok = False
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
