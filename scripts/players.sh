#!/usr/bin/env bash
# What the real-player tests (tests/tests/players.rs), the web SDK's tests and the demo's player
# need: Debian's chromium and ffmpeg, Node.js with npm, the players and puppeteer-core pinned in
# tests/players/package-lock.json (puppeteer-core drives the system chromium; it never
# downloads a browser), the SDK's build tool pinned in sdk/web/package-lock.json, and the
# dashboard viewer's chart library pinned in dashboards/viewer/package-lock.json.
# Idempotent: installs only what is missing.
#   scripts/players.sh setup
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
STACK="${QOE_STACK_DIR:-$ROOT/.stack}"
LOG_PREFIX=players RUN_DIR="$STACK/run" LOG_DIR="$STACK/logs"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

setup() {
  local missing=()
  [[ -x /usr/bin/chromium ]] || missing+=(chromium)
  command -v ffmpeg >/dev/null || missing+=(ffmpeg)
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
  if ((${#missing[@]})); then
    log "installing ${missing[*]} from Debian's packages (a few minutes the first time)"
    apt_install "$LOG_DIR/apt.log" "${missing[@]}"
  fi
  local modules=tests/players/node_modules/.package-lock.json
  if [[ ! -f $modules || tests/players/package-lock.json -nt $modules ]]; then
    log "installing the pinned web players and puppeteer-core from npm (tests/players/package-lock.json)"
    STEP_HINT="check that registry.npmjs.org is reachable; rm -rf tests/players/node_modules and retry" \
      run_step "npm ci (tests/players)" "$LOG_DIR/npm.log" \
      bash -c "cd tests/players && npm ci --no-audit --no-fund --loglevel=error"
  fi
  modules=sdk/web/node_modules/.package-lock.json
  if [[ ! -f $modules || sdk/web/package-lock.json -nt $modules ]]; then
    log "installing the web SDK's pinned build tool from npm (sdk/web/package-lock.json)"
    STEP_HINT="check that registry.npmjs.org is reachable; rm -rf sdk/web/node_modules and retry" \
      run_step "npm ci (sdk/web)" "$LOG_DIR/npm.log" \
      bash -c "cd sdk/web && npm ci --no-audit --no-fund --loglevel=error"
  fi
  modules=dashboards/viewer/node_modules/.package-lock.json
  if [[ ! -f $modules || dashboards/viewer/package-lock.json -nt $modules ]]; then
    log "installing the dashboard viewer's pinned chart library from npm (dashboards/viewer/package-lock.json)"
    STEP_HINT="check that registry.npmjs.org is reachable; rm -rf dashboards/viewer/node_modules and retry" \
      run_step "npm ci (dashboards/viewer)" "$LOG_DIR/npm.log" \
      bash -c "cd dashboards/viewer && npm ci --no-audit --no-fund --loglevel=error"
  fi
  log "chromium $(/usr/bin/chromium --version 2>/dev/null | awk '{print $2}'), ffmpeg $(ffmpeg -version | awk 'NR==1{print $3}'), node $(node --version)"
}

case "${1:-setup}" in
  setup) setup ;;
  *) echo "usage: $0 setup" >&2; exit 2 ;;
esac
