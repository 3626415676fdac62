"""Run the numbered notebooks headlessly with papermill: `./run_all.sh [--profile P] [--only NN ...]`.

Each notebook's `parameters` cell is overridden with the profile (and any --param KEY=VALUE); a parameter
the notebook does not declare is an error, not silently ignored. The first failing notebook stops the run
with its name and the failing cell.

On a CPU, `--jobs 2` (the default there) runs two single-threaded notebooks at a time: on a 2-core
machine two 1-thread torch processes do ~1.3x the work of one 2-thread process (small convolutions
scale badly across threads). The zoo's base models are trained first, `jobs` at a time, so that no two
notebooks train the same model; the notebooks then start longest first (by the last run's timings).

The runner makes the path variables absolute (paths.PATH_VARIABLES), puts this checkout first on the
workers' and kernels' PYTHONPATH and sets FULA_REPO, which fula_core checks at import: every process of a
run uses this checkout's code. Each worker runs in its own process group; a TERM (timeout, a job scheduler)
or Ctrl-C of the runner terminates every group and waits for them, so no orphan keeps writing.
"""
from __future__ import annotations

import argparse
import ast
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import warnings

from . import paths
from .config import PROFILES, SHRUNK_SUFFIX, get_profile, profile_names, split_shrunk
from .paths import REPO
from .store import ResultStore, read_json_object, update_json

NOTEBOOKS = REPO / "notebooks"


def notebooks(only: list[str] | None = None) -> list[pathlib.Path]:
    """The numbered notebooks in order, optionally only those whose number is in `only`."""
    found = sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        unknown = set(only) - {p.name[:2] for p in found}
        if unknown:
            raise SystemExit(f"--only {' '.join(sorted(unknown))}: no such notebook; have "
                             f"{', '.join(p.name for p in found)}")
        found = [p for p in found if p.name[:2] in only]
    return found


def parse_param(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE a Python literal (plain strings need no quotes)."""
    if "=" not in text:
        raise SystemExit(f"--param {text!r}: expected KEY=VALUE")
    key, value = text.split("=", 1)
    if key in RUNNER_OWNED:
        raise SystemExit(f"--param {key}=...: {key} is set by the runner; use {RUNNER_OWNED[key]} {value} instead")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


# Notebook parameters the runner sets itself, with the option that sets them: a --param for one of these
# would, e.g., run the paper profile but file it under executed/smoke.
RUNNER_OWNED = {"profile": "--profile", "device": "--device"}

# papermill's inferred type name -> the Python types a value for it may have (ints are fine for floats)
_ACCEPTED = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list, tuple),
             "tuple": (tuple, list), "dict": (dict,)}


def _type_error(name: str, value: object, declared: dict, notebook: str) -> str | None:
    """Why `value` does not fit the notebook's declared parameter, or None when it does (or the declared type
    is one papermill could not infer, e.g. a default of None)."""
    annotation = str(declared.get("inferred_type_name", "None"))
    if annotation == "None":  # no annotation: papermill gives none, the default's type is the declaration
        try:
            annotation = type(ast.literal_eval(str(declared.get("default")))).__name__
        except (ValueError, SyntaxError):
            return None
        if annotation == "NoneType":
            return None
    allowed = []
    for part in annotation.replace("Optional[", "").rstrip("]").split("|"):
        part = part.strip()
        if part == "None":
            if value is None:
                return None
            continue
        if part not in _ACCEPTED:
            return None  # an annotation we do not model: let the notebook judge
        allowed.append(part)
    if not allowed:
        return None
    if any(isinstance(value, _ACCEPTED[t]) and not (isinstance(value, bool) and t != "bool") for t in allowed):
        return None
    hint = "quote it, e.g. --param " + f"{name}='\"{value}\"'" if "str" in allowed else f"e.g. --param {name}={declared.get('default')}"
    return (f"--param {name}={value!r}: {notebook} declares {name} as {' | '.join(allowed)} (default "
            f"{declared.get('default')}), got {value!r} of type {type(value).__name__}; {hint}")


def _check_parameters(selected: list[pathlib.Path], parameters: dict) -> None:
    import papermill

    for nb in selected:
        declared = papermill.inspect_notebook(str(nb))
        unknown = set(parameters) - set(declared)
        if unknown:
            raise SystemExit(f"{nb.name} has no parameter(s) {', '.join(sorted(unknown))}; "
                             f"it declares: {', '.join(declared)}")
        for name, value in parameters.items():
            problem = _type_error(name, value, declared[name], nb.name)
            if problem:
                raise SystemExit(problem)


class Terminated(SystemExit):
    """The runner received SIGTERM / SIGHUP: unwinds like Ctrl-C, so that every worker is stopped first."""


def _on_termination(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one clean-up, even if the signal is sent again
    raise Terminated(128 + signum)


def prepare_environment(invoked_from: str | None = None) -> None:
    """Make this process's environment one that every worker and kernel inherits unchanged: absolute paths
    (a relative one would be read from the repository by some processes and from notebooks/ by the kernels),
    this checkout first on PYTHONPATH, and FULA_REPO for fula_core's import check."""
    base = pathlib.Path(invoked_from or os.environ.get("FULA_INVOKED_FROM") or os.getcwd())
    for variable in paths.PATH_VARIABLES:
        value = os.environ.get(variable)
        if value:
            os.environ[variable] = str(base / pathlib.Path(value).expanduser())
    os.environ.pop("FULA_INVOKED_FROM", None)
    os.environ["FULA_REPO"] = str(REPO)
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO)]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *rest])


def run(profile: str, only: list[str] | None = None, params: dict | None = None, device: str = "auto",
        jobs: int = 1) -> None:
    import papermill

    if profile not in profile_names():
        raise SystemExit(f"unknown profile {profile!r}: choose one of {', '.join(profile_names())}")
    for name in params or {}:
        if name in RUNNER_OWNED:
            raise SystemExit(f"--param {name}: {name} is set by the runner; use {RUNNER_OWNED[name]} instead")
    out_dir = paths.executed_dir(profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    parameters = {"profile": profile, "device": device, **(params or {})}
    selected = notebooks(only)
    if not selected:
        raise SystemExit(f"no notebooks found in {NOTEBOOKS}")
    _check_parameters(selected, parameters)
    if jobs > 1 and len(selected) > 1:
        return run_parallel(profile, selected, params or {}, device, jobs)
    for nb in selected:
        started = time.time()
        print(f"[fula] {nb.name} (profile {profile}) ...", flush=True)
        try:
            papermill.execute_notebook(str(nb), str(out_dir / nb.name), parameters=parameters, kernel_name="python3",
                                       cwd=str(NOTEBOOKS), progress_bar=False, log_output=False)
        except papermill.PapermillExecutionError as err:
            print(f"[fula] FAILED: {nb.name}, cell {err.exec_count}: {err.ename}: {err.evalue}\n"
                  f"[fula] the executed notebook with the traceback is {out_dir / nb.name}", file=sys.stderr)
            raise SystemExit(1) from None
        except Exception as err:  # a dead kernel, a timeout...: still say which notebook
            print(f"[fula] FAILED: {nb.name}: {type(err).__name__}: {err}\n"
                  f"[fula] the partly executed notebook is {out_dir / nb.name}", file=sys.stderr)
            raise SystemExit(1) from None
        seconds = time.time() - started
        _record_timing(profile, nb.name, seconds)
        print(f"[fula] {nb.name} done in {seconds:.0f}s", flush=True)


def _timings_path(profile: str) -> pathlib.Path:
    return paths.executed_dir(profile) / "timings.json"


def _record_timing(profile: str, name: str, seconds: float) -> None:
    # the timings only order the next run's notebooks: a corrupt file is replaced, with a warning
    update_json(_timings_path(profile), name, round(seconds, 1), on_corrupt="reset")


# Start order when no earlier run left timings: the quick profile's costs, longest first
DEFAULT_ORDER = ("01", "05", "02", "04", "08", "03", "07", "00", "06")  # the quick run's wall times, longest first


def longest_first(selected: list[pathlib.Path], profile: str) -> list[pathlib.Path]:
    """Notebooks ordered by the last run's wall time (longest first), else by DEFAULT_ORDER."""
    path = _timings_path(profile)
    timings = read_json_object(path, on_corrupt="reset")
    if not all(isinstance(v, (int, float)) for v in timings.values()):
        warnings.warn(f"ignoring {path}: its values are not seconds")
        timings = {}
    if all(nb.name in timings for nb in selected):
        return sorted(selected, key=lambda nb: -timings[nb.name])
    rank = {n: i for i, n in enumerate(DEFAULT_ORDER)}
    return sorted(selected, key=lambda nb: rank.get(nb.name[:2], len(rank)))


def _thread_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Terminate a worker's whole process group (the worker and what it started), wait for the worker, then
    kill whatever of the group is left. A notebook kernel runs in a session of its own but exits as soon as
    its worker is gone (ipykernel watches its parent)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        if wait is not None:
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
    proc.wait()


# A Python exception line ("ValueError: ...", "fula_core.store.CorruptCheckpointError: ...") or the
# worker pipeline's own "[fula] FAILED: ..." line
_ERROR_LINE = re.compile(r"^(\[fula\] FAILED|[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b)")


def failure_excerpt(log_text: str, max_lines: int = 40) -> str:
    """The part of a failed worker's log that says what went wrong: from its last error line to the end,
    whole (a long message names the file and the fix), else the last 5 lines."""
    lines = log_text.rstrip().splitlines()
    failed = [i for i, line in enumerate(lines) if line.startswith("[fula] FAILED")]
    errors = [i for i, line in enumerate(lines) if _ERROR_LINE.match(line)]
    if failed:  # a notebook worker: its own summary names the notebook, the cell and the exception
        first = failed[0]
    elif errors:  # a training worker: the exception that ended its traceback
        first = errors[-1]
    else:
        first = max(0, len(lines) - 5)
    return "\n".join(lines[first:first + max_lines])


def _failure_advice(returncode: int) -> str:
    """Whether rerunning helps: after a kill (signal, out of memory) it resumes; after an error it would fail
    the same way until its cause is fixed."""
    if returncode < 0 or returncode in (128 + signal.SIGKILL, 128 + signal.SIGTERM):
        sig = -returncode if returncode < 0 else returncode - 128
        return (f"it was killed (signal {sig}, e.g. out of memory or a timeout); the cache keeps everything "
                f"finished: rerun to resume")
    return "fix the error above, then rerun: the cache keeps everything finished, the rerun will not redo it"


def run_log_dir(profile: str) -> pathlib.Path:
    """This run's log folder: executed/<profile>/logs/<start time>-<pid>, so concurrent runs keep their own."""
    return paths.executed_dir(profile) / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def _run_pool(commands: dict[str, list[str]], jobs: int, threads: int, log_dir: pathlib.Path, what: str) -> None:
    """Run named commands, `jobs` at a time, each logging to log_dir/<name>.log; stop at the first failure.
    On any exit other than success (a failure, Ctrl-C, SIGTERM) every running worker is stopped first."""
    log_dir.mkdir(parents=True, exist_ok=True)
    waiting, running = list(commands), {}
    env = _thread_env(threads)
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                name = waiting.pop(0)
                log = open(log_dir / f"{name}.log", "w")
                print(f"[fula] {what} {name} ... (log: {log.name})", flush=True)
                running[name] = (subprocess.Popen(commands[name], stdout=log, stderr=subprocess.STDOUT, env=env,
                                                  cwd=REPO, start_new_session=True), log, time.time())
            time.sleep(1)
            for name, (proc, log, started) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[name]
                if proc.returncode != 0:
                    log_path = log_dir / f"{name}.log"
                    print(failure_excerpt(log_path.read_text(errors="replace")), file=sys.stderr)
                    raise SystemExit(f"[fula] FAILED: {what} {name} (exit {proc.returncode}); full log: {log_path}; "
                                     f"{_failure_advice(proc.returncode)}")
                print(f"[fula] {what} {name} done in {time.time() - started:.0f}s", flush=True)
    finally:
        if running:
            print(f"[fula] stopping {len(running)} running worker(s): {', '.join(running)}", file=sys.stderr, flush=True)
        for proc, log, _ in running.values():
            _stop(proc)
            log.close()


def _profile_args(profile: str) -> list[str]:
    """The pipeline's options that select `profile` ("paper-shrunk" is `--profile paper --shrink`)."""
    base, shrunk = split_shrunk(profile)
    return ["--profile", base, *(["--shrink"] if shrunk else [])]


def run_parallel(profile: str, selected: list[pathlib.Path], params: dict, device: str, jobs: int) -> None:
    """The zoo's missing base models first, then the notebooks, `jobs` processes at a time."""
    from .zoo import missing_models

    threads = max(1, (os.cpu_count() or 1) // jobs)
    log_dir = run_log_dir(profile)
    missing = missing_models(get_profile(profile), ResultStore(paths.cache_dir(profile)))
    if missing:
        _run_pool({mid: [sys.executable, "-m", "fula_core.zoo", "--profile", profile, "--device", device,
                         "--train-only", "--only", mid] for mid in missing},
                  jobs, threads, log_dir, "train")
    extra = [arg for k, v in params.items() for arg in ("--param", f"{k}={v!r}")]
    ordered = longest_first(selected, profile)
    _run_pool({nb.name: [sys.executable, "-m", "fula_core.pipeline", *_profile_args(profile), "--device", device,
                         "--jobs", "1", "--only", nb.name[:2], *extra] for nb in ordered},
              jobs, threads, log_dir, "notebook")


SMOKE_COPIES = REPO / "tests" / "smoke_notebooks"


# The kernelspec JupyterLab writes for this project's kernel (`jupyter kernelspec list --json` in the venv:
# ipykernel's "python3" spec). A notebook published with another display name (papermill writes "Python 3")
# is rewritten on open, which marks it modified before the reader has touched it.
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def strip_volatile(nb) -> None:
    """Drop what changes on every run (timings, papermill bookkeeping) so diffs show real changes, and set
    the kernelspec JupyterLab keeps (KERNELSPEC)."""
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)  # widget state is per session
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    for cell in nb.cells:
        for key in ("papermill", "execution", "ExecuteTime"):
            cell.metadata.pop(key, None)


def renumber(nb) -> None:
    """Execution counts 1..n over the code cells that ran, in order (a dropped cell, e.g. papermill's
    injected parameters, leaves no gap); each cell's execute_result carries its cell's number."""
    n = 0
    for cell in nb.cells:
        if cell.cell_type != "code" or cell.get("execution_count") is None:
            continue
        n += 1
        cell.execution_count = n
        for out in cell.outputs:
            if out.output_type == "execute_result":
                out.execution_count = n


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def drop_progress_bars(nb) -> int:
    """Remove displayed widgets (tqdm's progress bars) from a notebook that is read without its widget state,
    e.g. on the repository page: there each shows only its first frame ("0%|  | 0/468"), as if nothing ran.
    A widget a cell returns as its value (the explorer) stays. Returns how many were removed."""
    removed = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = [o for o in cell.outputs if not (o.output_type == "display_data" and WIDGET_VIEW in o.get("data", {}))]
        removed += len(cell.outputs) - len(kept)
        cell.outputs = kept
    return removed


def prefer_snapshots(nb) -> int:
    """A widget output that also carries a static text/html snapshot (the explorer's view) keeps only the
    snapshot: the published notebook has no widget state, so the widget view could only show an error or
    `VBox(children=...)`, while the snapshot shows the last rendered table and figures on the repository page
    and in nbconvert. Running the notebook brings the live widget back. Returns how many were changed."""
    changed = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_VIEW in data and "text/html" in data:
                del data[WIDGET_VIEW]
                data["text/plain"] = "(layer explorer: run the notebook for the live widget)"
                changed += 1
    return changed


LEAK = re.compile(r"(/tmp/|/work/|/home/|/Users/|/root/|\b[A-Z]:\\\w|PosixPath\(|WindowsPath\()")


def leaked_paths(nb) -> list[str]:
    """Lines of code-cell outputs that show a machine's path (a temporary clone, a home folder, a Path
    object's repr): published notebooks must read the same on every machine."""
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts = [out.get("text", "")] + [v for k, v in out.get("data", {}).items()
                                            if k.startswith("text/") and isinstance(v, str)]
            for text in texts:
                found += [line.strip()[:200] for line in text.splitlines() if LEAK.search(line)]
    return found


def publish(profile: str, only: list[str] | None = None) -> list[pathlib.Path]:
    """Copy executed notebooks where they are read: quick outputs into notebooks/ (for the repository page),
    smoke copies into tests/smoke_notebooks/ (for nbval). Returns the written paths."""
    import nbformat

    if profile not in ("quick", "smoke"):
        raise SystemExit("--publish applies to the quick (notebooks/) and smoke (tests/smoke_notebooks/) runs")
    written = []
    for nb_path in notebooks(only):
        executed = paths.executed_dir(profile) / nb_path.name
        if not executed.exists():
            raise SystemExit(f"{executed} does not exist: run ./run_all.sh --profile {profile} first")
        nb = nbformat.read(executed, as_version=4)
        strip_volatile(nb)
        if profile == "quick":  # the defaults are the quick run's parameters: no injected cell in notebooks/
            nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
            drop_progress_bars(nb)  # (the smoke copies keep them: nbval compares what a rerun displays)
            target = nb_path
        else:
            SMOKE_COPIES.mkdir(parents=True, exist_ok=True)
            target = SMOKE_COPIES / nb_path.name
        prefer_snapshots(nb)
        renumber(nb)
        for line in leaked_paths(nb):
            print(f"[fula] warning: {nb_path.name} shows a machine path in its outputs: {line}", file=sys.stderr)
        nbformat.write(nb, target)
        written.append(target)
    return written


def resolve_jobs(jobs: str, device: str) -> int:
    """'auto': 2 single-threaded notebooks at a time on a CPU with >= 2 cores; 1 when a GPU does the work."""
    if jobs != "auto":
        if not jobs.isdigit() or int(jobs) < 1:
            raise SystemExit(f"--jobs {jobs!r}: give a positive number or 'auto'")
        return int(jobs)
    import torch

    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return 1 if on_gpu or (os.cpu_count() or 1) < 2 else 2


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="run_all.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", choices=list(PROFILES))
    parser.add_argument("--shrink", action="store_true",
                        help="run the profile's structure at toy sizes (config.shrink: every architecture, data set, "
                             "testbed and figure, with 1 epoch, width 4, a few images): a proof that every code path "
                             "of the profile runs, in minutes. Results go under '<profile>-shrunk' "
                             "(cache, figures, executed), never under the profile's own name")
    parser.add_argument("--only", nargs="+", metavar="NN", help="notebook numbers to run, e.g. --only 00 03")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a notebook parameter (must be declared in every selected notebook)")
    parser.add_argument("--jobs", default="auto",
                        help="notebooks run at a time (auto: 2 on a multi-core CPU, 1 with CUDA)")
    parser.add_argument("--output-root", metavar="DIR",
                        help="write executed/, figures/, results/ and (unless FULA_CACHE_DIR is set) cache/ under DIR "
                             "instead of the repository, e.g. for a read-only checkout (same as FULA_OUTPUT_DIR)")
    parser.add_argument("--executor", default="local", choices=["local", "ray"],
                        help="local: notebooks in a process pool (default); ray: first every unit of the profile "
                             "(fula_core.units: base models, stitch passes, evaluations, IRI sets) as Ray tasks, "
                             "then the notebooks, which find them cached")
    parser.add_argument("--address", metavar="ADDR",
                        help="with --executor ray: an existing Ray cluster (e.g. 'auto' or 'ray://head:10001'); "
                             "default: a local cluster of this machine's GPUs and CPUs")
    parser.add_argument("--ray-cpus", type=int, metavar="N",
                        help="with --executor ray and no --address: CPUs of the local cluster (default: all)")
    parser.add_argument("--publish", action="store_true",
                        help="afterwards copy the executed notebooks into notebooks/ (quick) or tests/smoke_notebooks/ (smoke)")
    args = parser.parse_args(argv)
    profile = args.profile + SHRUNK_SUFFIX if args.shrink else args.profile
    if args.output_root:
        os.environ["FULA_OUTPUT_DIR"] = args.output_root
    prepare_environment()
    signal.signal(signal.SIGTERM, _on_termination)
    signal.signal(signal.SIGHUP, _on_termination)
    started = time.time()
    if args.executor != "ray" and (args.address or args.ray_cpus):
        raise SystemExit("--address / --ray-cpus apply to --executor ray")
    if args.executor == "ray":
        from .ray_executor import run_units

        run_units(profile, only=args.only, address=args.address, device=args.device, num_cpus=args.ray_cpus)
    run(profile, args.only, dict(parse_param(p) for p in args.param), args.device, resolve_jobs(args.jobs, args.device))
    if args.publish:
        for path in publish(profile, args.only):
            print(f"[fula] published {path.relative_to(REPO)}")
    print(f"[fula] all done in {time.time() - started:.0f}s; figures in {paths.figures_dir(profile)}/")


if __name__ == "__main__":
    main()
