"""Cached stitching grids: the one loop behind every figure.

A notebook names a front model, an end model, the stitch jobs and the data (clean, with shortcut markers,
first k classes, or IRIs) and gets back tidy rows. Each trained stitch and each evaluation is stored under
a hash of everything that determines it, so a figure rebuilds from the cache, a new job trains only
itself, and all missing jobs of a pair train together in one multi-job pass.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from . import attacks, metrics
from .data import ImageSet, load
from .models import StitchableResNet
from .stitching import STITCHING_VERSION, StitchConfig, StitchJob, StitchOutcome, predict, train_stitches
from .store import ResultStore, config_key
from .train import TrainConfig, get_model

EXPERIMENTS_VERSION = 2  # 2: shortcut markers pasted per batch after augmentation, the authors' colours and layout


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
          end_logits: torch.Tensor | None = None) -> dict[str, float]:
    """Accuracy of `model` on `data` (attacked against `model` itself if the spec says so) and its
    agreement with the end model on the same inputs. `end_logits`: the end model's logits on the clean
    `data`, when the caller has them already (clean specs only: attacked inputs differ per model)."""
    model.eval()
    x = attack_inputs(model, data, spec)
    with torch.no_grad():
        logits = torch.cat([model(xb) for xb in x.split(500)]).float()
        if end_logits is None or spec.attack is not None:
            end_logits = torch.cat([end(xb) for xb in x.split(500)]).float()
    return {"accuracy": metrics.accuracy(logits, data.labels),
            "agreement": metrics.agreement_probability(logits, end_logits)}


class Stitcher:
    """Stitch jobs between one front and one end model, cached job by job."""

    def __init__(self, store: ResultStore, front_cfg, end_cfg, cfg: StitchConfig, train_spec: DataSpec, device,
                 *, front: StitchableResNet | None = None, end: StitchableResNet | None = None,
                 init_spec: DataSpec | None = None, iri: dict | None = None, data_dir=None, progress: bool = True):
        """front_cfg / end_cfg: TrainConfig of zoo models (or any hashable description when the models are
        passed in directly). `iri`: description of an IRI training set (its config), used with
        `train_data` set per call for invariance-aware stitching."""
        self.store, self.cfg, self.train_spec, self.device = store, cfg, train_spec, device
        self.front_cfg, self.end_cfg, self.init_spec, self.iri = front_cfg, end_cfg, init_spec, iri
        self.data_dir, self.progress = data_dir, progress
        self.front = front if front is not None else get_model(store, front_cfg, device, data_dir=data_dir, progress=progress)
        self.end = end if end is not None else get_model(store, end_cfg, device, data_dir=data_dir, progress=progress)

    def key(self, job: StitchJob) -> dict:
        """Everything that determines the trained stitch of `job` (its store key)."""
        return {"front": self.front_cfg, "end": self.end_cfg, "job": job, "cfg": self.cfg, "train": self.train_spec,
                "init": self.init_spec, "iri": self.iri, "version": (STITCHING_VERSION, EXPERIMENTS_VERSION)}

    def outcomes(self, jobs: list[StitchJob], train_data: ImageSet | None = None) -> list[StitchOutcome]:
        """Trained stitches for `jobs`: the cached ones loaded, all missing ones trained together."""
        keys = [self.key(j) for j in jobs]
        missing = [j for j, k in zip(jobs, keys) if not self.store.has("stitch", k)]
        if missing:
            data = train_data if train_data is not None else self.train_spec.load(self.device, self.data_dir)
            init = self.init_spec.load(self.device, self.data_dir) if self.init_spec else None
            batch_key = {"jobs": [self.key(j) for j in missing]}
            ckpt = self.store.checkpointer("stitch_batch", batch_key)
            trained = train_stitches(self.front, self.end, missing, data, self.cfg, init_data=init, checkpoint=ckpt,
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

    def evaluate(self, jobs: list[StitchJob], specs: list[EvalSpec], train_data: ImageSet | None = None) -> list[dict]:
        """Tidy rows: one per job x eval spec x metric (accuracy, agreement), cached per job and spec."""
        rows, outs, cache, end_cache = [], None, {}, {}
        for job in jobs:
            for spec in specs:
                key = {"stitch": self.key(job), "eval": spec}
                if not self.store.has("stitch_eval", key):
                    if outs is None:
                        outs = dict(zip([j.name for j in jobs], self.outcomes(jobs, train_data)))
                    if spec.data not in cache:
                        cache[spec.data] = spec.data.load(self.device, self.data_dir)
                    o = outs[job.name]
                    model = o.model(self.front, self.end, self.cfg.resize)
                    if o.error:
                        scores = {"accuracy": float("nan"), "agreement": float("nan")}
                    else:
                        if spec.attack is None and spec.data not in end_cache:  # one end pass serves every job
                            end_cache[spec.data] = predict(self.end, cache[spec.data])
                        scores = score(model, self.end, cache[spec.data], spec, end_cache.get(spec.data))
                    self.store.save("stitch_eval", key, {**scores, "error": o.error or ""})
                s = self.store.load("stitch_eval", key)
                for metric in ("accuracy", "agreement"):
                    rows.append({"objective": job.objective, "front_point": job.front_point, "end_point": job.end_point,
                                 "alpha": job.alpha, "job": job.name, "eval": spec.name, "metric": metric,
                                 "value": s[metric], "error": s["error"]})
        return rows


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
        key = {"baseline": model_cfg, "agree_with": other_cfg, "role": role, "eval": spec, "version": EXPERIMENTS_VERSION}
        if not store.has("baseline_eval", key):
            store.save("baseline_eval", key, score(model, other, spec.data.load(device, data_dir), spec))
        s = store.load("baseline_eval", key)
        for metric in ("accuracy", "agreement"):
            rows.append({"role": role, "eval": spec.name, "metric": metric, "value": s[metric]})
    return rows


def key_of(obj) -> str:
    """Short hash of any config, for the figure manifest."""
    return config_key(obj)
