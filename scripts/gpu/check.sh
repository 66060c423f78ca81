#!/usr/bin/env bash
# The GPU checks, in one call on a lent H100/H200 (see README "GPU checks"): the GPU tests, then
# every benchmark with its peer in the same run. Binaries are built here (on the CPU machine, with
# CUDA on) and carried in .gpu/ by scripts/gpu/bundle.sh; nothing is compiled on the GPU machine.
#   device run:  bash scripts/gpu/check.sh         (carry: .gpu)
# Writes under $OUT (default ./gpu-out): gpu.txt, tests.log, tests.json, bench.jsonl, peers.jsonl,
# sanitizer.log, summary.md; prints the summary table last. SKIP_BENCH=1: tests and the training run only.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
[ -f .gpu/bundle.tgz ] && tar xzf .gpu/bundle.tgz -C .gpu && rm .gpu/bundle.tgz
run=.gpu/run.sh
[ -x $run ] || { echo "no .gpu/run.sh: run scripts/gpu/bundle.sh on the build machine and carry .gpu" >&2; exit 2; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit --format=csv
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
  uname -r
} >"$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

echo "== GPU tests"
timeout ${T_TESTS:-240} $run bonsai_gpu_tests --gtest_output=json:"$OUT/tests.json" >"$OUT/tests.log" 2>&1
echo "tests rc=$?"
grep -E '^\[  (FAILED|PASSED|SKIPPED) |^\[==========\]' "$OUT/tests.log" | tail -15
grep -B2 -A8 'Failure' "$OUT/tests.log" | head -80

echo "== bench (ours)"
[ "${SKIP_BENCH:-0}" = 1 ] && { echo "skipped (SKIP_BENCH=1)"; : >"$OUT/bench.jsonl"; } || timeout ${T_BENCH:-240} $run bench_gpu >"$OUT/bench.jsonl" 2>"$OUT/bench.err"
echo "bench rc=$?"; tail -5 "$OUT/bench.err"

echo "== peers (transformers / plain PyTorch)"
: >"$OUT/peers.jsonl"
[ "${SKIP_BENCH:-0}" = 1 ] || timeout ${T_PEER_DECODE:-150} python3 scripts/gpu/peer_decode.py --batch 1 32 --prompt-len 128 --new-tokens ${NEW_TOKENS:-128} --modes eager static \
  --json "$OUT/peers.jsonl" >/dev/null 2>"$OUT/peers.err"
echo "peer_decode rc=$?"
[ "${SKIP_BENCH:-0}" = 1 ] || timeout ${T_PEER_DISTILL:-120} python3 scripts/gpu/peer_distill.py --seq 2048 --batch 1 --peak-tflops 989 --json "$OUT/peers.jsonl" \
  >/dev/null 2>>"$OUT/peers.err"
echo "peer_distill rc=$?"; tail -3 "$OUT/peers.err"

if [ -d .gpu/data/tiny ]; then
  echo "== GPU training: distill on cuda:0 through NCCL with world size 1 (launch_local.sh 1)"
  rm -rf /tmp/bonsai_gpu_distill
  timeout ${T_DISTILL:-120} scripts/launch_local.sh 1 .gpu/run.sh distill --config tests/data/distill_tiny.yaml \
    teacher.models=[.gpu/data/tiny/teacher] student.model=.gpu/data/tiny/student data.train=[.gpu/data/c4demo] \
    data.tokenizer=.gpu/data/gpt2.gguf output=/tmp/bonsai_gpu_distill train.device=cuda >"$OUT/distill_gpu.log" 2>&1
  echo "distill rc=$?"; tail -4 "$OUT/distill_gpu.log"
  # fp32 on the GPU vs the CPU's pinned losses (tests/CMakeLists.txt distill.pinned_losses)
  python3 tests/check_metrics.py /tmp/bonsai_gpu_distill --rtol 1e-3 \
    --pinned 5.50546479,5.48065662,5.48487091,5.47433233,5.44945312,5.44681287 2>&1 | tail -3
fi

if command -v compute-sanitizer >/dev/null && [ "${SANITIZE:-1}" = 1 ]; then
  echo "== compute-sanitizer (memcheck) on the backend and sampling tests"
  tl=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  nv=$(python3 -c 'import os, glob, torch; d=os.path.dirname(os.path.dirname(torch.__file__)); print(":".join(glob.glob(os.path.join(d, "nvidia", "*", "lib"))))')
  LD_LIBRARY_PATH=$PWD/.gpu/lib:$tl:$nv timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 \
    .gpu/bin/bonsai_gpu_tests --gtest_filter='GpuBackend.Bf16*:GpuOps.SampleGreedy*:GpuOps.Rope*:GpuOps.Gemv' \
    >"$OUT/sanitizer.log" 2>&1
  echo "sanitizer rc=$?"; grep -E 'ERROR SUMMARY|Invalid|PASSED|FAILED' "$OUT/sanitizer.log" | head -10
fi

python3 scripts/gpu/summarize.py "$OUT/bench.jsonl" "$OUT/peers.jsonl" | tee "$OUT/summary.md"
