#!/usr/bin/env python3
"""The plain-PyTorch peer of one distillation step, for scripts/bench/distill_step.sh.

    distill_peer.py TEACHER_DIR STUDENT_DIR --batch B --seq T --steps N --kd-weight A --temperature TAU

Eager PyTorch (transformers models, fp32): teacher forward under no_grad, student forward, full
(B,T,V) logits of both, forward KL at temperature TAU mixed with CE, backward, AdamW step. Prints
tokens/s (median over steps after the first) and the process's peak RSS, as JSON.
"""
import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("teacher")
    ap.add_argument("student")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--kd-weight", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=2.0)
    a = ap.parse_args()
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_pretrained(a.teacher, dtype=torch.float32, attn_implementation="sdpa").eval()
    student = AutoModelForCausalLM.from_pretrained(a.student, dtype=torch.float32, attn_implementation="sdpa").train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.1)
    vocab = student.config.vocab_size
    times = []
    for step in range(a.steps):
        ids = torch.randint(0, vocab, (a.batch, a.seq + 1))
        x, y = ids[:, :-1], ids[:, 1:]
        t0 = time.perf_counter()
        with torch.no_grad():
            tl = teacher(x).logits.float()
        sl = student(x).logits.float()
        tau = a.temperature
        kd = F.kl_div(F.log_softmax(sl / tau, -1), F.log_softmax(tl / tau, -1), log_target=True,
                      reduction="none").sum(-1).mean() * tau * tau
        ce = F.cross_entropy(sl.reshape(-1, vocab), y.reshape(-1))
        loss = a.kd_weight * kd + (1 - a.kd_weight) * ce
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times[1:]) if len(times) > 1 else times[0]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"what": "pytorch eager distill step", "batch": a.batch, "seq": a.seq,
                      "tokens_per_s": round(a.batch * a.seq / med, 1), "step_s": round(med, 3),
                      "peak_rss_mb": round(rss), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
