#!/usr/bin/env bash
# Pruning quality on SmolLM2-135M-Instruct, no retraining: held-out WikiText-2 perplexity of students
# chosen by bonsai's activation importance, by weight magnitude, and at random (3 seeds), for
#   width: the demo shape of configs/prune/smollm2_demo.yaml (hidden 576 -> 384, MLP 1536 -> 1024,
#          9 -> 6 query heads; 134.5M -> 67.6M parameters), and
#   depth: 30 -> 20 layers, width unchanged (Block Importance, the most redundant contiguous block,
#          random layers).
# Calibration: 64 x 256 tokens of the shared C4 sample; evaluation: EVAL_WINDOWS (200) windows of 256
# tokens of the WikiText-2 test file (its tokenized form, as shipped). Each table calibrates once; the
# other selections reuse the statistics (calib.scores_from). Prints two markdown tables.
#   scripts/bench/prune_quality.sh [OUT_DIR]     (default runs/bench-prune; about 10 min on 2 cores)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
OUT=${1:-runs/bench-prune}
SHARED=${BONSAI_SHARED_DATA:-$ROOT/../shared/data}
BONSAI=${BONSAI:-$ROOT/build/bonsai}
PY=${BONSAI_PYTHON:-${BONSAI_VENV:-$HOME/.cache/bonsai/venv}/bin/python}
EVAL_WINDOWS=${EVAL_WINDOWS:-200}
# The statistics are many small tensor ops per layer: on a busy 2-core machine OpenMP's spin-waiting
# costs more than the second thread gains (measured 28 s vs 14 s for the same run); passive waiting
# keeps two threads useful.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
start=$(date +%s)
mkdir -p "$OUT"
[ -f "$OUT/teacher/config.json" ] || "$BONSAI" export --model smollm2-135m-instruct --dtype f32 --output "$OUT/teacher"
[ -f "$OUT/c4/index.json" ] || "$BONSAI" data pack --tokenizer smollm2-135m-instruct --format jsonl kind=pretrain \
  --input "$SHARED/text/c4_demo.jsonl" --output "$OUT/c4" overwrite=true
[ -f "$OUT/wt2/index.json" ] || "$BONSAI" data pack --tokenizer smollm2-135m-instruct --format text split=file \
  kind=pretrain --input "$SHARED/text/wikitext-2.tokens.test.txt" --output "$OUT/wt2" overwrite=true

COMMON=(--config configs/prune/smollm2_demo.yaml teacher.model="$OUT/teacher" teacher.dtype=bf16 save_dtype=bf16
        data.calib="[$OUT/c4]" data.eval="[$OUT/wt2]" eval.samples="$EVAL_WINDOWS" eval.seq_len=256)
run() {
  local name=$1
  shift
  echo "== $name" >&2
  "$BONSAI" prune "${COMMON[@]}" "$@" output="$OUT/$name" 2>&1 | grep -E "perplexity|done|error|hint" >&2
}

run width-activation
W=calib.scores_from=$OUT/width-activation/importance.safetensors
run width-magnitude "$W" importance.width=magnitude eval.teacher=false
for s in 1 2 3; do run "width-random-$s" "$W" importance.width=random importance.seed=$s eval.teacher=false; done

DEPTH=(target.hidden_size=576 target.intermediate_size=1536 target.num_heads=9 target.num_layers=20 eval.teacher=false)
run depth-contiguous "${DEPTH[@]}" importance.depth=contiguous
D=calib.scores_from=$OUT/depth-contiguous/importance.safetensors
run depth-block "${DEPTH[@]}" "$D" importance.depth=block
for s in 1 2 3; do run "depth-random-$s" "${DEPTH[@]}" "$D" importance.depth=random importance.seed=$s; done

"$PY" scripts/bench/prune_quality_table.py "$OUT"
echo "total: $(( $(date +%s) - start )) s (OMP_NUM_THREADS=$OMP_NUM_THREADS)"
