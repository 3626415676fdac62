"""Run a profile's unit graph (fula_core.units) on Ray, then the notebooks find every result cached.

    ./run_all.sh --profile paper --executor ray                  # a local Ray cluster: every GPU / CPU of this machine
    ./run_all.sh --profile paper --executor ray --address auto   # an existing cluster (`ray start --head` ..., or
                                                                  # Ray's Slurm / cloud launchers)

Each unit is one Ray task that calls the library function the notebook would call (zoo.get_zoo_model,
Stitcher.outcomes / evaluate, invariance.iri_set, the testbed's run() for notebooks 05 and 08), so it writes
the same cache entries through the same atomic, locked store: a killed or preempted worker loses only its
unfinished unit (Ray retries it; its checkpoint resumes it), and a rerun skips every unit already cached.
Dependencies are ObjectRefs (a stitch pass waits for its two models). Resources: on a machine with GPUs a
unit asks for its share of one (units.Unit.gpu: a base model a whole GPU, small stitch passes a quarter or
a half, so several share one); without GPUs one CPU each. Every worker must see this checkout and the cache
directory at the same paths (one machine, or a shared file system on a cluster).

Progress: one line (units done / running / failed, estimated time left from the costs done so far) and one
log per unit (<run log folder>/units/<kind>-<id>.log). A failed unit is named with its log tail; the units
that need it are reported as not run, the others go on. The run then fails before the notebooks start.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import sys
import time
import traceback

from . import paths
from .store import ResultStore
from .units import Unit, enumerate_units

PROGRESS_EVERY = 10.0  # seconds between progress lines
TAIL_LINES = 25
# A local Ray node dies at startup when its dashboard agent takes longer than Ray's fixed 15 s to write its
# port files (ray-project/ray#65983): measured here, the agent's imports took 14.7 s on an idle 2-core
# machine and ~40 s beside a running notebook. Starting again usually succeeds; say why when it does not.
START_ATTEMPTS = 3


def _require_ray():
    try:
        import ray
    except ImportError:
        raise SystemExit("--executor ray needs Ray: pip install 'ray[default]==2.60.0' into this environment "
                         "(./run_all.sh's own .venv has it with the other pinned packages) and rerun; "
                         "--executor local (the default) needs nothing more") from None
    return ray


def _log_name(unit: Unit) -> str:
    return unit.uid.replace(":", "-") + ".log"


def tail(path: pathlib.Path, lines: int = TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").rstrip().splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class UnitFailed(RuntimeError):
    """A unit's action raised: the message names the unit and ends with its log tail."""


def execute_unit(unit: Unit, profile: str, device: str, log_path: str, threads: int = 1, *_dependencies) -> dict:
    """Run one unit in this process, its output in `log_path`; the body of every Ray task (and usable without
    Ray; `_dependencies`: the results of the units it needs, passed so that Ray waits for them). Returns
    {"uid", "seconds"}; raises UnitFailed with the log tail."""
    import torch

    from .config import get_profile, resolve_device

    torch.set_num_threads(max(1, threads))
    log = pathlib.Path(log_path)
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(log, "a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        print(f"[fula] unit {unit.uid}: {unit.label} (profile {profile}, device {device})", flush=True)
        try:
            P = get_profile(profile)
            unit.action(P, ResultStore(paths.cache_dir(profile)), resolve_device(device), progress=False)
        except BaseException:
            traceback.print_exc()
            fh.flush()
            failed = True
        else:
            failed = False
            print(f"[fula] done in {time.time() - started:.1f}s", flush=True)
    if failed:
        raise UnitFailed(f"{unit.kind} {unit.label} ({unit.uid}) failed; log {log}:\n{tail(log)}")
    return {"uid": unit.uid, "seconds": time.time() - started}


def _fmt_duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    m = int(seconds // 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{int(seconds % 60):02d}s"


def pending(graph, store: ResultStore, only: list[str] | None = None) -> tuple[list[Unit], set[str], list[Unit]]:
    """(every runnable unit of `only`'s notebooks, the ids of those the cache holds, the rest in dependency
    order): what a run (or a rerun after a kill) does, decided by the cache alone."""
    order = graph.runnable(only)
    cached = {u.uid for u in order if u.done(store)}
    return order, cached, [u for u in order if u.uid not in cached]


def run_units(profile: str, *, only: list[str] | None = None, address: str | None = None, device: str = "auto",
              num_cpus: int | None = None, log_dir: pathlib.Path | None = None, out=sys.stdout) -> dict:
    """Run every unit of `profile` the cache lacks on Ray (with `only`: the units of those notebooks and what
    they need). Returns {"done", "cached", "failed": {uid: message}, "not_run": [uid]}; raises SystemExit
    when a unit failed (after every other unit has finished)."""
    ray = _require_ray()
    from .pipeline import run_log_dir

    graph = enumerate_units(profile)
    order, cached, todo = pending(graph, ResultStore(paths.cache_dir(profile)), only)
    log_dir = pathlib.Path(log_dir or run_log_dir(profile)) / "units"
    print(f"[fula ray] profile {profile}: {len(order)} units, {len(cached)} already cached, {len(todo)} to run; "
          f"logs in {log_dir}", file=out, flush=True)
    if not todo:
        return {"done": 0, "cached": len(cached), "failed": {}, "not_run": []}

    env = {k: os.environ[k] for k in ("PYTHONPATH", "FULA_REPO", *paths.PATH_VARIABLES, "OMP_NUM_THREADS")
           if k in os.environ}
    env.setdefault("OMP_NUM_THREADS", "1")
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
    else:
        start_local(ray, num_cpus=num_cpus, runtime_env={"env_vars": env}, out=out)
    try:
        result = execute(ray, todo, profile, device, log_dir, cached=cached, out=out)
    finally:
        ray.shutdown()
    if result["failed"]:
        names = "\n".join(f"  {graph.units[u].kind} {graph.units[u].label}" for u in result["failed"])
        raise SystemExit(f"[fula ray] {len(result['failed'])} unit(s) failed (their logs above), "
                         f"{len(result['not_run'])} not run because they need them:\n{names}\n"
                         f"Fix the cause and rerun: every finished unit is cached.")
    return result


def start_local(ray, *, num_cpus: int | None = None, out=sys.stdout, attempts: int = START_ATTEMPTS, **kwargs):
    """ray.init of a local node (no dashboard), tried `attempts` times: on a loaded machine Ray's agents can
    miss the raylet's startup deadline (see START_ATTEMPTS). The last failure says what to do."""
    for attempt in range(1, attempts + 1):
        try:
            return ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, **kwargs)
        except Exception as err:  # noqa: BLE001 -- Ray raises a bare Exception for a node startup timeout
            with contextlib.suppress(Exception):
                ray.shutdown()
            if attempt == attempts:
                raise SystemExit(
                    f"[fula ray] the local Ray node did not start ({attempts} attempts; last: {err}). On a busy "
                    "machine Ray's dashboard agent can miss the raylet's fixed 15 s startup deadline "
                    "(ray-project/ray#65983; details in /tmp/ray/session_latest/logs/raylet.out): rerun when the "
                    "machine is less loaded, or start a cluster yourself (`ray start --head`) and pass "
                    "--address auto") from None
            print(f"[fula ray] the local Ray node did not start (attempt {attempt} of {attempts}): {err}; "
                  "trying again", file=out, flush=True)


def execute(ray, todo: list[Unit], profile: str, device: str, log_dir: pathlib.Path, *, cached=frozenset(),
            out=sys.stdout) -> dict:
    """Submit `todo` (dependencies first) to the connected Ray cluster, one task per unit, and follow them to
    the end: {"done", "cached", "failed": {uid: message with the log tail}, "not_run": [uids whose
    dependency failed]}. A failure stops nothing else."""
    gpus = ray.cluster_resources().get("GPU", 0)
    cpus = ray.cluster_resources().get("CPU", 1)
    if device == "auto":
        device = "cuda" if gpus else "cpu"
    remote = ray.remote(execute_unit)
    refs, unit_of = {}, {}
    for u in todo:  # dependencies first (graph.runnable's order): their refs exist when a unit is submitted
        deps = [refs[d] for d in u.deps if d in refs]
        resources = {"num_gpus": u.gpu, "num_cpus": 1} if gpus and device != "cpu" else {"num_cpus": 1}
        ref = remote.options(name=f"{u.kind}:{u.label[:60]}", max_retries=2, retry_exceptions=False,
                             **resources).remote(u, profile, device, str(log_dir / _log_name(u)), 1, *deps)
        refs[u.uid], unit_of[ref] = ref, u
    return _follow(ray, refs, unit_of, cached, cpus, gpus, log_dir, out)


def _follow(ray, refs, unit_of, cached, cpus, gpus, log_dir, out) -> dict:
    """Wait for every task, printing the progress line; collect failures (a unit's own, or a dependency's)."""
    pending = list(refs.values())
    finished, failed, not_run = set(), {}, []
    by_uid = {u.uid: u for u in unit_of.values()}
    cost_total = sum(u.cost for u in unit_of.values())
    cost_done, started, last = 0.0, time.time(), 0.0
    slots = gpus * 2 if gpus else cpus  # roughly how many units run at once
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=PROGRESS_EVERY)
        for ref in ready:
            u = unit_of[ref]
            try:
                ray.get(ref)
            except Exception as err:  # noqa: BLE001 -- a unit's failure is reported, the others go on
                cause = getattr(err, "cause", None) or err
                failed_deps = [d for d in u.deps if d in failed or d in not_run]
                if failed_deps:
                    not_run.append(u.uid)
                    continue
                if not isinstance(cause, UnitFailed):  # Ray's own (a worker lost after its retries, ...)
                    log = log_dir / _log_name(u)
                    cause = f"{u.kind} {u.label} ({u.uid}): {type(cause).__name__}: {cause}; log {log}:\n{tail(log)}"
                failed[u.uid] = str(cause)
                print(f"[fula ray] FAILED: {cause}", file=out, flush=True)
            else:
                finished.add(u.uid)
                cost_done += u.cost
        now = time.time()
        if now - last >= PROGRESS_EVERY or not pending:
            last = now
            waiting_on_deps = sum(1 for r in pending if any(d in refs and refs[d] in pending
                                                            for d in unit_of[r].deps))
            running = min(len(pending) - waiting_on_deps, int(slots) or 1)
            rate = cost_done / (now - started) if cost_done else 0.0
            lost = sum(by_uid[u].cost for u in [*failed, *not_run])
            eta = (cost_total - cost_done - lost) / rate if rate else float("nan")
            print(f"[fula ray] units: {len(finished)}/{len(refs)} done ({len(cached)} cached before), "
                  f"{running} running, {len(failed)} failed, {len(not_run)} skipped (they need a failed unit); "
                  f"elapsed {_fmt_duration(now - started)}, left ~{_fmt_duration(max(eta, 0.0))}", file=out, flush=True)
    return {"done": len(finished), "cached": len(cached), "failed": failed, "not_run": not_run}
