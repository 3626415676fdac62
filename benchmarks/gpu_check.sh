#!/usr/bin/env bash
# ONE command for a GPU session (sized to fit 8 minutes of one H100/H200): the CUDA unit tests (pytest -k cuda),
# stitching and base-training throughput at the paper's shapes (width 64, 32x32, batch 128; engine vs the
# per-run reference), the dispatch counts, and the `paper` grid projection on 1 and 8 GPUs from the measured
# per-unit costs times the grid's unit counts (benchmarks/project_paper.py says where the counts come from).
# Prints everything and writes OUT_DIR/gpu_check/*.json plus the summary OUT_DIR/gpu_check/gpu_check.json.
#
#   benchmarks/gpu_check.sh [OUT_DIR]             # on the GPU machine (OUT_DIR default benchmarks/results)
#   benchmarks/gpu_check.sh --dry-run [OUT_DIR]   # tiny sizes on the CPU, a minute: checks the script itself
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}; [ -x "$PY" ] || PY=/work/main/.venv/bin/python; [ -x "$PY" ] || PY=python
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT=${1:-benchmarks/results}/gpu_check
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ $DRY = 1 ]; then
  export OMP_NUM_THREADS=1
  STITCH="--device cpu --sizes paper --width 2 --n-images 128 --adv-n-images 128 --n-test 64 --batch-size 64 --points 0 --adv-points 0 --objectives tlm --pgd-steps 1 --repeats 1 --threads 1 --no-noise-floor --no-accuracy --no-project"
  BASE="--device cpu --sizes paper --width 2 --n-images 128 --n-images-at 64 --batch-size 64 --pgd-steps 1 --repeats 1 --threads 1"
  DISPATCH="--batches 2 --repeats 1 --workloads clean"
  T_TEST=120; T_STITCH=240; T_BASE=120; T_DISPATCH=240
else
  STITCH="--device cuda --sizes paper --repeats 1 --no-noise-floor --project"
  BASE="--device cuda --sizes paper --repeats 1"
  DISPATCH="--repeats 1"
  T_TEST=60; T_STITCH=270; T_BASE=90; T_DISPATCH=70
fi
status() { echo "$1=$2" >> "$OUT/status.txt"; }
: > "$OUT/status.txt"

echo "== 1. CUDA unit tests (pytest -k cuda) =="
timeout $T_TEST "$PY" -m pytest tests/test_engine_equality.py tests/test_stitching.py tests/test_attacks.py tests/test_epoch_draws.py -k cuda -q \
  -p no:cacheprovider 2>&1 | tee "$OUT/pytest_cuda.txt" | tail -3
status pytest "${PIPESTATUS[0]}"

echo "== 2. stitching throughput (engine vs per-run reference) =="
timeout $T_STITCH "$PY" benchmarks/stitching_throughput.py $STITCH --json "$OUT/stitching.json" 2>&1 | tail -40
status stitching "${PIPESTATUS[0]}"

echo "== 3. base-training throughput =="
timeout $T_BASE "$PY" benchmarks/base_training.py $BASE --json "$OUT/base.json" 2>&1 | tail -15
status base "${PIPESTATUS[0]}"

echo "== 4. dispatch counts and host overhead per job-batch =="
timeout $T_DISPATCH "$PY" benchmarks/dispatch_count.py $DISPATCH --json "$OUT/dispatch.json" 2>&1 | tail -5
status dispatch "${PIPESTATUS[0]}"

echo "== 5. paper grid projection =="
if [ -f "$OUT/stitching.json" ] && "$PY" benchmarks/project_paper.py --units "$OUT/stitching.json" --json "$OUT/project.json" 2>/dev/null; then
  status projection measured
else
  "$PY" benchmarks/project_paper.py --json "$OUT/project.json"; status projection flop-derived
fi

"$PY" - "$OUT" "$DRY" <<'PY'
import json, os, sys
out, dry = sys.argv[1], sys.argv[2] == "1"
summary = {"dry_run": dry, "status": dict(l.strip().split("=", 1) for l in open(os.path.join(out, "status.txt")) if "=" in l)}
tail = open(os.path.join(out, "pytest_cuda.txt")).read().strip().splitlines()
summary["pytest_cuda"] = tail[-1] if tail else ""
for name in ("stitching", "base", "dispatch", "project"):
    p = os.path.join(out, name + ".json")
    summary[name] = json.load(open(p)) if os.path.exists(p) else None
json.dump(summary, open(os.path.join(out, "gpu_check.json"), "w"), indent=1, default=str)
print("== summary ==", json.dumps(summary["status"]), "| pytest:", summary["pytest_cuda"])
PY
