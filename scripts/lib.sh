# Helpers shared by scripts/stack.sh and scripts/cluster.sh (sourced, not run). The caller sets
# LOG_PREFIX (the tag of its messages), RUN_DIR (its pid files) and LOG_DIR (its logs).

log() { printf '[%s] %s\n' "$LOG_PREFIX" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$LOG_PREFIX" "$*" >&2; exit 1; }

is_running() { # pidfile
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # what seconds command...
  local what="$1" secs="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    [ $SECONDS -lt $deadline ] || die "$what did not become ready within ${secs}s (logs: $LOG_DIR)"
    sleep 0.3
  done
}

stop_one() { # name [signal]: the process of $RUN_DIR/name.pid, TERM (or signal) then KILL after 30 s
  local pidfile="$RUN_DIR/$1.pid"
  if is_running "$pidfile"; then
    local pid; pid="$(cat "$pidfile")"
    log "stopping $1 (pid $pid${2:+, SIG$2})"
    kill "-${2:-TERM}" "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# run_step NAME LOGFILE COMMAND...: runs a long step with its output in LOGFILE, printing a
# progress line every 20 s (elapsed time and the log's last line) so a slow build or download
# is visibly alive; on failure names the step, the log and its last lines, and the usual fix
# when the caller set STEP_HINT.
run_step() {
  local name="$1" logfile="$2"; shift 2
  mkdir -p "$(dirname "$logfile")"
  local start=$SECONDS
  "$@" >>"$logfile" 2>&1 &
  local pid=$! next=$((SECONDS + 20))
  while kill -0 "$pid" 2>/dev/null; do
    if [ $SECONDS -ge $next ]; then
      local last; last="$(tail -n 1 "$logfile" 2>/dev/null | tr -d '\r' | cut -c1-100)"
      log "  ... $name: $((SECONDS - start)) s${last:+ ($last)}"
      next=$((SECONDS + 20))
    fi
    sleep 1
  done
  if ! wait "$pid"; then
    printf '[%s] FAILED: %s (after %d s); its log: %s\n' "$LOG_PREFIX" "$name" "$((SECONDS - start))" "$logfile" >&2
    tail -n 15 "$logfile" | sed 's/^/    /' >&2
    [ -z "${STEP_HINT:-}" ] || printf '[%s] usual fix: %s\n' "$LOG_PREFIX" "$STEP_HINT" >&2
    exit 1
  fi
  log "$name: done in $((SECONDS - start)) s"
}

# apt_install LOGFILE PACKAGE...: Debian packages, with progress and a named failure.
apt_install() {
  local logfile="$1"; shift
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  STEP_HINT="check the network and that apt-get works (sudo apt-get update), then run the command again" \
    run_step "apt-get install $*" "$logfile" \
    bash -c "$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $*"
}
