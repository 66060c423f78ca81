#!/usr/bin/env bash
# Builds the GPU test and benchmark binaries here (CUDA on, sm_90a + sm_80) and bundles them with
# their non-system libraries into .gpu/ (git-ignored) for scripts/gpu/check.sh on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
cmake --build build -j "${BONSAI_JOBS:-2}" --target bonsai_gpu_tests bench_gpu
rm -rf .gpu
bundle=../shared/tools/bundle-for-gpu.sh
[ -x "$bundle" ] || bundle=/work/shared/tools/bundle-for-gpu.sh
"$bundle" .gpu build/tests/bonsai_gpu_tests build/tests/bench_gpu
