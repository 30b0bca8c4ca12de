#!/usr/bin/env bash
# CMCD ingest against beacon ingest, the same events: the release collector with the Kafka sink
# (acknowledged delivery), driven flat out by `loadgen` alternately with `--protocol beacons`
# (one beacon of BENCH_BATCH events per request) and `--protocol cmcd` (the same events as CMCD v2
# reports, one line each, BENCH_BATCH lines per request), BENCH_PAIRS times, each run on a fresh
# topic. Prints events/s per run, the collector's CPU per event, and the cmcd/beacons ratio
# of each pair. Needs the stack (scripts/stack.sh start).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
SECS="${BENCH_SECS:-15}"
CONNS="${BENCH_CONNECTIONS:-128}"
BATCH="${BENCH_BATCH:-20}"
PAIRS="${BENCH_PAIRS:-3}"
PORT=18182
cd "$ROOT"
cargo build --release -p qoe-collector --bins >/dev/null 2>&1
RUN="$(date +%s)"
N=0

run() { # protocol -> prints events/s and CPU us/event; sets RATE
  local topic="bench.cmcd.$RUN.$((++N))"
  tansu topic create "$topic" --broker "tcp://127.0.0.1:${QOE_KAFKA_PORT:-9092}" --partitions 6 >/dev/null
  QOE_RATE_EVENTS_PER_IP=0 QOE_ADMIN_LISTEN=127.0.0.1:0 "$BIN/collector" --listen "127.0.0.1:$PORT" --topic "$topic" \
    --rate-per-ip 0 --rate-per-view 0 --rate-global 0 >/dev/null 2>&1 &
  local pid=$!
  until curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { echo "collector exited at start (is port $PORT in use?)" >&2; exit 1; }
    sleep 0.2
  done
  local ticks0 ticks1 out
  ticks0="$(awk '{print $14 + $15}' "/proc/$pid/stat")"
  out="$("$BIN/loadgen" --url "http://127.0.0.1:$PORT" --protocol "$1" --duration-secs "$SECS" \
    --connections "$CONNS" --batch "$BATCH")"
  ticks1="$(awk '{print $14 + $15}' "/proc/$pid/stat")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  RATE="$(echo "$out" | sed -n 's/.*accepted events\/s \([0-9]*\).*/\1/p')"
  local hz; hz="$(getconf CLK_TCK)"
  local us_per_event
  us_per_event="$(awk -v t=$((ticks1 - ticks0)) -v hz="$hz" -v r="$RATE" -v s="$SECS" 'BEGIN { printf "%.2f", (r > 0 ? t / hz * 1e6 / (r * s) : 0) }')"
  printf '%-8s %s  collector CPU %s us/event\n' "$1" "$out" "$us_per_event"
}

echo "CMCD vs beacons into Kafka: ${SECS}s per run, ${CONNS} connections, ${BATCH} events per request, $(nproc) cores shared by broker, collector and load generator"
for pair in $(seq 1 "$PAIRS"); do
  run beacons; B="$RATE"
  run cmcd; C="$RATE"
  echo "pair $pair: cmcd/beacons events/s ratio $(awk -v c="$C" -v b="$B" 'BEGIN { printf "%.2f", (b > 0 ? c / b : 0) }')"
done
