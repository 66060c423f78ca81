#!/usr/bin/env bash
# Per-kernel time and DRAM traffic of one batch-1 decode step (Llama-3.2-1B shape, bf16, no graphs)
# under Nsight Compute, on a lent GPU; binaries carried in .gpu (scripts/gpu/bundle.sh).
#   device run:  bash scripts/gpu/profile_decode.sh        (carry: .gpu)
# Writes $OUT/ncu_decode.csv (raw) and prints a table: per kernel, launches, time, bytes, GB/s.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
[ -f .gpu/bundle.tgz ] && tar xzf .gpu/bundle.tgz -C .gpu && rm .gpu/bundle.tgz
command -v ncu >/dev/null || { echo "profile_decode: ncu is not on PATH: skipped" >&2; exit 0; }
timeout ${T_PROFILE:-150} ncu --clock-control none --profile-from-start off --csv --page raw \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,launch__grid_size,launch__block_size,launch__registers_per_thread \
  .gpu/run.sh bench_gpu decode-profile >"$OUT/ncu_decode.csv" 2>"$OUT/ncu_decode.err"
echo "ncu rc=$?"; tail -3 "$OUT/ncu_decode.err"
python3 scripts/gpu/ncu_table.py "$OUT/ncu_decode.csv" --steps 2 | tee "$OUT/ncu_decode.md"
