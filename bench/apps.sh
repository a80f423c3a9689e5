#!/usr/bin/env bash
# Many apps writing into one node at once: what the node's memory comes to. Starts a one-node
# `slipstream dev` mesh and runs APPS `slipstream bench --target` processes against it at the
# same time, each its own app connection writing as fast as its window allows and subscribed
# to the node's pushes (it watches them to see its writes applied). Prints the node's peak
# RSS, the writes per second of all apps together, and how many apps finished with every
# write applied. Not part of CI.
#
#   bench/apps.sh [SLIPSTREAM_BINARY] [APPS] [-- BENCH ARGS...]
#
# The binary defaults to ./target/release/slipstream (built first), APPS to 8, and the bench
# arguments of each app to 100,000 writes of 100 bytes (`--messages 100000`).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=./target/release/slipstream
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  bin=$(realpath "$1")
  shift
else
  cargo build --release -q --bin slipstream
  bin=$(realpath "$bin")
fi
apps=8
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  apps=$1
  shift
fi
[ "${1:-}" = "--" ] && shift
bench_args=("$@")
[ ${#bench_args[@]} -eq 0 ] && bench_args=(--messages 100000)

work=$(mktemp -d /tmp/slipstream-apps.XXXXXX)
"$bin" dev --nodes 1 >"$work/dev.log" 2>&1 &
dev=$!
trap 'kill -INT $dev 2>/dev/null; wait $dev 2>/dev/null; rm -rf "$work"' EXIT
url=
for _ in $(seq 100); do
  url=$(grep -o 'ws://[0-9.:]*' "$work/dev.log" | head -1 || true)
  grep -q 'mesh connected' "$work/dev.log" && [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "the node did not start:" >&2; cat "$work/dev.log" >&2; exit 1; }

pids=()
for i in $(seq "$apps"); do
  "$bin" bench --target "$url" "${bench_args[@]}" --json >"$work/app-$i.json" 2>"$work/app-$i.err" &
  pids+=($!)
done
failed=0
for p in "${pids[@]}"; do
  wait "$p" || failed=$((failed + 1))
done
peak=$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$dev/status")
python3 - "$work" "$apps" "$peak" "$failed" <<'EOF'
import json, pathlib, sys
work, apps, peak, failed = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
rates, complete = [], 0
for f in sorted(work.glob("app-*.json")):
    try:
        d = json.loads(f.read_text())
    except ValueError:
        continue
    rates.append(d["appliedOnAllPerSecond"])
    complete += d.get("everyNodeHoldsEveryWrite") is True
print(f"apps {apps}  node peak RSS {peak} MiB  all apps together {sum(rates):,.0f} writes/s"
      f"  apps with every write applied {complete} of {apps}  apps that failed {failed}")
EOF
for i in $(seq "$apps"); do
  if [ -s "$work/app-$i.err" ] && grep -q 'slipstream bench:' "$work/app-$i.err"; then
    echo "app $i: $(grep -o 'slipstream bench: .*' "$work/app-$i.err" | tail -1)"
  fi
done
