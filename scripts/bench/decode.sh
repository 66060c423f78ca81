#!/usr/bin/env bash
# CPU decode at batch 1, bonsai against llama.cpp in pairs run back to back: at 1 and 2 threads,
# bonsai bf16 against llama.cpp F16 and bonsai fp32 against llama.cpp F32, the whole set REPS times
# (default 2); then, at 2 threads, bf16 with bonsai's CPU kernels off (BONSAI_CPU_GEMV=0), batch 16,
# and a 512-token prefill against llama.cpp's; last, the machine's memory bandwidth. WORKDIR holds the
# exports (made if missing).
#   scripts/bench/decode.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${1:-/tmp/bonsai-bench}
py=${BONSAI_PYTHON:-${BONSAI_VENV:-$HOME/.cache/bonsai/venv}/bin/python}
mkdir -p "$W"
[ -d "$W/smollm2-hf" ] || ./build/bonsai export --model smollm2-135m-instruct --dtype f32 --output "$W/smollm2-hf"
for dt in f32 f16; do
  [ -f "$W/gguf-$dt/model.gguf" ] || ./build/bonsai export --model smollm2-135m-instruct --format gguf --dtype $dt --output "$W/gguf-$dt"
done
bench() { ./build/tests/bonsai_bench decode "$W/smollm2-hf" "$@"; }
peer() { "$py" scripts/bench/decode_peer.py "$@"; }
echo "# $(date -u +%FT%T) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for rep in $(seq "${REPS:-2}"); do
  for T in 1 2; do
    export OMP_NUM_THREADS=$T
    peer "$W/gguf-f16/model.gguf" --tokens 64 --threads $T
    bench --batch 1 --tokens 64 --dtype bf16
    peer "$W/gguf-f32/model.gguf" --tokens 64 --threads $T
    bench --batch 1 --tokens 64 --dtype f32
  done
done
export OMP_NUM_THREADS=2
BONSAI_CPU_GEMV=0 bench --batch 1 --tokens 64 --dtype bf16
bench --batch 16 --tokens 64 --dtype f32
bench --batch 16 --tokens 64 --dtype bf16
bench --batch 1 --tokens 8 --dtype f32 --prompt 512
peer "$W/gguf-f32/model.gguf" --tokens 8 --threads 2 --prompt 512
# The machine's memory bandwidth, for the GB/s above: a read of 1 GiB of fp32 (sum) and a copy (1 GiB
# read + 1 GiB written), best of 5, at 1 and 2 threads.
"$py" - <<'PY'
import json, time, torch
a = torch.ones(1 << 28)
b = torch.empty_like(a)
for t in (1, 2):
    torch.set_num_threads(t)
    def best(f):
        f()
        times = []
        for _ in range(5):
            t0 = time.perf_counter(); f(); times.append(time.perf_counter() - t0)
        return min(times)
    read = a.numel() * 4 / best(lambda: a.sum()) / 1e9
    copy = 2 * a.numel() * 4 / best(lambda: b.copy_(a)) / 1e9
    print(json.dumps({"what": "memory bandwidth", "threads": t, "read_gb_per_s": round(read, 1), "copy_gb_per_s": round(copy, 1)}))
PY
echo "# end $(date -u +%T)"
