#!/usr/bin/env bash
# One distillation step, bonsai vs plain PyTorch eager, same shapes, same CPU, one run.
#   scripts/bench/distill_step.sh [WORKDIR]
# Teacher: SmolLM2-135M-Instruct (fp32). Student: random init, 15 layers of the same shape.
# Batch 4 x 512 tokens, forward KL at T=2 mixed 50/50 with CE, AdamW. Reports tokens/s (median of
# steps 2..6) and peak RSS (bonsai: /usr/bin/time; PyTorch: getrusage).
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-/tmp/bonsai-bench}
py=${BONSAI_PYTHON:-${BONSAI_VENV:-$HOME/.cache/bonsai/venv}/bin/python}
mkdir -p "$work"
[ -d "$work/smollm2-hf" ] || ./build/bonsai export --model smollm2-135m-instruct --dtype f32 --output "$work/smollm2-hf"
[ -d "$work/student15" ] || "$py" scripts/bench/make_demo_student.py "$work/smollm2-hf" "$work/student15"
[ -d "$work/c4-smollm2" ] || ./build/bonsai data pack --config configs/data/c4_demo.yaml tokenizer=smollm2-135m-instruct \
  output="$work/c4-smollm2" sources=[../shared/data/text/c4_demo.jsonl] 2>/dev/null
echo "# $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
"$py" scripts/bench/distill_peer.py "$work/smollm2-hf" "$work/student15" --batch 4 --seq 512 --steps 6
rm -rf "$work/run"
/usr/bin/time -v ./build/distill teacher.models=["$work/smollm2-hf"] teacher.dtype=f32 student.model="$work/student15" \
  data.train=["$work/c4-smollm2"] data.tokenizer=smollm2-135m-instruct loss.temperature=2.0 loss.kd_weight=0.5 \
  train.max_steps=6 train.micro_batch=4 train.seq_len=512 train.warmup_steps=0 train.lr=1e-4 output="$work/run" \
  2> "$work/bonsai_time.txt" >/dev/null || { cat "$work/bonsai_time.txt"; exit 1; }
"$py" - "$work" <<'PY'
import json, re, statistics, sys
work = sys.argv[1]
recs = [json.loads(l) for l in open(f"{work}/run/metrics.jsonl")]
tps = statistics.median(r["tokens_per_s"] for r in recs[1:])
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(f"{work}/bonsai_time.txt").read()).group(1)) / 1024
print(json.dumps({"what": "bonsai distill step (fused chunked loss)", "batch": 4, "seq": 512,
                  "tokens_per_s": round(tps, 1), "peak_rss_mb": round(rss)}))
PY
