#!/usr/bin/env bash
# Builds the GPU test and benchmark binaries and `distill` here (CUDA on, sm_90a + sm_80), bundles them
# with their non-system libraries and the tiny distillation fixtures, and packs the lot into
# .gpu/bundle.tgz (git-ignored; the device tool carries at most 64 MiB) for scripts/gpu/check.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
cmake --build build -j "${BONSAI_JOBS:-2}" --target bonsai_gpu_tests bench_gpu distill
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
bundle=../shared/tools/bundle-for-gpu.sh
[ -x "$bundle" ] || bundle=/work/shared/tools/bundle-for-gpu.sh
"$bundle" "$stage" build/tests/bonsai_gpu_tests build/tests/bench_gpu build/distill >/dev/null
strip --strip-debug "$stage"/bin/* "$stage"/lib/* 2>/dev/null || true
# The tiny distillation fixtures (ctest makes them: fixture.tiny_models, fixture.c4_pack) for the
# GPU training check (NCCL, world size 1), with the GPT-2 vocabulary they were packed with.
shared=${BONSAI_SHARED_DATA:-../shared/data}
if [ -d build/fixtures/tiny ] && [ -d build/fixtures/c4demo ] && [ -f "$shared/tokenizer/gpt2/ggml-vocab-gpt-2.gguf" ]; then
  mkdir -p "$stage/data"
  cp -r build/fixtures/tiny build/fixtures/c4demo "$stage/data/"
  cp "$shared/tokenizer/gpt2/ggml-vocab-gpt-2.gguf" "$stage/data/gpt2.gguf"
else
  echo "no tiny distillation fixtures (run ctest -R distill.tiny_run first): the GPU training check will be skipped" >&2
fi
rm -rf .gpu
mkdir -p .gpu
tar czf .gpu/bundle.tgz -C "$stage" .
ls -la .gpu/bundle.tgz | awk '{printf "bundle: .gpu/bundle.tgz, %.1f MiB (carry limit 64 MiB with the tree)\n", $5 / 1048576}'
