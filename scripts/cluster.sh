#!/usr/bin/env bash
# A local ClickHouse cluster on loopback: one ZooKeeper and four ClickHouse servers forming the
# cluster `qoe` of 2 shards x 2 replicas. Configs are generated; every data file, log and pid
# file lives under .stack/cluster/ in the repository.
#
#   scripts/cluster.sh install            install ZooKeeper (Debian package) and ClickHouse if missing
#   scripts/cluster.sh start              install if needed, start ZooKeeper and the 4 servers, wait until ready
#   scripts/cluster.sh stop               stop what this script started (by pid file)
#   scripts/cluster.sh status             say what runs, and the HTTP endpoint of every replica
#   scripts/cluster.sh urls               the aggregator's --clickhouse-shards value for this cluster
#   scripts/cluster.sh kill-replica N     kill -9 server N (1..4; shard = (N+1)/2)
#   scripts/cluster.sh start-replica N    start server N again
#   scripts/cluster.sh stop-zookeeper | start-zookeeper
#   scripts/cluster.sh heal               restart the servers if distributed DDL stalls on one
#
# Settings (environment): QOE_CLUSTER_NAME (qoe), QOE_CLUSTER_BASE_PORT (8200: server N serves
# HTTP on base+N, native on base+100+N, interserver on base+200+N), QOE_ZK_PORT (2181),
# QOE_STACK_DIR (<repo>/.stack).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="${QOE_STACK_DIR:-$ROOT/.stack}"
DIR="$STACK/cluster"
CLUSTER="${QOE_CLUSTER_NAME:-qoe}"
BASE="${QOE_CLUSTER_BASE_PORT:-8200}"
ZK_PORT="${QOE_ZK_PORT:-2181}"
SERVERS=(1 2 3 4)

LOG_PREFIX=cluster RUN_DIR="$DIR/run" LOG_DIR="$DIR/logs"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

http_port() { echo $((BASE + $1)); }
tcp_port() { echo $((BASE + 100 + $1)); }
interserver_port() { echo $((BASE + 200 + $1)); }
shard_of() { echo $((($1 + 1) / 2)); }

zk_classpath() {
  local jars=(/usr/share/java/zookeeper.jar /usr/share/java/slf4j-simple.jar)
  local cp="" jar
  for jar in "${jars[@]}"; do
    [ -f "$jar" ] || return 1
    cp="${cp:+$cp:}$jar"
  done
  # zookeeper.jar's manifest names the rest of its class path (jute, netty, metrics).
  echo "$cp"
}

install() {
  if ! zk_classpath >/dev/null || ! command -v java >/dev/null; then
    log "installing ZooKeeper from Debian's packages (with a Java runtime; a minute or two)"
    apt_install "$LOG_DIR/apt.log" zookeeper
  fi
  if ! command -v clickhouse-server >/dev/null 2>&1; then
    "$ROOT/scripts/stack.sh" install-clickhouse
  fi
}

# Serving, not merely up: while it loads its snapshot ZooKeeper answers `ruok` already, but
# refuses sessions, and a ClickHouse server that starts then gives up on its replicated tables.
zk_ready() { (exec 3<>"/dev/tcp/127.0.0.1/$ZK_PORT" && printf 'srvr' >&3 && timeout 2 cat <&3) 2>/dev/null | grep -q '^Mode:'; }

start_zookeeper() {
  mkdir -p "$DIR/zookeeper/data" "$DIR/logs" "$DIR/run"
  if is_running "$DIR/run/zookeeper.pid"; then
    log "zookeeper already running (pid $(cat "$DIR/run/zookeeper.pid"))"
    return
  fi
  port_open "$ZK_PORT" && die "port $ZK_PORT is taken by a process this script did not start"
  local cp; cp="$(zk_classpath)" || die "ZooKeeper is not installed; run: $0 install"
  cat >"$DIR/zookeeper/zoo.cfg" <<CFG
tickTime=2000
dataDir=$DIR/zookeeper/data
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
maxClientCnxns=200
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,stat,mntr
CFG
  log "starting zookeeper on 127.0.0.1:$ZK_PORT"
  nohup java -Xms64m -Xmx256m -cp "$cp" org.apache.zookeeper.server.quorum.QuorumPeerMain \
    "$DIR/zookeeper/zoo.cfg" >>"$DIR/logs/zookeeper.log" 2>&1 &
  echo $! >"$DIR/run/zookeeper.pid"
  wait_for "zookeeper" 60 zk_ready
}

remote_servers() {
  local shard replica n
  echo "<$CLUSTER>"
  for shard in 1 2; do
    echo "<shard><internal_replication>true</internal_replication>"
    for replica in 1 2; do
      n=$(((shard - 1) * 2 + replica))
      echo "<replica><host>127.0.0.1</host><port>$(tcp_port "$n")</port></replica>"
    done
    echo "</shard>"
  done
  echo "</$CLUSTER>"
}

write_config() { # N
  local n="$1" d="$DIR/ch$1"
  mkdir -p "$d/data" "$d/tmp" "$d/user_files" "$d/format_schemas" "$DIR/logs"
  cat >"$d/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>information</level>
        <log>$DIR/logs/ch$n.log</log>
        <errorlog>$DIR/logs/ch$n.err.log</errorlog>
        <size>50M</size>
        <count>2</count>
    </logger>
    <http_port>$(http_port "$n")</http_port>
    <tcp_port>$(tcp_port "$n")</tcp_port>
    <interserver_http_port>$(interserver_port "$n")</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <listen_host>127.0.0.1</listen_host>
    <max_connections>512</max_connections>
    <keep_alive_timeout>10</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>67108864</uncompressed_cache_size>
    <mark_cache_size>67108864</mark_cache_size>
    <path>$d/data/</path>
    <tmp_path>$d/tmp/</tmp_path>
    <user_files_path>$d/user_files/</user_files_path>
    <format_schema_path>$d/format_schemas/</format_schema_path>
    <users_config>$STACK/clickhouse/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
    <zookeeper>
        <node><host>127.0.0.1</host><port>$ZK_PORT</port></node>
        <session_timeout_ms>10000</session_timeout_ms>
    </zookeeper>
    <remote_servers>
$(remote_servers)
    </remote_servers>
    <macros>
        <cluster>$CLUSTER</cluster>
        <shard>$(shard_of "$n")</shard>
        <replica>ch$n</replica>
    </macros>
    <distributed_ddl>
        <path>/clickhouse/task_queue/ddl</path>
    </distributed_ddl>
</yandex>
XML
}

ch_ready() { [ "$(curl -fsS "http://127.0.0.1:$(http_port "$1")/ping" 2>/dev/null)" = "Ok." ]; }

start_replica() { # N
  local n="$1" pidfile="$DIR/run/ch$1.pid"
  if is_running "$pidfile"; then
    log "server $n already running (pid $(cat "$pidfile"))"
    return
  fi
  port_open "$(http_port "$n")" && die "port $(http_port "$n") is taken by a process this script did not start"
  command -v clickhouse-server >/dev/null || die "clickhouse-server is not installed; run: $0 install"
  # The users file is shared with the single server's (scripts/stack.sh writes it).
  [ -f "$STACK/clickhouse/users.xml" ] || "$ROOT/scripts/stack.sh" write-clickhouse-config
  write_config "$n"
  mkdir -p "$DIR/run"
  (
    cd "$DIR/ch$n"
    nohup clickhouse-server --config-file="$DIR/ch$n/config.xml" >>"$DIR/logs/ch$n.stdout.log" 2>&1 &
    echo $! >"$pidfile"
  )
}

start_all() {
  start_zookeeper
  local n
  for n in "${SERVERS[@]}"; do start_replica "$n"; done
  for n in "${SERVERS[@]}"; do wait_for "clickhouse server $n" 60 ch_ready "$n"; done
  log "cluster $CLUSTER ready: 2 shards x 2 replicas"
}

urls() {
  local shard replica sep="" out=""
  for shard in 1 2; do
    out="$out$sep"
    sep=";"
    for replica in 1 2; do
      [ "$replica" = 2 ] && out="$out,"
      out="${out}http://127.0.0.1:$(http_port $(((shard - 1) * 2 + replica)))"
    done
  done
  echo "$out"
}

status() {
  local n
  if is_running "$DIR/run/zookeeper.pid"; then
    echo "zookeeper: running (pid $(cat "$DIR/run/zookeeper.pid")) on 127.0.0.1:$ZK_PORT"
  else
    echo "zookeeper: stopped"
  fi
  for n in "${SERVERS[@]}"; do
    local state="stopped"
    is_running "$DIR/run/ch$n.pid" && state="running (pid $(cat "$DIR/run/ch$n.pid"))"
    echo "ch$n (shard $(shard_of "$n")): $state http://127.0.0.1:$(http_port "$n")"
  done
  echo "shards: $(urls)"
}

# Whether every server runs distributed DDL: ClickHouse 18.16's DDL worker can stop for good
# after a ZooKeeper outage (an "unexpected ZooKeeper error"), and `ON CLUSTER` statements then
# wait for that server until they time out.
ddl_ok() {
  local out
  out="$(curl -sS "http://127.0.0.1:$(http_port 1)/?distributed_ddl_task_timeout=30" \
    --data-binary "CREATE DATABASE IF NOT EXISTS qoe_ddl_probe ON CLUSTER $CLUSTER" 2>&1)" || return 1
  ! echo "$out" | grep -q "Exception"
}

# Restarts every server when distributed DDL does not run on all of them (see ddl_ok).
heal() {
  if ddl_ok; then
    log "distributed DDL runs on every server"
    return
  fi
  log "distributed DDL stalls on some server (ClickHouse 18.16 after a ZooKeeper outage): restarting the servers"
  local n
  for n in "${SERVERS[@]}"; do stop_one "ch$n"; done
  for n in "${SERVERS[@]}"; do start_replica "$n"; done
  for n in "${SERVERS[@]}"; do wait_for "clickhouse server $n" 60 ch_ready "$n"; done
  ddl_ok || die "distributed DDL still stalls after a restart of every server (logs: $LOG_DIR)"
  log "distributed DDL runs on every server again"
}

check_n() { [[ "${1:-}" =~ ^[1-4]$ ]] || die "server number must be 1..4"; }

case "${1:-}" in
  install) install ;;
  start) install; start_all; status ;;
  stop) for n in "${SERVERS[@]}"; do stop_one "ch$n"; done; stop_one zookeeper ;;
  status) status ;;
  urls) urls ;;
  kill-replica) check_n "${2:-}"; stop_one "ch$2" KILL ;;
  start-replica) check_n "${2:-}"; start_replica "$2"; wait_for "clickhouse server $2" 60 ch_ready "$2" ;;
  heal) heal ;;
  stop-zookeeper) stop_one zookeeper ;;
  start-zookeeper) start_zookeeper ;;
  *) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
