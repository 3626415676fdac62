"""Run the numbered notebooks headlessly with papermill: `./run_all.sh [--profile P] [--only NN ...]`.

Each notebook's `parameters` cell is overridden with the profile (and any --param KEY=VALUE); a parameter
the notebook does not declare is an error, not silently ignored. The first failing notebook stops the run
with its name and the failing cell.
"""
from __future__ import annotations

import argparse
import ast
import pathlib
import sys
import time

from .config import PROFILES
from .paths import REPO

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
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def run(profile: str, only: list[str] | None = None, params: dict | None = None, device: str = "auto") -> None:
    import papermill

    if profile not in PROFILES:
        raise SystemExit(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    out_dir = REPO / "executed" / profile
    out_dir.mkdir(parents=True, exist_ok=True)
    parameters = {"profile": profile, "device": device, **(params or {})}
    selected = notebooks(only)
    if not selected:
        raise SystemExit(f"no notebooks found in {NOTEBOOKS}")
    for nb in selected:
        declared = papermill.inspect_notebook(str(nb))
        unknown = set(parameters) - set(declared)
        if unknown:
            raise SystemExit(f"{nb.name} has no parameter(s) {', '.join(sorted(unknown))}; "
                             f"it declares: {', '.join(declared)}")
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
        print(f"[fula] {nb.name} done in {time.time() - started:.0f}s", flush=True)


SMOKE_COPIES = REPO / "tests" / "smoke_notebooks"


def strip_volatile(nb) -> None:
    """Drop what changes on every run (timings, papermill bookkeeping) so diffs show real changes."""
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)  # widget state is per session
    for cell in nb.cells:
        for key in ("papermill", "execution", "ExecuteTime"):
            cell.metadata.pop(key, None)


def publish(profile: str, only: list[str] | None = None) -> list[pathlib.Path]:
    """Copy executed notebooks where they are read: quick outputs into notebooks/ (for the repository page),
    smoke copies into tests/smoke_notebooks/ (for nbval). Returns the written paths."""
    import nbformat

    if profile not in ("quick", "smoke"):
        raise SystemExit("--publish applies to the quick (notebooks/) and smoke (tests/smoke_notebooks/) runs")
    written = []
    for nb_path in notebooks(only):
        executed = REPO / "executed" / profile / nb_path.name
        if not executed.exists():
            raise SystemExit(f"{executed} does not exist: run ./run_all.sh --profile {profile} first")
        nb = nbformat.read(executed, as_version=4)
        strip_volatile(nb)
        if profile == "quick":  # the defaults are the quick run's parameters: no injected cell in notebooks/
            nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
            target = nb_path
        else:
            SMOKE_COPIES.mkdir(parents=True, exist_ok=True)
            target = SMOKE_COPIES / nb_path.name
        nbformat.write(nb, target)
        written.append(target)
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="run_all.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", choices=list(PROFILES))
    parser.add_argument("--only", nargs="+", metavar="NN", help="notebook numbers to run, e.g. --only 00 03")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a notebook parameter (must be declared in every selected notebook)")
    parser.add_argument("--publish", action="store_true",
                        help="afterwards copy the executed notebooks into notebooks/ (quick) or tests/smoke_notebooks/ (smoke)")
    args = parser.parse_args(argv)
    started = time.time()
    run(args.profile, args.only, dict(parse_param(p) for p in args.param), args.device)
    if args.publish:
        for path in publish(args.profile, args.only):
            print(f"[fula] published {path.relative_to(REPO)}")
    print(f"[fula] all done in {time.time() - started:.0f}s; figures in figures/{args.profile}/")


if __name__ == "__main__":
    main()
