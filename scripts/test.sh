#!/usr/bin/env bash
# `make test`: sets up everything the tests need and runs every suite, sized for a 2-core
# machine. What it does, in order:
#
#   1. says what it will install (only what is missing);
#   2. in the background: rustfmt, then one debug build of the binaries and the tests (one
#      build, so that crates are compiled once with the features of both), then clippy (same
#      target directory: it reuses the build scripts, librdkafka's among them); meanwhile in the
#      foreground: the broker and ClickHouse (scripts/stack.sh), the ClickHouse cluster
#      (scripts/cluster.sh), chromium and the web players (scripts/players.sh), the Python
#      environment (scripts/python.sh);
#   3. the suites, concurrently: Python (pytest, its files side by side: layout, schema, dashboards,
#      alert quality) and the web SDK (node's test runner and the build check) as soon as the
#      build is done, Rust (`cargo test`) once clippy is too, and beside it a metric added in a
#      scratch copy of the tree (tests/add-metric/run.sh). They share the servers, isolated
#      by topic and database names; the tests that stop a server run their own
#      (tests/src/lib.rs `PrivateServer`). The Rust suite ends with the cluster tests, once the
#      Python suite is done too: they kill the cluster's servers and stop ZooKeeper, and their
#      `ON CLUSTER` statements starve beside the Python suite's simulated runs on 2 cores (a
#      lock file, .stack/cluster/lock, keeps them apart from its cluster check whatever the
#      order);
#   4. one line that says what passed, or which suite failed and where its log is.
#
# Every suite's output goes to target/test-logs/<suite>.log; a failed suite's log is printed.
# Settings (environment): QOE_TEST_SUITES (rust,python,sdk,metric,cluster: a subset runs only
# those; cluster is the end of the rust suite; metric adds a metric in a scratch copy).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STACK="${QOE_STACK_DIR:-$ROOT/.stack}"
LOGS="${CARGO_TARGET_DIR:-$ROOT/target}/test-logs"
SUITES="${QOE_TEST_SUITES:-rust,python,sdk,metric,cluster}"
CARGO="${CARGO:-cargo}"
LOG_PREFIX=test RUN_DIR="$STACK/run" LOG_DIR="$LOGS"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
mkdir -p "$LOGS"
rm -f "$LOGS"/*.log "$LOGS/build.ready" "$LOGS/python.done"
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
  [ -f dashboards/viewer/node_modules/.package-lock.json ] ||
    missing+=("the dashboard viewer's chart library (npm, dashboards/viewer)")
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
  touch "$LOGS/build.ready"
  $CARGO clippy --workspace --all-targets -- -D warnings
}

# Every Rust test but the cluster's (skipped by name, so that every cargo command selects the
# same packages and targets as the build, and nothing is compiled again).
CLUSTER_TESTS=(two_aggregators_on_the_cluster_equal_the_ground_truth
  replica_killed_and_zookeeper_stopped_lose_nothing
  aggregator_killed_while_a_replica_is_down_is_exact_after_restart)
# Then the cluster tests, once the Python suite is done (see above), by the same cargo command
# with their names as filters (every other test binary runs nothing). In one suite, so that
# the two cargo commands never wait for each other's build lock.
suite_rust() {
  local skip=() t rc=0
  for t in "${CLUSTER_TESTS[@]}"; do skip+=(--skip "$t"); done
  $CARGO test --workspace --no-fail-fast -- "${skip[@]}" || rc=1
  if wants cluster; then
    while wants python && [ ! -f "$LOGS/python.done" ]; do sleep 2; done
    echo "===== the cluster tests"
    $CARGO test --workspace --no-fail-fast -- "${CLUSTER_TESTS[@]}" || rc=1
  fi
  return $rc
}
suite_python() {
  local rc=0
  "$STACK/venv/bin/python" -m pytest -q -p no:cacheprovider --durations=15 \
    -n 2 --dist loadfile tests/layout tests/chdb tests/dashboards || rc=1
  touch "$LOGS/python.done"
  return $rc
}
suite_sdk() { (cd sdk/web && node --test test/ && node build.mjs --check); }
# Adding a metric in a scratch copy (tests/add-metric/run.sh). It shares the target directory,
# so it starts once the Rust suite's cargo is past its build check and running tests (cargo
# locks the directory while it builds).
suite_metric() {
  if wants rust; then
    until grep -q "Running " "$LOGS/rust.log" 2>/dev/null; do sleep 2; done
  fi
  CARGO="$CARGO" PYTHON="$STACK/venv/bin/python" tests/add-metric/run.sh
}

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

log "waiting for the build (rustfmt, binaries and tests, clippy)"
next=$((SECONDS + 20))
early=0
while kill -0 "$build_pid" 2>/dev/null; do
  if [ $early = 0 ] && [ -f "$LOGS/build.ready" ]; then
    log "binaries and tests built ($((SECONDS - started)) s since start); clippy follows"
    start_suite python
    start_suite sdk
    early=1
  fi
  if [ $SECONDS -ge $next ]; then
    log "  ... build: $(tail -n 1 "$LOGS/build.log" | cut -c1-100)"
    next=$((SECONDS + 20))
  fi
  sleep 1
done
trap - EXIT
if ! wait "$build_pid"; then
  tail -n 40 "$LOGS/build.log" | sed 's/^/    /' >&2
  log "FAILED: rustfmt, the build or clippy (log: $LOGS/build.log). Usual fixes: 'cargo fmt --all'"
  log "for a format difference; the compiler or clippy message above names the file and line"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  exit 1
fi
log "build and clippy: done ($((SECONDS - started)) s since start)"
if [ $early = 0 ]; then
  start_suite python
  start_suite sdk
fi
start_suite rust
start_suite metric

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
    rust) grep -E "^test result:|FAILED|panicked" "$LOGS/$s.log" || true ;;
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
log "all suites passed (${names[*]}; rustfmt and clippy with the build) in $((total / 60)) min $((total % 60)) s; logs in $LOGS/"
