#!/usr/bin/env python3
"""A random-init student with half of SmolLM2-135M's layers (same vocabulary), for the distillation
step benchmark when no pruned student is at hand.

    make_demo_student.py SMOLLM2_HF_DIR OUT_DIR
"""
import sys

import torch
from transformers import AutoConfig, LlamaForCausalLM

cfg = AutoConfig.from_pretrained(sys.argv[1])
cfg.num_hidden_layers = cfg.num_hidden_layers // 2
torch.manual_seed(0)
LlamaForCausalLM(cfg).save_pretrained(sys.argv[2], safe_serialization=True)
print(f"student: {cfg.num_hidden_layers} layers -> {sys.argv[2]}")
