#!/usr/bin/env bash
# Pruning at scale on the CPU machine: an 8B-shaped checkpoint with random bf16 weights (16.06 GB,
# scripts/bench/make_random_llama.py, mmap'ed by bonsai) pruned to the Llama 3.2 3B and 1B shapes
# with the shipped configs (configs/prune/8b_to_3b.yaml, 8b_to_1b.yaml), on the CPU, with a small
# calibration set: CALIB_SAMPLES (8) sequences of CALIB_LEN (128) tokens of the shared C4 sample in
# one batch, tokenized with SmolLM2's tokenizer (ids < 49152, inside the 8B's 128256 vocabulary;
# random weights make the text's meaning irrelevant, only the shapes and the memory matter). No
# held-out evaluation (eval.samples=0).
#
# Every run is under /usr/bin/time -v (peak resident set, wall time) while a sampler reads
# /proc/PID/status every SAMPLE_S (0.5) seconds: VmRSS = RssAnon (heap: activations, the sliced
# student) + RssFile (pages of the mmap'ed checkpoints this process maps). The peaks of each and the
# split at the VmRSS peak are printed. A guard kills the run if the machine's MemAvailable falls under
# GUARD_MIB (1024) (other people's work shares this machine), and each run waits (up to 20 minutes)
# for MIN_AVAIL_GIB (18) GiB to be available first.
#
#   scripts/bench/prune_8b.sh [OUT_DIR] [TARGETS]   (default /tmp/bonsai-prune8b, "3b 1b")
#   BONSAI=build-prune/bonsai scripts/bench/prune_8b.sh ...
# Makes OUT_DIR/teacher (16 GB) unless present; delete OUT_DIR afterwards.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
OUT=${1:-/tmp/bonsai-prune8b}
TARGETS=${2:-3b 1b}
SHARED=${BONSAI_SHARED_DATA:-$ROOT/../shared/data}
BONSAI=${BONSAI:-$ROOT/build/bonsai}
PY=${BONSAI_PYTHON:-${BONSAI_VENV:-$HOME/.cache/bonsai/venv}/bin/python}
CALIB_SAMPLES=${CALIB_SAMPLES:-8}
CALIB_LEN=${CALIB_LEN:-128}
SAMPLE_S=${SAMPLE_S:-0.5}
GUARD_MIB=${GUARD_MIB:-1024}
MIN_AVAIL_GIB=${MIN_AVAIL_GIB:-18}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
mkdir -p "$OUT"

[ -f "$OUT/teacher/model.safetensors.index.json" ] || "$PY" scripts/bench/make_random_llama.py "$OUT/teacher" --shape 8b
[ -f "$OUT/c4/index.json" ] || "$BONSAI" data pack --tokenizer smollm2-135m-instruct --format jsonl kind=pretrain \
  --input "$SHARED/text/c4_demo.jsonl" --output "$OUT/c4" overwrite=true >/dev/null

avail_kib() { awk '/^MemAvailable:/ {print $2}' /proc/meminfo; }
wait_for_memory() {
  local tries=0
  while [ "$(avail_kib)" -lt $((MIN_AVAIL_GIB * 1024 * 1024)) ]; do
    if [ $tries -ge 20 ]; then
      echo "only $(($(avail_kib) / 1024 / 1024)) GiB available after 20 minutes; not starting" >&2
      return 1
    fi
    echo "$(($(avail_kib) / 1024 / 1024)) GiB available (< $MIN_AVAIL_GIB): waiting a minute" >&2
    sleep 60
    tries=$((tries + 1))
  done
}

# sample PID LOG: peaks of VmRSS, RssAnon, RssFile (KiB) and the split at the VmRSS peak, into LOG.
sample() {
  local pid=$1 log=$2 rss=0 anon=0 file=0 at_anon=0 at_file=0 hwm=0 t0 now
  t0=$(date +%s.%N)
  while kill -0 "$pid" 2>/dev/null; do
    read -r r a f h < <(awk '/^VmRSS:/ {r=$2} /^RssAnon:/ {a=$2} /^RssFile:/ {f=$2} /^VmHWM:/ {h=$2}
                             END {print r+0, a+0, f+0, h+0}' "/proc/$pid/status" 2>/dev/null || echo "0 0 0 0")
    [ "$h" -gt "$hwm" ] && hwm=$h
    [ "$a" -gt "$anon" ] && anon=$a
    [ "$f" -gt "$file" ] && file=$f
    if [ "$r" -gt "$rss" ]; then rss=$r at_anon=$a at_file=$f; fi
    now=$(date +%s.%N)
    printf '%.1f %d %d %d\n' "$(echo "$now - $t0" | bc)" "$r" "$a" "$f" >>"$log.trace"
    if [ "$(avail_kib)" -lt $((GUARD_MIB * 1024)) ]; then
      echo "GUARD: MemAvailable under $GUARD_MIB MiB (VmRSS $((r / 1024)) MiB, anon $((a / 1024)) MiB); killing $pid" | tee -a "$log" >&2
      kill "$pid"
    fi
    sleep "$SAMPLE_S"
  done
  echo "peak_vmrss_kib=$rss anon_at_peak_kib=$at_anon file_at_peak_kib=$at_file peak_anon_kib=$anon peak_file_kib=$file vmhwm_kib=$hwm" >>"$log"
}

gib() { awk -v k="$1" 'BEGIN {printf "%.2f", k / 1024 / 1024}'; }

summary=()
for target in $TARGETS; do
  run="$OUT/$target"
  rm -rf "$run" && mkdir -p "$run"
  wait_for_memory
  echo "== 8B -> $target ($CALIB_SAMPLES x $CALIB_LEN calibration tokens), $(($(avail_kib) / 1024 / 1024)) GiB available" >&2
  /usr/bin/time -v -o "$run/time.txt" "$BONSAI" prune --config "configs/prune/8b_to_$target.yaml" \
    teacher.model="$OUT/teacher" data.calib="[$OUT/c4]" data.tokenizer=smollm2-135m-instruct eval.samples=0 \
    calib.samples="$CALIB_SAMPLES" calib.seq_len="$CALIB_LEN" calib.batch_size="$CALIB_SAMPLES" device=cpu \
    output="$run/out" >"$run/prune.log" 2>&1 &
  tpid=$!
  pid=""
  for _ in $(seq 50); do
    pid=$(pgrep -P "$tpid" || true)
    [ -n "$pid" ] && break
    sleep 0.1
  done
  : >"$run/mem.txt"
  [ -n "$pid" ] && sample "$pid" "$run/mem.txt"
  rc=0
  wait "$tpid" || rc=$?
  grep -E "^prune \[" "$run/prune.log" | sed 's/^/  /' >&2 || true
  maxrss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$run/time.txt")
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$run/time.txt")
  # shellcheck disable=SC1090
  eval "$(tail -1 "$run/mem.txt" | tr ' ' '\n' | grep '=')"
  params=$(grep -o '"params": *[0-9]*' "$run/out/report.json" 2>/dev/null | tail -1 | grep -o '[0-9]*$' || echo "-")
  line="8B -> $target: rc $rc, wall $wall, peak RSS $(gib "${maxrss:-0}") GiB (time -v), sampled peak VmRSS $(gib "$peak_vmrss_kib") GiB = anon $(gib "$anon_at_peak_kib") + file $(gib "$file_at_peak_kib"); peak anon $(gib "$peak_anon_kib") GiB, peak file $(gib "$peak_file_kib") GiB; student params $params"
  echo "$line" | tee "$run/summary.txt"
  summary+=("$line")
  if [ "$rc" = 0 ]; then
    "$PY" - "$run/out/student" "configs/prune/8b_to_$target.yaml" <<'EOF' | tee -a "$run/summary.txt"
import glob, json, math, sys
from safetensors import safe_open
d, cfg_path = sys.argv[1], sys.argv[2]
cfg = json.load(open(f"{d}/config.json"))
want = {}
for line in open(cfg_path):  # the target block of the shipped config
    k, _, v = line.split("#")[0].strip().partition(":")
    if k in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim"):
        want[k] = int(v)
have = {"hidden_size": cfg["hidden_size"], "intermediate_size": cfg["intermediate_size"],
        "num_layers": cfg["num_hidden_layers"], "num_heads": cfg["num_attention_heads"],
        "num_kv_heads": cfg["num_key_value_heads"], "head_dim": cfg["head_dim"]}
assert have == want, (have, want)
C, I, D, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"], cfg["vocab_size"]
H, K = cfg["num_attention_heads"], cfg["num_key_value_heads"]
expect = {"model.embed_tokens.weight": [V, C], "model.norm.weight": [C]}
for l in range(cfg["num_hidden_layers"]):
    p = f"model.layers.{l}."
    expect.update({p + "input_layernorm.weight": [C], p + "post_attention_layernorm.weight": [C],
                   p + "self_attn.q_proj.weight": [H * D, C], p + "self_attn.k_proj.weight": [K * D, C],
                   p + "self_attn.v_proj.weight": [K * D, C], p + "self_attn.o_proj.weight": [C, H * D],
                   p + "mlp.gate_proj.weight": [I, C], p + "mlp.up_proj.weight": [I, C], p + "mlp.down_proj.weight": [C, I]})
if not cfg.get("tie_word_embeddings"):
    expect["lm_head.weight"] = [V, C]
found, dtypes = {}, set()
for f in sorted(glob.glob(f"{d}/*.safetensors")):
    with safe_open(f, "pt") as s:  # header only: nothing is read
        for k in s.keys():
            sl = s.get_slice(k)
            found[k] = list(sl.get_shape())
            dtypes.add(sl.get_dtype())
params = sum(math.prod(v) for v in found.values())
assert found == expect, "tensor names/shapes differ from the config"
print(f"  check: {len(found)} tensors, shapes match {cfg_path} (tied={cfg.get('tie_word_embeddings')}), "
      f"dtype {sorted(dtypes)}, {params} parameters")
EOF
  fi
done
printf '%s\n' "${summary[@]}"
