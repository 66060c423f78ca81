#!/usr/bin/env bash
# Runs N local processes of a bonsai command as one data-parallel job (Gloo over 127.0.0.1), the
# way torchrun would: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT set per process.
#   scripts/launch_local.sh N COMMAND [ARGS...]      e.g. scripts/launch_local.sh 2 build/distill --config X.yaml
# Rank 0 logs to the terminal, rank r>0 to $BONSAI_LOG_DIR/rank<r>.log (default: a temp dir). If any
# rank fails, the others are stopped and the exit code is the first failure's.
set -uo pipefail
n=$1; shift
port=${MASTER_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
logs=${BONSAI_LOG_DIR:-$(mktemp -d)}
mkdir -p "$logs"
pids=()
for ((r = 0; r < n; r++)); do
  if [ "$r" -eq 0 ]; then
    RANK=$r WORLD_SIZE=$n LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$@" &
  else
    RANK=$r WORLD_SIZE=$n LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$@" \
      >"$logs/rank$r.log" 2>&1 &
  fi
  pids+=($!)
done
status=0
# Wait for every rank; on the first failure stop the rest (they would otherwise wait for the
# collective timeout).
remaining=$n
while [ "$remaining" -gt 0 ]; do
  wait -n -p done_pid; rc=$?
  remaining=$((remaining - 1))
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
    status=$rc
    for ((r = 0; r < n; r++)); do [ "${pids[$r]}" = "$done_pid" ] && echo "launch_local: rank $r exited with $rc (log: $logs/rank$r.log)" >&2; done
  fi
done
exit $status
