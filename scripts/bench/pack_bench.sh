#!/usr/bin/env bash
# `bonsai data pack` throughput and memory: builds a ~200 MB synthetic JSONL corpus in WORKDIR (the
# shared texts' paragraphs, shuffled with a fixed seed and repeated: nothing of it goes into the
# repository), packs it with the GPT-2 tokenizer, and prints MB/s of text, tokens/s and the peak
# RSS (/usr/bin/time -v). The peak RSS must stay far below the input size: packing streams.
#   scripts/bench/pack_bench.sh [WORKDIR] [MB]     (default /tmp/bonsai-pack-bench, 200)
# Env: BONSAI_BIN (default build/bonsai), BONSAI_SHARED_DATA (default ../shared/data), THREADS
# (default all cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-/tmp/bonsai-pack-bench}
mb=${2:-200}
bin=${BONSAI_BIN:-build/bonsai}
data=${BONSAI_SHARED_DATA:-../shared/data}
py=${BONSAI_PYTHON:-python3}
threads=${THREADS:-0}
mkdir -p "$work"
corpus="$work/corpus_${mb}MB.jsonl"

if [ ! -f "$corpus" ]; then
  "$py" - "$data" "$corpus" "$mb" <<'EOF'
import json, random, sys
data, out, mb = sys.argv[1], sys.argv[2], int(sys.argv[3])
paras = []
for name in ["text/tinyshakespeare.txt", "text/pride_and_prejudice.txt", "text/wikitext-2.tokens.test.txt",
             "tokenizer/texts/corpus.en"]:
    with open(f"{data}/{name}", encoding="utf-8-sig", errors="replace") as f:
        paras += [p.strip() for p in f.read().replace("\r\n", "\n").split("\n\n") if p.strip()]
with open(f"{data}/text/c4_demo.jsonl", encoding="utf-8") as f:
    paras += [json.loads(line)["text"] for line in f]
rng = random.Random(1234)
target, written = mb * 1_000_000, 0
with open(out, "w", encoding="utf-8") as f:
    while written < target:
        rng.shuffle(paras)
        for i in range(0, len(paras), 6):  # documents of ~6 paragraphs
            line = json.dumps({"text": "\n\n".join(paras[i:i + 6])}) + "\n"
            f.write(line)
            written += len(line.encode("utf-8"))
            if written >= target:
                break
EOF
fi

echo "# $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "# input: $corpus ($(du -m "$corpus" | cut -f1) MB), tokenizer GPT-2, threads=$threads"
log="$work/pack.log"
/usr/bin/time -v "$bin" data pack --tokenizer "$data/tokenizer/gpt2/ggml-vocab-gpt-2.gguf" \
  --output "$work/out" --format jsonl --input "$corpus" --threads "$threads" --overwrite 2>"$log"
summary=$(grep '^packed ' "$log")
rss_kb=$(grep 'Maximum resident set size' "$log" | awk '{print $NF}')
wall=$(grep 'Elapsed (wall clock)' "$log" | awk '{print $NF}')
echo "$summary"
echo "peak RSS: $((rss_kb / 1024)) MB; wall: $wall; shards: $(ls "$work/out"/shard-*.h5 | wc -l), $(du -sm "$work/out" | cut -f1) MB on disk"
