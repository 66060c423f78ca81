#!/usr/bin/env python3
"""transformers reference for `bonsai eval`, and the check that the two agree.

    eval_ref.py mc   --model HF_DIR --task arc|hellaswag|piqa|jsonl-mc --data PATH [--limit N] [--out S.jsonl]
    eval_ref.py ppl  --model HF_DIR --data TEXT [--limit TOKENS] --window W --stride S
    eval_ref.py check-mc  --bonsai BIN --model HF_DIR --task T --data PATH --limit N [--rtol 1e-4] [--json OUT]
    eval_ref.py check-mc  --bonsai BIN --model HF_DIR --task mmlu --data DIR --write-mmlu-fixture   (5-shot)
    eval_ref.py check-ppl --bonsai BIN --model HF_DIR --data TEXT --limit TOKENS --window W --stride S [--rtol 1e-3]

The reference is written independently of bonsai's C++: it reads the task files itself, builds the
prompts as lm-evaluation-harness does (ARC/PIQA "Question: ...\\nAnswer:", a choice is " " + text;
HellaSwag ctx + " " + ending; MMLU's 5-shot "The following are ..." prompt with " A".." D"; _encode_pair: trailing spaces of the context move to the continuation,
continuation ids = encode(context + continuation)[len(encode(context)):]), and scores every
(context, choice) pair with one full forward of AutoModelForCausalLM in fp32 (what lm-eval does with
batch size 1). acc = argmax log-likelihood, acc_norm = argmax of it / len(choice in UTF-8 bytes).
Perplexity uses Hugging Face's sliding windows ("Perplexity of fixed-length models").

check-mc runs `bonsai eval --samples` on the same HF directory and requires every per-choice
log-likelihood to agree within rtol (default 1e-4, fp32) and the chosen answer (acc and acc_norm)
to be identical on every item; it also times both (items/s of the scoring loop, model load
excluded, same thread count) and prints the ratio. check-ppl compares the perplexity (default
rtol 1e-3 = 0.1%). Exit code 1 on any disagreement.
"""
import argparse
import bz2
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


# ------------------------------------------------------------------ task files (independent readers)
def read_text(path):
    data = Path(path).read_bytes()
    if str(path).endswith(".bz2"):
        data = bz2.decompress(data)
    return data.decode("utf-8")


def load_mc(task, path):
    """[(query, [choices], gold, delimiter)]"""
    out = []
    if task in ("arc", "jsonl-mc"):
        for line in read_text(path).splitlines():
            if not line.strip():
                continue
            d = json.loads(line)
            q = d["query"]
            if task == "arc" and not q.endswith("Answer:"):
                q += "\nAnswer:"
            out.append((q, d["choices"], int(d["gold"]), d.get("delimiter", " ") if task == "jsonl-mc" else " "))
    elif task == "hellaswag":
        lines = read_text(path).split("\n")
        while lines and lines[-1] == "":
            lines.pop()
        for i in range(0, len(lines), 6):
            out.append((lines[i], lines[i + 2:i + 6], int(lines[i + 1]), " "))
    elif task == "piqa":
        p = Path(path)
        labels = (p.parent / (p.stem + "-labels.lst")).read_text().split()
        for line, lab in zip(p.read_text().splitlines(), labels):
            d = json.loads(line)
            out.append(("Question: " + d["goal"] + "\nAnswer:", [d["sol1"], d["sol2"]], int(lab), " "))
    elif task == "mmlu":  # Hendrycks' CSV folder: test/SUBJECT_test.csv; few-shot from dev/SUBJECT_dev.csv
        import csv
        for f in sorted((Path(path) / "test").glob("*_test.csv")):
            subject = f.name[: -len("_test.csv")]
            desc = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
            def fmt(r):
                return f"{r[0]}\nA. {r[1]}\nB. {r[2]}\nC. {r[3]}\nD. {r[4]}\nAnswer:"
            dev_file = Path(path) / "dev" / f"{subject}_dev.csv"
            dev = list(csv.reader(dev_file.open(newline=""))) if dev_file.exists() else []
            shots = "".join(fmt(r) + " " + r[5] + "\n\n" for r in dev[:MMLU_SHOTS])
            for r in csv.reader(f.open(newline="")):
                out.append((desc + shots + fmt(r), ["A", "B", "C", "D"], "ABCD".index(r[5]), " "))
    else:
        sys.exit(f"unknown task {task}")
    return out


MMLU_SHOTS = 5


def write_mmlu_fixture(d):
    """A hand-written two-subject MMLU folder (quoted commas, a doubled quote, a line break, CRLF)."""
    d = Path(d)
    (d / "test").mkdir(parents=True, exist_ok=True)
    (d / "dev").mkdir(parents=True, exist_ok=True)
    (d / "test" / "high_school_physics_test.csv").write_bytes(
        b'"A ball, dropped from rest, falls for 2 s. Its ""speed""\nis about",5 m/s,10 m/s,20 m/s,40 m/s,C\r\n'
        b"What is the SI unit of force?,joule,newton,watt,pascal,B\n"
        b"Light travels fastest in,glass,water,vacuum,diamond,C\n")
    (d / "test" / "world_religions_test.csv").write_text(
        "Which city is the holiest in Islam?,Mecca,Cairo,Rome,Delhi,A\n"
        "How many days are there in a week?,five,six,seven,eight,C\n")
    dev = "".join(f"Practice question {i}: what is {i} + {i}?,{2 * i},{2 * i + 1},{i},{3 * i},A\n" for i in range(1, 6))
    for subject in ("high_school_physics", "world_religions"):
        (d / "dev" / f"{subject}_dev.csv").write_text(dev)


def encode_pair(tok, context, continuation):
    n = len(context) - len(context.rstrip())
    if n > 0:
        continuation = context[-n:] + continuation
        context = context[:-n]
    whole = tok.encode(context + continuation, add_special_tokens=False)
    ctx = tok.encode(context, add_special_tokens=False)
    return ctx, whole[len(ctx):]


def load_model(model_dir, threads):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if threads:
        torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    return tok, model


def ref_mc(args):
    import torch
    tok, model = load_model(args.model, args.threads)
    items = load_mc(args.task, args.data)[: args.limit or None]
    rows = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for i, (query, choices, gold, delim) in enumerate(items):
            lls = []
            for c in choices:
                ctx, cont = encode_pair(tok, query, delim + c)
                ids = torch.tensor([ctx + cont], dtype=torch.int64)
                logits = model(ids).logits[0].float()
                lp = torch.log_softmax(logits[len(ctx) - 1:-1], -1)
                lls.append(float(lp.gather(1, torch.tensor(cont).unsqueeze(1)).double().sum()))
            norm = [ll / max(1, len(c.encode("utf-8"))) for ll, c in zip(lls, choices)]
            rows.append({"index": i, "gold": gold, "logprobs": lls,
                         "pred": max(range(len(lls)), key=lambda k: (lls[k], -k)),
                         "pred_norm": max(range(len(norm)), key=lambda k: (norm[k], -k))})
    elapsed = time.perf_counter() - t0
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    acc = sum(r["pred"] == r["gold"] for r in rows) / len(rows)
    acc_norm = sum(r["pred_norm"] == r["gold"] for r in rows) / len(rows)
    summary = {"task": args.task, "samples": len(rows), "acc": acc, "acc_norm": acc_norm, "eval_s": elapsed,
               "items_per_s": len(rows) / elapsed, "threads": torch.get_num_threads()}
    print(json.dumps(summary))
    return rows, summary


def ref_ppl(args):
    import torch
    tok, model = load_model(args.model, args.threads)
    ids = tok.encode(read_text(args.data), add_special_tokens=False)
    if args.limit:
        ids = ids[: args.limit]
    enc = torch.tensor([ids], dtype=torch.int64)
    seq_len = enc.size(1)
    nll_sum, n_tokens, prev_end, windows = 0.0, 0, 0, 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for begin in range(0, seq_len, args.stride):
            end = min(begin + args.window, seq_len)
            trg_len = end - prev_end
            input_ids = enc[:, begin:end]
            target_ids = input_ids.clone()
            target_ids[:, :-trg_len] = -100
            logits = model(input_ids).logits.float()
            # sum of the shifted cross-entropy over the labelled targets (HF's loss, unreduced)
            loss = torch.nn.functional.cross_entropy(logits[0, :-1], target_ids[0, 1:], ignore_index=-100,
                                                     reduction="sum")
            nll_sum += float(loss)
            n_tokens += int((target_ids[0, 1:] != -100).sum())
            windows += 1
            prev_end = end
            if end == seq_len:
                break
    elapsed = time.perf_counter() - t0
    out = {"perplexity": math.exp(nll_sum / n_tokens), "nll_sum": nll_sum, "tokens": n_tokens, "windows": windows,
           "eval_s": elapsed, "tokens_per_s": n_tokens / elapsed}
    print(json.dumps(out))
    return out


# ------------------------------------------------------------------ bonsai side + comparison
def run_bonsai(args, extra):
    with tempfile.TemporaryDirectory() as d:
        res, samples = Path(d) / "r.json", Path(d) / "s.jsonl"
        cmd = [args.bonsai, "eval", "--model", args.model, "--task", args.task, "--data", args.data, "--dtype", "f32",
               "--output", str(res), "--samples", str(samples), "progress=false"] + extra
        if args.threads:
            cmd.append(f"threads={args.threads}")
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"bonsai failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr}")
        sys.stderr.write(p.stderr)
        doc = json.loads(res.read_text())
        rows = [json.loads(l) for l in samples.read_text().splitlines()]
        return doc["results"][args.task], rows


def check_mc(args):
    extra = ["--limit", str(args.limit)] if args.limit else []
    if args.task == "mmlu":
        extra += ["--shots", str(MMLU_SHOTS)]
    b_metrics, b_rows = run_bonsai(args, extra)
    r_rows, r_sum = ref_mc(args)
    bad, worst = [], 0.0
    for b, r in zip(b_rows, r_rows):
        for k, (x, y) in enumerate(zip(b["logprobs"], r["logprobs"])):
            rel = abs(x - y) / max(abs(y), 1e-12)
            worst = max(worst, rel)
            if rel > args.rtol:
                bad.append(f"item {r['index']} choice {k}: bonsai {x:.8f} transformers {y:.8f} (rel {rel:.2e})")
        if b["pred"] != r["pred"] or b["pred_norm"] != r["pred_norm"]:
            bad.append(f"item {r['index']}: chosen bonsai {b['pred']}/{b['pred_norm']} transformers {r['pred']}/{r['pred_norm']}")
    if len(b_rows) != len(r_rows):
        bad.append(f"{len(b_rows)} bonsai items vs {len(r_rows)} reference items")
    speedup = b_metrics["timing"]["items_per_s"] / r_sum["items_per_s"]
    report = {"task": args.task, "items": len(r_rows), "max_rel_diff": worst, "rtol": args.rtol,
              "identical_choices": not any("chosen" in m for m in bad),
              "bonsai": {"acc": b_metrics["acc"], "acc_norm": b_metrics["acc_norm"],
                         "items_per_s": b_metrics["timing"]["items_per_s"]},
              "transformers": {"acc": r_sum["acc"], "acc_norm": r_sum["acc_norm"], "items_per_s": r_sum["items_per_s"]},
              "speedup": speedup, "threads": r_sum["threads"]}
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if bad:
        print(f"FAILED: {len(bad)} disagreements\n" + "\n".join(bad[:20]))
        return 1
    print(f"ok: {len(r_rows)} items, every log-likelihood within rtol {args.rtol} (worst {worst:.2e}), "
          f"same choices; bonsai {speedup:.2f}x transformers' items/s")
    return 0


def check_ppl(args):
    args.task = "perplexity"
    b, _ = run_bonsai(args, ["--limit", str(args.limit), f"window={args.window}", f"stride={args.stride}"])
    r = ref_ppl(args)
    rel = abs(b["perplexity"] - r["perplexity"]) / r["perplexity"]
    report = {"bonsai": {"perplexity": b["perplexity"], "tokens": b["tokens"], "windows": b["windows"],
                         "bits_per_byte": b["bits_per_byte"], "tokens_per_s": b["timing"]["tokens_per_s"]},
              "transformers": r, "rel_diff": rel, "rtol": args.rtol}
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if b["tokens"] != r["tokens"] or b["windows"] != r["windows"]:
        print(f"FAILED: different windows: bonsai {b['tokens']} tokens / {b['windows']} windows, "
              f"transformers {r['tokens']} / {r['windows']}")
        return 1
    if rel > args.rtol:
        print(f"FAILED: perplexity bonsai {b['perplexity']:.6f} transformers {r['perplexity']:.6f} (rel {rel:.2e})")
        return 1
    print(f"ok: perplexity {b['perplexity']:.6f} vs {r['perplexity']:.6f} (rel {rel:.2e}) on {r['tokens']} tokens")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["mc", "ppl", "check-mc", "check-ppl"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", default="arc")
    ap.add_argument("--data", required=True)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--stride", type=int, default=256)
    ap.add_argument("--out")
    ap.add_argument("--json", help="write the check's report here")
    ap.add_argument("--bonsai")
    ap.add_argument("--rtol", type=float)
    ap.add_argument("--threads", type=int, default=0, help="torch threads on both sides (0 = default)")
    ap.add_argument("--write-mmlu-fixture", action="store_true", help="first write the hand-written MMLU folder at --data")
    args = ap.parse_args()
    if args.write_mmlu_fixture:
        write_mmlu_fixture(args.data)
    if not Path(args.data).exists():
        print(f"skipped: no data at {args.data} (the workplace's ../shared/data is absent)")
        return 77
    if args.mode == "mc":
        ref_mc(args)
    elif args.mode == "ppl":
        ref_ppl(args)
    elif args.mode == "check-mc":
        args.rtol = args.rtol or 1e-4
        return check_mc(args)
    else:
        args.rtol = args.rtol or 1e-3
        return check_ppl(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
