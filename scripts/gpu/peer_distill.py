#!/usr/bin/env python3
"""One plain-PyTorch distillation step on one GPU: the peer of bonsai's CUDA distill-step benchmark.

What is measured
  teacher = Llama-3.1-8B shape (hidden 4096, inter 14336, 32 layers, 32 heads, 8 kv, head_dim 128,
            vocab 128256, untied, rope llama3 theta 5e5 factor 8), eval, requires_grad False
  student = Llama-3.2-1B shape (hidden 2048, inter 8192, 16 layers, 32 heads, 8 kv, head_dim 64,
            vocab 128256, tied, rope llama3 theta 5e5 factor 32), train mode
  Both are transformers LlamaForCausalLM with RANDOM bf16 weights built directly on the device
  (no checkpoint, no network), SDPA attention, no torch.compile, no autocast (params are bf16).

  One step (batch x seq random tokens; input = ids[:, :-1], labels = ids[:, 1:]):
    teacher forward under torch.no_grad            -> teacher logits (B,T,V) bf16
    student forward                                 -> student logits (B,T,V) bf16
    loss = 0.5 * KL(P_teacher || Q_student) + 0.5 * CE(student, labels), plainly in fp32:
        ls = log_softmax(s.float()), lt = log_softmax(t.float())          (temperature --temperature)
        kd = F.kl_div(ls, lt, log_target=True, reduction="batchmean")   (= per-token mean, x tau^2)
        ce = F.nll_loss(ls, labels)                                       (= cross_entropy, reuses ls)
    backward (to the student's parameters)
    optimizer step only with --optimizer (AdamW); by default the step is forward + backward only,
    the same work as bonsai's step it is compared with ("step" field in the output says which).
  Activation checkpointing is off unless --grad-ckpt (reported as "grad_ckpt").

  The student logits are cut from the graph (s_leaf = s.detach().requires_grad_()), the loss is
  backpropagated to s_leaf, then s.backward(s_leaf.grad): the same arithmetic as one backward, but
  it lets the loss's own memory be measured.

How
  --warmup (2) untimed steps, then --steps (5) timed steps (cuda synchronize + perf_counter around
  each step, grads set to None before each), median -> step_ms, tokens_per_s = batch*seq/step.
  mfu = (6*N_student + 2*N_teacher) * tokens_per_s / (--peak-tflops * 1e12), N = parameter counts
        (the tied student embedding counted once; attention score FLOPs not counted).
  Memory (CUDA only), from two extra untimed steps:
    peak_mem_gib         torch.cuda.max_memory_allocated over a whole step (stats reset before it;
                         includes both models' weights, the student's grads, activations)
    loss_peak_extra_gib  max_memory_allocated during loss forward + backward (reset right before it)
                         minus torch.cuda.memory_allocated() just before the loss, with both
                         logits tensors already alive
    logits_gib           bytes of the two bf16 logits tensors together

Output: one JSON line on stdout (and appended to --json FILE if given).

GPU:  python3 scripts/gpu/peer_distill.py --seq 2048 --batch 1 --json out/peer_distill.jsonl
CPU:  python3 scripts/gpu/peer_distill.py --tiny --device cpu --seq 64 --batch 1
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

GIB = 2**30


def llama_config(role: str, tiny: bool) -> LlamaConfig:
    if role == "teacher":
        shape = (dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=32, vocab_size=512) if tiny else
                 dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=128, vocab_size=128256))
        tied, factor = False, 8.0
    else:
        shape = (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, vocab_size=512) if tiny else
                 dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=64, vocab_size=128256))
        tied, factor = True, 32.0
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": factor, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    common = dict(max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=tied, hidden_act="silu",
                  attention_bias=False, mlp_bias=False, initializer_range=0.02, bos_token_id=None,
                  eos_token_id=None, pad_token_id=None, use_cache=False)
    if int(transformers.__version__.split(".")[0]) >= 5:
        return LlamaConfig(**shape, **common, rope_parameters=rope)
    rope = dict(rope)
    theta = rope.pop("rope_theta")
    return LlamaConfig(**shape, **common, rope_theta=theta, rope_scaling=rope)


def build_model(cfg: LlamaConfig, device: torch.device, seed: int) -> LlamaForCausalLM:
    """Random bf16 weights, allocated and initialised on the device (no fp32 CPU copy)."""
    torch.manual_seed(seed)
    with torch.device(device):
        try:
            model = LlamaForCausalLM._from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
        except TypeError:  # transformers 4.x spelling
            model = LlamaForCausalLM._from_config(cfg, torch_dtype=torch.bfloat16, attn_implementation="sdpa")
    return model.to(device=device, dtype=torch.bfloat16)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def distill_loss(s_logits, t_logits, labels, kd_weight: float, tau: float):
    """Forward KL(P_teacher || Q_student) at temperature tau, mixed with CE; fp32, per-token means."""
    v = s_logits.shape[-1]
    s = s_logits.float().reshape(-1, v)
    t = t_logits.float().reshape(-1, v)
    ls = F.log_softmax(s / tau if tau != 1.0 else s, dim=-1)
    lt = F.log_softmax(t / tau if tau != 1.0 else t, dim=-1)
    kd = F.kl_div(ls, lt, log_target=True, reduction="batchmean") * (tau * tau)
    if tau != 1.0:
        ls = F.log_softmax(s, dim=-1)
    ce = F.nll_loss(ls, labels.reshape(-1))
    return kd_weight * kd + (1.0 - kd_weight) * ce, kd, ce


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    ap.add_argument("--kd-weight", type=float, default=0.5, help="weight of KL; CE gets 1 - this")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--optimizer", action="store_true", help="add a fused AdamW step to every step")
    ap.add_argument("--grad-ckpt", action="store_true", help="activation checkpointing in the student")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (H100/H200 SXM: 989)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny 2-layer teacher/student, vocab 512 (CPU smoke test)")
    ap.add_argument("--json", metavar="OUT.jsonl", help="also append the JSON line to this file")
    a = ap.parse_args()

    device = torch.device(a.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device if device.index is not None else 0)
    dev_name = torch.cuda.get_device_name(device) if cuda else "cpu"

    t0 = time.perf_counter()
    teacher = build_model(llama_config("teacher", a.tiny), device, seed=1).eval().requires_grad_(False)
    student = build_model(llama_config("student", a.tiny), device, seed=2).train()
    if a.grad_ckpt:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    sync(device)
    build_s = time.perf_counter() - t0
    n_t = sum(p.numel() for p in teacher.parameters())
    n_s = sum(p.numel() for p in student.parameters())
    vocab = student.config.vocab_size
    assert teacher.config.vocab_size == vocab

    opt = None
    if a.optimizer:
        opt = torch.optim.AdamW(student.parameters(), lr=1e-5, weight_decay=0.0, fused=cuda)

    g = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, vocab, (a.batch, a.seq + 1), generator=g).to(device)
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

    def step(mem: dict | None = None):
        """One distillation step. With mem given (CUDA), measure the loss's own peak memory."""
        with torch.no_grad():
            t_logits = teacher(input_ids=x, use_cache=False).logits
        s_logits = student(input_ids=x, use_cache=False).logits
        s_leaf = s_logits.detach().requires_grad_(True)
        if mem is not None:
            sync(device)
            mem["before"] = torch.cuda.memory_allocated(device)
            mem["logits_bytes"] = (t_logits.numel() * t_logits.element_size()
                                   + s_logits.numel() * s_logits.element_size())
            mem["logits_dtype"] = str(s_logits.dtype).replace("torch.", "")
            torch.cuda.reset_peak_memory_stats(device)
        loss, kd, ce = distill_loss(s_leaf, t_logits, y, a.kd_weight, a.temperature)
        loss.backward()
        if mem is not None:
            sync(device)
            mem["loss_peak"] = torch.cuda.max_memory_allocated(device)
        grad = s_leaf.grad
        del t_logits, s_leaf
        s_logits.backward(grad)
        del grad, s_logits
        if opt is not None:
            opt.step()
        return loss.detach(), kd.detach(), ce.detach()

    def zero():
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        else:
            student.zero_grad(set_to_none=True)

    for _ in range(a.warmup):
        zero()
        step()
    times = []
    for _ in range(a.steps):
        zero()
        sync(device)
        ts = time.perf_counter()
        loss, kd, ce = step()
        sync(device)
        times.append(time.perf_counter() - ts)
    step_s = statistics.median(times)
    tokens = a.batch * a.seq
    tok_s = tokens / step_s
    flops_per_token = 6 * n_s + 2 * n_t

    rec = {"peer": "pytorch-plain", "seq": a.seq, "batch": a.batch, "step_ms": round(step_s * 1e3, 2),
           "tokens_per_s": round(tok_s, 1),
           "mfu": round(flops_per_token * tok_s / (a.peak_tflops * 1e12), 4) if cuda else None,
           "peak_mem_gib": None, "loss_peak_extra_gib": None, "logits_gib": None, "device": dev_name}

    if cuda:
        zero()
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        sync(device)
        rec["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / GIB, 3)
        zero()
        mem = {}
        step(mem)
        rec["loss_peak_extra_gib"] = round((mem["loss_peak"] - mem["before"]) / GIB, 3)
        rec["logits_gib"] = round(mem["logits_bytes"] / GIB, 3)
        rec["mem_before_loss_gib"] = round(mem["before"] / GIB, 3)
        rec["logits_dtype"] = mem["logits_dtype"]
    else:
        rec["logits_gib"] = round(2 * tokens * vocab * 2 / GIB, 6)  # two bf16 (B,T,V) tensors

    rec.update({
        "step": "forward+backward+adamw" if opt is not None else "forward+backward (no optimizer)",
        "grad_ckpt": a.grad_ckpt, "attn": student.config._attn_implementation, "dtype": "bfloat16",
        "compile": False, "kd_weight": a.kd_weight, "temperature": a.temperature,
        "loss": round(loss.item(), 4), "kd": round(kd.item(), 4), "ce": round(ce.item(), 4),
        "model": "tiny" if a.tiny else "teacher llama-3.1-8b-shape, student llama-3.2-1b-shape",
        "n_teacher_params": n_t, "n_student_params": n_s, "flops_per_token": flops_per_token,
        "peak_tflops": a.peak_tflops, "weights_gib": round((n_t + n_s) * 2 / GIB, 3),
        "step_ms_runs": [round(t * 1e3, 2) for t in times], "build_s": round(build_s, 2),
        "torch": torch.__version__, "transformers": transformers.__version__,
    })
    line = json.dumps(rec)
    print(line, flush=True)
    if a.json:
        with open(a.json, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
