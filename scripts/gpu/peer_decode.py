#!/usr/bin/env python3
"""Decode speed of Hugging Face transformers on one GPU: the peer of bonsai's CUDA decode benchmark.

What is measured
  A Llama-3.2-1B-shaped LlamaForCausalLM (hidden 2048, intermediate 8192, 16 layers, 32 heads,
  8 kv heads, head_dim 64, vocab 128256, tied embeddings, rope llama3 theta 5e5 factor 32,
  rms eps 1e-5) with RANDOM bf16 weights (HF's own init, normal(0, 0.02)), built from a
  LlamaConfig directly on the device in bf16 (no checkpoint, no network). SDPA attention.

  For every (mode, batch): greedy `model.generate` of exactly --new-tokens tokens after a random
  prompt of --prompt-len tokens (EOS disabled, min_new_tokens = max_new_tokens; the output length
  is checked).
    eager          default DynamicCache, no torch.compile
    static         cache_implementation="static", disable_compile=True (transformers would
                   otherwise auto-compile the decode step of a static cache on CUDA)
    static+compile cache_implementation="static" with transformers' auto torch.compile
                   (optional, not in the default --modes; compile time is excluded by the
                   warm-up but costs tens of seconds)

How
  One warm-up generate (8 new tokens; full length for static+compile) and one prefill warm-up,
  then --repeats timed full generates (torch.cuda.synchronize +
  time.perf_counter around each), then --repeats timed generates with max_new_tokens=1 (= prefill
  + first token). Medians: t_total, t_prefill.
    decode_tok_s = batch * (new_tokens - 1) / (t_total - t_prefill)
    ms_per_step  = (t_total - t_prefill) / (new_tokens - 1) * 1000     (one token for all rows)
  A failing mode/batch prints a JSON line with "error" and the script goes on (exit status 0).

Output: one JSON line per (mode, batch) on stdout (and appended to --json FILE if given).

GPU:   python3 scripts/gpu/peer_decode.py --json out/peer_decode.jsonl
CPU:   python3 scripts/gpu/peer_decode.py --tiny --device cpu --batch 1 2 --new-tokens 8 --prompt-len 16
"""
import argparse
import json
import statistics
import sys
import time
import traceback

import torch
import transformers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM


def llama_config(tiny: bool) -> LlamaConfig:
    if tiny:
        shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, vocab_size=512, max_position_embeddings=131072)
    else:  # Llama-3.2-1B
        shape = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072)
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    common = dict(rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu", attention_bias=False,
                  mlp_bias=False, initializer_range=0.02, bos_token_id=None, eos_token_id=None,
                  pad_token_id=None, use_cache=True)
    if int(transformers.__version__.split(".")[0]) >= 5:
        return LlamaConfig(**shape, **common, rope_parameters=rope)
    rope = dict(rope)
    theta = rope.pop("rope_theta")
    return LlamaConfig(**shape, **common, rope_theta=theta, rope_scaling=rope)


def build_model(cfg: LlamaConfig, device: torch.device) -> LlamaForCausalLM:
    """Random bf16 weights, allocated and initialised on the device (no fp32 CPU copy)."""
    torch.manual_seed(0)
    with torch.device(device):
        try:
            model = LlamaForCausalLM._from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
        except TypeError:  # transformers 4.x spelling
            model = LlamaForCausalLM._from_config(cfg, torch_dtype=torch.bfloat16, attn_implementation="sdpa")
    model = model.to(device=device, dtype=torch.bfloat16).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_generate(model, ids, mask, gen_cfg, device) -> tuple[float, torch.Tensor]:
    sync(device)
    t0 = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg)
    sync(device)
    return time.perf_counter() - t0, out


def gen_config(mode: str, new_tokens: int) -> GenerationConfig:
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=1,
              eos_token_id=None, bos_token_id=None, pad_token_id=0, use_cache=True,
              temperature=None, top_p=None, top_k=None)
    if mode == "eager":
        kw["disable_compile"] = True
    elif mode == "static":
        kw.update(cache_implementation="static", disable_compile=True)
    elif mode == "static+compile":
        kw.update(cache_implementation="static", disable_compile=False)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return GenerationConfig(**kw)


def run_one(model, mode, batch, a, device, vocab) -> dict:
    g = torch.Generator(device="cpu").manual_seed(1234 + batch)
    ids = torch.randint(0, vocab, (batch, a.prompt_len), generator=g).to(device)
    mask = torch.ones_like(ids)
    full, pre = gen_config(mode, a.new_tokens), gen_config(mode, 1)
    if hasattr(model, "_cache"):  # a static cache from another batch size / mode
        model._cache = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    # warm-up: a full-length generate for static+compile (compiles for the final cache length), a short
    # one otherwise (saves GPU time; nothing there depends on the length)
    warm = full if mode == "static+compile" else gen_config(mode, min(a.new_tokens, 8))
    timed_generate(model, ids, mask, warm, device)
    timed_generate(model, ids, mask, pre, device)
    t_total = []
    for _ in range(a.repeats):
        t, out = timed_generate(model, ids, mask, full, device)
        t_total.append(t)
    if out.shape != (batch, a.prompt_len + a.new_tokens):
        raise RuntimeError(f"generate returned shape {tuple(out.shape)}, expected {(batch, a.prompt_len + a.new_tokens)}")
    t_pre = [timed_generate(model, ids, mask, pre, device)[0] for _ in range(a.repeats)]
    tt, tp = statistics.median(t_total), statistics.median(t_pre)
    steps = a.new_tokens - 1
    dt = max(tt - tp, 1e-9)
    rec = {"decode_tok_s": round(batch * steps / dt, 1) if steps > 0 else None,
           "ms_per_step": round(dt / steps * 1e3, 3) if steps > 0 else None,
           "prefill_ms": round(tp * 1e3, 2), "total_ms": round(tt * 1e3, 2),
           "total_ms_runs": [round(t * 1e3, 2) for t in t_total],
           "prefill_ms_runs": [round(t * 1e3, 2) for t in t_pre]}
    if device.type == "cuda":
        rec["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--modes", nargs="+", default=["eager", "static"],
                    choices=["eager", "static", "static+compile"])
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="2 layers, hidden 64, vocab 512 (CPU smoke test)")
    ap.add_argument("--json", metavar="OUT.jsonl", help="also append the JSON lines to this file")
    a = ap.parse_args()
    if a.new_tokens < 2:
        ap.error("--new-tokens must be >= 2")

    torch.manual_seed(0)
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.cuda.set_device(device if device.index is not None else 0)
        dev_name = torch.cuda.get_device_name(device)
    else:
        dev_name = "cpu"
    cfg = llama_config(a.tiny)
    t0 = time.perf_counter()
    model = build_model(cfg, device)
    sync(device)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    base = {"peer": "transformers", "model": "tiny" if a.tiny else "llama-3.2-1b-shape",
            "n_params": n_params, "dtype": "bfloat16", "attn": model.config._attn_implementation,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "build_s": round(build_s, 2), "device": dev_name}
    sink = open(a.json, "a") if a.json else None
    failures = 0
    for mode in a.modes:
        for batch in a.batch:
            rec = {"peer": "transformers", "mode": mode, "batch": batch, "prompt_len": a.prompt_len,
                   "new_tokens": a.new_tokens, "compile": mode == "static+compile" and device.type == "cuda"}
            try:
                rec.update(run_one(model, mode, batch, a, device, cfg.vocab_size))
            except Exception as e:  # report and go on with the next mode/batch
                failures += 1
                rec["error"] = f"{type(e).__name__}: {e}"[:2000]
                traceback.print_exc(file=sys.stderr)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rec.update({k: v for k, v in base.items() if k not in rec})
            line = json.dumps(rec)
            print(line, flush=True)
            if sink:
                sink.write(line + "\n")
                sink.flush()
    if sink:
        sink.close()
    if failures:
        print(f"peer_decode: {failures} mode/batch run(s) failed, see the \"error\" lines", file=sys.stderr)
    return 0  # failures are in the JSON; do not abort a calling benchmark script


if __name__ == "__main__":
    sys.exit(main())
