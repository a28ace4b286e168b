#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (or a warm one): system packages that
# pyfuse3 needs and PostgreSQL (the tests start throwaway clusters with its binaries), a
# virtual environment in .venv, and the project installed into it.
# Quick the second time: it only acts on what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

need_pkgs=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in fuse3 libfuse3-dev pkg-config gcc git rsync tar openssl postgresql nginx chromium chromium-driver; do
  have_pkg "$p" || need_pkgs+=("$p")
done

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.13 python3.12 python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PY=$(command -v "$cand"); break
    fi
  done
fi
if [ -z "$PY" ]; then
  need_pkgs+=(python3)
  PY=python3
fi
# Debian splits venv/ensurepip and the C headers out of the interpreter package.
if [ "$PY" = /usr/bin/python3 ] || [ "$PY" = python3 ]; then
  have_pkg python3-venv || need_pkgs+=(python3-venv)
  have_pkg python3-dev || need_pkgs+=(python3-dev)
fi

if [ ${#need_pkgs[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "bootstrap: installing system packages: ${need_pkgs[*]}" >&2
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    echo "bootstrap: please install: ${need_pkgs[*]} (no apt-get here)" >&2
    exit 1
  fi
fi

VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating virtual environment in .venv" >&2
  "$PY" -m venv "$VENV"
fi

# Reinstall only when the dependency set changed.
stamp="$VENV/.drive-installed"
files=(pyproject.toml)
[ -f constraints.txt ] && files+=(constraints.txt)
want=$(cat "${files[@]}" | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing the project into .venv" >&2
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
  if [ -f constraints.txt ]; then
    "$VENV/bin/pip" install -q -c constraints.txt -e ".[test]"
  else
    "$VENV/bin/pip" install -q -e ".[test]"
  fi
  echo "$want" > "$stamp"
fi
