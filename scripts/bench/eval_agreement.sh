#!/usr/bin/env bash
# `bonsai eval` against the transformers reference (scripts/ref/eval_ref.py) on the same fp32 weights
# (bonsai's HF export of SmolLM2-135M-Instruct), same CPU, same thread count, one run:
#   - per-item log-likelihoods of the first 200 HellaSwag and ARC-Challenge items (and PIQA) within
#     1e-4 relative, the chosen answer (acc and acc_norm) identical on every item, and items/s of
#     each scoring loop (model load excluded);
#   - perplexity on wikitext-2.tokens.test.txt, windows of 2048 every 2048 tokens: the first
#     PPL_TOKENS tokens (default 32768; 0 = the whole file, 312K tokens, ~20 min per side on 2 idle cores).
# Reports land in WORKDIR/*.json.
#   BONSAI_BIN=build/bonsai scripts/bench/eval_agreement.sh [WORKDIR] [ITEMS]
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-/tmp/bonsai-eval-bench}
items=${2:-200}
bin=${BONSAI_BIN:-./build/bonsai}
py=${BONSAI_PYTHON:-${BONSAI_VENV:-$HOME/.cache/bonsai/venv}/bin/python}
data=${BONSAI_SHARED_DATA:-../shared/data}
threads=$(nproc)
mkdir -p "$work"
[ -d "$work/smollm2-hf" ] || "$bin" export --model smollm2-135m-instruct --dtype f32 --output "$work/smollm2-hf"
echo "# $(date -u +%F) $threads cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
ref="$py scripts/ref/eval_ref.py"
$ref check-mc --bonsai "$bin" --model "$work/smollm2-hf" --threads "$threads" --task hellaswag \
  --data "$data/eval/hellaswag/hellaswag_val_full.txt.bz2" --limit "$items" --json "$work/hellaswag.json" | tail -1
$ref check-mc --bonsai "$bin" --model "$work/smollm2-hf" --threads "$threads" --task arc \
  --data "$data/eval/arc_challenge.jsonl" --limit "$items" --json "$work/arc.json" | tail -1
$ref check-mc --bonsai "$bin" --model "$work/smollm2-hf" --threads "$threads" --task piqa \
  --data "$data/eval/piqa/valid.jsonl" --limit "$items" --json "$work/piqa.json" | tail -1
if [ "${SKIP_PPL:-0}" != 1 ]; then
  $ref check-ppl --bonsai "$bin" --model "$work/smollm2-hf" --threads "$threads" \
    --data "$data/text/wikitext-2.tokens.test.txt" --limit "${PPL_TOKENS:-32768}" --window 2048 --stride 2048 \
    --json "$work/wikitext2.json" | tail -1
fi
