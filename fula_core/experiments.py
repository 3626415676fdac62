"""Cached stitching grids: the one loop behind every figure.

A notebook names a front model, an end model, the stitch jobs and the data (clean, with shortcut markers,
first k classes, or IRIs) and gets back tidy rows. Each trained stitch and each evaluation is stored under
a hash of everything that determines it, so a figure rebuilds from the cache, a new job trains only
itself, and all missing jobs of a pair train together in one multi-job pass.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from . import attacks, metrics
from .data import ImageSet, load
from .models import StitchableResNet
from .stitching import STITCHING_VERSION, StitchConfig, StitchJob, StitchOutcome, predict, train_stitches
from .store import ResultStore
from .train import get_model

EXPERIMENTS_VERSION = 2  # 2: shortcut markers pasted per batch after augmentation, the authors' colours and layout
# 2: evaluations keep every test image's score (correct or not, its agreement), for the paired bootstraps of claims.py
EVAL_VERSION = 2
METRICS = ("accuracy", "agreement")


@dataclass(frozen=True)
class DataSpec:
    """A data set as a config: which set, which split, and the transforms applied to it."""

    dataset: str
    split: str = "train"
    subset: int | None = None  # a fixed random subset of this many images (seeded)
    first_classes: int | None = None  # only samples of the first k classes (class-subset testbed)
    # with both: False = `subset` images drawn from the first k classes (the same count for every k); True =
    # the subset is drawn from the whole set first, then its images of the first k classes kept (count ~ k)
    subset_first: bool = False
    shortcut: str | None = None  # shortcuts.SHORTCUT_KINDS
    shift: int = 0  # images of class y carry the marker of class y - shift (1 = the authors' shifted markers)
    seed: int = 0  # the subset, and the marker layout (class colours, patterns, locations): the stitch's seed

    def load(self, device="cpu", data_dir=None) -> ImageSet:
        """The set, with markers when `shortcut` is set: the stored copy's per-image draws use seed (train)
        or seed + 1 (test), the class layout uses seed for both splits, so that a stitch is scored with
        the layout it was trained with. Training batches draw fresh markers (data.batches)."""
        data = load(self.dataset, self.split, root=data_dir)
        if self.subset is not None and self.subset_first:
            data = data.take(self.subset, seed=self.seed)
        if self.first_classes is not None:
            data = data.first_classes(self.first_classes)
        if self.subset is not None and not self.subset_first:
            data = data.take(self.subset, seed=self.seed)
        if self.shortcut is not None:
            from .shortcuts import add_shortcut

            data = add_shortcut(data, self.shortcut, seed=self.seed + (1 if self.split == "test" else 0),
                                shift=self.shift, layout_seed=self.seed)
        return data.to(device)


@dataclass(frozen=True)
class EvalSpec:
    """How a stitched model is scored: on which data, under which attack (None = clean)."""

    data: DataSpec
    attack: str | None = None  # None, "pgd" or "autoattack"
    eps: float = 0.0
    pgd_step: float = 0.0
    pgd_steps: int = 0
    autoattack_iter: int = 100
    autoattack_eot: int = 20

    @property
    def name(self) -> str:
        d = self.data
        parts = [d.split]
        if d.shortcut:
            parts.append(f"{d.shortcut}{'-shifted' if d.shift else ''}")
        if self.attack:
            parts.append(self.attack)
        return "/".join(parts)


# ----------------------------------------------------------------------------------------------------
# The standard data of every testbed, built here only: notebooks share trained stitches and evaluations
# because they ask for equal specs (equal specs -> equal cache keys).


def stitch_train_spec(P, dataset: str | None = None, **changes) -> DataSpec:
    """Clean stitch training data: the profile's subset of `dataset`'s (default: the end task's) training set;
    `changes`: further DataSpec fields (shortcut, first_classes, ...)."""
    return DataSpec(dataset or P.end_dataset, "train", subset=P.stitch_train_subset, **changes)


def adv_train_spec(P, dataset: str | None = None) -> DataSpec:
    """Training data of adversarial (alpha > 0) stitches: CPU profiles use fewer images, since PGD makes each
    image several times dearer."""
    subset = P.adv_stitch_train_subset if P.adv_stitch_train_subset is not None else P.stitch_train_subset
    return DataSpec(dataset or P.end_dataset, "train", subset=subset)


def clean_eval_spec(P, dataset: str | None = None, **changes) -> EvalSpec:
    """Clean test accuracy and agreement on the profile's evaluation subset."""
    return EvalSpec(DataSpec(dataset or P.end_dataset, "test", subset=P.eval_subset, **changes))


def robust_eval_spec(P, dataset: str | None = None, eps: float | None = None) -> EvalSpec:
    """Robust accuracy on a fixed test subset, attacked against each scored model: AutoAttack 'rand' at
    `paper` (P.robust_attack), PGD (at least 10 steps, step eps/2.5) at the CPU profiles; eps defaults to the base models'."""
    eps = P.base.pgd_eps if eps is None else eps
    step = P.base.pgd_step if eps == P.base.pgd_eps else eps / 2.5
    return EvalSpec(DataSpec(dataset or P.end_dataset, "test", subset=P.robust_eval_subset, seed=1),
                    attack=P.robust_attack, eps=eps, pgd_step=step,
                    pgd_steps=max(P.base.pgd_steps, 10), autoattack_iter=P.autoattack_iter,
                    autoattack_eot=P.autoattack_eot)


def attack_inputs(model, data: ImageSet, spec: EvalSpec) -> torch.Tensor:
    """The inputs `spec` scores `model` on: the clean images, or attacks crafted against `model` itself."""
    x = data.images.float() / 255
    if spec.attack is None:
        return x
    out = []
    for xb, yb in zip(x.split(500), data.labels.split(500)):
        if spec.attack == "pgd":
            out.append(attacks.pgd_linf(model, xb, yb, eps=spec.eps, step_size=spec.pgd_step, steps=spec.pgd_steps,
                                        generator=torch.Generator(device=xb.device).manual_seed(0)))
        elif spec.attack == "autoattack":
            out.append(attacks.autoattack_rand(model, xb, yb, eps=spec.eps, n_iter=spec.autoattack_iter,
                                               eot_iter=spec.autoattack_eot))
        else:
            raise ValueError(f"unknown attack {spec.attack!r}: use None, 'pgd' or 'autoattack'")
    return torch.cat(out)


def score(model, end: StitchableResNet, data: ImageSet, spec: EvalSpec,
          end_logits: torch.Tensor | None = None) -> dict:
    """Accuracy of `model` on `data` (attacked against `model` itself if the spec says so) and its
    agreement with the end model on the same inputs, as means ("accuracy", "agreement", in percent) and per
    test image ("correct": bool tensor [N], "agree": float32 tensor [N] in percent), in the order of `data`.
    `end_logits`: the end model's logits on the clean `data`, when the caller has them already (clean specs
    only: attacked inputs differ per model)."""
    model.eval()
    x = attack_inputs(model, data, spec)
    with torch.no_grad():
        logits = torch.cat([model(xb) for xb in x.split(500)]).float()
        if end_logits is None or spec.attack is not None:
            end_logits = torch.cat([end(xb) for xb in x.split(500)]).float()
    # tensors, not numpy arrays: the store loads with torch.load(weights_only=True)
    correct = (logits.argmax(1) == data.labels.to(logits.device)).cpu()
    agree = metrics.agreement_per_sample(logits, end_logits).cpu()
    return {"accuracy": 100.0 * correct.double().mean().item(), "agreement": agree.mean().item(),
            "correct": correct, "agree": agree.float()}


def per_image(scores: dict, metric: str):
    """A stored evaluation's per-image scores of `metric` in percent (float32 [N]; accuracy: 0 or 100)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: use one of {METRICS}")
    if not np.isfinite(scores[metric]):  # a failed stitch: NaN on every image
        return np.full(len(scores["agree"]), np.nan, np.float32)
    if metric == "accuracy":
        return np.asarray(scores["correct"]).astype(np.float32) * 100
    return np.asarray(scores["agree"]).astype(np.float32)


def eval_rows(scores: dict, **labels) -> list[dict]:
    """One tidy row per metric of one stored evaluation: `labels`, metric, value (the mean) and scores
    (the per-image array; paths.save_table leaves it out of the CSVs)."""
    return [{**labels, "metric": m, "value": scores[m], "scores": per_image(scores, m)} for m in METRICS]


def stitch_key(front_cfg, end_cfg, cfg: StitchConfig, train_spec: DataSpec, job: StitchJob) -> dict:
    """The store key of one trained stitch (kind "stitch"): the two models' configs, the job, the stitch
    config and the training data. A function of configs only, so that a stitch's key is known before any
    model is loaded (fula_core.units schedules by it)."""
    return {"front": front_cfg, "end": end_cfg, "job": job, "cfg": cfg, "train": train_spec,
            "version": (STITCHING_VERSION, EXPERIMENTS_VERSION)}


@dataclass(frozen=True)
class StitchGroup:
    """One training pass of a testbed: the jobs between one front and one end model with one stitch config
    on one training set (a single multi-job `train_stitches` call for the jobs the cache lacks), and the
    evaluations of its stitches, each (jobs, eval specs). The testbed modules build their runs from these,
    and fula_core.units lists them as the units of a profile without running a notebook."""

    front_cfg: object
    end_cfg: object
    cfg: StitchConfig
    train: DataSpec
    jobs: tuple[StitchJob, ...]
    evals: tuple[tuple[tuple[StitchJob, ...], tuple[EvalSpec, ...]], ...] = ()
    labels: tuple[tuple[str, object], ...] = ()  # what the notebook calls this pass (arch, task, seed, ...)

    def key(self, job: StitchJob) -> dict:
        return stitch_key(self.front_cfg, self.end_cfg, self.cfg, self.train, job)

    def eval_key(self, job: StitchJob, spec: EvalSpec) -> dict:
        return {"stitch": self.key(job), "eval": spec, "eval_version": EVAL_VERSION}

    def stitcher(self, store: ResultStore, device, *, front=None, end=None, data_dir=None,
                 progress: bool = True) -> "Stitcher":
        """The Stitcher of this pass (loads, or trains, the two models unless they are passed in)."""
        return Stitcher(store, self.front_cfg, self.end_cfg, self.cfg, self.train, device, front=front, end=end,
                        data_dir=data_dir, progress=progress)

    def describe(self) -> str:
        return " | ".join(f"{v}" for _, v in self.labels) + f": {len(self.jobs)} jobs"


class Stitcher:
    """Stitch jobs between one front and one end model, cached job by job."""

    def __init__(self, store: ResultStore, front_cfg, end_cfg, cfg: StitchConfig, train_spec: DataSpec, device,
                 *, front: StitchableResNet | None = None, end: StitchableResNet | None = None, data_dir=None,
                 progress: bool = True):
        """front_cfg / end_cfg: TrainConfig of zoo models (or any hashable description when the models are
        passed in directly)."""
        self.store, self.cfg, self.train_spec, self.device = store, cfg, train_spec, device
        self.front_cfg, self.end_cfg = front_cfg, end_cfg
        self.data_dir, self.progress = data_dir, progress
        self.front = front if front is not None else get_model(store, front_cfg, device, data_dir=data_dir, progress=progress)
        self.end = end if end is not None else get_model(store, end_cfg, device, data_dir=data_dir, progress=progress)

    def key(self, job: StitchJob) -> dict:
        """Everything that determines the trained stitch of `job` (its store key)."""
        return stitch_key(self.front_cfg, self.end_cfg, self.cfg, self.train_spec, job)

    def outcomes(self, jobs: list[StitchJob]) -> list[StitchOutcome]:
        """Trained stitches for `jobs`: the cached ones loaded, all missing ones trained together."""
        keys = [self.key(j) for j in jobs]
        missing = [j for j, k in zip(jobs, keys) if not self.store.has("stitch", k)]
        if missing:
            data = self.train_spec.load(self.device, self.data_dir)
            batch_key = {"jobs": [self.key(j) for j in missing]}
            ckpt = self.store.checkpointer("stitch_batch", batch_key)
            trained = train_stitches(self.front, self.end, missing, data, self.cfg, checkpoint=ckpt,
                                     progress=self.progress)
            for job, out in zip(missing, trained):
                self.store.save("stitch", self.key(job), dataclasses.asdict(out) | {"job": dataclasses.asdict(job)})
            ckpt.clear()
        result = []
        for job, key in zip(jobs, keys):
            d = self.store.load("stitch", key)
            d["job"] = job
            result.append(StitchOutcome(**d))
        return result

    def evaluate(self, jobs: list[StitchJob], specs: list[EvalSpec]) -> list[dict]:
        """Tidy rows: one per job x eval spec x metric (accuracy, agreement), cached per job and spec."""
        rows, outs, cache, end_cache = [], None, {}, {}
        for job in jobs:
            for spec in specs:
                key = self.eval_key(job, spec)
                if not self.store.has("stitch_eval", key):
                    if outs is None:
                        outs = dict(zip([j.name for j in jobs], self.outcomes(jobs)))
                    if spec.data not in cache:
                        cache[spec.data] = spec.data.load(self.device, self.data_dir)
                    o = outs[job.name]
                    model = o.model(self.front, self.end, self.cfg.resize)
                    if o.error:  # a failed stitch scores NaN on every image (claims drop it, and say so)
                        n = len(cache[spec.data])
                        scores = {"accuracy": float("nan"), "agreement": float("nan"),
                                  "correct": torch.zeros(n, dtype=torch.bool), "agree": torch.full((n,), float("nan"))}
                    else:
                        if spec.attack is None and spec.data not in end_cache:  # one end pass serves every job
                            end_cache[spec.data] = predict(self.end, cache[spec.data])
                        scores = score(model, self.end, cache[spec.data], spec, end_cache.get(spec.data))
                    self.store.save("stitch_eval", key, {**scores, "error": o.error or ""})
                s = self.store.load("stitch_eval", key)
                rows += eval_rows(s, objective=job.objective, front_point=job.front_point, end_point=job.end_point,
                                  alpha=job.alpha, job=job.name, eval=spec.name, error=s["error"])
        return rows

    def eval_key(self, job: StitchJob, spec: EvalSpec) -> dict:
        """The store key of `job`'s evaluation under `spec`."""
        return {"stitch": self.key(job), "eval": spec, "eval_version": EVAL_VERSION}


def check_rows(rows, expected: int, keys: Sequence[str], where: str) -> None:
    """A testbed's structure check: `expected` result rows, none duplicated on `keys` (each stitch scored once
    per evaluation and metric); a clear error naming `where` otherwise."""
    if len(rows) != expected:
        raise RuntimeError(f"{where}: {len(rows)} result rows where the plan needs {expected}: a testbed is missing "
                           f"jobs or evaluations (delete its cache entries and rerun)")
    dup = rows.duplicated(list(keys))
    if dup.any():
        raise RuntimeError(f"{where}: {int(dup.sum())} duplicated result rows (each stitch is scored once per evaluation)")


def baseline_rows(store: ResultStore, model: StitchableResNet, model_cfg, role: str, specs: list[EvalSpec], device,
                  data_dir=None, *, agree_with: StitchableResNet | None = None, agree_with_cfg=None) -> list[dict]:
    """Scores of a plain model (the front or the end baseline at the ends of a stitching plot).

    Agreement is measured against `agree_with` (described by `agree_with_cfg` in the cache key); by default
    the model itself, so a baseline's agreement is 100 by definition."""
    if (agree_with is None) != (agree_with_cfg is None):
        raise ValueError("baseline_rows: pass agree_with and agree_with_cfg together (the config keys the cache)")
    other, other_cfg = (model, model_cfg) if agree_with is None else (agree_with, agree_with_cfg)
    rows = []
    for spec in specs:
        key = {"baseline": model_cfg, "agree_with": other_cfg, "role": role, "eval": spec,
               "version": (EXPERIMENTS_VERSION, EVAL_VERSION)}
        if not store.has("baseline_eval", key):
            store.save("baseline_eval", key, score(model, other, spec.data.load(device, data_dir), spec))
        rows += eval_rows(store.load("baseline_eval", key), role=role, eval=spec.name)
    return rows


def baseline_table(store, models: Mapping[object, tuple[tuple[object, object], tuple[object, object]]],
                   specs_of: Callable[[str], list], device, *, key_names: Sequence[str] = ("pair",),
                   data_dir=None) -> pd.DataFrame:
    """Tidy baseline rows (key columns, role, dataset, eval, metric, value) for the ends of stitching plots.

    models: {key: ((front model, front cfg), (end model, end cfg))}, the key a value or a tuple named by
    `key_names` (e.g. ("arch", "task", "pair")). Each model is scored on its own task's test data,
    `specs_of(dataset)`: the front of a cross-task pair on its own task, as the front baseline of the
    paper's cross-task plots. Only accuracy is kept (a baseline's agreement with itself says nothing).
    """
    rows = []
    for key, ((front, front_cfg), (end, end_cfg)) in models.items():
        key = key if isinstance(key, tuple) else (key,)
        if len(key) != len(key_names):
            raise ValueError(f"key {key!r} does not match key_names {tuple(key_names)!r}")
        for role, (model, cfg) in (("front", (front, front_cfg)), ("end", (end, end_cfg))):
            for r in baseline_rows(store, model, cfg, role, specs_of(cfg.dataset), device, data_dir):
                if r["metric"] == "accuracy":
                    rows.append({**dict(zip(key_names, key)), "dataset": cfg.dataset, **r})
    return pd.DataFrame(rows)
