"""Faults of whole runs through ./run_all.sh, each on a copy of this checkout (issue 11's trial as tests).

The copy gets two tiny probe notebooks (90, 91) that record which fula_core they imported and where the
paths point, then write heartbeat files for `seconds`. The copy runs with a Python environment installed
from another checkout (the one running these tests, seen through a wrapper "venv"), so a kernel that
imported the environment's fula_core instead of the copy's would show here.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import nbformat
import pytest

from fula_core import zoo
from fula_core.config import get_profile
from fula_core.store import ResultStore

REPO = pathlib.Path(__file__).resolve().parent.parent

PROBE = '''\
import json, os, pathlib, time
import fula_core
from fula_core import data, paths

out = paths.results_dir(profile)
out.mkdir(parents=True, exist_ok=True)
(out / f"probe-{name}.json").write_text(json.dumps({
    "fula_core": fula_core.__file__, "cache": str(paths.cache_dir(profile)), "data": str(data.data_root()),
    "executed": str(paths.executed_dir(profile)), "pid": os.getpid()}))
beats = paths.cache_dir(profile) / "heartbeat"
beats.mkdir(parents=True, exist_ok=True)
stop, i = time.time() + seconds, 0
while time.time() < stop:
    (beats / f"{name}-{i}").write_text("")
    i += 1
    time.sleep(0.2)
'''


def _probe_notebook(name: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(f'profile: str = "quick"\ndevice: str = "auto"\nseconds: float = 0.0\n'
                                       f'name: str = "{name}"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(PROBE)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


_NOT_COPIED = (".git", ".venv", "cache", "executed", "figures", "results", "data", "__pycache__", "*.pyc",
               ".pytest_cache", "benchmarks")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A copy of this checkout with the probe notebooks, a wrapper venv, and a symlink to its run_all.sh."""
    base = tmp_path_factory.mktemp("faults")
    copy = base / "checkout"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(*_NOT_COPIED))
    for n in ("90", "91"):
        nbformat.write(_probe_notebook(n), copy / "notebooks" / f"{n}_probe.ipynb")
    venv = base / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (venv / "bin" / "python").chmod(0o755)
    shutil.copy(copy / "pyproject.toml", venv / ".fula-installed")  # "installed": ensure_env installs nothing
    (base / "bin").mkdir()
    (base / "bin" / "run_all.sh").symlink_to(copy / "run_all.sh")
    return {"base": base, "copy": copy, "venv": venv, "link": base / "bin" / "run_all.sh"}


def _env(checkout, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FULA_") and k != "PYTHONPATH"}
    env.update(FULA_VENV=str(checkout["venv"]), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def _listing(folder: pathlib.Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def _processes_with(marker: str) -> list[int]:
    """Pids of live processes whose environment contains `marker` (a run's FULA_REPO=...)."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes().split(b"\0"):
                    state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state != "Z":
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_symlinked_read_only_checkout_with_relative_paths(checkout):
    """Through a symlink, from another directory, with relative FULA_CACHE_DIR / FULA_DATA_DIR and
    --output-root: every path is the one the caller meant, the kernel imports the copy's fula_core (not the
    environment's), and nothing is written into the (read-only) checkout."""
    copy, work = checkout["copy"], checkout["base"] / "work"
    work.mkdir()
    before = _listing(copy)
    for p in [copy, *copy.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode & ~0o222)
    try:
        done = subprocess.run([str(checkout["link"]), "--profile", "smoke", "--only", "90", "--output-root", "out"],
                              cwd=work, env=_env(checkout, FULA_CACHE_DIR="my-cache", FULA_DATA_DIR="my-data"),
                              capture_output=True, text=True, timeout=600)
    finally:
        for p in [copy, *copy.rglob("*")]:
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | 0o200)
    assert done.returncode == 0, done.stdout + done.stderr
    probe = json.loads((work / "out" / "results" / "smoke" / "probe-90.json").read_text())
    assert probe["fula_core"] == str(copy / "fula_core" / "__init__.py")
    assert probe["cache"] == str(work / "my-cache" / "smoke")
    assert probe["data"] == str(work / "my-data")
    assert probe["executed"] == str(work / "out" / "executed" / "smoke")
    assert (work / "out" / "executed" / "smoke" / "90_probe.ipynb").exists()
    assert _listing(copy) == before, "the run wrote into the checkout"


@pytest.mark.slow
def test_sigterm_stops_every_worker_and_nothing_more_is_written(checkout):
    """kill -TERM of run_all.sh (what `timeout` sends) during a parallel run: the runner stops every worker
    and its kernel, waits for them, and afterwards nothing writes into the cache."""
    copy, out = checkout["copy"], checkout["base"] / "term"
    store = ResultStore(out / "cache" / "smoke")
    for cfg in zoo.all_zoo_configs(get_profile("smoke")).values():  # the zoo counts as trained: no pre-training
        import dataclasses

        store.save(zoo.store_kind(cfg), dataclasses.asdict(cfg), {})
    proc = subprocess.Popen([str(checkout["link"]), "--profile", "smoke", "--only", "90", "91", "--jobs", "2",
                             "--param", "seconds=300", "--output-root", str(out)],
                            env=_env(checkout), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    beats = out / "cache" / "smoke" / "heartbeat"
    deadline = time.time() + 300
    while not (beats.exists() and {p.name.split("-")[0] for p in beats.iterdir()} == {"90", "91"}):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "the probe notebooks did not start"
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "stopping 2 running worker(s)" in output, output
    marker = f"FULA_REPO={copy}"
    for _ in range(20):  # a kernel exits within a second of its worker (ipykernel watches its parent)
        if not _processes_with(marker):
            break
        time.sleep(0.5)
    assert _processes_with(marker) == [], "a worker or kernel of the terminated run survived"
    written = len(list(beats.iterdir()))
    time.sleep(2)
    assert len(list(beats.iterdir())) == written, "something still writes into the cache"
    # this run's logs have a folder of their own: a concurrent run cannot overwrite them
    runs = list((out / "executed" / "smoke" / "logs").iterdir())
    assert len(runs) == 1 and runs[0].name.endswith(f"-{proc.pid}")
    assert {p.name for p in runs[0].iterdir()} == {"90_probe.ipynb.log", "91_probe.ipynb.log"}


def _result_tables(root: pathlib.Path) -> dict[str, list[str]]:
    return {p.name: sorted(p.read_text().splitlines()) for p in sorted((root / "figures" / "smoke").glob("*.csv"))}


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_results(checkout):
    """Notebook 00 at smoke (trains and evaluates the zoo): TERM it once the first model is stored, rerun,
    and every result row equals an uninterrupted run's."""
    clean, killed = checkout["base"] / "clean", checkout["base"] / "killed"
    command = [str(checkout["link"]), "--profile", "smoke", "--only", "00", "--device", "cpu", "--output-root"]
    done = subprocess.run(command + [str(clean)], env=_env(checkout), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr

    proc = subprocess.Popen(command + [str(killed)], env=_env(checkout), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    models = killed / "cache" / "smoke" / "model"
    deadline = time.time() + 600
    while not (models.exists() and list(models.glob("*.pt"))):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    for _ in range(20):  # one notebook runs in the runner itself: its kernel goes too
        if not _processes_with(f"FULA_REPO={checkout['copy']}"):
            break
        time.sleep(0.5)
    assert _processes_with(f"FULA_REPO={checkout['copy']}") == []
    assert not (killed / "figures" / "smoke" / "table1_base_models.csv").exists()
    done = subprocess.run(command + [str(killed)], env=_env(checkout), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    tables = _result_tables(clean)
    assert tables and _result_tables(killed) == tables
