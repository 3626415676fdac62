"""Training the front and end models: clean SGD, or Madry PGD adversarial training with a clean share.

Paper recipe (App. A.1): SGD lr 0.1, momentum 0.9, weight decay 1e-4, batch 128, 200 epochs, LR x0.1 at
each third, random crop (padding 4) and horizontal flip. Robust models: loss (1 - alpha) CE(clean) +
alpha CE(PGD), alpha = 0.5, 10 PGD steps of 2/255 in an 8/255 L-inf ball (Eq. 4).

Every trained model is cached in the ResultStore under a hash of its TrainConfig, and an interrupted
training resumes from its last finished epoch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import attacks
from .data import ImageSet, batches, load, steps_per_epoch
from .models import MODELS_VERSION, StitchableResNet, build
from .store import NO_CHECKPOINT, Checkpointer, CorruptCheckpointError, ResultStore, config_key

TRAIN_VERSION = 2  # part of every cache key: bump when a change here alters trained weights
# 2: shortcut markers (cross-bias fronts) pasted per batch after augmentation, the authors' colours and layout;
#    PGD without random start, Nesterov SGD, adv_mode
ADV_MODES = ("loss_mix", "replace")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained base model (its cache key is a hash of this)."""

    dataset: str  # "cifar10", "ls_imagenet10", "fashion_mnist", "digits", "synthetic"
    arch: str = "resnet18"
    width: int = 64
    seed: int = 0
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_milestones: tuple[float, ...] = (1 / 3, 2 / 3)
    lr_gamma: float = 0.1
    augment: bool = True
    train_subset: int | None = None  # train on a fixed random subset of this size (CPU profiles)
    adv_alpha: float = 0.0  # share of the loss on PGD examples: 0 = clean model, 0.5 = the paper's robust models
    pgd_eps: float = 8 / 255
    pgd_step: float = 2 / 255
    pgd_steps: int = 10
    pgd_random_start: bool = False  # the authors' code starts PGD at the clean image (Madry et al.: random start)
    # how adversarial examples enter a batch: "loss_mix" = paper 1's Eq. 4, (1 - a) CE(x) + a CE(x_adv) on every
    # image; "replace" = the authors' code, a random share a of the batch replaced by its PGD examples
    adv_mode: str = "loss_mix"
    nesterov: bool = True  # the authors' SGD uses Nesterov momentum
    shortcut: str | None = None  # train with this shortcut marker pasted in (cross-bias front, paper 2); layout from seed
    code_version: tuple[int, int] = (MODELS_VERSION, TRAIN_VERSION)

    def __post_init__(self):
        if self.adv_mode not in ADV_MODES:
            raise ValueError(f"adv_mode must be one of {ADV_MODES}, got {self.adv_mode!r}")

    @property
    def robust(self) -> bool:
        return self.adv_alpha > 0

    @property
    def label(self) -> str:
        return f"{self.dataset}_{self.seed}{' robust' if self.robust else ''} {self.arch} w{self.width}"


def train_model(cfg: TrainConfig, train_data: ImageSet, device="cpu", *, checkpoint: Checkpointer = NO_CHECKPOINT,
                progress: bool = True) -> StitchableResNet:
    """Train a model from scratch (or from its checkpoint) following `cfg`; returns it in eval mode."""
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)  # weight init
    c = train_data.images.shape[1]
    model = build(cfg.arch, train_data.num_classes, in_channels=c, width=cfg.width,
                  image_size=train_data.images.shape[-1]).to(device)
    if device != "cpu" and torch.device(device).type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    data = (train_data.take(cfg.train_subset, seed=cfg.seed) if cfg.train_subset else train_data).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=cfg.nesterov)
    steps = steps_per_epoch(len(data), cfg.batch_size)
    milestones = sorted({max(1, round(f * cfg.epochs)) * steps for f in cfg.lr_milestones})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=cfg.lr_gamma)
    data_gen = torch.Generator().manual_seed(cfg.seed)
    attack_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)

    start = 0
    state = checkpoint.load()
    if state is not None:
        model.load_state_dict(state["model"]), opt.load_state_dict(state["opt"]), sched.load_state_dict(state["sched"])
        data_gen.set_state(state["data_gen"]), attack_gen.set_state(state["attack_gen"])
        start = state["epoch"]

    amp = torch.autocast("cuda", dtype=torch.bfloat16) if torch.device(device).type == "cuda" else contextlib.nullcontext()
    bar = tqdm(desc=f"train {cfg.label}", total=cfg.epochs * steps, initial=start * steps, disable=not progress,
               unit="batch")
    for epoch in range(start, cfg.epochs):
        loss_sum = torch.zeros((), device=device)
        for x, y in batches(data, cfg.batch_size, shuffle=True, generator=data_gen, augment_data=cfg.augment,
                                   drop_last=True):
            pgd = dict(eps=cfg.pgd_eps, step_size=cfg.pgd_step, steps=cfg.pgd_steps,
                       random_start=cfg.pgd_random_start, generator=attack_gen)
            if cfg.robust and cfg.adv_mode == "replace":
                # the authors' way: a random share adv_alpha of the batch is replaced by its PGD examples
                # (crafted in eval mode: the attack must not move the running statistics)
                chosen = torch.randperm(len(x), generator=attack_gen, device=attack_gen.device)[
                    : round(cfg.adv_alpha * len(x))].to(x.device)
                model.eval()
                x = x.index_copy(0, chosen, attacks.pgd_linf(model, x[chosen], y[chosen], **pgd))
            elif cfg.robust:
                model.eval()
                x_adv = attacks.pgd_linf(model, x, y, **pgd)
            model.train()
            with amp:
                if cfg.robust and cfg.adv_mode == "loss_mix":  # paper 1, Eq. 4
                    loss = F.cross_entropy(model(x_adv).float(), y) * cfg.adv_alpha
                    if cfg.adv_alpha < 1:
                        loss = loss + (1 - cfg.adv_alpha) * F.cross_entropy(model(x).float(), y)
                else:
                    loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach()
            bar.update()
        mean_loss = float(loss_sum) / steps
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"training {cfg.label} diverged (loss {mean_loss}) in epoch {epoch + 1}: lower lr")
        bar.set_postfix(epoch=epoch + 1, loss=f"{mean_loss:.3f}")
        checkpoint.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                         "data_gen": data_gen.get_state(), "attack_gen": attack_gen.get_state(), "epoch": epoch + 1})
    bar.close()
    return model.eval()


def training_data(cfg: TrainConfig, data_dir=None) -> ImageSet:
    """The training set a TrainConfig names, with its shortcut markers when it has one: the class layout
    (colours, patterns, locations) is that of the model's seed, and training draws fresh markers per
    batch after augmentation (data.batches); stitches with this front use the same seed for their data."""
    data = load(cfg.dataset, "train", root=data_dir)
    if cfg.shortcut:
        from .shortcuts import add_shortcut

        data = add_shortcut(data, cfg.shortcut, seed=cfg.seed, layout_seed=cfg.seed)
    return data


def get_model(store: ResultStore, cfg: TrainConfig, device="cpu", *, data: ImageSet | None = None,
              data_dir=None, progress: bool = True) -> StitchableResNet:
    """The trained model for `cfg`: loaded from the store, or trained (resumably) and stored."""
    def compute(ckpt: Checkpointer):
        train_data = data if data is not None else training_data(cfg, data_dir)
        model = train_model(cfg, train_data, device, checkpoint=ckpt, progress=progress)
        return model_payload(model)

    payload = store.get_or_compute("model", dataclasses.asdict(cfg), compute)
    return restore_model(payload, cfg, store.path("model", config_key(dataclasses.asdict(cfg)))).to(device).eval()


def model_payload(model: StitchableResNet) -> dict:
    """What the store keeps of a trained model: CPU weights and the shape arguments of `build`."""
    return {"state": {k: v.cpu() for k, v in model.state_dict().items()},
            "num_classes": model.num_classes, "in_channels": model.in_channels,
            "image_size": (getattr(model, "input_shape", None) or (0, 32))[-1]}


def restore_model(payload: dict, cfg, path) -> StitchableResNet:
    """Rebuild a stored model (cfg gives arch, width and label); a clear error if the weights do not fit."""
    model = build(cfg.arch, payload["num_classes"], payload["in_channels"], cfg.width, payload.get("image_size", 32))
    try:
        model.load_state_dict(payload["state"])
    except (RuntimeError, KeyError) as err:
        raise CorruptCheckpointError(f"{path} holds weights that do not fit {cfg.label}: delete it and rerun ({err})") from err
    return model
