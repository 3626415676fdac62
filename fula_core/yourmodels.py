"""Notebook 07: stitching networks that are not the project's own, by layer name.

Three torchvision networks on Fashion-MNIST (1 channel, 28x28), each wrapped with `models.stitchable`:
a small torchvision ResNet (one BasicBlock per stage, points layer1..layer4), torchvision's VGG-16-BN
(models.vgg16, the authors' 6 points) and torchvision's VisionTransformer as ViT-Tiny/4 (models.vit_tiny,
13 points). Two pairs are stitched: ResNet -> VGG (two CNNs of different depth, points paired by relative
depth) and ResNet -> ViT (feature maps into token sequences). Each stitch is trained with FuLA and with
SLM, on real images and on the front model's IRIs, and scored on the real test set.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import invariance, models
from .data import batches, load, steps_per_epoch
from .stitching import StitchConfig, StitchJob, predict
from .store import Checkpointer, ResultStore

YOURMODELS_VERSION = 1  # part of every cache key here


@dataclass(frozen=True)
class Sizes:
    """How much notebook 07 trains at a profile."""

    base_images: int  # training images of each base model
    base_epochs: int
    width: int  # VGG first-stage channels; the ViT's embedding is 3 * width
    stitch_images: int  # real images the least-squares init draws from
    stitch_epochs: int
    iri_images: int  # images inverted per front point; both data modes train on these (real) or their IRIs
    iri_steps: int
    iri_step_size: float
    test_images: int


def sizes(profile) -> Sizes:
    """Notebook 07's sizes at a profile (config.Profile.your_models: every profile's sizes live in config.py)."""
    return Sizes(**profile.your_models)

ARCHS = ("resnet", "vgg16", "vit_tiny")
RESNET_POINTS = ["layer1", "layer2", "layer3", "layer4"]


def make(arch: str, width: int, num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
    """A fresh wrapped torchvision network. "resnet": torchvision's ResNet with one BasicBlock per stage
    (ResNet-10) and a 1-channel stem; "vgg16" / "vit_tiny": the zoo's models.build architectures."""
    if arch == "resnet":
        from torchvision.models.resnet import BasicBlock, ResNet

        net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        return models.stitchable(net, RESNET_POINTS, in_channels=in_channels, num_classes=num_classes,
                                 mean=[0.5] * in_channels, std=[0.5] * in_channels,
                                 input_shape=(in_channels, image_size, image_size))
    return models.build(arch, num_classes, in_channels, width, image_size=image_size)


def train_base(store: ResultStore, arch: str, sizes: Sizes, seed: int, device, progress: bool = True) -> nn.Module:
    """One base model on Fashion-MNIST: SGD with momentum (peak lr 0.1 for the ResNet, 0.01 for VGG and
    ViT as the authors), a one-cycle schedule for these short runs, crop + flip; cached in `store`."""
    key = {"notebook": "07", "arch": arch, "seed": seed, "sizes": (sizes.base_images, sizes.base_epochs, sizes.width),
           "version": (models.MODELS_VERSION, YOURMODELS_VERSION)}

    def compute(ckpt: Checkpointer) -> dict:
        torch.manual_seed(seed)
        net = make(arch, sizes.width).to(device)
        data = load("fashion_mnist", "train").take(sizes.base_images, seed=seed).to(device)
        lr = 0.1 if arch == "resnet" else models.ARCH_TRAIN_OVERRIDES[arch]["lr"]
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
        steps = steps_per_epoch(len(data), 64) * sizes.base_epochs
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        gen = torch.Generator().manual_seed(seed)
        net.train()
        for _ in range(sizes.base_epochs):
            for x, y in batches(data, 64, shuffle=True, generator=gen, augment_data=True, drop_last=True):
                loss = F.cross_entropy(net(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        return {"state": {k: v.cpu() for k, v in net.state_dict().items()}}

    state = store.get_or_compute("model", key, compute)["state"]
    net = make(arch, sizes.width)
    net.load_state_dict(state)
    return net.to(device).eval()


def pair_points(front, end, n: int) -> list[tuple[str, str]]:
    """`n` (front point, end point) name pairs spread over the end model's depth, each end point paired
    with the front point at the same relative depth (the authors' proportional mapping)."""
    from .stitchable import proportional_points

    mapping = proportional_points(len(front.stitch_points), len(end.stitch_points))
    chosen = sorted({round(i * (len(end.stitch_points) - 1) / max(n - 1, 1)) for i in range(n)}) if n > 1 else [0]
    return [(front.stitch_points[mapping[j]], end.stitch_points[j]) for j in chosen]


def stitch_rows(store: ResultStore, name: str, front, end, pairs, sizes: Sizes, device, objectives=("fula", "slm"),
                progress: bool = True) -> list[dict]:
    """FuLA and SLM stitches of every (front point, end point) pair, on real images and on the front
    model's IRIs at the front point, scored on the real test set: tidy rows (cached)."""
    train = load("fashion_mnist", "train").take(sizes.stitch_images, seed=7).to(device)
    iri_source = train.take(sizes.iri_images, seed=8)
    test = load("fashion_mnist", "test").take(sizes.test_images, seed=1).to(device)
    cfg = StitchConfig(epochs=sizes.stitch_epochs, batch_size=64, lstsq_samples=min(500, sizes.iri_images))
    rows = []
    for front_point, end_point in pairs:
        jobs = [StitchJob(front_point, end_point, o) for o in objectives]
        iris = invariance.iri_set(store, {"notebook": "07", "front": name.split("->")[0], "sizes": dataclasses.astuple(sizes)},
                                  front, front_point, iri_source, steps=sizes.iri_steps, step_size=sizes.iri_step_size,
                                  progress=progress)
        for mode, data in (("real", iri_source), ("iri", iris.data)):
            key = {"notebook": "07", "pair": name, "jobs": [dataclasses.asdict(j) for j in jobs], "mode": mode,
                   "sizes": dataclasses.astuple(sizes), "version": YOURMODELS_VERSION}

            def compute(ckpt, jobs=jobs, data=data, mode=mode):
                stitch_cfg = cfg if mode == "real" else invariance.iri_stitch_config(cfg)
                from .stitching import train_stitches

                outs = train_stitches(front, end, jobs, data, stitch_cfg, init_data=train, checkpoint=ckpt,
                                      progress=progress)
                end_logits = predict(end, test)
                return [{"pair": name, "front_point": o.job.front_point, "end_point": o.job.end_point,
                         "objective": o.job.objective, "data": mode,
                         **invariance.score_stitch(o.model(front, end, stitch_cfg.resize), test, end_logits,
                                                   end.num_classes)} for o in outs]

            rows += store.get_or_compute("stitch_rows", key, compute)
    return rows


def test_accuracy(model: nn.Module, sizes: Sizes, device) -> float:
    from .stitching import evaluate

    return evaluate(model, load("fashion_mnist", "test").take(sizes.test_images, seed=1).to(device))["accuracy"]


def describe(model) -> list[dict]:
    """Point name, per-sample activation shape and stitch family of every point of a wrapped model."""
    from .stitching import activation_kind

    return [{"point": p, "shape": tuple(s), "family": activation_kind(s)}
            for p, s in zip(model.stitch_points, model.point_shapes())]


# ----------------------------------------------------------------------------------------------------
# Notebook 07's verdicts

NOTEBOOK = "07_your_models"


def claim_iri_agree_less(results, objective: str):
    """Paper 2 (§4, invariance-aware stitching): a stitch trained on the front model's IRIs agrees less with
    the end model than one trained on real images, here for networks of other families (ViT, VGG).

    A: agreement of the real-data stitches, B: of the IRI stitches, paired by (pair, front point, end point).
    The rows keep only mean agreements, so the interval is a bootstrap over those paired points
    (claims.judge_values), not over images."""
    from . import claims as claims_lib

    sel = results[results.objective == objective]
    wide = sel.pivot_table(index=["pair", "front_point", "end_point"], columns="data", values="agreement")
    if not {"real", "iri"} <= set(wide.columns) or wide[["real", "iri"]].isna().any().any():
        raise ValueError(f"{objective}: every point needs a real-data and an IRI stitch row")
    claim = claims_lib.Claim(f"{objective}_iri_agree_less", NOTEBOOK, "table", f"{objective}: IRI stitches agree less "
                             "with the end model than real-data stitches", "real-data agreement (%)",
                             "IRI agreement (%)", "paper")
    return claims_lib.judge_values(claim, wide["real"].to_numpy(), wide["iri"].to_numpy())


def claims(results, objectives=("fula", "slm")) -> list:
    return [claim_iri_agree_less(results, o) for o in objectives]


def check_structure(results, pairs: dict, nets: dict) -> None:
    """A row per pair x point x objective x data mode, and the CNN -> ViT pair stitched feature maps into
    tokens; raises a clear error otherwise."""
    expected = sum(3 * 2 * 2 for _ in pairs)
    if len(results) != expected or set(results.data) != {"real", "iri"}:
        raise ValueError(f"expected {expected} stitch rows (pairs x 3 points x 2 objectives x real/IRI), got "
                         f"{len(results)} with data modes {sorted(set(results.data))}")
    families = {row["point"]: row["family"] for row in describe(nets["vit_tiny"])}
    if "token" not in {families[p] for p in results[results.pair == "resnet->vit_tiny"].end_point}:
        raise ValueError("the CNN -> ViT pair did not stitch into the ViT's tokens")
