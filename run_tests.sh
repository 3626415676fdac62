#!/usr/bin/env bash
# The test suite: unit tests, then nbval re-executes the smoke-profile notebooks (tests/smoke_notebooks/)
# in a fresh kernel and compares their outputs (numbers and paths sanitised, widgets and training logs
# ignored). Creates ./.venv on first use. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"
source scripts/ensure_env.sh
exec "$PY" -m pytest tests --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
  --nbval-cell-timeout 1200 "$@"
