#!/usr/bin/env bash
# Collector benchmark: the release collector with the Kafka sink (acknowledged delivery) and,
# in the same run, with the no-op sink, driven flat out by `loadgen` (batches of 20 events);
# then the Kafka sink again at 80% of its measured rate and at fixed rates (100k events/s, the
# sustained target, and 80k, 80% of it), for latency. Paced runs measure latency from each request's
# scheduled time, so falling behind shows. Prints events/s, latency percentiles and the
# collector's peak RSS. Needs the stack (scripts/stack.sh start).
#
# `scripts/bench-collector.sh batch-sizes` instead runs the Kafka sink paced at
# BENCH_BATCH_RATE (20,000) events/s with 1, 20 and 200 events per request: latency and the
# collector's CPU per event against the request size.
#
# `scripts/bench-collector.sh formats` compares the two Kafka message formats (one message per
# event, one per beacon) in one run: Kafka and no-op sinks flat out, then the Kafka sink paced
# at BENCH_SUSTAIN_RATE, for each format in turn, BENCH_ROUNDS (2) times.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
SECS="${BENCH_SECS:-15}"
CONNS="${BENCH_CONNECTIONS:-128}"
SUSTAIN_RATE="${BENCH_SUSTAIN_RATE:-100000}"
PACED_RATE="${BENCH_PACED_RATE:-80000}"
PORT=18181
cd "$ROOT"
cargo build --release -p qoe-collector --bins >/dev/null 2>&1
RUN="$(date +%s)"
N=0

run() { # label rate sink [events per request]
  # A fresh topic per run: the local broker keeps topics in memory and slows as they grow.
  local topic="bench.collector.$RUN.$((++N))"
  tansu topic create "$topic" --broker "tcp://127.0.0.1:${QOE_KAFKA_PORT:-9092}" --partitions 6 >/dev/null
  QOE_KAFKA_MESSAGE_FORMAT="${FORMAT:-event}" QOE_RATE_EVENTS_PER_IP=0 QOE_ADMIN_LISTEN=127.0.0.1:0 "$BIN/collector" --listen "127.0.0.1:$PORT" --topic "$topic" --sink "$3" \
    --rate-per-ip 0 --rate-per-view 0 --rate-global 0 >/dev/null 2>&1 &
  local pid=$!
  local broker broker0
  broker="$(cat "$ROOT/.stack/run/tansu.pid" 2>/dev/null || echo)"
  broker0="$( [ -n "$broker" ] && awk '{ print $14 + $15 }' "/proc/$broker/stat" 2>/dev/null || echo 0)"
  # Wait for this collector (not some other process on the port) to answer.
  until curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { echo "collector exited at start (is port $PORT in use?)" >&2; exit 1; }
    sleep 0.2
  done
  kill -0 "$pid" 2>/dev/null || { echo "collector exited at start (is port $PORT in use?)" >&2; exit 1; }
  local out
  out="$("$BIN/loadgen" --url "http://127.0.0.1:$PORT" --rate "$2" --duration-secs "$SECS" \
    --connections "$CONNS" --batch "${4:-20}")"
  local hwm cpu
  hwm="$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")"
  cpu="$(awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$pid/stat")"
  local broker_cpu="?"
  if [ -n "$broker" ] && [ -r "/proc/$broker/stat" ]; then
    broker_cpu="$(awk -v b0="$broker0" -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15 - b0) / hz }' "/proc/$broker/stat")"
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
  printf '%-28s %s  peak RSS %d MiB, collector CPU %s s, broker CPU %s s\n' "$1" "$out" "$((hwm / 1024))" "$cpu" "$broker_cpu"
  LAST="$out"
}

if [ "${1:-}" = batch-sizes ]; then
  RATE="${BENCH_BATCH_RATE:-20000}"
  echo "collector latency against events per request: Kafka sink paced at $RATE events/s, ${SECS}s per run, ${CONNS} connections"
  for batch in 1 20 200; do
    run "kafka sink, $batch per request" "$RATE" kafka "$batch"
  done
  exit 0
fi
if [ "${1:-}" = formats ]; then
  echo "Kafka message formats: ${SECS}s per run, ${CONNS} connections, 20 events per request"
  rate() { echo "$LAST" | sed -n 's/.*accepted events\/s \([0-9]*\).*/\1/p'; }
  for round in $(seq 1 "${BENCH_ROUNDS:-2}"); do
    for FORMAT in event beacon; do
      run "$FORMAT: kafka, flat out" 0 kafka
      k="$(rate)"
      run "$FORMAT: null, flat out" 0 null
      n="$(rate)"
      run "$FORMAT: kafka, ${SUSTAIN_RATE}/s" "$SUSTAIN_RATE" kafka
      echo "round $round, $FORMAT per message: kafka/null $(awk -v k="$k" -v n="$n" 'BEGIN { printf "%.2f", k / n }')"
    done
  done
  exit 0
fi
echo "collector benchmark: ${SECS}s per run, ${CONNS} connections, 20 events per request, $(nproc) cores shared by broker, collector and load generator"
run "kafka sink, flat out" 0 kafka
KAFKA_RATE="$(echo "$LAST" | sed -n 's/.*accepted events\/s \([0-9]*\).*/\1/p')"
run "null sink, flat out" 0 null
NULL_RATE="$(echo "$LAST" | sed -n 's/.*accepted events\/s \([0-9]*\).*/\1/p')"
TARGET=$((KAFKA_RATE * 8 / 10))
run "kafka sink, 80% (${TARGET}/s)" "$TARGET" kafka
# The targets as fixed rates, whatever this run's flat-out figure was: 100k events/s
# sustained, and latency at 80% of it.
run "kafka sink, ${SUSTAIN_RATE}/s" "$SUSTAIN_RATE" kafka
run "kafka sink, ${PACED_RATE}/s" "$PACED_RATE" kafka
echo "kafka/null throughput ratio: $(awk -v k="$KAFKA_RATE" -v n="$NULL_RATE" 'BEGIN { printf "%.2f", k / n }')"
