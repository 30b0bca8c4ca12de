#!/usr/bin/env bash
# The project's Python tools in a virtual environment under .stack/venv: Debian's Python refuses
# installs into the system (PEP 668), and the tools must not depend on what a machine happens to
# have. Packages are pinned in scripts/python-requirements.txt.
#
#   scripts/python.sh setup     create the environment and install the pinned packages if missing
#   scripts/python.sh path      print the environment's python (after setup)
#
# Settings (environment): QOE_STACK_DIR (<repo>/.stack), QOE_PYTHON (the interpreter the
# environment is made from: python3 on PATH).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="${QOE_STACK_DIR:-$ROOT/.stack}"
VENV="$STACK/venv"
REQUIREMENTS="$ROOT/scripts/python-requirements.txt"
BASE="${QOE_PYTHON:-python3}"

LOG_PREFIX=python RUN_DIR="$STACK/run" LOG_DIR="$STACK/logs"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

ensure_venv_module() {
  # Debian ships venv (and the ensurepip it needs) in a package of its own: python3-venv.
  if "$BASE" -c 'import ensurepip, venv' 2>/dev/null; then return; fi
  command -v apt-get >/dev/null || die "$BASE has no venv module and there is no apt-get; install your distribution's python3-venv"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  log "installing python3-venv (Debian package: Python's venv module)"
  run_step "apt-get install python3-venv" "$LOG_DIR/apt.log" \
    bash -c "$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv"
}

setup() {
  mkdir -p "$LOG_DIR"
  local stamp="$VENV/.requirements"
  if [ -x "$VENV/bin/python" ] && cmp -s "$REQUIREMENTS" "$stamp"; then
    return
  fi
  ensure_venv_module
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating the Python environment $VENV (from $("$BASE" --version 2>&1))"
    run_step "python3 -m venv" "$LOG_DIR/python.log" "$BASE" -m venv "$VENV"
  fi
  log "installing into $VENV: $(grep -v '^#' "$REQUIREMENTS" | tr '\n' ' ')(from PyPI, about a minute)"
  run_step "pip install" "$LOG_DIR/python.log" \
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQUIREMENTS"
  cp "$REQUIREMENTS" "$stamp"
}

case "${1:-}" in
  setup) setup ;;
  path) echo "$VENV/bin/python" ;;
  *) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
