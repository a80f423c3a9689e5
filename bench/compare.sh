#!/usr/bin/env bash
# Side by side: Slipstream, Redis (primary + 2 replicas) and NATS JetStream (3-node cluster,
# stream with 3 replicas), on this machine, loopback, same message count and size.
# Not part of CI. Needs the Debian packages redis-server, nats-server, golang-go and
# golang-github-nats-io-go-nats-dev (installed with apt-get when missing and run as root),
# and python3 (it installs nats-py from PyPI into a temporary virtualenv).
#
# JetStream is driven by the Go client's asynchronous publish (bench/jetstream, built here
# from Debian's packages; the client the performance issue's JetStream figures were measured
# with), once publishing only and once with an ordered consumer on every server (Slipstream's
# bench has an app on every node, pushed every write), and by the Python client (the earlier
# figures in BENCHMARKS.md). nats-server
# 2.9 acknowledges a publish once a quorum of the stream's replicas holds it, and syncs its
# files to disk once a minute, not per message; Slipstream syncs every write on every node.
#
#   bench/compare.sh [MESSAGES] [VALUE_SIZE] [KEYS]
#
# KEYS is Slipstream's key order, `sequential` (the default) or `random`. redis-benchmark
# spreads its keys at random (-r) either way; JetStream appends to a stream, so key order
# does not matter to it.
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-100000}
SIZE=${2:-100}
KEYS=${3:-sequential}
work=$(mktemp -d)
pids=()
# The servers are stopped and waited for before their files go: a server still shutting down
# writes into the directory being removed.
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
apt_updated=
need() { # a command or file the package provides, the Debian package
  { command -v "$1" >/dev/null || [ -e "$1" ]; } && return
  [ "$(id -u)" = 0 ] || { echo "needs $1: apt-get install $2" >&2; exit 2; }
  # A fresh machine's package lists may be missing or stale.
  [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null
}
need redis-server redis-server
need nats-server nats-server
need go golang-go
need /usr/share/gocode/src/github.com/nats-io/nats.go golang-github-nats-io-go-nats-dev
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cargo build --release -q --bin slipstream
echo "== Slipstream: 3 nodes, full mesh, every write fsynced on every node, $KEYS keys"
slip=$(./target/release/slipstream bench --nodes 3 --messages "$MESSAGES" --value-size "$SIZE" --keys "$KEYS" --json)
slip_rate=$(python3 -c 'import json,sys; print(round(json.loads(sys.argv[1])["appliedOnAllPerSecond"]))' "$slip")
echo "$slip"

echo "== Redis: primary + 2 replicas, pipelined SET (no persistence, then AOF everysec)"
# Runs in a command substitution (a subshell), so it stops its own servers: the EXIT trap
# of the script does not see pids added here.
redis_run() {
  local extra=$1 p r1 r2 rate servers=()
  p=$(free_port); r1=$(free_port); r2=$(free_port)
  for port in "$p" "$r1" "$r2"; do
    mkdir -p "$work/redis-$port"
    redis-server --port "$port" --bind 127.0.0.1 --save "" $extra --dir "$work/redis-$port" --daemonize no >/dev/null 2>&1 &
    servers+=($!)
  done
  sleep 0.5
  redis-cli -p "$r1" replicaof 127.0.0.1 "$p" >/dev/null
  redis-cli -p "$r2" replicaof 127.0.0.1 "$p" >/dev/null
  sleep 1
  rate=$(redis-benchmark -p "$p" -t set -n "$MESSAGES" -d "$SIZE" -P 100 -r 1000000 -q 2>/dev/null | tr '\r' '\n' | grep -Eo '[0-9.]+ requests per second' | tail -1 | awk '{print int($1)}')
  kill "${servers[@]}" 2>/dev/null || true
  wait "${servers[@]}" 2>/dev/null || true
  echo "$rate"
}
redis_plain=$(redis_run "--appendonly no")
redis_aof=$(redis_run "--appendonly yes --appendfsync everysec")
echo "no persistence: $redis_plain SET/s; AOF everysec: $redis_aof SET/s"

echo "== NATS JetStream: 3-node cluster, stream with 3 replicas, async publish"
python3 -m venv "$work/venv" >/dev/null && "$work/venv/bin/pip" install -q nats-py >/dev/null
c1=$(free_port); c2=$(free_port); c3=$(free_port); n1=$(free_port); n2=$(free_port); n3=$(free_port)
routes="nats-route://127.0.0.1:$c1,nats-route://127.0.0.1:$c2,nats-route://127.0.0.1:$c3"
for i in 1 2 3; do
  eval port=\$n$i; eval cport=\$c$i
  nats-server -a 127.0.0.1 -p "$port" -js -sd "$work/nats-$i" --name "n$i" --cluster_name bench \
    --cluster "nats://127.0.0.1:$cport" --routes "$routes" >/dev/null 2>&1 &
  pids+=($!)
done
sleep 3
# GOPATH mode, so the Go client comes from Debian's package and nothing is fetched.
mkdir -p "$work/gopath/src/jetstream"
cp bench/jetstream/main.go "$work/gopath/src/jetstream/"
(cd "$work/gopath/src/jetstream" && GO111MODULE=off GOPATH="$work/gopath:/usr/share/gocode" \
  GOCACHE="$work/gocache" go build -o "$work/jetstream" .)
nats_go_rate=$("$work/jetstream" "nats://127.0.0.1:$n1" BENCHGO "$MESSAGES" "$SIZE")
echo "$nats_go_rate publishes/s acknowledged by the stream (Go client)"
# An ordered consumer on every server, as Slipstream's bench has an app on every node.
nats_go_all=$("$work/jetstream" "nats://127.0.0.1:$n1" BENCHGOC "$MESSAGES" "$SIZE" \
  "nats://127.0.0.1:$n1" "nats://127.0.0.1:$n2" "nats://127.0.0.1:$n3")
echo "$nats_go_all messages/s received by a consumer on each of the 3 servers (Go client)"
nats_rate=$("$work/venv/bin/python" - "$n1" "$MESSAGES" "$SIZE" <<'PY'
import asyncio, sys, time
import nats
async def main(port, n, size):
    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    js = nc.jetstream()
    await js.add_stream(name="BENCH", subjects=["bench"], num_replicas=3)
    payload = b"x" * size
    start = time.perf_counter()
    window = []
    for i in range(n):
        window.append(asyncio.ensure_future(js.publish("bench", payload)))
        if len(window) >= 1000:
            await asyncio.gather(*window)
            window = []
    await asyncio.gather(*window)
    print(int(n / (time.perf_counter() - start)))
    await nc.close()
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
PY
)
echo "$nats_rate publishes/s acknowledged by the stream (Python client)"

echo
printf "%-58s %12s %8s\n" "system ($MESSAGES writes of $SIZE bytes)" "writes/s" "slip/this"
printf '%-58s %12s %8s\n' "Slipstream, applied on all 3 nodes, fsync, $KEYS keys" "$slip_rate" "1.00"
for row in "Redis primary+2 replicas, pipelined, no persistence:$redis_plain" "Redis primary+2 replicas, pipelined, AOF everysec:$redis_aof" "NATS JetStream, 3 replicas, async publish (Go client):$nats_go_rate" "NATS JetStream, Go client, consumed on all 3 servers:$nats_go_all" "NATS JetStream, 3 replicas, async publish (Python client):$nats_rate"; do
  name=${row%:*}; rate=${row##*:}
  printf '%-58s %12s %8s\n' "$name" "$rate" "$(python3 -c "print(f'{$slip_rate/max($rate,1):.2f}')")"
done
