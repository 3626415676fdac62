"""A self-supervised front model: SimCLR pre-training, then a linear probe on the frozen encoder.

The cross-supervision pair of the invariance-aware testbed (``invariance_aware.md``, testbed 1) stitches
a SimCLR-trained front into a supervised end model. The paper does not spell the recipe out; this module
follows the authors' code (github.com/athaioan/invariance-aware-stitching @ 5815d8e): `train_base.py`
(`train_simclr_baseline`), `training/base/trainer.py` (`train_one_epoch_simclr`, `train_one_epoch`),
`models/models.py` (`make_simclr_model`), `dataloaders/dataset.py` (`get_dataset(..., sim_clr=True)`),
`training/losses.py` (`infoNCE_loss`) and `configs/baselines/low_resolution/resnet18/*/simclr/cifar10.yaml`:

1. Two augmented views of every image, in one batch: horizontal flip, random resized crop (area 0.2-1),
   colour jitter (brightness, contrast, saturation 0.4, hue 0.1, in random order) with probability 0.5,
   greyscale with probability 0.1. On 1-channel images saturation, hue and greyscale are identities (as
   in torchvision), so the distortion is brightness and contrast only.
2. Encoder: a StitchableResNet up to its pooled penultimate features h; projector z = g(h) =
   Linear(D, 1024) - ReLU - Linear(1024, 128), without BatchNorm.
3. NT-Xent at temperature 0.5: each view must pick its partner among the other 2B - 1 views of its batch.
   SGD with Nesterov momentum 0.9, lr 0.1 (x0.1 after 1/3 and 2/3 of the epochs), weight decay 1e-4 on
   every parameter, batch 128, 200 epochs.
4. Linear probe: the encoder's weights stay frozen and only `model.fc` is trained, by cross-entropy on
   crop/flip-augmented training images, with the same optimiser and schedule for as many epochs. The
   encoder runs in train mode meanwhile, so its BatchNorm layers normalise by batch statistics and their
   running statistics are re-estimated on plain (not SimCLR-distorted) images. The result is an ordinary
   StitchableResNet that plugs into stitching as a front model.

Paper 2's other architectures (models.vgg16, models.vit_tiny) follow the authors' make_simclr_model and
get_classifier: VGG-16's encoder ends at its pooled, flattened features and its probe is the whole
classifier (three linear layers with ReLU and dropout); ViT-Tiny's encoder ends at the class-token feature
and its probe is the linear head. Their authors' configs pre-train and probe at lr 0.01 (Profile.simclr_config).

Where this differs from the authors' code, and why:
  * Views are made on the device, in batches: crop boxes are continuous (bilinear resampling of a
    sub-pixel box) rather than whole-pixel PIL crops; the distributions of area, aspect, place, flip and
    jitter factors are theirs.
  * 1-channel data (Fashion-MNIST, digits at the `quick` profile): the same transform; torchvision's
    saturation, hue and greyscale leave a grey image unchanged, so only brightness and contrast act. Flips
    follow DATASET_INFO (on for Fashion-MNIST, off for digits); the probe's crop padding is the data set's
    (2 pixels on 28-pixel images, 4 on CIFAR).
  * `train_subset` (CPU profiles) restricts both phases to a fixed random subset; milestone epochs are at
    least 1, so that a one-epoch run is not decayed from its first step.
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
from .models import MODELS_VERSION, NUM_STITCH_POINTS, WRAPPED_ARCHITECTURES, StitchableResNet, build
from .shortcuts import draw_device
from .store import NO_CHECKPOINT, Checkpointer, ResultStore, config_key
from .train import model_payload, restore_model

# part of every cache key: bump when a change here alters trained weights
# 2: the authors' recipe (SGD-Nesterov step schedule, their augmentation and projector, probe on
#    augmented images with train-mode BatchNorm) replaces the Adam / cached-feature recipe of version 1
SSL_VERSION = 2


@dataclass(frozen=True)
class SimCLRConfig:
    """Everything that determines a SimCLR front model (its cache key is a hash of this).

    The defaults are the authors' settings for their CIFAR-10 ResNet-18 SimCLR baseline; where each value
    comes from is noted beside it ("yaml" is configs/baselines/low_resolution/resnet18/0/simclr/cifar10.yaml).
    CPU profiles shorten `epochs` and `train_subset` (see config.Profile.simclr_config).
    """

    dataset: str
    arch: str = "resnet18"
    width: int = 64
    seed: int = 0
    # --- pre-training (train_base.py: train_simclr_baseline, trainer.py: train_one_epoch_simclr)
    epochs: int = 200  # yaml ss_epochs: 200
    batch_size: int = 128  # yaml batch_size_per_gpu: 128; B images -> 2B views, 2B - 2 negatives per view
    lr: float = 0.1  # yaml lr: 0.1 (the step scheduler applies no batch-size scaling)
    momentum: float = 0.9  # train_base.py: torch.optim.SGD(..., momentum=0.9, nesterov=...)
    nesterov: bool = True  # yaml nesterov: True
    weight_decay: float = 1e-4  # yaml wd: 1e-4 with wd_regularize_all: True (BN and biases too, projector too)
    lr_milestones: tuple[float, ...] = (1 / 3, 2 / 3)  # yaml scheduler: "step" at int(1/3 E), int(2/3 E) epochs
    lr_gamma: float = 0.1  # yaml lr_decay: 0.1
    temperature: float = 0.5  # yaml simclr_temperature: 0.5 (losses.py: infoNCE_loss)
    proj_hidden: int = 1024  # models.py make_simclr_model: Linear(D, 1024) - ReLU - Linear(1024, 128), no BN,
    proj_dim: int = 128  # ...a fixed 1024 for every architecture (ResNet-18 D=512, ViT-tiny D=192)
    # --- views (dataset.py get_dataset(sim_clr=True): the training transform, its crop replaced)
    crop_scale: tuple[float, float] = (0.2, 1.0)  # RandomResizedCrop(size, scale=(0.2, 1.0)), ratio 3/4-4/3
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # ColorJitter(brightness, contrast, saturation, hue)
    jitter_p: float = 0.5  # RandomApply([ColorJitter], p=0.5) (_get_color_distortion(p_distort=0.5))
    grey_p: float = 0.1  # RandomGrayscale(p=0.1)
    # --- linear probe (train_base.py: the `epochs` supervised epochs after ss_epochs, cls_optimizer)
    probe_epochs: int | None = None  # yaml epochs: 200, as many as ss_epochs; None = the same as `epochs`
    probe_batch_size: int = 128  # yaml batch_size_per_gpu (the same loader, back in supervised mode)
    probe_lr: float = 0.1  # yaml lr, the same step schedule (lr_milestones, lr_gamma) over the probe epochs
    probe_weight_decay: float = 1e-4  # yaml wd (SGD with Nesterov momentum 0.9 on model.fc only)
    probe_augment: bool = True  # the dataset's training transform: crop (zero padding) and flip
    probe_bn: str = "train"  # trainer.py train_one_epoch calls model.train(): BN statistics re-estimated
    train_subset: int | None = None  # pre-train and probe on a fixed random subset of this size (CPU profiles)
    code_version: tuple[int, int] = (MODELS_VERSION, SSL_VERSION)

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.epochs < 0 or (self.probe_epochs is not None and self.probe_epochs < 0):
            raise ValueError(f"epochs and probe_epochs must be >= 0, got {self.epochs} and {self.probe_epochs}")
        if self.batch_size < 2 or self.probe_batch_size < 2:
            raise ValueError("batch_size and probe_batch_size must be >= 2 (a view needs negatives; "
                             "train-mode BatchNorm needs more than one sample)")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if len(self.jitter) != 4 or min(self.jitter) < 0 or self.jitter[3] > 0.5:
            raise ValueError(f"jitter is (brightness, contrast, saturation, hue), all >= 0 and hue <= 0.5; got {self.jitter}")
        if self.probe_bn not in ("train", "eval"):
            raise ValueError(f"probe_bn must be 'train' (re-estimate BN statistics, the authors) or 'eval', got {self.probe_bn!r}")

    @property
    def total_probe_epochs(self) -> int:
        return self.epochs if self.probe_epochs is None else self.probe_epochs

    @property
    def label(self) -> str:
        return f"{self.dataset}_{self.seed} simclr {self.arch} w{self.width}"


# ----------------------------------------------------------------------------------------------------
# 1. Views


def simclr_views(x: torch.Tensor, generator: torch.Generator | None = None, *, flip: bool = True,
                 crop_scale: tuple[float, float] = (0.2, 1.0),
                 jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1), jitter_p: float = 0.5,
                 grey_p: float = 0.1) -> torch.Tensor:
    """One random SimCLR view of every image of x (float [N, C, H, W] in [0, 1]), batched on x's device.

    Per sample, with random numbers from `generator` (drawn on its device), as torchvision's
    RandomResizedCrop, RandomHorizontalFlip, RandomApply([ColorJitter]) and RandomGrayscale do per image:
      * random resized crop: a box of area fraction U(crop_scale) and aspect ratio log-uniform in
        [3/4, 4/3], redrawn (up to 10 times) until it fits in the image, else the whole image; uniformly
        placed and resampled bilinearly to full size (continuous boxes, not whole pixels);
      * horizontal flip with probability 1/2 if `flip`;
      * with probability `jitter_p`, colour jitter: brightness, contrast and saturation factors
        U(1 - s, 1 + s) and a hue shift U(-h, h) (in [0, 1] turns), applied in a random order;
      * greyscale with probability `grey_p`.
    Saturation, hue and greyscale leave a 1-channel image unchanged, as in torchvision.
    """
    n, c, h, w = x.shape
    if c not in (1, 3):
        raise ValueError(f"simclr_views needs 1- or 3-channel images, got {c} channels")
    device = x.device
    draw_on = draw_device(generator)

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(n, *shape, generator=generator, device=draw_on)).to(device)

    # Crop box as an affine map of the normalised output grid [-1, 1]^2 into the input image: the first
    # of 10 candidate boxes that fits, as torchvision's rejection loop does.
    tries = 10
    area = uniform(*crop_scale, tries)
    aspect = uniform(math.log(3 / 4), math.log(4 / 3), tries).exp()
    cand_w, cand_h = (area * aspect).sqrt(), (area / aspect).sqrt()
    fits = (cand_w <= 1) & (cand_h <= 1)
    first = fits.float().argmax(dim=1, keepdim=True)
    box_w = torch.where(fits.any(1), cand_w.gather(1, first).squeeze(1), 1.0)
    box_h = torch.where(fits.any(1), cand_h.gather(1, first).squeeze(1), 1.0)
    centre_x = uniform(-1, 1) * (1 - box_w)  # the box stays inside the image
    centre_y = uniform(-1, 1) * (1 - box_h)
    mirror = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0) if flip else torch.ones(n, device=device)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = box_w * mirror, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = box_h, centre_y
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    views = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    # Colour jitter: the four adjustments in a random order per view (torchvision draws a permutation).
    s_b, s_c, s_s, s_h = jitter
    factors = [uniform(max(0.0, 1 - s), 1 + s).view(n, 1, 1, 1) for s in (s_b, s_c, s_s)]
    hue_shift = uniform(-s_h, s_h).view(n, 1, 1, 1)
    adjust = [
        lambda v: (v * factors[0]).clamp(0, 1),  # brightness
        lambda v: _blend(v, _grey(v).mean(dim=(1, 2, 3), keepdim=True), factors[1]),  # contrast
        lambda v: _blend(v, _grey(v), factors[2]) if c == 3 else v,  # saturation
        lambda v: _shift_hue(v, hue_shift) if c == 3 and s_h > 0 else v,  # hue
    ]
    order = torch.rand(n, 4, generator=generator, device=draw_on).argsort(dim=1).to(device)
    out = views
    for slot in range(4):
        adjusted = [op(out) for op in adjust]
        out = torch.stack(adjusted)[order[:, slot], torch.arange(n, device=device)]
    views = torch.where((uniform(0, 1) < jitter_p).view(n, 1, 1, 1), out, views)
    if c == 3:
        to_grey = (uniform(0, 1) < grey_p).view(n, 1, 1, 1)
        views = torch.where(to_grey, _grey(views).expand_as(views), views)
    return views


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * x + (1 - factor) * other, clipped to [0, 1] (torchvision's _blend)."""
    return (factor * x + (1 - factor) * other).clamp(0, 1)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Luminance [N, 1, H, W] of colour images (ITU-R 601 weights); grey images are their own luminance."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """RGB images [N, 3, H, W] in [0, 1] with their hue rotated by `shift` [N, 1, 1, 1] turns (via HSV)."""
    maxc, minc = x.max(dim=1).values, x.min(dim=1).values
    delta = maxc - minc
    sat = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    r, g, b = ((maxc.unsqueeze(1) - x) / safe.unsqueeze(1)).unbind(1)  # distances of each channel from the max
    hue = torch.where(x[:, 0] == maxc, b - g, torch.where(x[:, 1] == maxc, 2 + r - b, 4 + g - r))
    hue = (hue / 6 + shift.squeeze(1)) % 1.0  # grey pixels (delta 0) have saturation 0: their hue is moot
    sector = hue * 6
    i = sector.floor()
    f = sector - i
    i = i.long() % 6
    v = maxc
    p, q, t = v * (1 - sat), v * (1 - sat * f), v * (1 - sat * (1 - f))
    # (R, G, B) per hue sector 0..5
    table = torch.stack([torch.stack(rgb) for rgb in
                         ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])  # [6, 3, N, H, W]
    out = table.gather(0, i.unsqueeze(0).unsqueeze(0).expand(1, 3, *i.shape)).squeeze(0)  # [3, N, H, W]
    return out.transpose(0, 1).clamp(0, 1).contiguous()  # standard strides (see data.augment)


# ----------------------------------------------------------------------------------------------------
# 2. Encoder and projector


def _wrapped_kind(model) -> str | None:
    """"vgg16" / "vit_tiny" for paper 2's wrapped torchvision models (models.build), None for a project ResNet."""
    if isinstance(model, StitchableResNet):
        return None
    inner = getattr(model, "model", None)
    if hasattr(inner, "classifier") and hasattr(inner, "features"):
        return "vgg16"
    if hasattr(inner, "heads") and hasattr(inner.heads, "head"):
        return "vit_tiny"
    raise TypeError(f"SimCLR supports the project ResNets and {', '.join(WRAPPED_ARCHITECTURES)}, not {type(inner).__name__}")


def probe_head(model) -> nn.Module:
    """The classifier the probe trains on the frozen encoder (the authors' get_classifier): a ResNet's `fc`,
    VGG-16's whole `classifier`, ViT-Tiny's linear `head`."""
    kind = _wrapped_kind(model)
    if kind is None:
        return model.fc
    return model.model.classifier if kind == "vgg16" else model.model.heads.head


def feature_dim(model) -> int:
    """D, the width of the encoder's output h (the probe's input)."""
    return next(m for m in probe_head(model).modules() if isinstance(m, nn.Linear)).in_features


def features(model, x: torch.Tensor) -> torch.Tensor:
    """The encoder's output h [N, D], what the probe head reads: a ResNet's pooled penultimate features,
    VGG-16's pooled and flattened last feature map, ViT-Tiny's class-token feature (its last stitch point)."""
    kind = _wrapped_kind(model)
    if kind is None:
        return torch.flatten(F.adaptive_avg_pool2d(model.activations_upto(x, NUM_STITCH_POINTS - 1), 1), 1)
    if kind == "vgg16":
        inner = model.model
        return torch.flatten(inner.avgpool(inner.features(model.preprocess(x))), 1)
    return model.activations_upto(x, model.num_points - 1)


def projector(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """The SimCLR projection head g: Linear - ReLU - Linear (the authors' make_simclr_model: no BatchNorm)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


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


def step_lr(base: float, epoch: int, epochs: int, milestones, gamma: float) -> float:
    """The authors' step schedule: base * gamma^(number of milestone epochs int(f * epochs) <= epoch).
    A milestone is at least epoch 1, so a one-epoch run is not decayed from the start."""
    passed = sum(epoch >= max(1, int(f * epochs)) for f in milestones)
    return base * gamma**passed


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _subset(cfg: SimCLRConfig, data: ImageSet) -> ImageSet:
    return data.take(cfg.train_subset, seed=cfg.seed) if cfg.train_subset else data


def pretrain_epoch(model: StitchableResNet, head: nn.Module, data: ImageSet, opt: torch.optim.Optimizer,
                   cfg: SimCLRConfig, data_gen: torch.Generator, view_gen: torch.Generator) -> float:
    """One SimCLR epoch (both views of a batch in one forward pass, so they share BN batch statistics);
    returns the mean NT-Xent loss."""
    device = data.labels.device
    on_cuda = device.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else contextlib.nullcontext()
    view_args = dict(flip=DATASET_INFO[data.base_name]["flip"], crop_scale=cfg.crop_scale, jitter=cfg.jitter,
                     jitter_p=cfg.jitter_p, grey_p=cfg.grey_p)
    model.train(), head.train()
    loss_sum = torch.zeros((), device=device)
    for x, _ in batches(data, cfg.batch_size, shuffle=True, generator=data_gen, drop_last=True):
        v1, v2 = simclr_views(x, view_gen, **view_args), simclr_views(x, view_gen, **view_args)
        with amp:
            z = head(features(model, torch.cat([v1, v2])))
        loss = nt_xent(z[: len(x)], z[len(x):], cfg.temperature)  # computed in fp32
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach()
    return float(loss_sum) / steps_per_epoch(len(data), cfg.batch_size)


def probe_epoch(model: StitchableResNet, data: ImageSet, opt: torch.optim.Optimizer, cfg: SimCLRConfig,
                data_gen: torch.Generator) -> tuple[float, float]:
    """One linear-probe epoch: `model.fc` learns by cross-entropy on the encoder's features of
    (crop/flip-augmented) images. The encoder gets no gradient; with cfg.probe_bn == "train" it runs in train
    mode, so its BN layers use batch statistics and their running statistics follow these images.
    Returns (mean loss, accuracy in % on the training batches as they were seen)."""
    device = data.labels.device
    on_cuda = device.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else contextlib.nullcontext()
    model.train(cfg.probe_bn == "train")
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    for x, y in batches(data, cfg.probe_batch_size, shuffle=True, generator=data_gen, augment_data=cfg.probe_augment,
                        drop_last=True):
        with torch.no_grad(), amp:
            h = features(model, x).float()
        logits = probe_head(model)(h)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return float(loss_sum) / seen, 100.0 * float(correct) / seen


def train_simclr(cfg: SimCLRConfig, data: ImageSet, device="cpu", *, checkpoint: Checkpointer = NO_CHECKPOINT,
                 progress: bool = True, log: dict | None = None) -> StitchableResNet:
    """SimCLR pre-training for cfg.epochs, then the linear probe for cfg.total_probe_epochs, as one run of
    epochs (the authors' train_simclr_baseline): a StitchableResNet in eval mode whose `fc` is the probe.

    Uses data.take(cfg.train_subset, cfg.seed) when the config sets a subset; labels are used by the probe
    only. The state after every epoch goes to `checkpoint`, so a killed run resumes where it stopped. If
    `log` is a dict it receives "pretrain_losses", "probe_losses" and "probe_train_accuracy" (of the last
    probe epoch, on its augmented batches).
    """
    from tqdm.auto import tqdm

    if data.base_name not in DATASET_INFO:
        raise ValueError(f"no augmentation settings for {data.name!r}: its base name is none of {', '.join(DATASET_INFO)}")
    data = _subset(cfg, data).to(device)
    torch.manual_seed(cfg.seed)  # weight init of encoder (its fc is the probe's start) and projector
    model = build(cfg.arch, data.num_classes, in_channels=data.images.shape[1], width=cfg.width,
                  image_size=data.images.shape[-1]).to(device)  # the ViT's patch grid follows the images
    head = projector(feature_dim(model), cfg.proj_hidden, cfg.proj_dim).to(device)
    if torch.device(device).type == "cuda":  # as in train.py: channels-last bf16 convolutions
        model = model.to(memory_format=torch.channels_last)
    probe_ids = {id(p) for p in probe_head(model).parameters()}
    encoder_params = [p for p in model.parameters() if id(p) not in probe_ids]
    opt = torch.optim.SGD(encoder_params + list(head.parameters()), lr=cfg.lr, momentum=cfg.momentum,
                          nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    probe_opt = torch.optim.SGD(probe_head(model).parameters(), lr=cfg.probe_lr, momentum=cfg.momentum,
                                nesterov=cfg.nesterov, weight_decay=cfg.probe_weight_decay)
    data_gen = torch.Generator().manual_seed(cfg.seed)
    view_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    total = cfg.epochs + cfg.total_probe_epochs

    start, pretrain_losses, probe_losses, probe_acc = 0, [], [], float("nan")
    state = checkpoint.load()
    if state is not None:
        model.load_state_dict(state["model"]), head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"]), probe_opt.load_state_dict(state["probe_opt"])
        data_gen.set_state(state["data_gen"]), view_gen.set_state(state["view_gen"])
        start, pretrain_losses, probe_losses = state["epoch"], state["pretrain_losses"], state["probe_losses"]
        probe_acc = state["probe_acc"]

    bar = tqdm(range(start, total), desc=f"simclr {cfg.label}", disable=not progress, initial=start, total=total)
    for epoch in bar:
        if epoch < cfg.epochs:
            _set_lr(opt, step_lr(cfg.lr, epoch, cfg.epochs, cfg.lr_milestones, cfg.lr_gamma))
            loss = pretrain_epoch(model, head, data, opt, cfg, data_gen, view_gen)
            pretrain_losses.append(loss)
            phase = "pre-training"
        else:
            k = epoch - cfg.epochs
            _set_lr(probe_opt, step_lr(cfg.probe_lr, k, cfg.total_probe_epochs, cfg.lr_milestones, cfg.lr_gamma))
            loss, probe_acc = probe_epoch(model, data, probe_opt, cfg, data_gen)
            probe_losses.append(loss)
            phase = "linear probe"
        if not math.isfinite(loss):
            raise FloatingPointError(f"SimCLR {phase} of {cfg.label} diverged (loss {loss}) in epoch {epoch + 1}: lower lr")
        bar.set_postfix(phase=phase, loss=f"{loss:.3f}")
        checkpoint.save({"model": model.state_dict(), "head": head.state_dict(), "opt": opt.state_dict(),
                         "probe_opt": probe_opt.state_dict(), "data_gen": data_gen.get_state(),
                         "view_gen": view_gen.get_state(), "epoch": epoch + 1, "pretrain_losses": pretrain_losses,
                         "probe_losses": probe_losses, "probe_acc": probe_acc})
    if log is not None:
        log.update(pretrain_losses=pretrain_losses, probe_losses=probe_losses, probe_train_accuracy=probe_acc)
    return model.eval()


@torch.no_grad()
def probe_accuracy(model: StitchableResNet, test: ImageSet, batch_size: int = 500) -> float:
    """Accuracy (%) of the front (encoder + probe, eval mode) on `test`: the linear-probe accuracy."""
    device = next(model.parameters()).device
    model.eval()
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches(test.to(device), batch_size, shuffle=False))
    return 100.0 * correct / len(test)


def get_simclr_model(store: ResultStore, cfg: SimCLRConfig, device="cpu", *, data: ImageSet | None = None,
                     test: ImageSet | None = None, data_dir=None, progress: bool = True, return_log: bool = False):
    """The SimCLR front for `cfg`: loaded from the store (kind "simclr_model"), or trained (resumably) and
    stored. With `return_log`, returns (model, log): the loss curves, the probe's training accuracy and
    "probe_test_accuracy", its accuracy on `test` (default: the data set's test split)."""
    def compute(checkpoint: Checkpointer) -> dict:
        train_data = data if data is not None else load(cfg.dataset, "train", root=data_dir)
        test_data = test if test is not None else load(cfg.dataset, "test", root=data_dir)
        log: dict = {}
        model = train_simclr(cfg, train_data, device, checkpoint=checkpoint, progress=progress, log=log)
        log["probe_test_accuracy"] = probe_accuracy(model, test_data)
        return {**model_payload(model), "log": log}

    payload = store.get_or_compute("simclr_model", dataclasses.asdict(cfg), compute)
    path = store.path("simclr_model", config_key(dataclasses.asdict(cfg)))
    model = restore_model(payload, cfg, path).to(device).eval()
    return (model, payload["log"]) if return_log else model
