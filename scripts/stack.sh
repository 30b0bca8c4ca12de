#!/usr/bin/env bash
# Local development stack: a Kafka-protocol broker (tansu) and a ClickHouse server, both on
# loopback, with every data file, log and pid file under .stack/ in the repository.
#
#   scripts/stack.sh install   install what is missing (idempotent)
#   scripts/stack.sh start     install if needed, start both, wait until ready, create the topic
#   scripts/stack.sh stop      stop what this script started (by pid file)
#   scripts/stack.sh status    say what runs
#   scripts/stack.sh restart-kafka | stop-kafka | kill-kafka | start-kafka
#   scripts/stack.sh stop-clickhouse | start-clickhouse
#   scripts/stack.sh create-topic NAME [PARTITIONS] | delete-topic NAME
#
# The broker keeps its data in memory by default: a stop or crash loses every message, and
# topics are created again at start. QOE_KAFKA_STORAGE=sqlite keeps it on disk
# (.stack/kafka/tansu.db), with topics keeping a message for QOE_KAFKA_RETENTION_HOURS (24) to
# bound the disk use; but tansu 0.6.0's SQLite engine stops serving (a panic in its storage
# task) when the collector's idempotent producer resumes after a broker restart, so it is not
# the default (README, "Durability").
#
# Settings (environment): QOE_KAFKA_PORT (9092), QOE_CH_HTTP_PORT (8123), QOE_CH_TCP_PORT (9000),
# QOE_TOPIC (qoe.events), QOE_TOPIC_PARTITIONS (6), QOE_KAFKA_STORAGE (memory | sqlite),
# QOE_KAFKA_RETENTION_HOURS (24), QOE_STACK_DIR (<repo>/.stack), TANSU_VERSION (0.6.0).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="${QOE_STACK_DIR:-$ROOT/.stack}"
KAFKA_PORT="${QOE_KAFKA_PORT:-9092}"
CH_HTTP_PORT="${QOE_CH_HTTP_PORT:-8123}"
CH_TCP_PORT="${QOE_CH_TCP_PORT:-9000}"
TOPIC="${QOE_TOPIC:-qoe.events}"
PARTITIONS="${QOE_TOPIC_PARTITIONS:-6}"
TANSU_VERSION="${TANSU_VERSION:-0.6.0}"
KAFKA_STORAGE="${QOE_KAFKA_STORAGE:-memory}"
RETENTION_HOURS="${QOE_KAFKA_RETENTION_HOURS:-24}"
BROKER="tcp://127.0.0.1:${KAFKA_PORT}"

LOG_PREFIX=stack RUN_DIR="$STACK/run" LOG_DIR="$STACK/logs"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

tansu_bin() {
  if command -v tansu >/dev/null 2>&1; then command -v tansu; return; fi
  if [ -x "$HOME/.cargo/bin/tansu" ]; then echo "$HOME/.cargo/bin/tansu"; return; fi
  return 1
}

install_tansu() {
  if bin="$(tansu_bin)" && "$bin" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    return
  fi
  log "building the tansu broker $TANSU_VERSION from crates.io into ~/.cargo/bin (15-30 minutes on 2 cores, once)"
  STEP_HINT="check that crates.io is reachable and the disk has 3 GB free, then run: $0 install" \
    run_step "cargo install tansu" "$STACK/logs/tansu-build.log" \
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
}

install_clickhouse() {
  if command -v clickhouse-server >/dev/null 2>&1; then return; fi
  log "installing clickhouse-server and clickhouse-client from Debian's packages (a minute or two)"
  apt_install "$STACK/logs/apt.log" clickhouse-server clickhouse-client
}

start_kafka() {
  mkdir -p "$STACK/logs" "$STACK/run"
  if is_running "$STACK/run/tansu.pid"; then
    log "kafka already running (pid $(cat "$STACK/run/tansu.pid"))"
  else
    port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by a process this script did not start"
    local bin; bin="$(tansu_bin)" || die "tansu is not installed; run: $0 install"
    local engine note=""
    case "$KAFKA_STORAGE" in
      # The SQLite path is taken relative to the broker's working directory.
      sqlite) engine="sqlite://tansu.db" note=" in $STACK/kafka" ;;
      memory) engine="memory://tansu/" note=": nothing survives a stop" ;;
      *) die "QOE_KAFKA_STORAGE must be sqlite or memory, not $KAFKA_STORAGE" ;;
    esac
    mkdir -p "$STACK/kafka"
    log "starting kafka (tansu, $KAFKA_STORAGE storage$note) on 127.0.0.1:$KAFKA_PORT"
    # Background the broker itself (not a subshell around it), so the pid file names it.
    (
      cd "$STACK/kafka"
      nohup "$bin" broker \
        --listener-url "$BROKER" --advertised-listener-url "$BROKER" \
        --storage-engine "$engine" >>"$STACK/logs/tansu.log" 2>&1 &
      echo $! >"$STACK/run/tansu.pid"
    )
    wait_for "kafka" 60 port_open "$KAFKA_PORT"
  fi
  create_topic
}

create_topic() { # [name [partitions]]
  local bin; bin="$(tansu_bin)"
  local topic="${1:-$TOPIC}" partitions="${2:-$PARTITIONS}"
  # Created at every start (the memory engine forgets topics); "already exists" is fine.
  local out
  if out="$("$bin" topic create "$topic" --broker "$BROKER" --partitions "$partitions" \
    --config cleanup.policy=delete --config "retention.ms=$((RETENTION_HOURS * 3600000))" 2>&1)"; then
    log "topic $topic ready ($partitions partitions)"
  elif echo "$out" | grep -qi "exist"; then
    log "topic $topic already exists"
  else
    die "creating topic $topic failed: $out"
  fi
}

delete_topic() { # name
  local bin; bin="$(tansu_bin)"
  local out
  if out="$("$bin" topic delete "$1" --broker "$BROKER" 2>&1)"; then
    log "topic $1 deleted"
  elif echo "$out" | grep -qi "unknown\|does not host"; then
    log "topic $1 did not exist"
  else
    die "deleting topic $1 failed: $out"
  fi
}

write_clickhouse_config() {
  local dir="$STACK/clickhouse"
  mkdir -p "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas" "$STACK/logs"
  cat >"$dir/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>information</level>
        <log>$STACK/logs/clickhouse-server.log</log>
        <errorlog>$STACK/logs/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>3</count>
    </logger>
    <http_port>$CH_HTTP_PORT</http_port>
    <tcp_port>$CH_TCP_PORT</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <max_connections>1024</max_connections>
    <keep_alive_timeout>10</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <path>$dir/data/</path>
    <tmp_path>$dir/tmp/</tmp_path>
    <user_files_path>$dir/user_files/</user_files_path>
    <format_schema_path>$dir/format_schemas/</format_schema_path>
    <users_config>$dir/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
</yandex>
XML
  cat >"$dir/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <load_balancing>random</load_balancing>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
      <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
    </interval></default></quotas>
</yandex>
XML
}

ch_ready() { [ "$(curl -fsS "http://127.0.0.1:$CH_HTTP_PORT/ping" 2>/dev/null)" = "Ok." ]; }

start_clickhouse() {
  if is_running "$STACK/run/clickhouse.pid"; then
    log "clickhouse already running (pid $(cat "$STACK/run/clickhouse.pid"))"
    return
  fi
  port_open "$CH_HTTP_PORT" && die "port $CH_HTTP_PORT is taken by a process this script did not start"
  command -v clickhouse-server >/dev/null || die "clickhouse-server is not installed; run: $0 install"
  write_clickhouse_config
  mkdir -p "$STACK/run"
  log "starting clickhouse on 127.0.0.1:$CH_HTTP_PORT (http) and :$CH_TCP_PORT (native)"
  # Background the server itself (not a subshell around it), so the pid file names the server.
  (
    cd "$STACK/clickhouse"
    nohup clickhouse-server --config-file="$STACK/clickhouse/config.xml" \
      >>"$STACK/logs/clickhouse-stdout.log" 2>&1 &
    echo $! >"$STACK/run/clickhouse.pid"
  )
  wait_for "clickhouse" 60 ch_ready
  log "clickhouse ready: $(curl -fsS "http://127.0.0.1:$CH_HTTP_PORT/?query=SELECT%20version()")"
}

status() {
  for name in tansu clickhouse; do
    if is_running "$STACK/run/$name.pid"; then
      echo "$name: running (pid $(cat "$STACK/run/$name.pid"))"
    else
      echo "$name: stopped"
    fi
  done
  echo "kafka:      127.0.0.1:$KAFKA_PORT topic $TOPIC"
  echo "clickhouse: http://127.0.0.1:$CH_HTTP_PORT"
}

case "${1:-}" in
  install) install_tansu; install_clickhouse ;;
  start) install_tansu; install_clickhouse; start_kafka; start_clickhouse; status ;;
  stop) stop_one tansu; stop_one clickhouse ;;
  status) status ;;
  start-kafka) start_kafka ;;
  stop-kafka) stop_one tansu ;;
  kill-kafka) stop_one tansu KILL ;;
  restart-kafka) stop_one tansu; start_kafka ;;
  create-topic) create_topic "${2:?topic name}" "${3:-$PARTITIONS}" ;;
  delete-topic) delete_topic "${2:?topic name}" ;;
  start-clickhouse) start_clickhouse ;;
  install-clickhouse) install_clickhouse ;;
  write-clickhouse-config) write_clickhouse_config ;;
  stop-clickhouse) stop_one clickhouse ;;
  *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
