#!/usr/bin/env bash
# Per-rank optimizer-state and gradient memory with dist.zero=0/1/2 on 1, 2 and 3 local processes
# (Gloo over 127.0.0.1, scripts/launch_local.sh), as each rank measures it (metrics.jsonl fields
# optimizer_state_bytes_rank<r>: Adam moments after the step; grad_bytes_rank<r>: gradient bytes
# held between the reduction and the step).
#   scripts/bench/zero_memory.sh [WORKDIR]        BUILD=build-z2 to use another build directory
# Student: random init, 15 layers of SmolLM2-135M's shape (81M parameters, scripts/bench/
# make_demo_student.py); plain cross-entropy (loss.kd_weight=0, no teacher), 2 steps of 1 x 128
# tokens per rank: the sizes do not depend on the batch.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-/tmp/bonsai-bench}
build=${BUILD:-build}
py=${BONSAI_PYTHON:-${BONSAI_VENV:-$HOME/.cache/bonsai/venv}/bin/python}
mkdir -p "$work"
[ -d "$work/smollm2-hf" ] || "$build/bonsai" export --model smollm2-135m-instruct --dtype f32 --output "$work/smollm2-hf"
[ -d "$work/student15" ] || "$py" scripts/bench/make_demo_student.py "$work/smollm2-hf" "$work/student15"
[ -d "$work/c4-smollm2" ] || "$build/bonsai" data pack --config configs/data/c4_demo.yaml tokenizer=smollm2-135m-instruct \
  output="$work/c4-smollm2" sources=[../shared/data/text/c4_demo.jsonl] 2>/dev/null
echo "# $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $build/distill"
runs=()
for cfg in 1:0 2:0 2:1 2:2 3:0 3:1 3:2; do
  w=${cfg%:*} z=${cfg#*:}
  out="$work/zero_w${w}_z${z}"
  rm -rf "$out"
  scripts/launch_local.sh "$w" "$build/distill" student.model="$work/student15" student.init=random \
    data.train=["$work/c4-smollm2"] data.tokenizer=smollm2-135m-instruct loss.kd_weight=0 \
    train.max_steps=2 train.micro_batch=1 train.grad_accum=1 train.seq_len=128 train.warmup_steps=0 \
    dist.zero="$z" output="$out" >/dev/null 2>&1 || { echo "W=$w zero=$z failed (see $out)"; exit 1; }
  runs+=("$w:$z:$out")
done
"$py" - "${runs[@]}" <<'PY'
import json, sys
rows = []
for arg in sys.argv[1:]:
    w, z, out = arg.split(":", 2)
    w, z = int(w), int(z)
    rec = [json.loads(l) for l in open(f"{out}/metrics.jsonl") if '"train"' in l][-1]
    opt = [rec[f"optimizer_state_bytes_rank{r}"] for r in range(w)]
    grad = [rec[f"grad_bytes_rank{r}"] for r in range(w)]
    rows.append((w, z, opt, grad))
full_opt, full_grad = rows[0][2][0], rows[0][3][0]
print("| ranks W | dist.zero | optimizer state per rank (MiB) | x full | gradient held per rank (MiB) | x full |")
print("|---|---|---|---|---|---|")
mib = lambda b: f"{b / 2**20:.2f}"
for w, z, opt, grad in rows:
    print(f"| {w} | {z} | {' / '.join(mib(b) for b in opt)} | {max(opt) / full_opt:.4f} | "
          f"{' / '.join(mib(b) for b in grad)} | {max(grad) / full_grad:.4f} |")
PY
