#!/usr/bin/env python3
"""Summarizes `ncu --csv --page raw` output: per kernel name, launches, total and per-step time,
DRAM bytes and achieved GB/s, largest total first. Usage: ncu_table.py FILE.csv [--steps N]."""
import argparse
import collections
import csv
import io
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--steps", type=int, default=1, help="profiled steps (per-step figures divide by it)")
    a = ap.parse_args()
    lines = open(a.csv, encoding="utf-8", errors="replace").read().splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith('"ID"')), None)
    if start is None:
        sys.exit(f"ncu_table: no CSV header (\"ID\",...) in {a.csv}: did ncu profile anything?")
    rows = list(csv.reader(io.StringIO("\n".join(lines[start:]))))
    head, body = rows[0], rows[2:]  # rows[1] holds the units
    col = {h: i for i, h in enumerate(head)}

    def num(r, k):
        try:
            return float(r[col[k]].replace(",", ""))
        except (KeyError, ValueError, IndexError):
            return 0.0

    agg = collections.OrderedDict()
    for r in body:
        if len(r) < len(head):
            continue
        name = r[col["Kernel Name"]].split("(")[0][:60]
        t = num(r, "gpu__time_duration.sum")  # ns
        b = num(r, "dram__bytes_read.sum") + num(r, "dram__bytes_write.sum")
        e = agg.setdefault(name, [0, 0.0, 0.0, r[col.get("launch__grid_size", 0)], r[col.get("launch__registers_per_thread", 0)]])
        e[0] += 1
        e[1] += t
        e[2] += b
    tot_t = sum(e[1] for e in agg.values())
    tot_b = sum(e[2] for e in agg.values())
    print(f"| kernel | launches/step | us/step | MB/step | GB/s | grid | regs |")
    print("|---|---|---|---|---|---|---|")
    for name, (n, t, b, grid, regs) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
        print(f"| {name} | {n / a.steps:g} | {t / 1e3 / a.steps:.1f} | {b / 1e6 / a.steps:.1f} | "
              f"{b / t if t else 0:.0f} | {grid} | {regs} |")
    print(f"| total | {sum(e[0] for e in agg.values()) / a.steps:g} | {tot_t / 1e3 / a.steps:.1f} | "
          f"{tot_b / 1e6 / a.steps:.1f} | {tot_b / tot_t if tot_t else 0:.0f} | | |")


if __name__ == "__main__":
    main()
