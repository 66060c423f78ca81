#!/usr/bin/env bash
# Foundation benchmarks (issue [Foundation]): checkpoint load vs safetensors.torch.load_file, and one
# SmolLM2-135M forward on 512 tokens (fp32, bf16) vs transformers, all in one run on this machine.
#   scripts/bench/foundation.sh [WORKDIR]      (default /tmp/bonsai-bench; needs ~2 GB)
# Run it on an otherwise idle machine: both peers use all cores (OMP_NUM_THREADS unset).
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-/tmp/bonsai-bench}
py=${BONSAI_PYTHON:-${BONSAI_VENV:-$HOME/.cache/bonsai/venv}/bin/python}
bench=build/tests/bonsai_bench
mkdir -p "$work"
echo "# $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
[ -f "$work/ckpt/model.safetensors" ] || "$py" scripts/bench/peers.py make-checkpoint "$work/ckpt"
# Warm the page cache for both readers, then alternate them.
cat "$work/ckpt/model.safetensors" >/dev/null
"$py" scripts/bench/peers.py load "$work/ckpt" --repeat 5
"$bench" load "$work/ckpt" --repeat 5
[ -d "$work/smollm2-hf" ] || ./build/bonsai export --model smollm2-135m-instruct --dtype f32 --output "$work/smollm2-hf"
for dt in f32 bf16; do
  "$py" scripts/bench/peers.py forward "$work/smollm2-hf" --tokens 512 --dtype $dt --repeat 5
  "$bench" forward "$work/smollm2-hf" --tokens 512 --dtype $dt --repeat 5
done
