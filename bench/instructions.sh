#!/usr/bin/env bash
# What a write costs one node, counted in CPU instructions: a 2-node mesh on this machine, one
# node run under valgrind's callgrind, driven by `slipstream bench --target`. Instruction
# counts do not drift with the machine's speed or its neighbours the way seconds do, so two
# builds can be compared from one run each. Not part of CI. Needs valgrind (Debian package).
#
#   [NODES=N] bench/instructions.sh origin|replica [SLIPSTREAM_BINARY] [-- BENCH ARGS...]
#
# `origin` profiles the node the writes go to, `replica` another one. NODES (default 2) sets
# the mesh's size: the origin and every other node are configured with each other's address,
# and the others know no one else, so the origin delivers each write to NODES-1 peers itself,
# as the origin of a healthy full mesh does; what it does per write and peer shows as the
# difference between two sizes. The binary defaults
# to ./target/release/slipstream (built first); bench arguments default to 30,000 writes of
# 100 bytes (plus the bench's 1,000 warm-up writes, which count too). The callgrind profile
# stays in the printed folder, for `callgrind_annotate --inclusive=yes FILE`.
#
# The profiled node runs about fifty times slower than usual: see the origin's settings below.
set -euo pipefail
cd "$(dirname "$0")/.."
role=${1:?origin or replica}
shift
bin=./target/release/slipstream
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  bin=$1
  shift
else
  cargo build --release -q --bin slipstream
fi
[ "${1:-}" = "--" ] && shift
bench_args=("$@")
[ ${#bench_args[@]} -eq 0 ] && bench_args=(--messages 30000)
case $role in
  origin) profiled=a ;;
  replica) profiled=b ;;
  *) echo "origin or replica, not $role" >&2; exit 2 ;;
esac
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 2; }

work=$(mktemp -d /tmp/slipstream-instructions.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
nodes=${NODES:-2}
[ "$nodes" -ge 2 ] || { echo "NODES must be at least 2" >&2; exit 2; }
names=(a b c d e f g h i j k l m n o p)
[ "$nodes" -le ${#names[@]} ] || { echo "at most ${#names[@]} nodes" >&2; exit 2; }
ws=(); http=()
for ((i = 0; i < nodes; i++)); do ws+=("$(free_port)"); http+=("$(free_port)"); done

node() {
  local name=$1 ws=$2 http=$3 peers=$4 slow=$5
  local run=("$bin" run)
  [ "$name" = "$profiled" ] && run=(valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" "$bin" run)
  env ENABLE_MESSAGE_LOGS=false SLIPSTREAM_INSTANCE_ID="$name" SLIPSTREAM_STORAGE_PATH="$work/$name" \
    SLIPSTREAM_LISTEN="127.0.0.1:$ws" METRICS_PORT="$http" SLIPSTREAM_METRICS_HOST=127.0.0.1 \
    TOKIO_WORKER_THREADS=1 ${slow:+SLIPSTREAM_RETRY_IN_N_SECONDS=60 SLIPSTREAM_HOLD_DELIVERY_MS=60000} \
    URL_CONFIG="$peers" "${run[@]}" >"$work/$name.log" 2>&1 &
  pids+=($!)
}
# The origin waits 60 s before it sends a write again, and holds its delivery rows in memory
# for up to 60 s instead of 1 s: a profiled node runs about fifty times slower, and at that
# pace its peers' ACKs would otherwise come after its rows were written to the outbox, which
# at full speed does not happen.
others=$(for ((i = 1; i < nodes; i++)); do printf '{"url":"ws://127.0.0.1:%s"},' "${ws[$i]}"; done)
node a "${ws[0]}" "${http[0]}" "[${others%,}]" slow
for ((i = 1; i < nodes; i++)); do
  node "${names[$i]}" "${ws[$i]}" "${http[$i]}" "[{\"url\":\"ws://127.0.0.1:${ws[0]}\"}]" ""
done
# Every link up (the profiled node starts slowly).
for _ in $(seq 120); do
  up=$(curl -sf "127.0.0.1:${http[0]}/status" | grep -o '"connected":true' | wc -l) || up=0
  [ "$up" -ge $((nodes - 1)) ] && break
  sleep 1
done
targets=()
for ((i = 0; i < nodes; i++)); do targets+=(--target "ws://127.0.0.1:${ws[$i]}"); done
report=$("$bin" bench "${targets[@]}" "${bench_args[@]}" --json)
writes=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["messages"] + d["warmup"]); assert d["everyNodeHoldsEveryWrite"], "a node misses writes"' "$report")
cleanup
pids=()
total=$(callgrind_annotate "$work/callgrind.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "$role ($bin): $total instructions for $writes writes, $((total / writes)) per write"
echo "profile: $work/callgrind.out"
