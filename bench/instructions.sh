#!/usr/bin/env bash
# What a write costs one node, counted in CPU instructions: a 2-node mesh on this machine, one
# node run under valgrind's callgrind, driven by `slipstream bench --target`. Instruction
# counts do not drift with the machine's speed or its neighbours the way seconds do, so two
# builds can be compared from one run each. Not part of CI. Needs valgrind (Debian package).
#
#   bench/instructions.sh origin|replica [SLIPSTREAM_BINARY] [-- BENCH ARGS...]
#
# `origin` profiles the node the writes go to, `replica` the other one. The binary defaults
# to ./target/release/slipstream (built first); bench arguments default to 30,000 writes of
# 100 bytes (plus the bench's 1,000 warm-up writes, which count too). The callgrind profile
# stays in the printed folder, for `callgrind_annotate --inclusive=yes FILE`.
#
# The profiled node runs about fifty times slower than usual: the other node's retry period
# is set to 60 s, so that slowness does not make it send writes again.
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
ws_a=$(free_port); ws_b=$(free_port); http_a=$(free_port); http_b=$(free_port)

node() {
  local name=$1 ws=$2 http=$3 peer=$4 retry=$5
  local run=("$bin" run)
  [ "$name" = "$profiled" ] && run=(valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" "$bin" run)
  env ENABLE_MESSAGE_LOGS=false SLIPSTREAM_INSTANCE_ID="$name" SLIPSTREAM_STORAGE_PATH="$work/$name" \
    SLIPSTREAM_LISTEN="127.0.0.1:$ws" METRICS_PORT="$http" SLIPSTREAM_METRICS_HOST=127.0.0.1 \
    TOKIO_WORKER_THREADS=1 ${retry:+SLIPSTREAM_RETRY_IN_N_SECONDS=$retry} \
    URL_CONFIG="[{\"url\":\"ws://127.0.0.1:$peer\"}]" "${run[@]}" >"$work/$name.log" 2>&1 &
  pids+=($!)
}
node a "$ws_a" "$http_a" "$ws_b" 60
node b "$ws_b" "$http_b" "$ws_a" ""
# Both connected (the profiled one starts slowly).
for _ in $(seq 120); do
  curl -sf "127.0.0.1:$http_a/status" | grep -q '"connected":true' &&
    curl -sf "127.0.0.1:$http_b/status" | grep -q '"connected":true' && break
  sleep 1
done
report=$("$bin" bench --target "ws://127.0.0.1:$ws_a" --target "ws://127.0.0.1:$ws_b" \
  "${bench_args[@]}" --json)
writes=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["messages"] + d["warmup"]); assert d["everyNodeHoldsEveryWrite"], "a node misses writes"' "$report")
cleanup
pids=()
total=$(callgrind_annotate "$work/callgrind.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "$role ($bin): $total instructions for $writes writes, $((total / writes)) per write"
echo "profile: $work/callgrind.out"
