#!/usr/bin/env bash
# The main job on local defaults: builds the services, starts the pipeline against the stack
# of scripts/stack.sh (which must be running), plays simulated viewers through it with a CDN
# incident, and prints a QoE report read back from ClickHouse in which the incident slice
# stands out. The pipeline is left running; `make stop` stops it.
#
#   scripts/demo.sh start    build, start collector + aggregator, simulate, print the report
#   scripts/demo.sh report   print the report again (for the last simulated run)
#   scripts/demo.sh stop     stop the services it started
#   scripts/demo.sh status   what runs
#
# After the simulation, one real hls.js player in headless Chromium watches a local live stream
# for QOE_DEMO_PLAYER_SECONDS (40) and reports CMCD v2; its view is in the report.
#
# Settings (environment): QOE_DEMO_DURATION (simulated viewing, 20m), QOE_DEMO_SPEED (time
# compression, 10: 20 minutes in 2), QOE_DEMO_VIEWERS (concurrent viewers, 2000),
# QOE_DEMO_SEED (1), QOE_DEMO_NATIVE_SHARE (share of Android and iOS viewers that are native apps
# seen only in their CDN's logs, 0.3), QOE_DEMO_INCIDENT (the injected regression, see below), QOE_DEMO_KEEP
# (1: keep the data of earlier runs; by default each run starts from an empty topic and database,
# because a new run's simulated time overlaps the last one's and would arrive late),
# QOE_DEMO_CLUSTER (1: write to the local ClickHouse cluster of scripts/cluster.sh, which must
# be running, and read the report through its Distributed tables in <database>_all),
# QOE_VIEWER_LISTEN (the dashboard viewer's address, 127.0.0.1:3000).
#
# At the end the dashboard viewer (dashboards/viewer) serves the dashboards on the run's data;
# its URLs are printed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="${QOE_STACK_DIR:-$ROOT/.stack}"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
DB="${QOE_CLICKHOUSE_DATABASE:-qoe}"
CH="http://127.0.0.1:${QOE_CH_HTTP_PORT:-8123}"
CLUSTER_ARGS=()
READ_DB="$DB"
if [ "${QOE_DEMO_CLUSTER:-0}" = 1 ]; then
  SHARDS="$("$ROOT/scripts/cluster.sh" urls)"
  CH="${SHARDS%%,*}"
  READ_DB="${DB}_all"
  CLUSTER_ARGS=(--clickhouse-cluster "${QOE_CLUSTER_NAME:-qoe}" --clickhouse-shards "$SHARDS")
fi
DURATION="${QOE_DEMO_DURATION:-20m}"
SPEED="${QOE_DEMO_SPEED:-10}"
VIEWERS="${QOE_DEMO_VIEWERS:-2000}"
SEED="${QOE_DEMO_SEED:-1}"
# The simulated service refuses some starts on purpose (entitlement, geo-block, concurrent
# streams): the aggregator and the simulator's ground truth count these codes apart.
export QOE_BUSINESS_ERROR_CODES="${QOE_BUSINESS_ERROR_CODES:-ENTITLEMENT_DENIED,GEO_BLOCKED,CONCURRENT_STREAM_LIMIT}"
INCIDENT="${QOE_DEMO_INCIDENT:-region=eu-west,cdn=cdn-b,start=8m,duration=4m,stalls=6,stall_length=3,startup=3,start_failures=0.3}"
RANGE_FILE="$STACK/run/demo-range"
VIEWER_LISTEN="${QOE_VIEWER_LISTEN:-127.0.0.1:3000}"
# The project's Python environment (scripts/python.sh): the report's SQL generator needs PyYAML.
PYTHON="$STACK/venv/bin/python"
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

ch() { curl -fsS "$CH/?database=$READ_DB&output_format_pretty_color=0" --data-binary "$1"; }

# Seconds of a duration like 90s, 20m, 2h.
secs() {
  case "$1" in
    *h) echo $(( ${1%h} * 3600 )) ;; *m) echo $(( ${1%m} * 60 )) ;; *s) echo "${1%s}" ;; *) echo "$1" ;;
  esac
}

# One table of the report: the SQL comes from the dashboards' generator, so the report's KPIs
# are the dashboards' formulas over the metric catalogue's columns.
report_table() { # name from to
  ch "$("$PYTHON" "$ROOT/dashboards/generate.py" --report-sql "$1" "$2" "$3") FORMAT PrettyCompactMonoBlock"
}

report() {
  local from=0 to=4294967295
  [ -f "$RANGE_FILE" ] && read -r from to <"$RANGE_FILE"
  local where="window_start >= toDateTime($from) AND window_start < toDateTime($to)"
  echo
  echo "QoE by region x CDN, worst experience score first (0-100, README \"Experience score\"; ClickHouse $READ_DB.qoe_window_1m, simulated run)"
  report_table slices "$from" "$to"
  echo
  echo "Worst slice-minutes (at least 50 minutes of viewing, so a ratio means something): when it happened"
  report_table minutes "$from" "$to"
  echo
  echo "Top error codes of the worst slice (share of its attempts; business errors apart: README \"Errors by code\")"
  report_table codes "$from" "$to"
  echo
  echo "Real player: hls.js in headless Chromium, reporting CMCD v2 to POST /v1/cmcd (its own view)"
  ch "SELECT view_id, player, protocol, cdn, score, started, startup_ms, round(playing_ms / 1000, 1) AS playing_s,
        stalls, round(stall_ms / 1000, 1) AS stall_s, round(avg_bitrate_kbps) AS kbps, end_reason
      FROM qoe_views WHERE view_id LIKE 'demo-%' ORDER BY start_time FORMAT PrettyCompactMonoBlock"
  echo
  echo "Native apps (Media3, AVPlayer) seen only in their CDN's logs (request mode, README \"Request mode\"), beside the beacon figures of the same CDN"
  ch "SELECT cdn, logged_requests, sessions, log_error_pct, starved_per_100_media, log_kbps, resent_lines,
        beacon_rebuffer_pct, beacon_kbps
      FROM (SELECT cdn, sum(rm_requests) AS logged_requests,
          round(100 * sum(rm_request_errors) / greatest(sum(rm_requests), 1), 2) AS log_error_pct,
          round(100 * sum(rm_starvations) / greatest(sum(rm_media_requests), 1), 2) AS starved_per_100_media,
          round(sum(rm_bitrate_kbps_ms) / greatest(sum(rm_media_ms), 1)) AS log_kbps,
          sum(rm_duplicate_requests) AS resent_lines,
          round(100 * sum(stall_ms) / greatest(sum(playing_ms) + sum(stall_ms), 1), 2) AS beacon_rebuffer_pct,
          round(sum(bitrate_kbps_ms) / greatest(sum(playing_ms), 1)) AS beacon_kbps
        FROM qoe_window_10s WHERE $where GROUP BY cdn HAVING sum(rm_requests) > 0)
      ANY LEFT JOIN (SELECT cdn, uniqExactMerge(sessions) AS sessions
        FROM qoe_request_sessions_10s WHERE $where GROUP BY cdn) USING cdn
      ORDER BY cdn FORMAT PrettyCompactMonoBlock"
  echo
  echo "Pipeline: counted, late and duplicate events; views summarised"
  ch "SELECT sum(events) AS counted_events, sum(late_events) AS late, sum(duplicate_events) AS duplicates,
        (SELECT count() FROM qoe_views) AS views FROM qoe_window_10s WHERE $where
      FORMAT PrettyCompactMonoBlock"
}

case "${1:-}" in
  start)
    log "building the services (release; the first build takes a few minutes)"
    (cd "$ROOT" && cargo build --release --workspace --bins)
    if [ "${QOE_DEMO_KEEP:-0}" != 1 ]; then
      log "starting from a clean slate: topic recreated, database $DB emptied (QOE_DEMO_KEEP=1 keeps them)"
      "$0" stop
      "$ROOT/scripts/stack.sh" delete-topic "${QOE_TOPIC:-qoe.events}"
      "$ROOT/scripts/stack.sh" create-topic "${QOE_TOPIC:-qoe.events}"
      # Not through ch(): a query naming a database that does not exist yet is refused.
      if [ "${QOE_DEMO_CLUSTER:-0}" = 1 ]; then
        for d in "$DB" "${DB}_all"; do
          curl -fsS "$CH/" --data-binary "DROP DATABASE IF EXISTS $d ON CLUSTER ${QOE_CLUSTER_NAME:-qoe}" >/dev/null
        done
      else
        curl -fsS "$CH/" --data-binary "DROP DATABASE IF EXISTS $DB" >/dev/null
      fi
    fi
    # With QOE_DEMO_KEEP=1 after a broker that lost its topic (QOE_KAFKA_STORAGE=memory and a
    # restart), the checkpoints of the previous topic are stale: the demo lets the aggregator
    # start over.
    start_service aggregator run --clickhouse-database "$DB" --listen 127.0.0.1:9100 --reset-stale-checkpoints \
      ${CLUSTER_ARGS[@]+"${CLUSTER_ARGS[@]}"}
    # The demo's traffic all comes from 127.0.0.1, so the per-address limits are lifted here.
    start_service collector --listen 127.0.0.1:8080 --admin-listen 127.0.0.1:9464 \
      --rate-per-ip 0 --rate-events-per-ip 0 --cdn-host 127.0.0.1=local-origin
    wait_ok http://127.0.0.1:9464/readyz 60
    wait_ok http://127.0.0.1:9100/healthz 60
    span=$(secs "$DURATION")
    wall=$(awk -v s="$span" -v x="$SPEED" 'BEGIN { printf "%d", (x > 0 ? s / x : 0) }')
    now_ms=$(date +%s%3N)
    start_ms=$(( now_ms + wall * 1000 - span * 1000 ))
    echo "$(( start_ms / 1000 / 60 * 60 )) $(( (start_ms / 1000 + span) / 60 * 60 + 60 ))" >"$RANGE_FILE"
    log "simulating $DURATION of viewing by $VIEWERS concurrent viewers in about ${wall}s, with an incident:"
    log "  $INCIDENT"
    "$BIN/simulator" --url http://127.0.0.1:8080 --seed "$SEED" --viewers "$VIEWERS" \
      --duration "$DURATION" --speed "$SPEED" --start-ms "$start_ms" --incident "$INCIDENT" \
      --business-refusal-rate 0.006 --native-share "${QOE_DEMO_NATIVE_SHARE:-0.3}"
    # Then one real viewer: hls.js in headless Chromium plays a local live stream and reports
    # CMCD v2. It plays after the simulation, not during it: simulated time runs 10x and
    # starts in the past, and a real player's wall-clock reports would move its partition's
    # watermark ahead of the simulated events and make them late.
    log "a real viewer: hls.js in headless Chromium plays a local live stream for ${QOE_DEMO_PLAYER_SECONDS:-40}s (CMCD v2)"
    "$ROOT/tests/players/content.sh" "$STACK/players-content"
    DEMO_SECONDS="${QOE_DEMO_PLAYER_SECONDS:-40}" node "$ROOT/tests/players/run.mjs" --only demo \
      --collector http://127.0.0.1:8080 --content "$STACK/players-content" --out "$STACK/run/demo-player.json" >&2 \
      || log "the real player did not run (see $STACK/run/demo-player.json); the simulated report follows"
    log "waiting for the aggregator to write its last batches"
    last=-1
    for _ in $(seq 1 60); do
      now=$(ch "SELECT sum(events) + sum(duplicate_events) + sum(late_events) + sum(rm_requests) + sum(rm_duplicate_requests) FROM qoe_window_10s" || echo 0)
      [ "$now" = "$last" ] && break
      last="$now"; sleep 2
    done
    report
    # The dashboards, drawn: the viewer reads the same files Grafana would load.
    if ! running viewer; then
      nohup "$PYTHON" "$ROOT/dashboards/viewer/server.py" --listen "$VIEWER_LISTEN" \
        --clickhouse-url "$CH" --clickhouse-database "$READ_DB" >>"$STACK/logs/viewer.log" 2>&1 &
      echo $! >"$STACK/run/viewer.pid"
      log "started the dashboard viewer (pid $!, log .stack/logs/viewer.log)"
    fi
    wait_ok "http://$VIEWER_LISTEN/healthz" 30
    read -r from to <"$RANGE_FILE"
    echo
    echo "Dashboards (open in a browser):   http://$VIEWER_LISTEN/d/qoe-overview?from=$from&to=$to"
    echo "  the incident slice:             http://$VIEWER_LISTEN/d/qoe-region-cdn?from=$from&to=$to"
    # The alerts page at two minutes past the incident's end, when its rules have fired (they
    # look at complete minutes and wait out a pending period); without an incident, the run's end.
    at="$to"
    inc_start=$(sed -n 's/^\(.*,\)\{0,1\}start=\([0-9]*[smh]\{0,1\}\)\(,.*\)\{0,1\}$/\2/p' <<<"$INCIDENT")
    inc_len=$(sed -n 's/^\(.*,\)\{0,1\}duration=\([0-9]*[smh]\{0,1\}\)\(,.*\)\{0,1\}$/\2/p' <<<"$INCIDENT")
    if [ -n "$inc_start" ] && [ -n "$inc_len" ]; then
      at=$(( from + $(secs "$inc_start") + $(secs "$inc_len") + 120 ))
      [ "$at" -le "$to" ] || at="$to"
    fi
    echo "  alert rules after the incident: http://$VIEWER_LISTEN/alerts?at=$at"
    echo
    echo "The pipeline keeps running: collector http://127.0.0.1:8080 (POST /v1/beacons; admin: /readyz, /metrics on :9464),"
    echo "aggregator http://127.0.0.1:9100/metrics, ClickHouse $CH database $READ_DB, viewer http://$VIEWER_LISTEN."
    echo "Grafana: provisioning in dashboards/ (see dashboards/README.md); point the ClickHouse data"
    echo "source at $CH, database $READ_DB, user default, no password."
    echo "Report again: scripts/demo.sh report. Stop everything: make stop"
    ;;
  report) report ;;
  stop)
    for name in viewer collector aggregator; do
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
    for name in collector aggregator viewer; do
      if running "$name"; then echo "$name: running (pid $(cat "$STACK/run/$name.pid"))"; else echo "$name: stopped"; fi
    done
    ;;
  *) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
