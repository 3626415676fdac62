#!/usr/bin/env bash
# Creates ./.venv with the pinned packages if it is missing or stale, and the offline Fashion-MNIST files.
# Sourced by run_all.sh and run_tests.sh: afterwards $PY is the environment's python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FULA_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.fula-installed"

if [ ! -x "$PY" ]; then
  echo "[fula] creating $VENV" >&2
  python3 -m venv "$VENV"
fi
# reinstall when pyproject.toml changed since the last install
if [ ! -f "$STAMP" ] || ! cmp -s "$ROOT/pyproject.toml" "$STAMP"; then
  echo "[fula] installing pinned packages into $VENV (first run: several minutes)" >&2
  "$PY" -m pip install -q --upgrade pip >&2
  "$PY" -m pip install -q -e "$ROOT" >&2
  "$PY" -m ipykernel install --sys-prefix --name python3 >/dev/null 2>&1 || true
  cp "$ROOT/pyproject.toml" "$STAMP"
fi

# Fashion-MNIST offline: Debian's dataset-fashion-mnist; without apt, torchvision downloads it on first use.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null 2>&1 \
   && [ "$(id -u)" = 0 ]; then
  echo "[fula] installing the Debian package dataset-fashion-mnist" >&2
  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 ||
   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) ||
    echo "[fula] could not install dataset-fashion-mnist; torchvision will try to download Fashion-MNIST" >&2
fi
export PY
# Passive OpenMP waiting: with busy-waiting, a torch process beside another (a notebook kernel beside
# pytest, two runs at once) was up to 10x slower on this 2-core machine.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
