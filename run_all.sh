#!/usr/bin/env bash
# Regenerate every figure: ./run_all.sh [--profile smoke|quick|paper] [--only NN ...] [--device auto|cpu|cuda]
# Creates ./.venv on first use. Cached models and stitches are reused: a rerun finishes in minutes.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_env.sh
exec "$PY" -m fula_core.pipeline "$@"
