#!/usr/bin/env bash
# What the real-player tests (tests/tests/players.rs), the web SDK's tests and the demo's player
# need: Debian's chromium and ffmpeg, Node.js with npm, the players and puppeteer-core pinned in
# tests/players/package-lock.json (puppeteer-core drives the system chromium; it never
# downloads a browser), and the SDK's build tool pinned in sdk/web/package-lock.json.
# Idempotent: installs only what is missing.
#   scripts/players.sh setup
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"

setup() {
  local missing=()
  [[ -x /usr/bin/chromium ]] || missing+=(chromium)
  command -v ffmpeg >/dev/null || missing+=(ffmpeg)
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
  if ((${#missing[@]})); then
    echo "[players] installing ${missing[*]} (Debian packages)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  local modules=tests/players/node_modules/.package-lock.json
  if [[ ! -f $modules || tests/players/package-lock.json -nt $modules ]]; then
    echo "[players] npm ci (tests/players)"
    (cd tests/players && npm ci --no-audit --no-fund --loglevel=error)
  fi
  modules=sdk/web/node_modules/.package-lock.json
  if [[ ! -f $modules || sdk/web/package-lock.json -nt $modules ]]; then
    echo "[players] npm ci (sdk/web: the SDK's pinned build tool)"
    (cd sdk/web && npm ci --no-audit --no-fund --loglevel=error)
  fi
  echo "[players] chromium $(/usr/bin/chromium --version 2>/dev/null | awk '{print $2}'), ffmpeg $(ffmpeg -version | awk 'NR==1{print $3}'), node $(node --version)"
}

case "${1:-setup}" in
  setup) setup ;;
  *) echo "usage: $0 setup" >&2; exit 2 ;;
esac
