#!/usr/bin/env python3
"""Markdown summary of scripts/gpu/check.sh's JSON lines (bench_gpu and the Python peers)."""
import json
import sys


def rows(paths):
    for p in paths:
        try:
            with open(p) as f:
                for line in f:
                    line = line.strip()
                    if line.startswith("{"):
                        yield json.loads(line)
        except OSError as e:
            print(f"(missing {p}: {e})")


def main():
    recs = list(rows(sys.argv[1:]))
    dev = next((r.get("device") for r in recs if r.get("device")), "?")
    print(f"# GPU checks on {dev}\n")
    for r in recs:
        if r.get("bench") == "ceilings":
            print(f"ceilings: copy {r['copy_GBps']:.0f} GB/s (read+write), bf16 mm {r['bf16_mm_TFLOPs']:.0f} TFLOP/s\n")
    print("| kernel | shape | ours us | peer us | speedup | ours GB/s | of copy BW | peer |")
    print("|---|---|---|---|---|---|---|---|")
    for r in recs:
        if r.get("bench") == "kernel":
            print(f"| {r['kernel']} | {r['shape']} | {r['ours_us']:.1f} | {r['peer_us']:.1f} | {r['speedup']:.2f}x | "
                  f"{r['ours_GBps']:.0f} | {100 * r['frac_of_copy_bw']:.0f}% | {r['peer']} |")
    print("\n| decode (1B shape, bf16) | batch | tok/s | ms/step | HBM GB/s | of copy BW |")
    print("|---|---|---|---|---|---|")
    for r in recs:
        if r.get("bench") == "decode":
            name = "bonsai" + (" graphs" if r["graphs"] else " no-graphs") + (" gemv" if r["gemv"] and r["batch"] <= 8 else " cuBLAS")
            if r["gemv"] and r["batch"] <= 8 and "gemv_loads" in r:
                name += f" loads={r['gemv_loads']}" + (" +PDL" if r.get("overlap") else "")
            name += (" +fuse_norm" if r.get("fuse_norm") else "") + (" +fold_combine" if r.get("fold_combine") else "")
            if r.get("prompt_len", 128) != 128:
                name += f" (prompt {r['prompt_len']})"
            print(f"| {name} | {r['batch']} | {r['decode_tok_s']:.0f} | {r['ms_per_step']:.3f} | {r['achieved_GBps']:.0f} | "
                  f"{100 * r['frac_of_copy_bw']:.0f}% |")
        if r.get("peer") == "transformers":
            if "error" in r:
                print(f"| transformers {r.get('mode')} | {r.get('batch')} | error: {r['error'][:60]} | | | |")
            else:
                print(f"| transformers {r['mode']} | {r['batch']} | {r['decode_tok_s']:.0f} | {r['ms_per_step']:.3f} | | |")
    print("\n| distill step (8B teacher, 1B student, seq 2048) | step ms | tokens/s | MFU | peak GiB | loss GiB |")
    print("|---|---|---|---|---|---|")
    for r in recs:
        if r.get("bench") == "distill_step":
            print(f"| bonsai fused (chunk {r['chunk_tokens']}) | {r['step_ms']:.1f} | {r['tokens_per_s']:.0f} | "
                  f"{100 * r['mfu']:.1f}% | {r['peak_mem_gib']:.2f} | {r['loss_peak_extra_gib']:.2f} |")
        if r.get("peer") == "pytorch-plain":
            if "error" in r:
                print(f"| plain PyTorch | error: {r['error'][:80]} | | | | |")
            else:
                loss = (r.get("loss_peak_extra_gib") or 0) + (r.get("logits_gib") or 0)
                print(f"| plain PyTorch (logits + fp32 loss) | {r['step_ms']:.1f} | {r['tokens_per_s']:.0f} | "
                      f"{100 * (r.get('mfu') or 0):.1f}% | {r.get('peak_mem_gib') or 0:.2f} | {loss:.2f} |")


if __name__ == "__main__":
    main()
