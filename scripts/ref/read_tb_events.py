#!/usr/bin/env python3
"""Reads TensorBoard event files with the tensorboard package itself and prints the scalars as one JSON
object, {tag: [[step, value], ...]} in file order. tests/test_tb_writer.cpp runs it on files written
by bonsai's TbWriter (train/tb_writer.h), so they stay readable by TensorBoard, not only by bonsai.

usage: read_tb_events.py PATH      PATH is an event file or a log directory

Non-finite values are printed as the strings "NaN", "Infinity" and "-Infinity", so the output stays
strict JSON that any parser accepts.
"""
import json
import math
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def json_value(v):
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return v


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    # size_guidance 0 keeps every scalar; the default reservoir-samples long runs down to 10000.
    acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
    acc.Reload()
    out = {tag: [[e.step, json_value(e.value)] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
