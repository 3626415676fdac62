import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step(tmp_path):
    """benchmarks/gpu_check.sh --dry-run: every step (CUDA tests, stitching and base-training benchmarks,
    dispatch counts, projection) runs at tiny sizes on the CPU and lands in the summary JSON."""
    env = {"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "gpu_check" / "gpu_check.json").read_text())
    assert summary["dry_run"] is True
    assert {k: v for k, v in summary["status"].items() if k != "projection"} == \
        {"pytest": "0", "stitching": "0", "base": "0", "dispatch": "0"}
    assert summary["dispatch"]["workloads"]["clean"]["engine_ops"] <= 150
    assert summary["project"]["total_h_1gpu"] > 0 and summary["project"]["choices"]
