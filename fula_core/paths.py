"""Where things go, and the one helper that saves figures and tidy tables.

Everything a run writes lives under one output root: the repository itself by default, or
$FULA_OUTPUT_DIR (`./run_all.sh --output-root DIR`), so that a read-only checkout can run:

  <root>/cache/<profile>/     trained models, stitches, evaluations (config-hashed, see store.py);
                              $FULA_CACHE_DIR moves the cache alone
  <root>/figures/<profile>/   fig04_....png/.pdf + MANIFEST.json (figure -> notebook, config hash)
  <root>/results/<profile>/   tidy CSV tables
  <root>/executed/<profile>/  notebooks as papermill ran them, logs/ of parallel runs, timings.json

A relative path in these variables means relative to the directory the run was started from: the runner
makes them absolute before it starts any worker (a notebook kernel runs in notebooks/, and would otherwise
read them from there).
"""
from __future__ import annotations

import os
import pathlib

from .store import config_key, update_json

REPO = pathlib.Path(__file__).resolve().parent.parent

# Environment variables naming folders; the runner makes each absolute before starting workers
PATH_VARIABLES = ("FULA_OUTPUT_DIR", "FULA_CACHE_DIR", "FULA_DATA_DIR")


def _env_path(variable: str) -> pathlib.Path | None:
    value = os.environ.get(variable)
    return pathlib.Path(value).expanduser().absolute() if value else None


def output_root() -> pathlib.Path:
    """$FULA_OUTPUT_DIR, else the repository."""
    return _env_path("FULA_OUTPUT_DIR") or REPO


def cache_dir(profile: str) -> pathlib.Path:
    return (_env_path("FULA_CACHE_DIR") or output_root() / "cache") / profile


def figures_dir(profile: str) -> pathlib.Path:
    return output_root() / "figures" / profile


def results_dir(profile: str) -> pathlib.Path:
    return output_root() / "results" / profile


def executed_dir(profile: str) -> pathlib.Path:
    return output_root() / "executed" / profile


class OutputPath(type(pathlib.Path())):
    """A written file's path that displays relative to the output root ('results/quick/x.csv'): a notebook
    cell that ends with a save call shows it as its value, and a published notebook must not show the
    folder of the machine that ran it (a temporary clone, a home directory). It is a normal Path otherwise."""

    def __repr__(self) -> str:
        try:
            return repr(str(pathlib.PurePath(self).relative_to(output_root())))
        except ValueError:  # outside the output root: its name says what was written
            return repr(self.name)


def save_figure(fig, name: str, *, profile: str, notebook: str, config=None) -> pathlib.Path:
    """Save `fig` as figures/<profile>/<name>.png and .pdf and record it in the profile's manifest.

    `name` follows the paper: "fig04_cross_task_adversarial", "table1_base_models", ... `config` is
    whatever determined the figure's numbers; its hash goes into MANIFEST.json.
    """
    out = figures_dir(profile)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{name}.png"
    fig.savefig(png, dpi=120, bbox_inches="tight")
    fig.savefig(out / f"{name}.pdf", bbox_inches="tight", metadata={"CreationDate": None})
    _record(profile, name, notebook, config, [png.name, f"{name}.pdf"])
    return OutputPath(png)


def save_table(df, name: str, *, profile: str, notebook: str, config=None) -> pathlib.Path:
    """Write a tidy table to figures/<profile>/<name>.csv, beside the figures it feeds (committed with them).
    Columns of arrays (the per-image `scores` of experiments.eval_rows) stay in the cache, not in the CSV."""
    folder = figures_dir(profile)
    folder.mkdir(parents=True, exist_ok=True)
    # an array has ndim >= 1; a NumPy scalar (every number a DataFrame hands back) has a shape too, but ndim 0
    arrays = [c for c in df.columns if len(df) and getattr(df[c].iloc[0], "ndim", 0) > 0]
    path = folder / f"{name}.csv"
    df.drop(columns=arrays).to_csv(path, index=False)
    _record(profile, name, notebook, config, [path.name])
    return OutputPath(path)


def _record(profile: str, name: str, notebook: str, config, files: list[str]) -> None:
    update_json(figures_dir(profile) / "MANIFEST.json", name,
                {"notebook": notebook, "files": files, "config_hash": config_key(config) if config is not None else None})
