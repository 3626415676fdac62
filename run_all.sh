#!/usr/bin/env bash
# Regenerate every figure: ./run_all.sh [--profile smoke|quick|paper] [--only NN ...] [--device auto|cpu|cuda]
#        [--output-root DIR]   (executed/, figures/, results/ and cache/ under DIR: a read-only checkout works)
# Creates ./.venv on first use. Cached models and stitches are reused: a rerun finishes in minutes.
set -euo pipefail
# relative paths (--output-root, FULA_CACHE_DIR, ...) are taken from where the run was started
export FULA_INVOKED_FROM="$PWD"
# the checkout this script belongs to, also when it is called through a symlink
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"
source scripts/ensure_env.sh
exec "$PY" -m fula_core.pipeline "$@"
