#!/usr/bin/env bash
# The main job on local defaults: builds the services, starts the pipeline against the stack
# of scripts/stack.sh (which must be running), drives traffic through it and prints a QoE
# report read back from ClickHouse. The pipeline is left running; `make stop` stops it.
#
#   scripts/demo.sh start    build, start collector + aggregator, send traffic, print the report
#   scripts/demo.sh report   print the report again
#   scripts/demo.sh stop     stop the services it started
#   scripts/demo.sh status   what runs
#
# Settings: QOE_DEMO_SECS (traffic duration, 60), QOE_DEMO_RATE (events/s, 3000).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="${QOE_STACK_DIR:-$ROOT/.stack}"
BIN="$ROOT/target/release"
DB="${QOE_CLICKHOUSE_DATABASE:-qoe}"
CH="http://127.0.0.1:${QOE_CH_HTTP_PORT:-8123}"
SECS="${QOE_DEMO_SECS:-60}"
RATE="${QOE_DEMO_RATE:-3000}"
log() { printf '[demo] %s\n' "$*" >&2; }

running() { [ -f "$STACK/run/$1.pid" ] && kill -0 "$(cat "$STACK/run/$1.pid")" 2>/dev/null; }

start_service() { # name args...
  local name="$1"; shift
  if running "$name"; then log "$name already running (pid $(cat "$STACK/run/$name.pid"))"; return; fi
  mkdir -p "$STACK/run" "$STACK/logs"
  nohup "$BIN/$name" "$@" >>"$STACK/logs/$name.log" 2>&1 &
  echo $! >"$STACK/run/$name.pid"
  log "started $name (pid $!, log .stack/logs/$name.log)"
}

wait_ok() { # url seconds
  local deadline=$((SECONDS + $2))
  until curl -fsS "$1" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { log "$1 not ready after $2 s; see .stack/logs"; exit 1; }
    sleep 0.5
  done
}

ch() { curl -fsS "$CH/?database=$DB" --data-binary "$1"; }

report() {
  echo
  echo "QoE by region x CDN (from ClickHouse table $DB.qoe_window_1m, all data so far)"
  ch "SELECT region, cdn,
        sum(attempts) AS view_attempts, sum(plays) AS view_plays,
        round(100 * sum(vsf) / greatest(sum(attempts), 1), 2) AS start_fail_pct,
        round(100 * sum(ebvs) / greatest(sum(attempts), 1), 2) AS ebvs_pct,
        round(100 * sum(stall_ms) / greatest(sum(playing_ms) + sum(stall_ms), 1), 2) AS rebuffer_pct,
        round(sum(startup_ms_sum) / greatest(sum(plays), 1)) AS avg_startup_ms,
        round(sum(bitrate_kbps_ms) / greatest(sum(playing_ms), 1)) AS avg_kbps,
        round((sum(playing_ms) + sum(stall_ms)) / 60000 / greatest(uniqExact(window_start), 1), 1) AS avg_viewers
      FROM qoe_window_1m GROUP BY region, cdn ORDER BY rebuffer_pct DESC FORMAT PrettyCompactMonoBlock"
  echo
  echo "Pipeline: events in windows, late and duplicate events, views"
  ch "SELECT sum(events) AS accepted_events, sum(late_events) AS late, sum(duplicate_events) AS duplicates,
        (SELECT count() FROM qoe_views) AS views FROM qoe_window_10s FORMAT PrettyCompactMonoBlock"
}

case "${1:-}" in
  start)
    log "building the services (release; the first build takes a few minutes)"
    (cd "$ROOT" && cargo build --release --workspace --bins)
    start_service aggregator run --clickhouse-database "$DB" --listen 127.0.0.1:9100
    # The demo's traffic all comes from 127.0.0.1, so the per-address limit is lifted here.
    start_service collector --listen 127.0.0.1:8080 --rate-per-ip 0
    wait_ok http://127.0.0.1:8080/readyz 60
    wait_ok http://127.0.0.1:9100/healthz 60
    log "sending ${SECS}s of simulated viewers at ${RATE} events/s to http://127.0.0.1:8080"
    "$BIN/loadgen" --url http://127.0.0.1:8080 --rate "$RATE" --duration-secs "$SECS" --connections 8
    log "letting the aggregator write its last batches"
    sleep 5
    report
    echo
    echo "The pipeline keeps running: collector http://127.0.0.1:8080 (POST /v1/beacons, /metrics),"
    echo "aggregator http://127.0.0.1:9100/metrics, ClickHouse $CH database $DB."
    echo "Grafana provisioning: dashboards/. Stop everything with: make stop"
    ;;
  report) report ;;
  stop)
    for name in collector aggregator; do
      if running "$name"; then
        pid="$(cat "$STACK/run/$name.pid")"
        log "stopping $name (pid $pid)"
        kill "$pid"
        for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      fi
      rm -f "$STACK/run/$name.pid"
    done
    ;;
  status)
    for name in collector aggregator; do
      if running "$name"; then echo "$name: running (pid $(cat "$STACK/run/$name.pid"))"; else echo "$name: stopped"; fi
    done
    ;;
  *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
