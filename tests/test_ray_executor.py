"""The Ray executor: a unit's task fills the same cache the notebook reads, a failure names the unit with its
log tail, and the smoke profile through Ray gives the local run's tables."""
from __future__ import annotations

import io
import os
import pathlib
import subprocess
import sys
from dataclasses import dataclass

import pytest

from fula_core import paths, ray_executor, units
from fula_core.store import ResultStore

REPO = pathlib.Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Boom:
    def __call__(self, P, store, device, progress=True):
        print("working on it")
        raise ValueError("boom: the data set is missing")


def test_a_failed_unit_is_named_with_its_log_tail(tmp_path):
    unit = units.Unit("stitch_group", "stitch_group:abc", "01 | resnet18 | same", action=Boom())
    with pytest.raises(ray_executor.UnitFailed) as err:
        ray_executor.execute_unit(unit, "smoke", "cpu", str(tmp_path / "u.log"))
    message = str(err.value)
    assert "01 | resnet18 | same" in message and "stitch_group:abc" in message
    assert "working on it" in message and "ValueError: boom: the data set is missing" in message
    assert (tmp_path / "u.log").exists()


def test_a_unit_fills_the_cache_the_notebook_reads(tmp_path, monkeypatch):
    """A base-model unit (the cheapest unit with real training) run as a task writes the model the notebooks
    then load without training."""
    monkeypatch.setenv("FULA_CACHE_DIR", str(tmp_path / "cache"))
    g = units.enumerate_units("smoke")
    unit = next(u for u in g.of_kind("base_model") if u.label == "digits_0")
    store = ResultStore(paths.cache_dir("smoke"))
    assert not unit.done(store)
    ray_executor.execute_unit(unit, "smoke", "cpu", str(tmp_path / "u.log"))
    assert unit.done(store)

    from fula_core import train

    monkeypatch.setattr(train, "train_model", lambda *a, **k: pytest.fail("the model should come from the cache"))
    train.get_model(store, unit.action.cfg, "cpu", progress=False)

    # a rerun skips it, and only it; a unit whose result is lost (a killed worker) is redone, and nothing else
    order, cached, todo = ray_executor.pending(g, store, ["03"])
    assert cached == {unit.uid} and unit not in todo and len(todo) == len(order) - 1
    for f in store.root.glob("model/*.pt"):
        f.unlink()
    _, cached, todo = ray_executor.pending(g, store, ["03"])
    assert not cached and todo[0].kind == "base_model"


def _run_all(out: pathlib.Path, *extra: str) -> str:
    """./run_all.sh's pipeline in this test's Python environment (run_all.sh itself would first check the
    environment's install against pyproject.toml)."""
    env = {**os.environ, "FULA_OUTPUT_DIR": str(out), "OMP_NUM_THREADS": "1"}
    env.pop("FULA_CACHE_DIR", None)  # each run its own cache, under its output root
    proc = subprocess.run([sys.executable, "-m", "fula_core.pipeline", "--profile", "smoke", "--only", "03", "--jobs",
                           "1", *extra], env=env, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_smoke_through_ray_matches_the_local_run(tmp_path):
    """Notebook 03 at smoke: its units on a local 2-CPU Ray cluster, then the notebook finds them cached and
    writes the same tables as a plain local run."""
    import ray  # noqa: F401 -- a pinned dependency: a missing Ray fails here instead of skipping
    _run_all(tmp_path / "local")
    log = _run_all(tmp_path / "ray", "--executor", "ray", "--ray-cpus", "2")
    assert "[fula ray] profile smoke" in log and "0 failed" in log
    local = sorted((tmp_path / "local" / "figures" / "smoke").glob("*.csv"))
    assert local, "the local run wrote no tables"
    for path in local:
        other = tmp_path / "ray" / "figures" / "smoke" / path.name
        assert other.read_text() == path.read_text(), path.name


@pytest.mark.slow
def test_a_failed_unit_stops_only_the_units_that_need_it(tmp_path, monkeypatch):
    """On a local 2-CPU Ray cluster: a unit that fails is reported with its log tail, the unit that needs it
    is skipped, and an independent unit and its dependant still run."""
    import ray
    monkeypatch.setenv("FULA_CACHE_DIR", str(tmp_path / "cache"))  # the workers inherit it at ray.init
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    model = next(u for u in units.enumerate_units("smoke").of_kind("base_model") if u.label == "digits_0")
    ok = units.Unit("base_model", "base_model:a", "digits_0", action=model.action)
    again = units.Unit("base_model", "base_model:d", "digits_0 again (a cache read)", ("base_model:a",), model.action)
    bad = units.Unit("section", "section:b", "no such notebook", action=units.RunSection("99"))
    needs_bad = units.Unit("section", "section:c", "needs the failed one", ("section:b",), units.RunSection("98"))
    ray_executor.start_local(ray, num_cpus=2)
    try:
        result = ray_executor.execute(ray, [ok, bad, needs_bad, again], "smoke", "cpu", tmp_path / "logs")
    finally:
        ray.shutdown()
    assert result["done"] == 2 and result["not_run"] == ["section:c"] and list(result["failed"]) == ["section:b"]
    assert "no such notebook" in result["failed"]["section:b"]
    assert "no section runner for notebook '99'" in result["failed"]["section:b"]  # the log tail


class _FlakyRay:
    """ray.init fails `failures` times (Ray's node-startup timeout), then succeeds."""

    def __init__(self, failures: int):
        self.failures, self.inits, self.shutdowns = failures, 0, 0

    def init(self, **kwargs):
        self.inits += 1
        if self.inits <= self.failures:
            raise Exception("The current node timed out during startup.")
        return kwargs

    def shutdown(self):
        self.shutdowns += 1


def test_a_local_node_that_misses_its_startup_deadline_is_started_again():
    out = io.StringIO()
    flaky = _FlakyRay(failures=2)
    assert ray_executor.start_local(flaky, num_cpus=2, out=out)["num_cpus"] == 2
    assert flaky.inits == 3 and flaky.shutdowns == 2 and out.getvalue().count("trying again") == 2
    with pytest.raises(SystemExit, match="did not start .3 attempts.*--address auto"):
        ray_executor.start_local(_FlakyRay(failures=3), out=io.StringIO())


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no handler on the way up can mistake it for a failure to record."""


def _dependents(g, uid: str) -> set[str]:
    """Every unit that needs `uid`, directly or through others."""
    found, frontier = set(), {uid}
    while frontier:
        frontier = {u.uid for u in g.units.values() if set(u.deps) & frontier} - found
        found |= frontier
    return found


@pytest.mark.slow
def test_a_unit_killed_midway_is_redone_and_nothing_else(tmp_path, monkeypatch):
    """Notebook 03's units at smoke, run one by one; one stitch pass dies after storing the first of its
    stitches, and its evaluations never run. `pending` (what a rerun does) lists exactly that pass and the
    units that need it; a torn checkpoint file left by the kill does not hide it either. The rerun then
    finishes the pass without retraining the stitch it had stored, and leaves nothing pending."""
    from fula_core import store as store_module

    monkeypatch.setenv("FULA_CACHE_DIR", str(tmp_path / "cache"))
    g = units.enumerate_units("smoke")
    store = ResultStore(paths.cache_dir("smoke"))
    order, cached, todo = ray_executor.pending(g, store, ["03"])
    assert not cached and todo == order
    victim = next(u for u in order if u.kind == "stitch_group" and len(u.action.jobs) > 1)
    doomed = _dependents(g, victim.uid) & {u.uid for u in order}
    assert doomed and all(g.units[d].kind == "eval_group" for d in doomed)

    real_save = store_module.ResultStore.save
    saved = []

    def save_then_die(self, kind, config, payload):
        real_save(self, kind, config, payload)
        if kind == "stitch":
            saved.append(config)
            raise Killed()

    for u in order:
        if u.uid in doomed:
            continue  # its worker never started: the pass it needs died
        if u is victim:
            monkeypatch.setattr(store_module.ResultStore, "save", save_then_die)
            with pytest.raises(Killed):  # execute_unit's log handling lets it through only after logging
                u.action(g.profile, store, "cpu", progress=False)
            monkeypatch.setattr(store_module.ResultStore, "save", real_save)
        else:
            ray_executor.execute_unit(u, "smoke", "cpu", str(tmp_path / "logs" / f"{u.kind}.log"))
    assert len(saved) == 1 and not victim.done(store)  # one stitch of the pass is stored, the pass is not done
    # the kill also tore the pass's checkpoint file mid-write (atomic_save prevents this; a full disk or a
    # copied-in cache could still leave one): it must neither count as a result nor stop the rerun
    group, rest = victim.action.group, victim.action.jobs[1:]
    torn = store.checkpointer("stitch_batch", {"jobs": [group.key(j) for j in rest]}).path
    torn.parent.mkdir(parents=True, exist_ok=True)
    torn.write_bytes(b"PK\x03\x04 torn")

    _, cached, todo = ray_executor.pending(g, store, ["03"])
    assert [u.uid for u in todo] == [u.uid for u in order if u.uid in doomed | {victim.uid}]
    assert todo[0] is victim  # the pass first, then what needs it (dependency order)
    assert cached == {u.uid for u in order} - doomed - {victim.uid}

    from fula_core import experiments

    trained = []
    real_train = experiments.train_stitches
    monkeypatch.setattr(experiments, "train_stitches", lambda f, e, jobs, *a, **k: trained.extend(jobs) or
                        real_train(f, e, jobs, *a, **k))
    for u in todo:
        ray_executor.execute_unit(u, "smoke", "cpu", str(tmp_path / "logs" / "rerun.log"))
    assert trained == list(rest)  # the stored stitch was not trained again
    assert not torn.exists()  # the torn checkpoint was replaced, and cleared once the pass was stored
    assert ray_executor.pending(g, store, ["03"])[2] == []
