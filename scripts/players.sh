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

# `npm ci` in DIR when its node_modules are missing or older than its lock file.
npm_ci() { # dir what
  local dir=$1 what=$2 modules=$1/node_modules/.package-lock.json
  if [[ ! -f $modules || $dir/package-lock.json -nt $modules ]]; then
    log "installing $what from npm ($dir/package-lock.json)"
    STEP_HINT="check that registry.npmjs.org is reachable; rm -rf $dir/node_modules and retry" \
      run_step "npm ci ($dir)" "$LOG_DIR/npm.log" \
      bash -c "cd $dir && npm ci --no-audit --no-fund --loglevel=error"
  fi
}

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
  npm_ci tests/players "the pinned web players and puppeteer-core"
  npm_ci sdk/web "the web SDK's pinned build tool"
  npm_ci dashboards/viewer "the dashboard viewer's pinned chart library"
  log "chromium $(/usr/bin/chromium --version 2>/dev/null | awk '{print $2}'), ffmpeg $(ffmpeg -version | awk 'NR==1{print $3}'), node $(node --version)"
}

case "${1:-setup}" in
  setup) setup ;;
  *) echo "usage: $0 setup" >&2; exit 2 ;;
esac
