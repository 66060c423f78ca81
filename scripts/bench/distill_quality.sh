#!/usr/bin/env bash
# Distillation quality at small scale (the Minitron ordering): SmolLM2-135M-Instruct teacher, the
# demo-shape student (configs/prune/smollm2_demo.yaml: 134.5M -> 67.6M parameters), one token budget,
# three students:
#   (a) pruned + KD       (forward KL to the teacher, kd_weight 1)
#   (b) pruned + CE only  (the same data, labels only, kd_weight 0)
#   (c) random init + KD  (the same shape, student.init=random)
#   (d) pruned + KD/CE    (half forward KL, half cross-entropy; only with RUNS="a b c d")
# and the held-out perplexity of each (plus the teacher's and the pruned student's before training).
#
# Data (all read in place from ../shared/data; splits are written under OUT, never into the repo):
#   train:    C4 demo documents 1-270, Pride and Prejudice (+ WikiText-2 *valid* with TRAIN_WIKITEXT=1)
#   held out: C4 demo documents 271-300; WikiText-2 *test* and Tiny Shakespeare (the first EVAL_TOKENS
#             tokens of each; Shakespeare is out of the training domain; WikiText-2's tokenized form,
#             " @-@ " and "<unk>", is in it only with TRAIN_WIKITEXT=1)
# Pruning calibrates on the training C4 documents only.
#
#   scripts/bench/distill_quality.sh [OUT_DIR]        (default runs/bench-distill-quality)
#   STEPS=N   optimizer steps of 8 x 256 tokens per run (default 180 = 368,640 tokens: about 30 minutes
#             of run (a) on the idle 2-core CI machine at the ~205 tokens/s measured for its first
#             steps; the same budget for (b) and (c))
#   RUNS="a b c"  which runs; EVAL_TOKENS (default 16384; perplexity over windows of 512 tokens, no overlap)
#   TRAIN_WIKITEXT=1  also train on WikiText-2 valid (the 2026-11-27 setting; default 0 since 2026-12-05:
#             with it, the CE student learns the tokenized form of the WikiText-2 test set from labels)
# The step count, not a clock, fixes the budget: the three runs see the same tokens in the same order
# whatever else the machine is doing. Prints a markdown table; every number is also in OUT/*.json.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
OUT=${1:-runs/bench-distill-quality}
SHARED=${BONSAI_SHARED_DATA:-$ROOT/../shared/data}
BONSAI=${BONSAI:-$ROOT/build/bonsai}
DISTILL=${DISTILL:-$ROOT/build/distill}
STEPS=${STEPS:-180}
RUNS=${RUNS:-a b c}
EVAL_TOKENS=${EVAL_TOKENS:-16384}
TRAIN_WIKITEXT=${TRAIN_WIKITEXT:-0}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
mkdir -p "$OUT/src"
log() { printf '[%s] %s\n' "$(date -u +%T)" "$*" >&2; }

# ---- data
c4="$SHARED/text/c4_demo.jsonl"
[ "$(wc -l < "$c4")" -ge 300 ] || { echo "error: $c4 has fewer than 300 documents" >&2; exit 1; }
head -n 270 "$c4" > "$OUT/src/c4_train.jsonl"
tail -n +271 "$c4" > "$OUT/src/c4_heldout.jsonl"
pack() {  # pack NAME SOURCE... (each "PATH FORMAT")
  local name=$1 src
  shift
  { echo "tokenizer: smollm2-135m-instruct"; echo "kind: pretrain"; echo "output: $OUT/$name"; echo "overwrite: true"
    echo "sources:"; for src in "$@"; do set -- $src; echo "  - '{path: \"$1\", format: $2}'"; done; } > "$OUT/src/$name.yaml"
  [ -f "$OUT/$name/index.json" ] || "$BONSAI" data pack --config "$OUT/src/$name.yaml" >&2
}
[ -f "$OUT/teacher/config.json" ] || "$BONSAI" export --model smollm2-135m-instruct --dtype f32 --output "$OUT/teacher" >&2
train_src=("$OUT/src/c4_train.jsonl jsonl" "$SHARED/text/pride_and_prejudice.txt text")
[ "$TRAIN_WIKITEXT" = 1 ] && train_src+=("$SHARED/text/wikitext-2.tokens.valid.txt text")
# The pack remembers its sources: a folder packed with the other TRAIN_WIKITEXT setting is repacked.
want_src=$(printf '%s;' "${train_src[@]}")
[ -f "$OUT/train/index.json" ] && [ "$(cat "$OUT/src/train.sources" 2>/dev/null)" != "$want_src" ] && rm -rf "$OUT/train"
pack train "${train_src[@]}"
printf '%s' "$want_src" > "$OUT/src/train.sources"
pack c4_train "$OUT/src/c4_train.jsonl jsonl"
pack c4_heldout "$OUT/src/c4_heldout.jsonl jsonl"

# ---- the pruned student (activation importance, calibrated on training C4 only)
if [ ! -f "$OUT/pruned/student/config.json" ]; then
  log "prune"
  "$BONSAI" prune --config configs/prune/smollm2_demo.yaml teacher.model="$OUT/teacher" data.calib="[$OUT/c4_train]" \
    save_dtype=f32 output="$OUT/pruned" >&2
fi

# ---- the three runs: same data order (seed), same schedule, same budget
COMMON=(teacher.models="[$OUT/teacher]" teacher.dtype=f32 student.model="$OUT/pruned/student"
        data.train="[$OUT/train]" data.tokenizer=smollm2-135m-instruct
        loss.kind=fkl loss.temperature=1.0
        train.max_steps="$STEPS" train.micro_batch=8 train.seq_len=256 train.grad_accum=1
        train.lr=3e-4 train.min_lr_ratio=0.1 train.warmup_steps=$((STEPS / 20 + 1)) train.schedule=cosine
        train.seed=1 train.save_every=0 train.log_every=1 train.eval_every=0)
declare -A EXTRA=([a]="loss.kd_weight=1.0" [b]="loss.kd_weight=0.0" [c]="loss.kd_weight=1.0 student.init=random"
                  [d]="loss.kd_weight=0.5")
for r in $RUNS; do
  [ -f "$OUT/run-$r/student/config.json" ] && continue
  log "run ($r): ${EXTRA[$r]}"
  rm -rf "$OUT/run-$r"
  # shellcheck disable=SC2086
  "$DISTILL" "${COMMON[@]}" ${EXTRA[$r]} output="$OUT/run-$r" > "$OUT/run-$r.log" 2>&1 || { tail "$OUT/run-$r.log"; exit 1; }
done

# ---- held-out perplexity
ppl() {  # ppl NAME MODEL
  local name=$1 model=$2
  [ -f "$OUT/eval-$name-wt2.json" ] || "$BONSAI" eval --model "$model" --tokenizer smollm2-135m-instruct --task perplexity \
    --data "$SHARED/text/wikitext-2.tokens.test.txt" limit="$EVAL_TOKENS" window=512 stride=512 progress=false \
    --output "$OUT/eval-$name-wt2.json" >&2
  [ -f "$OUT/eval-$name-c4.json" ] || "$BONSAI" eval --model "$model" --tokenizer smollm2-135m-instruct --task perplexity \
    --data "$OUT/c4_heldout" window=512 stride=512 progress=false --output "$OUT/eval-$name-c4.json" >&2
  [ -f "$OUT/eval-$name-shakespeare.json" ] || "$BONSAI" eval --model "$model" --tokenizer smollm2-135m-instruct \
    --task perplexity --data "$SHARED/text/tinyshakespeare.txt" limit="$EVAL_TOKENS" window=512 stride=512 progress=false \
    --output "$OUT/eval-$name-shakespeare.json" >&2
}
log "evaluate"
ppl teacher "$OUT/teacher"
ppl pruned "$OUT/pruned/student"
for r in $RUNS; do ppl "run-$r" "$OUT/run-$r/student"; done

PY=${BONSAI_PYTHON:-${BONSAI_VENV:-$HOME/.cache/bonsai/venv}/bin/python}
"$PY" - "$OUT" "$RUNS" <<'PY'
import json, os, sys
out, runs = sys.argv[1], sys.argv[2].split()
def ppl(name, which):
    r = json.load(open(f"{out}/eval-{name}-{which}.json"))["results"]["perplexity"]
    return f"{r['perplexity']:.2f}", r["tokens"]
def train(r):
    recs = [json.loads(l) for l in open(f"{out}/run-{r}/metrics.jsonl")]
    recs = [x for x in recs if x.get("split") == "train"]
    secs = sum((recs[i]["tokens"] - (recs[i - 1]["tokens"] if i else 0)) / recs[i]["tokens_per_s"] for i in range(len(recs)))
    loss = recs[-1]["loss"]
    return recs[-1]["tokens"], secs, loss
label = {"a": "(a) pruned + KD", "b": "(b) pruned + CE only", "c": "(c) random init + KD", "d": "(d) pruned + KD/CE 50/50"}
sets = ["wt2", "c4", "shakespeare"]
n = {s: ppl("teacher", s)[1] for s in sets}
print(f"| student | train tokens | train time | last step loss | WikiText-2 test ppl ({n['wt2']:,} tok) "
      f"| C4 held-out ppl ({n['c4']:,} tok) | Tiny Shakespeare ppl ({n['shakespeare']:,} tok) |")
print("|---|---|---|---|---|---|---|")
def cells(name):
    return " | ".join(ppl(name, s)[0] for s in sets)
for name, what in [("teacher", "teacher (SmolLM2-135M-Instruct)"), ("pruned", "pruned, before training")]:
    print(f"| {what} | - | - | - | {cells(name)} |")
for r in runs:
    tokens, secs, loss = train(r)
    kind = {"b": "CE", "d": "KD + CE"}.get(r, "KD")
    print(f"| {label[r]} | {tokens:,} | {secs / 60:.1f} min | {loss:.3f} ({kind}) | {cells('run-' + r)} |")
PY
