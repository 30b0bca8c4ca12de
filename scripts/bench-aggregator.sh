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
#
# `scripts/bench-aggregator.sh raw-clickhouse` instead compares the pipeline with the
# alternative teams build first: raw events inserted straight into ClickHouse in batches, with
# materialized views computing the 10 s windows (scripts/bench-raw-events.sql). One topic
# filled by the simulator (BENCH_VIEWERS, BENCH_DURATION: one hour simulated by default), then
# the aggregator and `raw-inserter` each from its beginning into their own database: events/s,
# ClickHouse server CPU per event (its own process time while each catches up), bytes stored
# per event, and the median time of the region x CDN panel query over one hour of data.
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
# Events, not messages: a message of the per-beacon format carries several.
events() { sed -n 's/^bare consumer: \([0-9]*\) events.*/\1/p'; }

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
    PIDS+=($cpid)
    until curl -fsS "http://127.0.0.1:$((CPORT + 1))/readyz" >/dev/null 2>&1; do sleep 0.2; done
    "$BIN/loadgen" --url "http://127.0.0.1:$CPORT" --duration-secs "${BENCH_FILL_SECS:-8}" --connections 64 >/dev/null
    kill "$cpid"; wait "$cpid" 2>/dev/null || true
    line="$("$BIN/bare-consumer" --topic "$topic")"
    bare="$(echo "$line" | rate)"
    total="$(echo "$line" | messages)"
    evs="$(echo "$line" | events)"
    catch_up "$topic" "$db" "bench-$RUN-$parts" "$total"
    rss=$(( $(awk '/VmHWM/ {print $2}' "/proc/$APID/status") / 1024 ))
    kill "$APID"; wait "$APID" 2>/dev/null || true
    agg=$(awk -v n="$evs" -v t="$((T1 - T0))" 'BEGIN { printf "%.0f", n / (t / 1000) }')
    echo "$parts partitions: $evs events in $total messages; bare consumer $bare events/s; aggregator $agg events/s ($(awk -v a="$agg" -v b="$bare" 'BEGIN { printf "%.2f", a / b }') of it, from process start); peak RSS $rss MiB"
  done
  exit 0
fi

# CPU time (user + system) of process $1 in ms.
cpu_ms() { awk '{ print ($14 + $15) * 10 }' "/proc/$1/stat"; }

# Median wall time in ms of query $2 against database $1 (3 warm-up runs, then 15).
query_ms() {
  local i
  for i in 1 2 3; do curl -fsS "$CH/?database=$1" --data-binary "$2 FORMAT Null"; done
  for i in $(seq 1 15); do
    curl -fsS -o /dev/null -w '%{time_total}\n' "$CH/?database=$1" --data-binary "$2 FORMAT Null"
  done | sort -n | awk '{ a[NR] = $1 } END { printf "%.1f", a[8] * 1000 }'
}

# Bytes on disk of the active parts of database $1 (tables where condition $2 holds of
# `table`), after merging them.
stored_bytes() {
  local t
  for t in $(curl -fsS "$CH/" --data-binary "SELECT name FROM system.tables WHERE database = '$1' AND engine LIKE '%MergeTree' AND (${2//table/name})"); do
    curl -fsS "$CH/?database=$1" --data-binary "OPTIMIZE TABLE $t FINAL"
  done
  curl -fsS "$CH/" --data-binary "SELECT sum(bytes_on_disk) FROM system.parts WHERE active AND database = '$1' AND ($2)"
}

if [ "${1:-}" = raw-clickhouse ]; then
  VIEWERS="${BENCH_VIEWERS:-2000}"
  DURATION="${BENCH_DURATION:-60m}"
  CHPID="$(cat "$ROOT/.stack/run/clickhouse.pid")"
  RAWDB="bench_raw_$RUN"
  scripts/stack.sh create-topic "$TOPIC" 6 >/dev/null 2>&1
  # An hour of simulated viewing ends now, so it starts older than the default maximum age.
  "$BIN/collector" --listen "127.0.0.1:$CPORT" --admin-listen "127.0.0.1:$((CPORT + 1))" --topic "$TOPIC" \
    --rate-per-ip 0 --rate-events-per-ip 0 --rate-per-view 0 --rate-global 0 \
    --max-event-age-secs 86400 >/dev/null 2>&1 &
  cpid=$!
  PIDS+=($cpid)
  until curl -fsS "http://127.0.0.1:$((CPORT + 1))/readyz" >/dev/null 2>&1; do sleep 0.2; done
  echo "filling $TOPIC: $VIEWERS viewers, $DURATION simulated, flat out"
  "$BIN/simulator" --url "http://127.0.0.1:$CPORT" --viewers "$VIEWERS" --duration "$DURATION" \
    --max-event-age-secs 86400 --speed 0 --progress-secs 0 | sed -n 's/^Events acknowledged/  acknowledged/p'
  kill "$cpid"; wait "$cpid" 2>/dev/null || true
  LINE="$("$BIN/bare-consumer" --topic "$TOPIC")"
  TOTAL="$(echo "$LINE" | messages)"
  EVENTS="$(echo "$LINE" | events)"

  # The pipeline: the aggregator into its own database until caught up.
  sleep 5
  c0="$(cpu_ms "$CHPID")"
  catch_up "$TOPIC" "$DB" "bench-$RUN" "$TOTAL"
  sleep 3
  p_server=$(( $(cpu_ms "$CHPID") - c0 ))
  p_client="$(cpu_ms "$APID")"
  kill "$APID"; wait "$APID" 2>/dev/null || true
  p_rate=$(awk -v n="$EVENTS" -v t="$((T1 - T0))" 'BEGIN { printf "%.0f", n / (t / 1000) }')

  # The alternative: every event a row, windows computed by materialized views.
  curl -fsS "$CH/" --data-binary "CREATE DATABASE $RAWDB"
  sed -e 's/--.*//' scripts/bench-raw-events.sql | tr '\n' ' ' | tr ';' '\n' | while read -r stmt; do
    [ -n "$stmt" ] && curl -fsS "$CH/?database=$RAWDB" --data-binary "$stmt"
  done
  sleep 5
  c0="$(cpu_ms "$CHPID")"
  "$BIN/raw-inserter" --topic "$TOPIC" --clickhouse-database "$RAWDB" >/tmp/raw-inserter.$RUN.out &
  rpid=$!
  r_client=0
  while kill -0 "$rpid" 2>/dev/null; do r_client="$(cpu_ms "$rpid" 2>/dev/null || echo "$r_client")"; sleep 0.2; done
  wait "$rpid"
  sleep 3
  r_server=$(( $(cpu_ms "$CHPID") - c0 ))
  line="$(cat /tmp/raw-inserter.$RUN.out)"; rm -f /tmp/raw-inserter.$RUN.out
  echo "$line"
  r_rate="$(echo "$line" | rate)"

  # Staged batches are transient (dropped after 2 h): counted apart.
  p_bytes="$(stored_bytes "$DB" "table != 'qoe_staging'")"
  p_staging="$(stored_bytes "$DB" "table = 'qoe_staging'")"
  r_all="$(stored_bytes "$RAWDB" "1")"
  r_events="$(curl -fsS "$CH/" --data-binary "SELECT sum(bytes_on_disk) FROM system.parts WHERE active AND database = '$RAWDB' AND table = 'raw_events'")"
  p_counted="$(ch "SELECT sum(events) FROM qoe_window_10s")"
  r_counted="$(curl -fsS "$CH/?database=$RAWDB" --data-binary "SELECT count() FROM raw_events")"

  from="$(ch "SELECT toUInt32(min(window_start)) FROM qoe_window_10s")"
  to=$((from + 3600))
  panel="SELECT region, cdn, sum(attempts) AS attempts_, sum(plays) AS plays_, sum(errors) AS errors_,
    if(sum(playing_ms) + sum(stall_ms) = 0, NULL, 100 * sum(stall_ms) / (sum(playing_ms) + sum(stall_ms))) AS rebuffering_pct,
    sum(startup_ms_sum) / greatest(sum(plays), 1) AS startup_mean_ms, sum(bitrate_kbps_ms) / greatest(sum(playing_ms), 1) AS mean_kbps
    FROM TABLE WHERE window_start >= toDateTime($from) AND window_start < toDateTime($to) GROUP BY region, cdn ORDER BY region, cdn"
  raw_panel="SELECT region, cdn, countIf(type = 'view_start') AS attempts_, countIf(type = 'first_frame') AS plays_, countIf(type = 'error') AS errors_,
    if(sum(playing_ms) + sum(stall_ms) = 0, NULL, 100 * sum(stall_ms) / (sum(playing_ms) + sum(stall_ms))) AS rebuffering_pct,
    sumIf(startup_ms, type = 'first_frame') / greatest(countIf(type = 'first_frame'), 1) AS startup_mean_ms,
    sum(toUInt64(bitrate_kbps) * playing_ms) / greatest(sum(playing_ms), 1) AS mean_kbps
    FROM raw_events WHERE event_time >= $from * 1000 AND event_time < $to * 1000 GROUP BY region, cdn ORDER BY region, cdn"
  q_p1m="$(query_ms "$DB" "${panel/TABLE/qoe_window_1m}")"
  q_p10="$(query_ms "$DB" "${panel/TABLE/qoe_window_10s}")"
  q_rmv="$(query_ms "$RAWDB" "${panel/TABLE/raw_window_10s}")"
  q_raw="$(query_ms "$RAWDB" "$raw_panel")"

  echo
  echo "$EVENTS events in $TOTAL messages, $VIEWERS viewers, $DURATION simulated; events counted: pipeline $p_counted (duplicates dropped), raw $r_counted"
  printf '%-34s %12s %12s\n' "" pipeline "raw events"
  printf '%-34s %12s %12s\n' "events/s into ClickHouse" "$p_rate" "$r_rate"
  printf '%-34s %12s %12s\n' "ClickHouse CPU, µs per event" \
    "$(awk -v c="$p_server" -v n="$EVENTS" 'BEGIN { printf "%.1f", c * 1000 / n }')" \
    "$(awk -v c="$r_server" -v n="$EVENTS" 'BEGIN { printf "%.1f", c * 1000 / n }')"
  printf '%-34s %12s %12s\n' "client CPU, µs per event" \
    "$(awk -v c="$p_client" -v n="$EVENTS" 'BEGIN { printf "%.1f", c * 1000 / n }')" \
    "$(awk -v c="$r_client" -v n="$EVENTS" 'BEGIN { printf "%.1f", c * 1000 / n }')"
  printf '%-34s %12s %12s\n' "bytes stored per event" \
    "$(awk -v b="$p_bytes" -v n="$EVENTS" 'BEGIN { printf "%.1f", b / n }')" \
    "$(awk -v b="$r_all" -v n="$EVENTS" 'BEGIN { printf "%.1f", b / n }')"
  printf '%-34s %12s %12s\n' "  transient staging (kept 2 h)" \
    "$(awk -v b="$p_staging" -v n="$EVENTS" 'BEGIN { printf "%.1f", b / n }')" ""
  printf '%-34s %12s %12s\n' "  of which the raw events table" "" \
    "$(awk -v b="$r_events" -v n="$EVENTS" 'BEGIN { printf "%.1f", b / n }')"
  printf '%-34s %12s %12s\n' "region x CDN panel, 1 h, ms (p50)" "$q_p1m (1m)" "$q_raw (raw)"
  printf '%-34s %12s %12s\n' "  same panel on 10 s windows" "$q_p10" "$q_rmv (views)"
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
EVENTS="$(echo "$LINE" | events)"
catch_up "$TOPIC" "$DB" "bench-$RUN" "$TOTAL"
AGG=$(awk -v n="$EVENTS" -v t="$((T1 - T0))" 'BEGIN { printf "%.0f", n / (t / 1000) }')
# From the first batch on: its messages, counted in events at the topic's events per message.
STEADY=$(awk -v m="$((TOTAL - FIRST))" -v e="$EVENTS" -v n="$TOTAL" -v t="$((T1 - TF))" 'BEGIN { printf "%.0f", m * e / n / (t / 1000) }')
echo "aggregator: $EVENTS events ($TOTAL messages) from Kafka into ClickHouse in $((T1 - T0)) ms = $AGG events/s from process start (group join included); $STEADY events/s from its first written batch; peak RSS $(( $(awk '/VmHWM/ {print $2}' /proc/$APID/status) / 1024 )) MiB"
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
  # A random pause: with a fixed one, probes fall into step with the flush period and every
  # probe waits the same part of it.
  sleep "$(awk -v r="$RANDOM" 'BEGIN { printf "%.3f", 0.3 + (r % 1000) / 1000 }')"
done
kill "$SIM" 2>/dev/null || true
printf '%s\n' "${DELAYS[@]}" | sort -n | awk '{ a[NR] = $1 } END {
  printf "delay from Kafka acknowledgement to queryable (ms): p50 %d  p90 %d  max %d  (n=%d)\n",
    a[int(NR * 0.5 + 0.5)], a[int(NR * 0.9 + 0.5)], a[NR], NR }'
