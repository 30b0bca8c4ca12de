#!/usr/bin/env bash
# Compares two collector binaries under the same conditions: runs them alternately (A, B, A, B,
# ...) with the Kafka sink, driven flat out by `loadgen`, and prints events/s, p99 latency and the
# collector's CPU time per event for every run. On a shared machine absolute figures drift by
# tens of percent within minutes; only pairs taken back to back are comparable.
#
# usage: scripts/compare-collectors.sh OLD_COLLECTOR NEW_COLLECTOR [PAIRS]
# env:   BENCH_SECS (15), BENCH_CONNECTIONS (128), BENCH_SINK (kafka), LOADGEN (release build)
# Needs the stack (scripts/stack.sh start).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
A="${1:?usage: $0 OLD_COLLECTOR NEW_COLLECTOR [PAIRS]}"
B="${2:?usage: $0 OLD_COLLECTOR NEW_COLLECTOR [PAIRS]}"
PAIRS="${3:-3}"
SECS="${BENCH_SECS:-15}"
CONNS="${BENCH_CONNECTIONS:-128}"
SINK="${BENCH_SINK:-kafka}"
LOADGEN="${LOADGEN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/loadgen}"
PORT=18181
[ -x "$LOADGEN" ] || (cd "$ROOT" && cargo build --release -p qoe-collector --bin loadgen >/dev/null 2>&1)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # label binary
  local topic="bench.compare.$(date +%s%N)"
  tansu topic create "$topic" --broker "tcp://127.0.0.1:${QOE_KAFKA_PORT:-9092}" --partitions 6 >/dev/null
  # (the events-per-client limit by environment, which builds without it ignore)
  QOE_RATE_EVENTS_PER_IP=0 QOE_ADMIN_LISTEN=127.0.0.1:0 "$2" --listen "127.0.0.1:$PORT" --topic "$topic" --sink "$SINK" \
    --rate-per-ip 0 --rate-per-view 0 --rate-global 0 >/dev/null 2>&1 &
  local pid=$!
  until curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { echo "$1 exited at start (is port $PORT in use?)" >&2; exit 1; }
    sleep 0.1
  done
  local c0 c1 out events
  c0="$(ticks "$pid")"
  out="$("$LOADGEN" --url "http://127.0.0.1:$PORT" --rate 0 --duration-secs "$SECS" \
    --connections "$CONNS" --batch 20)"
  c1="$(ticks "$pid")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  events="$(echo "$out" | sed -n 's/.*accepted events\/s \([0-9]*\).*/\1/p')"
  printf '%s  events/s %7d  %s  collector CPU %5.2f s  %.2f µs/event\n' "$1" "$events" \
    "$(echo "$out" | grep -o 'p99 [0-9.]*')" "$(awk -v t=$((c1 - c0)) 'BEGIN { print t / 100 }')" \
    "$(awk -v t=$((c1 - c0)) -v e="$events" -v s="$SECS" 'BEGIN { printf "%.2f", t * 10000 / (e * s) }')"
}

for i in $(seq 1 "$PAIRS"); do
  run "pair $i A" "$A"
  run "pair $i B" "$B"
done
