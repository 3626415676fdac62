"""The straightforward per-run reference implementation: side (a) of every benchmark.

This is how the published code works, and how one would write it without fula_core's engine:

* Stitching: one stitched model per run. Every run deep-copies the front and end models (a separate
  process would load them fresh), solves its own least-squares init on the same K images, and trains its
  1x1-conv stitch with Adam over a torchvision DataLoader whose dataset applies CPU-side torchvision
  transforms per sample (RandomCrop with zero padding, RandomHorizontalFlip). Per batch it runs a fresh
  front forward f_{<=i} and a fresh end forward (targets and logits), in fp32 with the frozen models in
  train-BN mode (frozen weights, running statistics updated), then the stitched forward and backward.
  PGD inputs (alpha > 0) come from fula_core.attacks.pgd_linf on the stitched model in eval mode.
  The losses (fula_loss, slm_loss, relative_error, cross-entropy), the least-squares solver (lstsq_init),
  the learning-rate schedule, the number of optimiser steps and the seeds are those of fula_core, so only
  the engine differs.
* Base training: the standard PyTorch loop (DataLoader + CPU transforms, fp32, SGD with momentum,
  MultiStepLR, loss.item() each step), with the Madry PGD-AT variant (clean share 1 - alpha).

Nothing here uses autocast, channels_last, torch.compile or device-resident data: on CUDA the batches
are copied from pinned host memory each step, as in a typical training script.
"""
from __future__ import annotations

import copy
import hashlib
import math
import sys
import pathlib
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fula_core import attacks  # noqa: E402
from fula_core.data import DATASET_INFO, ImageSet  # noqa: E402
from fula_core.models import build  # noqa: E402
from fula_core.stitching import StitchConfig, StitchJob, lstsq_init, objective_loss  # noqa: E402
from fula_core.train import TrainConfig  # noqa: E402


# ----------------------------------------------------------------------------------------------------
# Data: a TensorDataset with per-sample torchvision transforms


class AugmentedTensorDataset(Dataset):
    """uint8 images [N, C, H, W] + labels; each item is transformed on the CPU, then scaled to [0, 1]."""

    def __init__(self, data: ImageSet, augment: bool):
        self.images, self.labels = data.images.cpu(), data.labels.cpu()
        info = DATASET_INFO[data.base_name]
        steps = []
        if augment:
            steps.append(transforms.RandomCrop(info["image_size"], padding=info["crop_padding"]))
            if info["flip"]:
                steps.append(transforms.RandomHorizontalFlip())
        self.transform = transforms.Compose(steps) if steps else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i]
        if self.transform is not None:
            x = self.transform(x)
        return x.float().div(255), self.labels[i]


_LOADERS: dict = {}  # (data, settings) -> DataLoader with running worker processes


def make_loader(data: ImageSet, batch_size: int, augment: bool, seed: int, device: torch.device,
                workers: int) -> DataLoader:
    """Shuffled, drop_last (a batch of one breaks BatchNorm), pinned memory on CUDA.

    With worker processes, one loader per data set is kept and handed to every later run, its sampler
    re-seeded: the workers start once, as their start-up would be amortised over a real run's 30-200
    epochs (a new pool per one-epoch benchmark run would overstate the reference's cost).
    """
    if workers == 0:
        return DataLoader(AugmentedTensorDataset(data, augment), batch_size=batch_size, shuffle=True, drop_last=True,
                          generator=torch.Generator().manual_seed(seed))
    key = (id(data), batch_size, augment, workers, device.type)
    if key not in _LOADERS:
        loader = DataLoader(AugmentedTensorDataset(data, augment), batch_size=batch_size, shuffle=True,
                            drop_last=True, num_workers=workers, pin_memory=device.type == "cuda",
                            persistent_workers=True, generator=torch.Generator())
        _LOADERS[key] = (data, loader)  # keeps `data` alive, so its id is not reused
    loader = _LOADERS[key][1]
    loader.generator.manual_seed(seed)
    return loader


def default_workers(device: torch.device) -> int:
    """0 on the CPU (workers would compete with the training for the cores), 4 on CUDA (typical script)."""
    return 4 if device.type == "cuda" else 0


def _milestones(epochs: int, steps: int, fractions: Sequence[float]) -> list[int]:
    return sorted({max(1, round(f * epochs)) * steps for f in fractions})


def job_seed(seed: int, job: StitchJob) -> int:
    """The per-job PGD random stream, seeded as fula_core seeds it (sha256 of "seed:job name")."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{job.name}".encode()).digest()[:7], "little")


# ----------------------------------------------------------------------------------------------------
# Stitching, one run per stitched model


class ReferenceStitch(nn.Module):
    """1x1 convolution with bias, bilinear resize first when the resolutions differ."""

    def __init__(self, c_in: int, c_out: int, out_size):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=True)
        self.out_size = tuple(out_size)

    def forward(self, a):
        if tuple(a.shape[-2:]) != self.out_size:
            a = F.interpolate(a, size=self.out_size, mode="bilinear", align_corners=False)
        return self.conv(a)


class ReferenceStitchedModel(nn.Module):
    """h = g_{>j} o T o f_{<=i} with this run's own copies of f and g."""

    def __init__(self, front, end, stitch, job: StitchJob):
        super().__init__()
        self.front, self.end, self.stitch, self.job = front, end, stitch, job

    def forward(self, x):
        return self.end.forward_from(self.stitch(self.front.activations_upto(x, self.job.front_point)),
                                     self.job.end_point)


def _freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def reference_init(front, end, job: StitchJob, init_data: ImageSet, cfg: StitchConfig, device) -> ReferenceStitch:
    """The run's own least-squares (DM) init on the same K images fula_core uses (models in eval mode)."""
    sample = init_data.take(cfg.lstsq_samples, seed=cfg.seed)
    x = sample.images.to(device).float() / 255
    front.eval(), end.eval()
    with torch.no_grad():
        a = torch.cat([front.activations_upto(xb, job.front_point) for xb in x.split(256)])
        t = torch.cat([end.activations_upto(xb, job.end_point) for xb in x.split(256)])
    stitch = ReferenceStitch(a.shape[1], t.shape[1], t.shape[-2:]).to(device)
    if a.shape[-2:] != t.shape[-2:]:
        a = F.interpolate(a, size=t.shape[-2:], mode="bilinear", align_corners=False)
    weight, bias = lstsq_init(a, t)
    with torch.no_grad():
        stitch.conv.weight.copy_(weight), stitch.conv.bias.copy_(bias)
    return stitch


def reference_stitch_run(front0, end0, job: StitchJob, data: ImageSet, cfg: StitchConfig, device,
                         workers: int | None = None) -> tuple[ReferenceStitchedModel, list[float]]:
    """Train one stitch the straightforward way; returns the stitched model (eval mode) and epoch losses."""
    device = torch.device(device)
    workers = default_workers(device) if workers is None else workers
    torch.manual_seed(cfg.seed)
    front, end = _freeze(copy.deepcopy(front0)), _freeze(copy.deepcopy(end0))
    stitch = reference_init(front, end, job, data, cfg, device)
    model = ReferenceStitchedModel(front, end, stitch, job)
    loader = make_loader(data, cfg.batch_size, cfg.augment, cfg.seed, device, workers)
    opt = torch.optim.Adam(stitch.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, _milestones(cfg.epochs, len(loader), cfg.lr_milestones),
                                                 gamma=cfg.lr_gamma)
    gen = torch.Generator(device=device).manual_seed(job_seed(cfg.seed, job))
    train_bn = cfg.bn_mode == "train"
    i, alpha = job.front_point, job.alpha
    losses = []
    for _ in range(cfg.epochs):
        running = 0.0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            inputs = []
            if alpha > 0:  # craft first, in eval mode: the attack must not move the running statistics
                model.eval()
                x_adv = attacks.pgd_linf(model, x, y, eps=cfg.pgd_eps, step_size=cfg.pgd_step,
                                         steps=cfg.pgd_steps, generator=gen)
            if alpha < 1:
                inputs.append((1 - alpha, x))
            if alpha > 0:
                inputs.append((alpha, x_adv))
            front.train(train_bn), end.train(train_bn)
            feeds = []
            with torch.no_grad():  # a fresh front and end forward on this batch
                for share, xi in inputs:
                    a = front.activations_upto(xi, i)
                    targets, end_logits = end.activations(xi, with_logits=True)
                    feeds.append((share, a, targets, end_logits))
            opt.zero_grad()
            for share, a, targets, end_logits in feeds:
                out = stitch(a)
                # the engine's own loss, so only the way of running differs
                loss = objective_loss(job, out, end, y, targets, end_logits, cfg, train_bn)
                (share * loss).backward()
                running += share * loss.item()
            opt.step()
            sched.step()
        losses.append(running / len(loader))
    return model.eval(), losses


def reference_stitching(front, end, jobs: Sequence[StitchJob], data: ImageSet, cfg: StitchConfig, device,
                        workers: int | None = None) -> list[tuple[ReferenceStitchedModel, list[float]]]:
    """Every job as its own run, one after the other."""
    return [reference_stitch_run(front, end, job, data, cfg, device, workers) for job in jobs]


# ----------------------------------------------------------------------------------------------------
# Base training


def reference_train_model(cfg: TrainConfig, train_data: ImageSet, device, workers: int | None = None) -> nn.Module:
    """Standard fp32 training loop: clean SGD, or Madry PGD-AT with clean share 1 - adv_alpha."""
    device = torch.device(device)
    workers = default_workers(device) if workers is None else workers
    torch.manual_seed(cfg.seed)
    model = build(cfg.arch, train_data.num_classes, train_data.images.shape[1], cfg.width).to(device)
    data = train_data.take(cfg.train_subset, seed=cfg.seed) if cfg.train_subset else train_data
    loader = make_loader(data, cfg.batch_size, cfg.augment, cfg.seed, device, workers)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, _milestones(cfg.epochs, len(loader), cfg.lr_milestones),
                                                 gamma=cfg.lr_gamma)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    for epoch in range(cfg.epochs):
        running = 0.0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cfg.adv_alpha > 0:
                model.eval()
                x_adv = attacks.pgd_linf(model, x, y, eps=cfg.pgd_eps, step_size=cfg.pgd_step, steps=cfg.pgd_steps,
                                         generator=gen)
            model.train()
            loss = F.cross_entropy(model(x), y) if cfg.adv_alpha < 1 else 0.0
            if cfg.adv_alpha > 0:
                loss = (1 - cfg.adv_alpha) * loss + cfg.adv_alpha * F.cross_entropy(model(x_adv), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()
        if not math.isfinite(running):
            raise FloatingPointError(f"reference training diverged in epoch {epoch + 1}")
    return model.eval()
