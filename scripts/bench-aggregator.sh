#!/usr/bin/env bash
# Aggregator whole-path benchmark (Kafka -> windows -> ClickHouse), on this machine, with the
# stack running (scripts/stack.sh start):
#   1. fills a fresh topic with simulated viewing through the collector;
#   2. bare consumer (decode and drop), the aggregator from the beginning to caught up in a fresh
#      database, bare consumer again: events/s of each and the ratio;
#   3. event-to-queryable delay: while simulated viewers play in real time, probe beacons are
#      posted and ClickHouse is polled until each probe's window row is visible.
# Settings: BENCH_VIEWERS (2000), BENCH_DURATION (simulated, 20m), BENCH_PROBES (30).
#
# `scripts/bench-aggregator.sh partitions` instead measures the whole path against the number
# of partitions (BENCH_PARTITIONS, "1 4 16 64"): per count, a fresh topic filled by `loadgen`
# through the collector (BENCH_FILL_SECS, 8, flat out), the bare consumer, then the aggregator
# from the beginning to caught up: events/s of each, their ratio and the aggregator's peak RSS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
CH="http://127.0.0.1:${QOE_CH_HTTP_PORT:-8123}"
VIEWERS="${BENCH_VIEWERS:-2000}"
DURATION="${BENCH_DURATION:-20m}"
PROBES="${BENCH_PROBES:-30}"
RUN="$(date +%s)"
TOPIC="bench.aggregator.$RUN"
DB="bench_aggregator_$RUN"
CPORT=18282
APORT=19292
cd "$ROOT"
cargo build --release --workspace --bins >/dev/null 2>&1
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
ms() { date +%s%3N; }
ch() { curl -fsS "$CH/?database=$DB" --data-binary "$1"; }
rate() { sed -n 's/.*= \([0-9]*\) events\/s/\1/p'; }
messages() { sed -n 's/.* of \([0-9]*\) messages.*/\1/p'; }

# The aggregator from the beginning of topic $1 into a fresh database $2 (group $3) until its
# checkpoints reach $4 messages; it is left running. Sets APID, T0 (start), TF and FIRST (its
# first written batch and the messages it covered), T1 (caught up).
catch_up() {
  "$BIN/aggregator" migrate --clickhouse-database "$2" >/dev/null 2>&1
  T0="$(ms)"
  "$BIN/aggregator" run --topic "$1" --group "$3" --clickhouse-database "$2" \
    --no-migrate --listen "127.0.0.1:$APORT" >/dev/null 2>&1 &
  APID=$!
  PIDS+=($APID)
  TF=""
  local written
  while :; do
    written="$(curl -fsS "$CH/?database=$2" --data-binary \
      "SELECT sum(n) FROM (SELECT max(next_offset) AS n FROM qoe_checkpoints GROUP BY partition)" \
      2>/dev/null || echo 0)"
    if [ -z "$TF" ] && [ "${written:-0}" -gt 0 ]; then TF="$(ms)"; FIRST="$written"; fi
    [ "${written:-0}" -ge "$4" ] && break
    sleep 0.1
  done
  T1="$(ms)"
}

if [ "${1:-}" = partitions ]; then
  echo "whole path against partitions: loadgen fills each topic for ${BENCH_FILL_SECS:-8}s flat out (20 events per request)"
  for parts in ${BENCH_PARTITIONS:-1 4 16 64}; do
    topic="bench.partitions.$RUN.$parts"
    db="bench_partitions_${RUN}_$parts"
    scripts/stack.sh create-topic "$topic" "$parts" >/dev/null 2>&1
    "$BIN/collector" --listen "127.0.0.1:$CPORT" --admin-listen "127.0.0.1:$((CPORT + 1))" --topic "$topic" \
      --rate-per-ip 0 --rate-events-per-ip 0 --rate-per-view 0 --rate-global 0 >/dev/null 2>&1 &
    cpid=$!
    until curl -fsS "http://127.0.0.1:$((CPORT + 1))/readyz" >/dev/null 2>&1; do sleep 0.2; done
    "$BIN/loadgen" --url "http://127.0.0.1:$CPORT" --duration-secs "${BENCH_FILL_SECS:-8}" --connections 64 >/dev/null
    kill "$cpid"; wait "$cpid" 2>/dev/null || true
    line="$("$BIN/bare-consumer" --topic "$topic")"
    bare="$(echo "$line" | rate)"
    total="$(echo "$line" | messages)"
    catch_up "$topic" "$db" "bench-$RUN-$parts" "$total"
    rss=$(( $(awk '/VmHWM/ {print $2}' "/proc/$APID/status") / 1024 ))
    kill "$APID"; wait "$APID" 2>/dev/null || true
    agg=$(awk -v n="$total" -v t="$((T1 - T0))" 'BEGIN { printf "%.0f", n / (t / 1000) }')
    echo "$parts partitions: $total events; bare consumer $bare events/s; aggregator $agg events/s ($(awk -v a="$agg" -v b="$bare" 'BEGIN { printf "%.2f", a / b }') of it, from process start); peak RSS $rss MiB"
  done
  exit 0
fi

scripts/stack.sh create-topic "$TOPIC" 6 >/dev/null 2>&1

CADMIN=$((CPORT + 1))
QOE_RATE_EVENTS_PER_IP=0 "$BIN/collector" --listen "127.0.0.1:$CPORT" --admin-listen "127.0.0.1:$CADMIN" --topic "$TOPIC" \
  --rate-per-ip 0 --rate-per-view 0 --rate-global 0 >/dev/null 2>&1 &
PIDS+=($!)
until curl -fsS "http://127.0.0.1:$CADMIN/readyz" >/dev/null 2>&1; do sleep 0.2; done
echo "filling $TOPIC: $VIEWERS viewers, $DURATION simulated, flat out"
"$BIN/simulator" --url "http://127.0.0.1:$CPORT" --viewers "$VIEWERS" --duration "$DURATION" \
  --speed 0 --progress-secs 0 | sed -n 's/^Events acknowledged/  acknowledged/p'

echo
LINE="$("$BIN/bare-consumer" --topic "$TOPIC")"
echo "$LINE (1)"
BARE1="$(echo "$LINE" | rate)"
TOTAL="$(echo "$LINE" | messages)"
catch_up "$TOPIC" "$DB" "bench-$RUN" "$TOTAL"
AGG=$(awk -v n="$TOTAL" -v t="$((T1 - T0))" 'BEGIN { printf "%.0f", n / (t / 1000) }')
STEADY=$(awk -v n="$((TOTAL - FIRST))" -v t="$((T1 - TF))" 'BEGIN { printf "%.0f", n / (t / 1000) }')
echo "aggregator: $TOTAL events from Kafka into ClickHouse in $((T1 - T0)) ms = $AGG events/s from process start (group join included); $STEADY events/s from its first written batch; peak RSS $(( $(awk '/VmHWM/ {print $2}' /proc/$APID/status) / 1024 )) MiB"
LINE="$("$BIN/bare-consumer" --topic "$TOPIC")"
echo "$LINE (2)"
BARE2="$(echo "$LINE" | rate)"
echo "aggregator / bare consumer: $(awk -v a="$AGG" -v b="$BARE1" -v c="$BARE2" 'BEGIN { printf "%.2f", a / ((b + c) / 2) }') from process start, $(awk -v a="$STEADY" -v b="$BARE1" -v c="$BARE2" 'BEGIN { printf "%.2f", a / ((b + c) / 2) }') from the first batch"

echo
echo "event-to-queryable delay: $PROBES probes while ${VIEWERS} viewers play in real time"
"$BIN/simulator" --url "http://127.0.0.1:$CPORT" --viewers "$VIEWERS" --duration 10m --speed 1 \
  --progress-secs 0 --seed 2 >/dev/null 2>&1 &
SIM=$!
PIDS+=($SIM)
sleep 20
DELAYS=()
for i in $(seq 1 "$PROBES"); do
  body="{\"view\":{\"view_id\":\"probe-$RUN-$i\",\"stream_id\":\"probe-$i\",\"stream_type\":\"live\",\"cdn\":\"probe\",\"platform\":\"web\",\"region\":\"probe\"},\"events\":[{\"seq\":0,\"type\":\"view_start\",\"ts\":$(ms)}]}"
  curl -fsS -o /dev/null "http://127.0.0.1:$CPORT/v1/beacons" -H 'content-type: application/json' --data-binary "$body"
  t0="$(ms)"
  until [ "$(ch "SELECT count() FROM qoe_window_10s WHERE stream_id = 'probe-$i'")" -gt 0 ]; do sleep 0.02; done
  DELAYS+=($(( $(ms) - t0 )))
  sleep 0.5
done
kill "$SIM" 2>/dev/null || true
printf '%s\n' "${DELAYS[@]}" | sort -n | awk '{ a[NR] = $1 } END {
  printf "delay from Kafka acknowledgement to queryable (ms): p50 %d  p90 %d  max %d  (n=%d)\n",
    a[int(NR * 0.5 + 0.5)], a[int(NR * 0.9 + 0.5)], a[NR], NR }'
