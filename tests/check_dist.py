#!/usr/bin/env python3
"""Checks of the data-parallel runs beyond their losses (used by CTest).

    check_dist.py RUN_DIR --params-close-to OTHER [--atol A]
        every tensor of RUN_DIR/student/model.safetensors (fp32) within A of OTHER's (max |a - b|)
    check_dist.py RUN_DIR --params-same-as OTHER
        bit-identical final parameters
    check_dist.py --memory BASE RUN [RUN ...] [--tol T]
        ZeRO memory per rank from metrics.jsonl (the last train record's optimizer_state_bytes_rank<r>
        and grad_bytes_rank<r>): BASE is a 1-rank run (the full sizes); in each RUN with W ranks and
        dist.zero=z every rank holds optimizer state = full / W (z >= 1) or full (z = 0), gradient =
        full / W (z = 2) or full (z < 2), each within relative tolerance T (padding: < W elements).
        z and W are read from the run's checkpoints (trainer_state.json).
Exit status 0 only when every requested check holds.
"""
import argparse
import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file


def last_train(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    return [r for r in recs if r["split"] == "train"][-1]


def run_setup(run):
    root = os.path.join(run, "checkpoints")
    with open(os.path.join(root, "latest")) as f:
        name = f.read().strip()
    with open(os.path.join(root, name, "trainer_state.json")) as f:
        extra = json.load(f)["extra"]
    return int(extra.get("world_size", 1)), int(extra.get("zero", 0))


def params(run):
    return load_file(os.path.join(run, "student", "model.safetensors"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run", nargs="*")
    ap.add_argument("--params-close-to")
    ap.add_argument("--params-same-as")
    ap.add_argument("--atol", type=float, default=1e-5)
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--tol", type=float, default=1e-3)
    a = ap.parse_args()
    ok = True
    if a.params_close_to or a.params_same_as:
        got = params(a.run[0])
        want = params(a.params_close_to or a.params_same_as)
        if sorted(got) != sorted(want):
            print(f"FAIL: tensor names differ: {sorted(set(got) ^ set(want))}")
            return 1
        worst, where = 0.0, ""
        for k in sorted(got):
            if got[k].dtype != np.float32:
                print(f"FAIL: {k} is {got[k].dtype}, not float32")
                ok = False
            d = float(np.max(np.abs(got[k].astype(np.float64) - want[k].astype(np.float64))))
            if d > worst:
                worst, where = d, k
        print(f"parameters: max |difference| {worst:.3g} ({where or 'none'})")
        limit = 0.0 if a.params_same_as else a.atol
        if worst > limit:
            print(f"FAIL: parameters differ by {worst:.3g} > {limit:.3g}")
            ok = False
    if a.memory:
        base = last_train(a.run[0])
        full_opt, full_grad = base["optimizer_state_bytes_rank0"], base["grad_bytes_rank0"]
        print(f"{a.run[0]}: 1 rank: optimizer state {full_opt:.0f} B, gradient {full_grad:.0f} B")
        if full_opt <= 0 or full_grad <= 0:
            print("FAIL: the 1-rank run measured no optimizer state or gradient")
            ok = False
        for run in a.run[1:]:
            w, z = run_setup(run)
            rec = last_train(run)
            for r in range(w):
                opt, grad = rec[f"optimizer_state_bytes_rank{r}"], rec[f"grad_bytes_rank{r}"]
                want_opt = full_opt / w if z >= 1 else full_opt
                want_grad = full_grad / w if z == 2 else full_grad
                print(f"{run}: W={w} zero={z} rank {r}: optimizer state {opt:.0f} B (expected {want_opt:.0f}), "
                      f"gradient {grad:.0f} B (expected {want_grad:.0f})")
                for what, g, e in (("optimizer state", opt, want_opt), ("gradient", grad, want_grad)):
                    if abs(g - e) > a.tol * e:
                        print(f"FAIL: {run} rank {r}: {what} {g:.0f} B is not {e:.0f} B within {a.tol:g}")
                        ok = False
            if f"optimizer_state_bytes_rank{w}" in rec:
                print(f"FAIL: {run} logs more ranks than its world size {w}")
                ok = False
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
