"""The linter: ruff (pinned in pyproject.toml, configured there) over the library, the tests and the benchmarks.
Its findings are the failure message, so a broken import or an unused variable reads as what to fix."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def ruff_command() -> list[str]:
    """ruff from this environment (`python -m ruff`), else from PATH; a clear skip when neither exists."""
    try:
        import ruff  # noqa: F401  (the package only ships the binary; importing it proves it is installed)

        return [sys.executable, "-m", "ruff"]
    except ImportError:
        found = shutil.which("ruff")
        if found:
            return [found]
    pytest.skip("ruff is not installed: pip install ruff==0.17.6 (pinned in pyproject.toml)")


def test_ruff_finds_nothing():
    cmd = ruff_command() + ["check", "--no-cache", "--output-format", "concise", "fula_core", "tests", "benchmarks"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"ruff check found problems (fix them or `ruff check --fix`):\n{done.stdout}{done.stderr}"
