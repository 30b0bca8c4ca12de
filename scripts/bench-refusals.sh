#!/usr/bin/env bash
# What a refused request costs the collector, against an accepted one: the collector (Kafka
# sink) is driven flat out by `loadgen` three ways, one after another, and its CPU time per
# request is printed for each:
#   accepted   no limits: every request is validated and its 20 events acknowledged by Kafka;
#   401        the collector wants an ingest key that loadgen does not send;
#   429        the per-client limit is 1 request/s, so nearly every request is refused.
# usage: scripts/bench-refusals.sh [COLLECTOR_BINARY]   (default: the release build)
# env:   BENCH_SECS (10), BENCH_CONNECTIONS (64). Needs the stack (scripts/stack.sh start).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
COLLECTOR="${1:-$BIN/collector}"
LOADGEN="${LOADGEN:-$BIN/loadgen}"
SECS="${BENCH_SECS:-10}"
CONNS="${BENCH_CONNECTIONS:-64}"
PORT=18183
[ $# -ge 1 ] || (cd "$ROOT" && cargo build --release -p qoe-collector --bins >/dev/null 2>&1)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # label collector-args...
  local label="$1"; shift
  local topic="bench.refusals.$(date +%s%N)"
  "$ROOT/scripts/stack.sh" create-topic "$topic" 6 >/dev/null 2>&1
  QOE_ADMIN_LISTEN=127.0.0.1:0 QOE_RATE_EVENTS_PER_IP=0 "$COLLECTOR" --listen "127.0.0.1:$PORT" \
    --topic "$topic" --rate-per-view 0 --rate-global 0 "$@" >/dev/null 2>&1 &
  local pid=$!
  until curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { echo "collector exited at start" >&2; exit 1; }
    sleep 0.1
  done
  local c0 c1 out rps
  c0="$(ticks "$pid")"
  out="$("$LOADGEN" --url "http://127.0.0.1:$PORT" --rate 0 --duration-secs "$SECS" \
    --connections "$CONNS" --batch 20)"
  c1="$(ticks "$pid")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rps="$(echo "$out" | sed -n 's/^requests\/s \([0-9]*\).*/\1/p')"
  printf '%-9s requests/s %7d  collector CPU %5.2f s  %6.1f µs/request  %s\n' "$label" "$rps" \
    "$(awk -v t=$((c1 - c0)) 'BEGIN { print t / 100 }')" \
    "$(awk -v t=$((c1 - c0)) -v r="$rps" -v s="$SECS" 'BEGIN { printf "%.1f", t * 10000 / (r * s) }')" \
    "$(echo "$out" | grep -o 'statuses {[^}]*}')"
}

run accepted --rate-per-ip 0
run 401 --rate-per-ip 0 --ingest-keys bench-secret
run 429 --rate-per-ip 1 --rate-burst-factor 1
