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
