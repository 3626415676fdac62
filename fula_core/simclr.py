"""A self-supervised front model: SimCLR pre-training, then a linear classifier on frozen features.

The cross-supervision pair of the invariance-aware testbed (``invariance_aware.md``, testbed 1) stitches
a SimCLR-trained front into a supervised end model. The recipe (Chen et al., 2020, in its common
single-GPU CIFAR form):

1. Two augmented views of every image: random resized crop, horizontal flip (where the data set allows
   flips) and colour jitter / random greyscale (brightness-contrast jitter for 1-channel images),
   batched on the device.
2. Encoder: a StitchableResNet up to its pooled penultimate features h; projector MLP z = g(h)
   (Linear-BN-ReLU-Linear).
3. NT-Xent loss at temperature 0.5: each view must pick its partner among the other 2B - 1 views of the
   batch by cosine similarity.
4. Linear probe: only `model.fc` is trained, by cross-entropy on the frozen encoder's features, so the
   result is an ordinary StitchableResNet that plugs into stitching as a front model.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import DATASET_INFO, ImageSet, batches, load, steps_per_epoch
from .models import MODELS_VERSION, NUM_STITCH_POINTS, StitchableResNet, build
from .store import NO_CHECKPOINT, Checkpointer, ResultStore, config_key
from .train import model_payload, restore_model

SSL_VERSION = 1  # part of every cache key: bump when a change here alters trained weights


@dataclass(frozen=True)
class SimCLRConfig:
    """Everything that determines a SimCLR front model (its cache key is a hash of this).

    Defaults follow the widely used single-GPU CIFAR-10 SimCLR recipe with temperature 0.5 (Adam 1e-3,
    batch 512, 500 epochs, 128-d projection; 100 linear-probe epochs). A CPU profile should shorten
    `epochs` (tens, not hundreds), `width` and `train_subset`; `probe_epochs` is cheap (the probe trains on
    cached features) and need not shrink much.
    """

    dataset: str
    arch: str = "resnet18"
    width: int = 64
    seed: int = 0
    epochs: int = 500  # pre-training epochs: shorten for CPU profiles
    batch_size: int = 512  # B images -> 2B views; each view has 2B - 2 negatives
    lr: float = 1e-3  # Adam
    weight_decay: float = 1e-6
    temperature: float = 0.5  # NT-Xent temperature (invariance-aware protocol)
    proj_hidden: int = 512
    proj_dim: int = 128
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area fraction of the random resized crop
    jitter: float = 0.4  # brightness / contrast / saturation strength of the colour jitter
    jitter_p: float = 0.8  # probability that a view is colour-jittered
    grey_p: float = 0.2  # probability that a colour view is turned grey
    probe_epochs: int = 100
    probe_lr: float = 1e-3  # Adam, on the frozen features
    probe_batch_size: int = 512
    train_subset: int | None = None  # pre-train and probe on a fixed random subset of this size (CPU profiles)
    code_version: tuple[int, int] = (MODELS_VERSION, SSL_VERSION)

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.epochs < 0 or self.probe_epochs < 0 or self.batch_size < 2 or self.probe_batch_size < 1:
            raise ValueError("need epochs, probe_epochs >= 0, batch_size >= 2 (a view needs negatives), probe_batch_size >= 1")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")

    @property
    def label(self) -> str:
        return f"{self.dataset}_{self.seed} simclr {self.arch} w{self.width}"


# ----------------------------------------------------------------------------------------------------
# 1. Views


def simclr_views(x: torch.Tensor, generator: torch.Generator | None = None, *, flip: bool = True,
                 crop_scale: tuple[float, float] = (0.08, 1.0), jitter: float = 0.4, jitter_p: float = 0.8,
                 grey_p: float = 0.2) -> torch.Tensor:
    """One random SimCLR view of every image of x (float [N, C, H, W] in [0, 1]), batched on x's device.

    Per sample, with random numbers from `generator` (drawn on its device):
      * random resized crop: a box of area fraction U(crop_scale) and aspect ratio log-uniform in
        [3/4, 4/3] (clipped to the image), uniformly placed, resampled bilinearly to full size;
      * horizontal flip with probability 1/2 if `flip`;
      * with probability `jitter_p`: brightness and contrast factors U(1 - jitter, 1 + jitter), and for
        colour images saturation too (hue jitter is left out);
      * colour images only: greyscale with probability `grey_p`.
    """
    n, c, h, w = x.shape
    device = x.device
    draw_on = generator.device if generator is not None else torch.device("cpu")

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(n, generator=generator, device=draw_on)).to(device)

    # Crop box as an affine map of the normalised output grid [-1, 1]^2 into the input image.
    area = uniform(*crop_scale)
    aspect = uniform(math.log(3 / 4), math.log(4 / 3)).exp()
    box_w = (area * aspect).sqrt().clamp(max=1.0)
    box_h = (area / aspect).sqrt().clamp(max=1.0)
    centre_x = (uniform(-1, 1)) * (1 - box_w)  # the box stays inside the image
    centre_y = (uniform(-1, 1)) * (1 - box_h)
    mirror = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0) if flip else torch.ones(n, device=device)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = box_w * mirror, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = box_h, centre_y
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    views = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    # Photometric jitter, applied as a whole to a random share of the views.
    jittered = (uniform(0, 1) < jitter_p).view(n, 1, 1, 1)
    brightness = uniform(1 - jitter, 1 + jitter).view(n, 1, 1, 1)
    contrast = uniform(1 - jitter, 1 + jitter).view(n, 1, 1, 1)
    saturation = uniform(1 - jitter, 1 + jitter).view(n, 1, 1, 1)
    out = (views * brightness).clamp(0, 1)
    mean = _grey(out).mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * contrast + mean).clamp(0, 1)
    if c == 3:
        grey = _grey(out)
        out = ((out - grey) * saturation + grey).clamp(0, 1)
    views = torch.where(jittered, out, views)
    if c == 3:
        to_grey = (uniform(0, 1) < grey_p).view(n, 1, 1, 1)
        views = torch.where(to_grey, _grey(views).expand_as(views), views)
    return views


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Luminance [N, 1, H, W] of colour images (ITU-R 601 weights); grey images are their own luminance."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


# ----------------------------------------------------------------------------------------------------
# 2. Encoder and projector


def features(model: StitchableResNet, x: torch.Tensor) -> torch.Tensor:
    """The pooled penultimate features h [N, D] (what `model.fc` reads)."""
    return torch.flatten(F.adaptive_avg_pool2d(model.activations_upto(x, NUM_STITCH_POINTS - 1), 1), 1)


def projector(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """The SimCLR projection head g: Linear - BatchNorm - ReLU - Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim))


# ----------------------------------------------------------------------------------------------------
# 3. NT-Xent


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Normalised temperature-scaled cross-entropy of paired projections z1[i] <-> z2[i] ([B, D] each).

    With the 2B L2-normalised projections u_k and s_kl = u_k . u_l / temperature, view k with partner p(k):
        loss_k = -log( exp(s_{k,p(k)}) / sum_{l != k} exp(s_kl) ),
    averaged over all 2B views.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent needs two [B, D] projections of the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    b = z1.shape[0]
    u = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = (u @ u.T) / temperature
    self_pair = torch.eye(2 * b, dtype=torch.bool, device=sim.device)
    sim = sim.masked_fill(self_pair, float("-inf"))  # a view is never its own candidate
    partner = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(sim.device)
    return F.cross_entropy(sim, partner)


# ----------------------------------------------------------------------------------------------------
# Training


def _subset(cfg: SimCLRConfig, data: ImageSet) -> ImageSet:
    return data.take(cfg.train_subset, seed=cfg.seed) if cfg.train_subset else data


def pretrain_simclr(cfg: SimCLRConfig, data: ImageSet, device="cpu", *, checkpoint: Checkpointer = NO_CHECKPOINT,
                    progress: bool = True) -> tuple[StitchableResNet, list[float]]:
    """SimCLR pre-training of a fresh StitchableResNet on `data` (labels unused).

    Returns the encoder (its `fc` untrained) and the mean NT-Xent loss of every epoch. The state after
    each epoch goes to `checkpoint`, so a killed run resumes where it stopped.
    """
    from tqdm.auto import tqdm

    info = DATASET_INFO.get(data.base_name)
    if info is None:
        raise ValueError(f"no augmentation settings for {data.name!r}: its base name is none of {', '.join(DATASET_INFO)}")
    torch.manual_seed(cfg.seed)  # weight init of encoder and projector
    model = build(cfg.arch, data.num_classes, in_channels=data.images.shape[1], width=cfg.width).to(device)
    head = projector(model.fc.in_features, cfg.proj_hidden, cfg.proj_dim).to(device)
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda:  # as in train.py: channels-last bf16 convolutions; the loss itself is computed in fp32
        model = model.to(memory_format=torch.channels_last)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else contextlib.nullcontext()
    params = [p for name, p in model.named_parameters() if not name.startswith("fc.")] + list(head.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    data = data.to(device)
    steps = steps_per_epoch(len(data), cfg.batch_size)
    data_gen = torch.Generator().manual_seed(cfg.seed)
    view_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    view_args = dict(flip=info["flip"], crop_scale=cfg.crop_scale, jitter=cfg.jitter, jitter_p=cfg.jitter_p,
                     grey_p=cfg.grey_p)

    start, losses = 0, []
    state = checkpoint.load()
    if state is not None:
        model.load_state_dict(state["model"]), head.load_state_dict(state["head"]), opt.load_state_dict(state["opt"])
        data_gen.set_state(state["data_gen"]), view_gen.set_state(state["view_gen"])
        start, losses = state["epoch"], state["losses"]

    bar = tqdm(range(start, cfg.epochs), desc=f"simclr {cfg.label}", disable=not progress, initial=start,
               total=cfg.epochs)
    for epoch in bar:
        model.train(), head.train()
        loss_sum = torch.zeros((), device=device)
        for x, _ in batches(data, cfg.batch_size, shuffle=True, generator=data_gen, drop_last=True):
            v1, v2 = simclr_views(x, view_gen, **view_args), simclr_views(x, view_gen, **view_args)
            with amp:
                z = head(features(model, torch.cat([v1, v2])))  # both views in one pass: shared BN statistics
            loss = nt_xent(z[: len(x)], z[len(x):], cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
        mean_loss = float(loss_sum) / steps
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"SimCLR pre-training of {cfg.label} diverged (loss {mean_loss}) in epoch {epoch + 1}: lower lr")
        losses.append(mean_loss)
        bar.set_postfix(loss=f"{mean_loss:.3f}")
        checkpoint.save({"model": model.state_dict(), "head": head.state_dict(), "opt": opt.state_dict(),
                         "data_gen": data_gen.get_state(), "view_gen": view_gen.get_state(), "epoch": epoch + 1,
                         "losses": losses})
    return model.eval(), losses


def fit_linear_probe(model: StitchableResNet, data: ImageSet, cfg: SimCLRConfig, *, progress: bool = True) -> dict:
    """Train only `model.fc` (re-initialised) by cross-entropy on the frozen encoder's features of `data`.

    Features are computed once, encoder in eval mode, without augmentation; the probe then runs
    `cfg.probe_epochs` epochs of Adam on them. Returns {"losses": per-epoch mean loss, "train_accuracy"}.
    """
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    data = data.to(device)
    model.eval()
    with torch.no_grad():
        feats = torch.cat([features(model, x) for x, _ in batches(data, 512, shuffle=False)])
    labels = data.labels
    torch.manual_seed(cfg.seed)
    model.fc.reset_parameters()
    opt = torch.optim.Adam(model.fc.parameters(), lr=cfg.probe_lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for _ in tqdm(range(cfg.probe_epochs), desc="linear probe", disable=not progress):
        loss_sum = torch.zeros((), device=device)
        order = torch.randperm(len(feats), generator=gen).to(device)
        for idx in order.split(cfg.probe_batch_size):
            loss = F.cross_entropy(model.fc(feats[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(idx)
        losses.append(float(loss_sum) / len(feats))
    with torch.no_grad():
        accuracy = 100.0 * (model.fc(feats).argmax(1) == labels).double().mean().item()
    return {"losses": losses, "train_accuracy": accuracy}


def train_simclr(cfg: SimCLRConfig, data: ImageSet, device="cpu", *, checkpoint: Checkpointer = NO_CHECKPOINT,
                 progress: bool = True, log: dict | None = None) -> StitchableResNet:
    """SimCLR pre-training, then the linear probe: a StitchableResNet (eval mode) whose `fc` is the probe.

    Uses data.take(cfg.train_subset, cfg.seed) when the config sets a subset. If `log` is a dict it
    receives "pretrain_losses", "probe_losses" and "probe_train_accuracy".
    """
    data = _subset(cfg, data)
    model, pretrain_losses = pretrain_simclr(cfg, data, device, checkpoint=checkpoint, progress=progress)
    probe = fit_linear_probe(model, data, cfg, progress=progress)  # features are detached: only fc learns
    if log is not None:
        log.update(pretrain_losses=pretrain_losses, probe_losses=probe["losses"],
                   probe_train_accuracy=probe["train_accuracy"])
    return model.eval()


def get_simclr_model(store: ResultStore, cfg: SimCLRConfig, device="cpu", *, data: ImageSet | None = None,
                     data_dir=None, progress: bool = True, return_log: bool = False):
    """The SimCLR front for `cfg`: loaded from the store (kind "simclr_model"), or trained (resumably) and
    stored. With `return_log`, returns (model, log) where log holds the loss curves and probe accuracy."""
    def compute(checkpoint: Checkpointer) -> dict:
        train_data = data if data is not None else load(cfg.dataset, "train", root=data_dir)
        log: dict = {}
        model = train_simclr(cfg, train_data, device, checkpoint=checkpoint, progress=progress, log=log)
        return {**model_payload(model), "log": log}

    payload = store.get_or_compute("simclr_model", dataclasses.asdict(cfg), compute)
    path = store.path("simclr_model", config_key(dataclasses.asdict(cfg)))
    model = restore_model(payload, cfg, path).to(device).eval()
    return (model, payload["log"]) if return_log else model
