#!/usr/bin/env bash
# `make test`: sets up everything the tests need and runs every suite, sized for a 2-core
# machine. What it does, in order:
#
#   1. says what it will install (only what is missing);
#   2. in the background: rustfmt, then one debug build of the binaries and the tests (one
#      build, so that crates are compiled once with the features of both); meanwhile in the
#      foreground: the broker and ClickHouse (scripts/stack.sh), the ClickHouse cluster
#      (scripts/cluster.sh), chromium and the web players (scripts/players.sh), the Python
#      environment (scripts/python.sh);
#   3. the suites, concurrently: Rust (`cargo test`, but the cluster tests), Python (pytest, its
#      files side by side: schema, dashboards, alert quality), the web SDK (node's test runner
#      and the build check) and lint (clippy, in its own target directory, target/clippy, so
#      that it does not wait for the build lock the Rust suite holds). They share the servers,
#      isolated by topic and database names; the tests that stop a server run their own
#      (tests/src/lib.rs `PrivateServer`). The cluster tests start when the Python suite is
#      done: they kill the cluster's servers and stop ZooKeeper, and their `ON CLUSTER`
#      statements starve beside the Python suite's simulated runs on 2 cores (a lock file,
#      .stack/cluster/lock, keeps them apart from its cluster check whatever the order);
#   4. one line that says what passed, or which suite failed and where its log is.
#
# Every suite's output goes to target/test-logs/<suite>.log; a failed suite's log is printed.
# Settings (environment): QOE_TEST_SUITES (rust,python,sdk,lint,cluster: a subset runs only those).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STACK="${QOE_STACK_DIR:-$ROOT/.stack}"
LOGS="${CARGO_TARGET_DIR:-$ROOT/target}/test-logs"
SUITES="${QOE_TEST_SUITES:-rust,python,sdk,lint,cluster}"
CARGO="${CARGO:-cargo}"
LOG_PREFIX=test RUN_DIR="$STACK/run" LOG_DIR="$LOGS"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
mkdir -p "$LOGS"
rm -f "$LOGS"/*.log
started=$SECONDS

wants() { [[ ",$SUITES," == *",$1,"* ]]; }

plan() {
  local missing=()
  command -v tansu >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/tansu" ] ||
    missing+=("the tansu Kafka-protocol broker (cargo install, 15-30 min)")
  command -v clickhouse-server >/dev/null 2>&1 || missing+=("clickhouse-server (Debian)")
  [ -f /usr/share/java/zookeeper.jar ] || missing+=("zookeeper (Debian)")
  [ -x /usr/bin/chromium ] || missing+=("chromium (Debian)")
  command -v ffmpeg >/dev/null 2>&1 || missing+=("ffmpeg (Debian)")
  [ -f tests/players/node_modules/.package-lock.json ] ||
    missing+=("web players + puppeteer-core (npm, tests/players)")
  [ -f sdk/web/node_modules/.package-lock.json ] || missing+=("the SDK's build tool (npm, sdk/web)")
  [ -x "$STACK/venv/bin/python" ] ||
    missing+=("a Python environment in .stack/venv (pytest, PyYAML, chdb-core, matplotlib from PyPI)")
  if ((${#missing[@]})); then
    log "will install:"
    local m
    for m in "${missing[@]}"; do log "  - $m"; done
  else
    log "everything the tests need is installed"
  fi
}

build() {
  $CARGO fmt --all -- --check
  $CARGO build --workspace --bins --tests
}

# Every Rust test but the cluster's (skipped by name, so that every cargo command selects the
# same packages and targets as the build, and nothing is compiled again).
CLUSTER_TESTS=(two_aggregators_on_the_cluster_equal_the_ground_truth
  replica_killed_and_zookeeper_stopped_lose_nothing
  aggregator_killed_while_a_replica_is_down_is_exact_after_restart)
suite_rust() {
  local skip=() t
  for t in "${CLUSTER_TESTS[@]}"; do skip+=(--skip "$t"); done
  $CARGO test --workspace --no-fail-fast -- "${skip[@]}"
}
# The cluster tests kill servers and stop ZooKeeper, and their `ON CLUSTER` statements wait for
# all four servers: on 2 cores they must not run beside the Python suite's simulated runs.
# The same cargo command with the names as filters: every other test binary runs nothing.
suite_cluster() { $CARGO test --workspace --no-fail-fast -- "${CLUSTER_TESTS[@]}"; }
suite_lint() { CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/clippy" $CARGO clippy --workspace --all-targets -- -D warnings; }
suite_python() {
  "$STACK/venv/bin/python" -m pytest -q -p no:cacheprovider --durations=15 \
    -n 3 --dist loadfile tests/chdb tests/dashboards
}
suite_sdk() { (cd sdk/web && node --test test/ && node build.mjs --check); }

plan
log "rustfmt and the build in the background (log: $LOGS/build.log)"
build >"$LOGS/build.log" 2>&1 &
build_pid=$!
trap 'kill $build_pid 2>/dev/null || true' EXIT

scripts/stack.sh start
scripts/cluster.sh start
scripts/players.sh setup
scripts/python.sh setup

pids=() names=()
start_suite() {
  wants "$1" || return 0
  log "suite $1 started (log: $LOGS/$1.log)"
  "suite_$1" >"$LOGS/$1.log" 2>&1 &
  pids+=($!) names+=("$1")
}

log "waiting for the build (rustfmt, binaries and tests)"
next=$((SECONDS + 20))
while kill -0 "$build_pid" 2>/dev/null; do
  if [ $SECONDS -ge $next ]; then
    log "  ... build: $(tail -n 1 "$LOGS/build.log" | cut -c1-100)"
    next=$((SECONDS + 20))
  fi
  sleep 1
done
trap - EXIT
if ! wait "$build_pid"; then
  tail -n 40 "$LOGS/build.log" | sed 's/^/    /' >&2
  log "FAILED: rustfmt or the build (log: $LOGS/build.log). Usual fixes: 'cargo fmt --all' for a"
  log "format difference; the compiler message above names the file and line"
  exit 1
fi
log "build: done ($((SECONDS - started)) s since start)"
start_suite rust
start_suite python
start_suite sdk
start_suite lint
cluster_pending=1

failed=()
declare -A done_at
pending=${#pids[@]}
next=$((SECONDS + 60))
while ((pending)); do
  for i in "${!pids[@]}"; do
    [ -z "${done_at[$i]:-}" ] || continue
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      if wait "${pids[$i]}"; then
        log "suite ${names[$i]} passed ($((SECONDS - started)) s since start)"
      else
        log "suite ${names[$i]} FAILED ($((SECONDS - started)) s since start)"
        failed+=("${names[$i]}")
      fi
      done_at[$i]=$SECONDS
      pending=$((pending - 1))
    fi
  done
  python_running=0
  for i in "${!pids[@]}"; do
    [ "${names[$i]}" = python ] && [ -z "${done_at[$i]:-}" ] && python_running=1
  done
  if ((cluster_pending && !python_running)) && wants cluster; then
    cluster_pending=0
    start_suite cluster
    pending=$((pending + 1))
  fi
  if ((pending)) && [ $SECONDS -ge $next ]; then
    running=()
    for i in "${!pids[@]}"; do [ -n "${done_at[$i]:-}" ] || running+=("${names[$i]}"); done
    log "  ... running: ${running[*]} ($((SECONDS - started)) s since start)"
    next=$((SECONDS + 60))
  fi
  sleep 1
done

for s in "${names[@]}"; do
  echo "===== $s ($LOGS/$s.log): summary"
  case "$s" in
    rust | cluster) grep -E "^test result:|FAILED|panicked" "$LOGS/$s.log" || true ;;
    *) tail -n 15 "$LOGS/$s.log" ;;
  esac
done
for s in "${failed[@]}"; do
  echo "===== $s FAILED: its whole log ($LOGS/$s.log)"
  cat "$LOGS/$s.log"
done

total=$((SECONDS - started))
if ((${#failed[@]})); then
  log "FAILED: ${failed[*]} after $((total / 60)) min $((total % 60)) s; logs in $LOGS/ (a server's own logs: .stack/logs, .stack/cluster/logs)"
  exit 1
fi
log "all suites passed (${names[*]}; rustfmt before the build) in $((total / 60)) min $((total % 60)) s; logs in $LOGS/"
