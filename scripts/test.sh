#!/usr/bin/env bash
# `make test`: sets up everything the tests need and runs every suite, sized for a 2-core
# machine. What it does, in order:
#
#   1. says what it will install (only what is missing);
#   2. in the background: rustfmt, the debug build of the binaries, of the tests, then clippy;
#      meanwhile in the foreground: the broker and ClickHouse (scripts/stack.sh), the ClickHouse
#      cluster (scripts/cluster.sh), chromium and the web players (scripts/players.sh), the
#      Python environment (scripts/python.sh);
#   3. the suites, concurrently, each as soon as what it needs is built: the web SDK (node's
#      test runner and the build check) and Python (pytest, its files side by side: schema,
#      dashboards, alert quality) once the binaries are, Rust (`cargo test`) once the tests and
#      clippy are. They share the servers, isolated by topic and database names; the tests that
#      stop a server run their own (tests/src/lib.rs `PrivateServer`). Then the cluster tests,
#      alone: they kill the cluster's servers (which the Python suite reads too; a lock file,
#      .stack/cluster/lock, keeps the two apart whatever the order);
#   4. one line that says what passed, or which suite failed and where its log is.
#
# Every suite's output goes to target/test-logs/<suite>.log; a failed suite's log is printed.
# Settings (environment): QOE_TEST_SUITES (rust,python,sdk,cluster: a subset runs only those).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STACK="${QOE_STACK_DIR:-$ROOT/.stack}"
LOGS="${CARGO_TARGET_DIR:-$ROOT/target}/test-logs"
SUITES="${QOE_TEST_SUITES:-rust,python,sdk,cluster}"
CARGO="${CARGO:-cargo}"
LOG_PREFIX=test RUN_DIR="$STACK/run" LOG_DIR="$LOGS"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
mkdir -p "$LOGS"
rm -f "$LOGS"/*.log "$LOGS/bins.ready"
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

# The binaries first: the Python suite, the longest, needs only them.
build() {
  $CARGO fmt --all -- --check
  $CARGO build --workspace --bins
  touch "$LOGS/bins.ready"
  $CARGO test --workspace --no-run
  $CARGO clippy --workspace --all-targets -- -D warnings
}

# Every Rust test but the cluster's: unit tests of every crate, and each end-to-end test binary.
suite_rust() {
  local args=() t
  for t in tests/tests/*.rs; do
    t="$(basename "$t" .rs)"
    [ "$t" = cluster ] || args+=(--test "$t")
  done
  $CARGO test --workspace --exclude qoe-tests --no-fail-fast &&
    $CARGO test -p qoe-tests --lib "${args[@]}" --no-fail-fast
}
# The cluster tests kill servers and stop ZooKeeper, and their `ON CLUSTER` statements wait for
# all four servers: on 2 cores they run alone, after the other suites.
suite_cluster() { $CARGO test -p qoe-tests --test cluster --no-fail-fast; }
suite_python() {
  "$STACK/venv/bin/python" -m pytest -q -p no:cacheprovider --durations=15 \
    -n 3 --dist loadfile tests/chdb tests/dashboards
}
suite_sdk() { (cd sdk/web && node --test test/ && node build.mjs --check); }

plan
log "rustfmt, build and clippy in the background (log: $LOGS/build.log)"
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

log "waiting for the build (rustfmt, binaries, tests, clippy)"
next=$((SECONDS + 20))
bins_started=0
while kill -0 "$build_pid" 2>/dev/null; do
  if [ $bins_started = 0 ] && [ -f "$LOGS/bins.ready" ]; then
    log "binaries built ($((SECONDS - started)) s since start)"
    start_suite sdk
    start_suite python
    bins_started=1
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
  log "FAILED: lint and build (log: $LOGS/build.log). Usual fixes: 'cargo fmt --all' for a format"
  log "difference; the clippy or compiler message above names the file and line"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  exit 1
fi
log "build and lint: done ($((SECONDS - started)) s since start)"
if [ $bins_started = 0 ]; then
  start_suite sdk
  start_suite python
fi
start_suite rust
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
  if ((pending == 0 && cluster_pending)) && wants cluster; then
    cluster_pending=0
    start_suite cluster
    pending=1
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
log "all suites passed (${names[*]}; lint included) in $((total / 60)) min $((total % 60)) s; logs in $LOGS/"
