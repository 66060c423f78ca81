#!/usr/bin/env bash
# CPU decode speed on SmolLM2-135M: bonsai's runtime vs llama.cpp on bonsai's own GGUF export, same
# thread count, one run. Batch 1 (f32 and bf16 vs llama.cpp F32 and F16), batch 16, prefill of 512.
#   scripts/bench/decode.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-/tmp/bonsai-bench}
py=${BONSAI_PYTHON:-${BONSAI_VENV:-$HOME/.cache/bonsai/venv}/bin/python}
threads=$(nproc)
mkdir -p "$work"
[ -d "$work/smollm2-hf" ] || ./build/bonsai export --model smollm2-135m-instruct --dtype f32 --output "$work/smollm2-hf"
for dt in f32 f16; do
  [ -f "$work/gguf-$dt/model.gguf" ] || ./build/bonsai export --model smollm2-135m-instruct --format gguf --dtype $dt --output "$work/gguf-$dt"
done
echo "# $(date -u +%F) $threads cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
export OMP_NUM_THREADS=$threads
"$py" scripts/bench/decode_peer.py "$work/gguf-f32/model.gguf" --tokens 64 --threads "$threads"
"$py" scripts/bench/decode_peer.py "$work/gguf-f16/model.gguf" --tokens 64 --threads "$threads"
./build/tests/bonsai_bench decode "$work/smollm2-hf" --batch 1 --tokens 64 --dtype f32
./build/tests/bonsai_bench decode "$work/smollm2-hf" --batch 1 --tokens 64 --dtype bf16
./build/tests/bonsai_bench decode "$work/smollm2-hf" --batch 16 --tokens 64 --dtype f32
./build/tests/bonsai_bench decode "$work/smollm2-hf" --batch 1 --tokens 8 --dtype f32 --prompt 512
"$py" scripts/bench/decode_peer.py "$work/gguf-f32/model.gguf" --tokens 8 --threads "$threads" --prompt 512
