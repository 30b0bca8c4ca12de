#!/usr/bin/env bash
# Cluster write throughput against the single server, same run, same topic: with the stack
# (scripts/stack.sh start) and the cluster (scripts/cluster.sh start) running,
#   1. fills a fresh topic with simulated viewing through the collector;
#   2. the aggregator reads it from the beginning to caught up, alternately into a fresh
#      database on the single server and on the cluster (2 shards x 2 replicas), BENCH_ROUNDS
#      times each: events/s from process start to the last checkpoint, the ratio of the
#      medians, and the servers' CPU time per million events.
# Settings: BENCH_VIEWERS (2000), BENCH_DURATION (simulated, 10m), BENCH_ROUNDS (2).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
STACK="${QOE_STACK_DIR:-$ROOT/.stack}"
SINGLE="http://127.0.0.1:${QOE_CH_HTTP_PORT:-8123}"
VIEWERS="${BENCH_VIEWERS:-2000}"
DURATION="${BENCH_DURATION:-10m}"
ROUNDS="${BENCH_ROUNDS:-2}"
RUN="$(date +%s)"
TOPIC="bench.cluster.$RUN"
CPORT=18382
cd "$ROOT"
cargo build --release --workspace --bins >/dev/null 2>&1
SHARDS="$(scripts/cluster.sh urls)"
SEED="${SHARDS%%,*}"
scripts/stack.sh create-topic "$TOPIC" 6 >/dev/null 2>&1
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
ms() { date +%s%3N; }

# CPU seconds (user + system) of the ClickHouse and ZooKeeper processes of one target.
server_pids() { # single|cluster
  if [ "$1" = single ]; then cat "$STACK/run/clickhouse.pid"; else cat "$STACK"/cluster/run/*.pid; fi
}
cpu_secs() { # pids...
  local total=0 p
  for p in "$@"; do
    total=$((total + $(awk '{ print $14 + $15 }' "/proc/$p/stat")))
  done
  awk -v t="$total" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'
}

CADMIN=$((CPORT + 1))
"$BIN/collector" --listen "127.0.0.1:$CPORT" --admin-listen "127.0.0.1:$CADMIN" --topic "$TOPIC" \
  --rate-per-ip 0 --rate-events-per-ip 0 --rate-per-view 0 --rate-global 0 >/dev/null 2>&1 &
PIDS+=($!)
until curl -fsS "http://127.0.0.1:$CADMIN/readyz" >/dev/null 2>&1; do sleep 0.2; done
echo "filling $TOPIC: $VIEWERS viewers, $DURATION simulated, flat out"
"$BIN/simulator" --url "http://127.0.0.1:$CPORT" --viewers "$VIEWERS" --duration "$DURATION" \
  --speed 0 --progress-secs 0 | sed -n 's/^Events acknowledged/  acknowledged/p'
TOTAL="$("$BIN/bare-consumer" --topic "$TOPIC" | sed -n 's/.* of \([0-9]*\) messages.*/\1/p')"
echo "  $TOTAL messages in 6 partitions"

one_run() { # single|cluster round
  local target="$1" db="bench_cluster_${RUN}_$1_$2" url args=() read
  if [ "$target" = single ]; then
    url="$SINGLE"; read="$db"
    "$BIN/aggregator" migrate --clickhouse-url "$url" --clickhouse-database "$db" >/dev/null 2>&1
  else
    url="$SEED"; read="${db}_all"
    args=(--clickhouse-cluster qoe --clickhouse-shards "$SHARDS")
    "$BIN/aggregator" migrate "${args[@]}" --clickhouse-database "$db" >/dev/null 2>&1
  fi
  local pids; pids="$(server_pids "$target")"
  # shellcheck disable=SC2086
  local cpu0; cpu0="$(cpu_secs $pids)"
  local t0; t0="$(ms)"
  "$BIN/aggregator" run --topic "$TOPIC" --group "bench-$RUN-$1-$2" --clickhouse-url "$url" \
    --clickhouse-database "$db" "${args[@]}" --no-migrate --listen 127.0.0.1:19393 >/dev/null 2>&1 &
  local apid=$!
  PIDS+=($apid)
  while :; do
    local done_
    done_="$(curl -fsS "$url/?database=$read" --data-binary \
      "SELECT sum(n) FROM (SELECT partition, max(next_offset) AS n FROM qoe_checkpoints GROUP BY partition)" \
      2>/dev/null || echo 0)"
    [ "${done_:-0}" -ge "$TOTAL" ] && break
    sleep 0.1
  done
  local t1; t1="$(ms)"
  # shellcheck disable=SC2086
  local cpu1; cpu1="$(cpu_secs $pids)"
  kill "$apid"; wait "$apid" 2>/dev/null || true
  local rate; rate=$(awk -v n="$TOTAL" -v t="$((t1 - t0))" 'BEGIN { printf "%.0f", n / (t / 1000) }')
  local cpu; cpu=$(awk -v a="$cpu0" -v b="$cpu1" -v n="$TOTAL" 'BEGIN { printf "%.1f", (b - a) / (n / 1e6) }')
  echo "$target round $2: $TOTAL events in $((t1 - t0)) ms = $rate events/s; servers' CPU $cpu s per million events" >&2
  echo "$target $rate $cpu"
}

RESULTS=()
for round in $(seq 1 "$ROUNDS"); do
  RESULTS+=("$(one_run single "$round")")
  RESULTS+=("$(one_run cluster "$round")")
done
printf '%s\n' "${RESULTS[@]}" | awk '
  { rate[$1] = rate[$1] " " $2; cpu[$1] = cpu[$1] " " $3 }
  function median(list,   a, n, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  END {
    s = median(rate["single"]); c = median(rate["cluster"])
    printf "median events/s: single server %d, cluster %d: cluster / single = %.2f\n", s, c, c / s
    printf "median servers CPU per million events: single %.1f s, cluster %.1f s\n", median(cpu["single"]), median(cpu["cluster"])
  }'
