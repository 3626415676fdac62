"""Where things go, and the one helper that saves figures and tidy tables.

  cache/<profile>/            trained models, stitches, evaluations (config-hashed, see store.py)
  figures/<profile>/          fig04_....png/.pdf + MANIFEST.json (figure -> notebook, config hash)
  results/<profile>/          tidy CSV tables
  executed/<profile>/         notebooks as papermill ran them
"""
from __future__ import annotations

import os
import pathlib

from .store import config_key, update_json

REPO = pathlib.Path(__file__).resolve().parent.parent


def cache_dir(profile: str) -> pathlib.Path:
    return pathlib.Path(os.environ.get("FULA_CACHE_DIR", REPO / "cache")) / profile


def figures_dir(profile: str) -> pathlib.Path:
    return REPO / "figures" / profile


def results_dir(profile: str) -> pathlib.Path:
    return REPO / "results" / profile


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
    return png


def save_table(df, name: str, *, profile: str, notebook: str, config=None) -> pathlib.Path:
    """Write a tidy table to results/<profile>/<name>.csv (and to figures/ when it is a paper table)."""
    paths = []
    for folder in ([results_dir(profile), figures_dir(profile)] if name.startswith("table") else [results_dir(profile)]):
        folder.mkdir(parents=True, exist_ok=True)
        df.to_csv(folder / f"{name}.csv", index=False)
        paths.append(folder / f"{name}.csv")
    _record(profile, name, notebook, config, [p.name for p in paths])
    return paths[0]


def _record(profile: str, name: str, notebook: str, config, files: list[str]) -> None:
    update_json(figures_dir(profile) / "MANIFEST.json", name,
                {"notebook": notebook, "files": files, "config_hash": config_key(config) if config is not None else None})
