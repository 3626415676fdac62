"""Model stitching: h = g_{>j} o T o f_{<=i} with T an affine map chosen by the activations' shapes:
a 1x1 convolution with bias between feature maps [B, C, H, W], a per-token linear map between token
sequences [B, T, D], a linear map between vectors [B, D] (see Stitch).

Objectives for T (FuLA paper §2, invariance_aware.md):
  tlm / hlm  cross-entropy of the stitched model to the labels
  slm        KL(softmax g(x) || softmax h(x)): the end model's soft labels
  dm         least squares at the stitch point, closed form, no training
  hint       the DM loss (relative Frobenius error at the stitch point) trained by gradient on the full set
  fula       weighted mean of the relative error at the stitch point and at every later stitch point of g

Every stitch starts from the least-squares (DM) solution on K training samples. The trainer takes many
jobs that share a front and an end model and trains them in one pass over the data: one forward of each
frozen model per batch serves every clean job. With train-mode BatchNorm (the paper's default: frozen
weights, running statistics still updated) each job keeps its own copy of both models' running statistics
and gets exactly the updates a separate run would.

Which running statistics move in train-BN mode (the authors' loop, `freeze_bn_running_stats` in their
code): the front's, from its forward on the batch the stitch sees, and the end model's layers after the
stitch point, from the *stitched* forward only. The end model's own forward that computes the targets
uses batch statistics but updates nothing, so g_{>j} estimates the statistics of the stitched model
h = g_{>j} o T o f_{<=i} alone, as a stitched model trained in train mode would.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import numbers
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import attacks, metrics
from .data import ImageSet, batches, steps_per_epoch
from .models import StitchableResNet, eval_mode, freeze
from .store import NO_CHECKPOINT, Checkpointer

STITCHING_VERSION = 2  # part of every cache key: bump when a change here alters trained stitches
# 2: the end model's target forward no longer updates any job's running statistics (train-BN bookkeeping fix)

OBJECTIVES = ("tlm", "hlm", "slm", "dm", "hint", "fula")
BN_MODES = ("train", "eval")
REDUCTIONS = ("batch", "sample")
LSTSQ_SOLVERS = ("exact", "authors")
# what a stitch may do (capacity ablation; "affine" is the papers'): see Stitch
FAMILIES = ("affine", "identity", "low_rank", "mlp")


# ----------------------------------------------------------------------------------------------------
# Hyperparameters


@dataclass(frozen=True)
class StitchConfig:
    """How a stitch is trained. Defaults are the paper's (App. A.2) and the authors' code."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3  # Adam
    weight_decay: float = 1e-4
    lr_milestones: tuple[float, ...] = (1 / 3, 2 / 3)  # fractions of training; LR x lr_gamma at each
    lr_gamma: float = 0.1
    lstsq_samples: int = 100  # K images for the least-squares init: 100 in paper 1, 500 in the authors' code
    # "exact": float64 normal equations, every singular value kept; "authors": their float32
    # torch.linalg.pinv of the design matrix with its default cutoff (drops small singular values)
    lstsq_solver: str = "exact"
    bn_mode: str = "train"  # "train": frozen weights, running statistics updated (paper); "eval": untouched
    fula_reduction: str = "batch"  # "batch": norms over the mini-batch tensor (authors' code); "sample": Eq. 5
    augment: bool = True  # the base models' crop (+ flip) augmentation
    resize: bool = True  # bilinear resize of the front activation when resolutions differ (cross-layer)
    pgd_eps: float = 8 / 255  # adversarial stitching (alpha > 0): PGD against the stitched model
    pgd_step: float = 2 / 255
    pgd_steps: int = 10
    pgd_random_start: bool = False  # the authors' code starts PGD at the clean image
    seed: int = 0
    # the stitch's family (Stitch): "affine" (the papers' 1x1 convolution), "identity" (no alignment: equal
    # channel counts only), "low_rank" (an affine map of rank `rank`), "mlp" (1x1 conv, ReLU, 1x1 conv). Both
    # fields enter cache keys only when they differ from their defaults, so the affine results keep their keys.
    family: str = dataclasses.field(default="affine", metadata={"key_omit_default": True})
    rank: int | None = dataclasses.field(default=None, metadata={"key_omit_default": True})  # low_rank only

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"StitchConfig.family must be one of {FAMILIES}, got {self.family!r}")
        if (self.family == "low_rank") != (self.rank is not None):
            raise ValueError(f"StitchConfig.rank goes with family='low_rank' (and only with it): got family="
                             f"{self.family!r}, rank={self.rank!r}")
        if self.rank is not None and (not _is_int(self.rank) or self.rank < 1):
            raise ValueError(f"StitchConfig.rank must be an integer >= 1, got {self.rank!r}")
        if self.bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {self.bn_mode!r}")
        if self.fula_reduction not in REDUCTIONS:
            raise ValueError(f"fula_reduction must be one of {REDUCTIONS}, got {self.fula_reduction!r}")
        if self.lstsq_solver not in LSTSQ_SOLVERS:
            raise ValueError(f"lstsq_solver must be one of {LSTSQ_SOLVERS}, got {self.lstsq_solver!r}")
        for name in ("epochs", "batch_size", "lstsq_samples", "pgd_steps", "seed"):
            if not _is_int(getattr(self, name)):
                raise TypeError(f"StitchConfig.{name} must be an integer, got {getattr(self, name)!r}")
        if self.epochs < 0 or self.batch_size < 1 or self.lstsq_samples < 1:
            raise ValueError("epochs must be >= 0, batch_size and lstsq_samples >= 1")
        if not self.lr > 0:  # (also catches NaN)
            raise ValueError(f"StitchConfig.lr must be > 0, got {self.lr!r}")
        if not all(0 < m < 1 for m in self.lr_milestones):
            raise ValueError(f"StitchConfig.lr_milestones are fractions of training, each in (0, 1); got {self.lr_milestones!r}")


@dataclass(frozen=True)
class EngineConfig:
    """How the engine runs: speed settings, not part of the method. The first three are no-ops on the CPU
    (CPU results are the same with any of them on: tests/test_engine_equality.py); batch_pgd and batch_clean
    are off on the CPU unless asked for.

    pgd_bf16: craft the training PGD inputs under bf16 autocast (the attack is ~87% of an adversarial job's
        FLOPs). It changes the adversarial inputs slightly: check on a subset that adversarial-stitch
        accuracies stay within the noise floor before using it for results (off by default).
    channels_last: run the frozen models, the stitches and the batches in channels_last memory layout (what
        tensor cores want for convolutions; the same numbers up to summation order).
    cudnn_benchmark: let cuDNN time its convolution algorithms once per shape (fixed shapes here).
    batch_pgd: one PGD for all adversarial jobs at one stitch point (_batched_pgd: J times fewer, J times
        larger kernels). Exact in the math, but its eval-mode BN is computed as an explicit affine map, which
        rounds differently from the BN kernel in the last bit, so PGD signs of near-zero gradients can flip
        (tests/test_engine_equality.py bounds the effect). None (default): on for CUDA, off on the CPU, where
        the engine stays bit-identical to its previous version; True turns it on on the CPU too.
    batch_clean: one stitched forward and backward of the end model g for all clean jobs (alpha = 0) of every
        stitch point (_train_clean_group): g runs once, point by point from the earliest job's point, and each
        job's stitch outputs join the batch at its own point j, interleaved along a job dimension ([B * J'] rows
        for the J' jobs inside); train-mode BN with each job's own batch statistics and running statistics (one
        BatchNorm call over the jobs' channels); each job's loss on its own samples, one backward. A 9-point
        workload so runs g's units once instead of once per point. (An end model without `segment`, e.g. a
        wrapped network on the hook fallback, gets one such pass per end point.) Exact in the math; sums run in another order, so
        results agree to float rounding (tests/test_engine_equality.py states the tolerance), not bit for
        bit. It assumes BatchNorm is the only layer of g that mixes samples, true of every model here;
        active dropout (VGG-16's head with bn_mode="train") draws other random numbers than job by job. The
        backward keeps the activations of every clean job at once (not one point's at a time): memory grows
        with the number of clean jobs. None (default): on for CUDA, off on the CPU; True turns it on there too.
    """

    pgd_bf16: bool = False
    channels_last: bool = True
    cudnn_benchmark: bool = True
    batch_pgd: bool | None = None
    batch_clean: bool | None = None


@dataclass(frozen=True)
class StitchJob:
    """One stitch: front point i -> end point j, trained with `objective`, a share `alpha` of PGD inputs.

    Points are given by index or by name (a wrapped model's module name, e.g. "layer2"); the trainer
    resolves names against the models (resolve_job). `fula_weights` (FuLA only) weigh the terms at the
    stitch point and each later stitch point of g (length: the end model's number of points - j, 9 - j
    for the project's ResNets); None means uniform. Weights (0, ..., 0, 1) keep only the last hint
    (paper Fig. 6).
    """

    front_point: int | str
    end_point: int | str
    objective: str
    alpha: float = 0.0
    fula_weights: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}: choose one of {', '.join(OBJECTIVES)}")
        for name in ("front_point", "end_point"):  # NumPy integers are points too; True and 2.0 are not
            k = getattr(self, name)
            if isinstance(k, str) and k:
                continue
            if not _is_int(k):
                raise TypeError(f"{name} must be a stitch point index (an integer >= 0) or a point name, got {k!r}")
            if k < 0:
                raise IndexError(f"{name}={k!r}: a stitch point is an index >= 0 or a point name")
            object.__setattr__(self, name, int(k))
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha (share of adversarial inputs) must be in [0, 1], got {self.alpha}")
        if self.objective == "dm" and self.alpha > 0:
            raise ValueError("dm is solved in closed form on clean data: alpha must be 0")
        if self.fula_weights is not None:
            if self.objective != "fula":
                raise ValueError("fula_weights only apply to the fula objective")
            _check_weights(self.fula_weights, len(self.fula_weights))

    @property
    def name(self) -> str:
        w = "" if self.fula_weights is None else "-w" + "_".join(f"{x:g}" for x in self.fula_weights)
        return f"{self.objective}{w}[{self.front_point}->{self.end_point}]a{self.alpha:g}"


def _is_int(value) -> bool:
    """An integer (Python or NumPy), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def resolve_job(job: StitchJob, front, end) -> StitchJob:
    """The job with both points as indices of `front` and `end` (names looked up, ranges checked) and
    its FuLA weights checked against the end model's number of later points."""
    i, j = front.point_index(job.front_point), end.point_index(job.end_point)
    if job.fula_weights is not None:
        _check_weights(job.fula_weights, len(end.stitch_points) - j)
    return dataclasses.replace(job, front_point=i, end_point=j)


def proportional_jobs(front, end, objective: str, **fields) -> list[StitchJob]:
    """One job per end point, each paired with the front point at the same relative depth (the authors'
    mapping between architectures with different numbers of points; see stitchable.proportional_points)."""
    from .stitchable import proportional_points

    pairs = proportional_points(len(front.stitch_points), len(end.stitch_points))
    return [StitchJob(i, j, objective, **fields) for j, i in enumerate(pairs)]


def _check_weights(weights: Sequence[float], n_terms: int) -> None:
    if len(weights) != n_terms:
        raise ValueError(f"need {n_terms} FuLA weights (stitch point + later points), got {len(weights)}")
    if not all(isinstance(w, numbers.Real) and math.isfinite(w) for w in weights):
        raise ValueError(f"fula_weights must be finite numbers, got {tuple(weights)}")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"FuLA weights must be non-negative with a positive sum, got {tuple(weights)}")


# ----------------------------------------------------------------------------------------------------
# The stitch and its least-squares initialisation


def activation_kind(shape: Sequence[int]) -> str:
    """"conv" for a per-sample shape [C, H, W], "token" for [T, D], "vector" for [D]."""
    kinds = {3: "conv", 2: "token", 1: "vector"}
    if len(shape) not in kinds:
        raise ValueError(f"cannot stitch an activation of per-sample shape {tuple(shape)}: expected [C, H, W] "
                         f"(feature map), [T, D] (tokens) or [D] (vector)")
    return kinds[len(shape)]


def _token_grid(tokens: int) -> tuple[int, int]:
    """(side, prefix) for a token sequence of a square patch grid plus `prefix` leading tokens (a class
    token, registers): side = floor(sqrt(T)), the rest are prefix tokens (fewer than the side)."""
    side = math.isqrt(tokens)
    prefix = tokens - side * side
    if side < 1 or prefix >= side:
        raise ValueError(f"{tokens} tokens are not a square patch grid plus a few leading (class) tokens: "
                         f"conv <-> token stitches need one")
    return side, prefix


def _map_layer(c_in: int, c_out: int, conv: bool, bias: bool = True) -> nn.Module:
    """A per-position linear map: a 1x1 convolution on feature maps, a linear layer on tokens and vectors."""
    return nn.Conv2d(c_in, c_out, 1, bias=bias) if conv else nn.Linear(c_in, c_out, bias=bias)


class Stitch(nn.Module):
    """The stitch T: a layout adapter chosen by the activations' shapes (as the authors do), then a map of
    the chosen family. The layouts:

    * conv -> conv: a 1x1 convolution with bias; bilinear resize first when the resolutions differ.
    * token -> token: one linear map applied to every token (equal token counts required). The class
      token is a token like the others: it goes through the same map to the end's class-token slot.
    * vector -> vector: a linear map.
    * conv -> token: the feature map is resized to the end's patch grid and read as tokens (row-major);
      the end's leading (class) tokens get the spatial mean; then the per-token linear map.
    * token -> conv: the leading (class) tokens are dropped, the patch tokens laid out on their square
      grid and resized to the end's resolution; then the 1x1 convolution.
    * conv / token -> vector: global average over positions / tokens, then the linear map.

    Args:
        in_channels, out_channels: channels (conv) or embedding sizes (tokens, vectors) on each side.
        out_size: the end activation's per-sample shape without its channel dimension: (H, W) for a
            feature map, (T,) for tokens, () for a vector.
        front_kind, end_kind: "conv", "token" or "vector".
        family: the map after the adapter (capacity ablation; the papers use "affine"):
            affine    W a + b (a 1x1 convolution with bias on feature maps); parameters `conv` / `linear`
            identity  a itself: no parameters, no alignment (only where the channel counts match)
            low_rank  U (V a) + b with V: C_in -> r, U: r -> C_out, an affine map of rank r (`rank`, clipped to
                      min(C_in, C_out), where it is full rank)
            mlp       L2 relu(L1 a + b1) + b2 with 2 C_out hidden channels: one ReLU of extra capacity
        rank: the rank r of "low_rank".

    Each family starts from the least-squares solution (W, b) (set_affine): identity ignores it, low_rank
    takes its best rank-r approximation (the SVD of W truncated to r singular values: U_r S_r^1/2, S_r^1/2
    V_r^T), and mlp computes it exactly on every input: L1 = [W; -W], b1 = [b; -b], L2 = [I, -I], b2 = 0, since
    relu(z) - relu(-z) = z.
    """

    def __init__(self, in_channels: int, out_channels: int, out_size: Sequence[int] = (), resize: bool = True, *,
                 front_kind: str = "conv", end_kind: str | None = None, family: str = "affine",
                 rank: int | None = None):
        super().__init__()
        out_size = tuple(int(v) for v in out_size)
        end_kind = end_kind or {2: "conv", 1: "token", 0: "vector"}[len(out_size)]
        if front_kind == "vector" and end_kind != "vector":
            raise ValueError(f"a vector has no spatial layout to map onto a {end_kind} end point: stitch a vector "
                             f"front point to a vector end point")
        self.front_kind, self.end_kind, self.out_size, self.resize = front_kind, end_kind, out_size, resize
        if family not in FAMILIES:
            raise ValueError(f"unknown stitch family {family!r}: choose one of {', '.join(FAMILIES)}")
        self.family, self.in_channels, self.out_channels = family, in_channels, out_channels
        conv = end_kind == "conv"
        if family == "affine":  # the papers' stitch; its parameter names are those of every stored stitch
            if conv:
                self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=True)
            else:
                self.linear = nn.Linear(in_channels, out_channels, bias=True)
        elif family == "identity":
            if in_channels != out_channels:
                raise ValueError(f"an identity stitch needs equal channel counts, got {in_channels} -> {out_channels}: "
                                 f"use it only between points of equal width (or choose another family)")
            self.map = nn.Identity()
        elif family == "low_rank":
            if rank is None or not _is_int(rank) or rank < 1:
                raise ValueError(f"a low_rank stitch needs an integer rank >= 1, got {rank!r}")
            r = min(int(rank), in_channels, out_channels)
            self.map = nn.Sequential(_map_layer(in_channels, r, conv, bias=False), _map_layer(r, out_channels, conv))
        else:  # mlp
            hidden = 2 * out_channels
            self.map = nn.Sequential(_map_layer(in_channels, hidden, conv), nn.ReLU(), _map_layer(hidden, out_channels, conv))
        self.rank = None if family != "low_rank" else self.map[0].weight.shape[0]

    @classmethod
    def between(cls, front_shape: Sequence[int], end_shape: Sequence[int], resize: bool = True, *,
                family: str = "affine", rank: int | None = None) -> "Stitch":
        """The stitch between two per-sample activation shapes ([C, H, W], [T, D] or [D])."""
        fk, ek = activation_kind(front_shape), activation_kind(end_shape)
        c_in = front_shape[0] if fk == "conv" else front_shape[-1]
        c_out, rest = (end_shape[0], end_shape[1:]) if ek == "conv" else (end_shape[-1], end_shape[:-1])
        return cls(c_in, c_out, rest, resize, front_kind=fk, end_kind=ek, family=family, rank=rank)

    def _resized(self, a: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(a.shape[-2:]) == tuple(size):
            return a
        if not self.resize:
            raise ValueError(
                f"front activation is {tuple(a.shape[-2:])} but the end point expects {tuple(size)}: "
                f"enable resize=True (bilinear, as in cross-layer stitching) or choose matching points"
            )
        return F.interpolate(a, size=size, mode="bilinear", align_corners=False)

    def adapt(self, a: torch.Tensor) -> torch.Tensor:
        """The front activation in the end's layout, still with the front's channels (before the map)."""
        fk, ek = self.front_kind, self.end_kind
        if ek == "vector":
            return a.mean(dim=(2, 3)) if fk == "conv" else a.mean(dim=1) if fk == "token" else a
        if ek == "conv":
            if fk == "token":
                side, prefix = _token_grid(a.shape[1])
                a = a[:, prefix:].transpose(1, 2).reshape(a.shape[0], a.shape[2], side, side)
            return self._resized(a, self.out_size)
        # token end
        (tokens,) = self.out_size
        if fk == "token":
            if a.shape[1] != tokens:
                raise ValueError(f"token counts differ: the front point has {a.shape[1]} tokens, the end point "
                                 f"{tokens}; a per-token stitch needs equal counts (same patch grid and number of "
                                 f"class tokens): choose points or models with matching token counts")
            return a
        side, prefix = _token_grid(tokens)
        grid = self._resized(a, (side, side)).flatten(2).transpose(1, 2)  # [B, side*side, C]
        if prefix:
            grid = torch.cat([a.mean(dim=(2, 3)).unsqueeze(1).expand(-1, prefix, -1), grid], dim=1)
        return grid

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        a = self.adapt(a)
        if self.family != "affine":
            return self.map(a)
        return self.conv(a) if self.end_kind == "conv" else self.linear(a)

    def set_affine(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Start from a solved affine map (lstsq_init's (weight, bias)), as the family allows (class docstring)."""
        w = weight.reshape(self.out_channels, self.in_channels)

        def put(layer, weight, bias=None):
            layer.weight.copy_(weight.reshape(layer.weight.shape))
            if bias is not None:
                layer.bias.copy_(bias)

        with torch.no_grad():
            if self.family == "affine":
                put(self.conv if self.end_kind == "conv" else self.linear, w, bias)
            elif self.family == "low_rank":
                down, up = self.map[0], self.map[1]
                u, sv, vh = truncated_svd(w, self.rank)
                root = sv.sqrt()
                put(down, root[:, None] * vh), put(up, u * root[None, :], bias)
            elif self.family == "mlp":
                first, second = self.map[0], self.map[2]
                eye = torch.eye(self.out_channels, dtype=w.dtype, device=w.device)
                put(first, torch.cat([w, -w]), torch.cat([bias, -bias]))
                put(second, torch.cat([eye, -eye], dim=1), torch.zeros_like(bias))
            # identity: nothing to set, it maps the front activation as it is


def truncated_svd(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U_r [C_out, r], S_r [r], V_r^T [r, C_in]) of the best rank-r approximation of `weight` (Eckart-Young),
    computed in float64 and returned in weight's dtype."""
    u, sv, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    return u[:, :rank].to(weight.dtype), sv[:rank].to(weight.dtype), vh[:rank].to(weight.dtype)


def lstsq_init(front_act: torch.Tensor, end_act: torch.Tensor, solver: str = "exact") -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares affine map from front to end activations, over every pixel (or token) of K samples.

    Solves min_{W,b} sum_rows ||W a + b - t||^2 with the Moore-Penrose pseudo-inverse of the design
    matrix [a, 1]. A row is a pixel of a feature map, a token of a sequence, or a whole vector.
    solver="exact" goes through its normal equations in float64 (the Gram matrix is only (C+1)^2) and keeps
    every direction; solver="authors" reproduces the authors' code, a float32 torch.linalg.pinv of the design
    matrix itself with its default cutoff, which drops the singular values below max(rows, cols) * eps * the
    largest (up to 27 of 65 at the 32x32 points of a width-64 ResNet with K = 500): a lower-rank start.

    Args:
        front_act: [K, C_in, H, W], [K, T, C_in] or [K, C_in], already in the end's layout (Stitch.adapt).
        end_act: [K, C_out, H, W], [K, T, C_out] or [K, C_out].
    Returns:
        (weight [C_out, C_in, 1, 1] for feature maps, else [C_out, C_in]; bias [C_out]) in front_act's dtype.
    """
    if front_act.dim() != end_act.dim() or front_act.dim() not in (2, 3, 4):
        raise ValueError(f"lstsq_init expects activations of the same layout, [K, C, H, W], [K, T, D] or [K, D]; "
                         f"got {tuple(front_act.shape)} and {tuple(end_act.shape)}")
    conv = front_act.dim() == 4
    positions_f = front_act.shape[2:] if conv else front_act.shape[1:-1]
    positions_e = end_act.shape[2:] if conv else end_act.shape[1:-1]
    if front_act.shape[0] != end_act.shape[0] or positions_f != positions_e:
        raise ValueError(
            f"front {tuple(front_act.shape)} and end {tuple(end_act.shape)} activations must share samples and "
            f"resolution (or token count): resize the front activation to the end's (Stitch(resize=True) does it) first"
        )
    c_in, c_out = (front_act.shape[1], end_act.shape[1]) if conv else (front_act.shape[-1], end_act.shape[-1])
    x = (front_act.permute(0, 2, 3, 1) if conv else front_act).reshape(-1, c_in).double()
    x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
    y = (end_act.permute(0, 2, 3, 1) if conv else end_act).reshape(-1, c_out).double()
    if solver == "authors":
        solution = (torch.linalg.pinv(x.float()) @ y.float()).double()
    elif solver == "exact":
        solution = torch.linalg.pinv(x.T @ x, hermitian=True) @ (x.T @ y)  # [C_in + 1, C_out]
    else:
        raise ValueError(f"solver must be one of {LSTSQ_SOLVERS}, got {solver!r}")
    weight = solution[:-1].T.to(front_act.dtype)
    weight = weight.reshape(c_out, c_in, 1, 1) if conv else weight
    bias = solution[-1].to(front_act.dtype)
    return weight, bias


# ----------------------------------------------------------------------------------------------------
# Losses


def relative_error(a: torch.Tensor, t: torch.Tensor, reduction: str = "batch") -> torch.Tensor:
    """||a - t||_F / ||t||_F: over the whole mini-batch tensor ("batch") or per sample then mean ("sample")."""
    a, t = a.float(), t.float()  # reductions in fp32 even under autocast
    if reduction == "batch":
        return (a - t).norm() / t.norm()
    if reduction == "sample":
        return ((a - t).flatten(1).norm(dim=1) / t.flatten(1).norm(dim=1)).mean()
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def fula_loss(stitched_acts, target_acts, weights=None, reduction: str = "batch") -> torch.Tensor:
    """FuLA (Eq. 5): weighted mean of the relative errors at the stitch point and every later stitch point.

    Args:
        stitched_acts: [T(f(x)) at the stitch point, g_{>j} activations at each later point] (no logits).
        target_acts: the end model's own activations g_{<=l}(x) at the same points.
        weights: one non-negative weight per term; None = uniform. Normalised to sum to one.
        reduction: "batch" (norms over the mini-batch tensor, authors' code) or "sample" (Eq. 5).
    """
    if len(stitched_acts) != len(target_acts) or not stitched_acts:
        raise ValueError(f"need matching non-empty lists, got {len(stitched_acts)} and {len(target_acts)}")
    n = len(stitched_acts)
    weights = [1.0] * n if weights is None else list(weights)
    _check_weights(weights, n)
    total = sum(weights)
    return sum((w / total) * relative_error(a, t, reduction) for w, a, t in zip(weights, stitched_acts, target_acts) if w)


def slm_loss(stitched_logits: torch.Tensor, end_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax g(x) || softmax h(x)) at temperature 1, mean over the batch."""
    return F.kl_div(F.log_softmax(stitched_logits.float(), 1), F.log_softmax(end_logits.float(), 1),
                    reduction="batchmean", log_target=True)


# ----------------------------------------------------------------------------------------------------
# BatchNorm running statistics: one copy per job


def bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def get_bn_state(model: nn.Module) -> list[torch.Tensor]:
    """Copies of every BN running buffer (mean, var, count) in a fixed order."""
    return [b.clone() for m in bn_layers(model) for b in (m.running_mean, m.running_var, m.num_batches_tracked)]


def set_bn_state(model: nn.Module, state: list[torch.Tensor]) -> None:
    it = iter(state)
    for m in bn_layers(model):
        for b in (m.running_mean, m.running_var, m.num_batches_tracked):
            b.copy_(next(it))


@contextlib.contextmanager
def capture_bn_update(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Run train-mode forwards inside and get the increments they add to every running buffer.

    A train-mode BN forward sets running <- (1 - m) running + m batch_stat. Started from zero buffers it
    leaves exactly m * batch_stat, which any job then applies to its own copy: apply_bn_update.
    """
    for m in bn_layers(model):
        if m.momentum is None:
            raise ValueError("cumulative-average BatchNorm (momentum=None) is not supported by the multi-job trainer")
        m.running_mean.zero_(), m.running_var.zero_(), m.num_batches_tracked.zero_()
    captured: list[torch.Tensor] = []
    yield captured
    captured.extend(get_bn_state(model))


_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@contextlib.contextmanager
def swap_bn_state(model: nn.Module, state: list[torch.Tensor] | None, layers: list[nn.Module] | None = None):
    """Use a job's running buffers inside the block by swapping tensor objects, not copying into them:
    an attack's backward pass still needs the tensors its forward saved, and a train-mode forward updates
    the job's own tensors in place. `layers`: bn_layers(model), when the caller has them already."""
    if state is None:
        yield
        return
    names = _BN_BUFFERS
    layers = bn_layers(model) if layers is None else layers
    # straight into the layers' buffer dicts: what setattr does for a registered buffer, without nn.Module's
    # __setattr__ checks (a third of the swap's host time, and this runs several times per batch)
    saved = [[m._buffers[n] for n in names] for m in layers]
    it = iter(state)
    for m in layers:
        buffers = m._buffers
        for n in names:
            buffers[n] = next(it)
    try:
        yield
    finally:
        for m, old in zip(layers, saved):
            buffers = m._buffers
            for n, t in zip(names, old):
                buffers[n] = t


@contextlib.contextmanager
def batch_statistics_only(model: nn.Module, layers: list[nn.Module] | None = None):
    """Train-mode BN forwards inside use their batch statistics and update no running buffer.

    The buffers are detached from the layers for the block (BatchNorm then normalises with the batch
    statistics and tracks nothing) and put back after: no copy, and num_batches_tracked stays put too.
    """
    layers = bn_layers(model) if layers is None else layers
    with swap_bn_state(model, [None] * (len(_BN_BUFFERS) * len(layers)), layers):
        yield


def apply_bn_update(model: nn.Module, state: list[torch.Tensor], captured: list[torch.Tensor]) -> None:
    """state <- (1 - m) state + captured, in place, for a job's copy of the running buffers."""
    it_s, it_c = iter(state), iter(captured)
    for m in bn_layers(model):
        for _ in ("mean", "var"):
            s = next(it_s)
            s.mul_(1 - m.momentum).add_(next(it_c))
        next(it_s).add_(next(it_c))  # num_batches_tracked


# ----------------------------------------------------------------------------------------------------
# A trained stitch as a model


class StitchedModel(nn.Module):
    """h = g_{>j} o T o f_{<=i}, always run with the frozen models in eval mode and the job's own BN stats."""

    def __init__(self, front: StitchableResNet, end: StitchableResNet, stitch: Stitch, job: StitchJob,
                 front_bn: list[torch.Tensor] | None = None, end_bn: list[torch.Tensor] | None = None):
        super().__init__()
        self.front, self.end, self.stitch, self.job = front, end, stitch, job
        self.front_bn, self.end_bn = front_bn, end_bn
        self._layers = (bn_layers(front), bn_layers(end))  # the frozen models' structure does not change
        self._inside = False

    def train(self, mode: bool = True) -> "StitchedModel":
        """Only the stitch follows: the frozen front and end keep their own modes (forward runs them in eval
        mode anyway), so predict()'s model.train(was) never leaves them updating their statistics."""
        self.training = mode
        self.stitch.train(mode)
        return self

    @contextlib.contextmanager
    def entered(self):
        """The frozen models in eval mode with the job's statistics swapped in, for every forward inside.

        An attack calls the model once per step: entering this once around the whole attack (pgd_linf and
        autoattack_rand do) saves walking both models' modules and swapping their buffers at every step."""
        if self._inside:
            yield self
            return
        with eval_mode(self.front, self.end), swap_bn_state(self.front, self.front_bn, self._layers[0]), \
                swap_bn_state(self.end, self.end_bn, self._layers[1]):
            self._inside = True
            try:
                yield self
            finally:
                self._inside = False

    _job_bn = entered  # the name plots.stitched_activation uses

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._inside:
            with self.entered():
                return self.forward(x)
        a = self.stitch(self.front.activations_upto(x, self.job.front_point))
        return self.end.forward_from(a, self.job.end_point)


@dataclass
class StitchOutcome:
    """What training one job produced."""

    job: StitchJob
    stitch_state: dict  # the Stitch's state_dict
    front_bn: list[torch.Tensor] | None  # the job's running statistics (train-BN mode), else None
    end_bn: list[torch.Tensor] | None
    losses: list[float]  # mean training loss per epoch
    error: str | None = None  # set when the job was stopped (e.g. non-finite loss)

    def model(self, front: StitchableResNet, end: StitchableResNet, resize: bool = True) -> StitchedModel:
        state = self.stitch_state
        kinds = state.get("kinds")  # absent in conv -> conv states stored before the other families existed
        front_kind, end_kind = (STITCH_KINDS[int(kinds[0])], STITCH_KINDS[int(kinds[1])]) if kinds is not None \
            else ("conv", "conv")
        # absent in affine states (stored before the other families existed): [family index, C_in, C_out, rank]
        shape = state.get("family")
        if shape is None:
            w = state["conv.weight"] if "conv.weight" in state else state["linear.weight"]
            family, c_in, c_out, rank = "affine", w.shape[1], w.shape[0], None
        else:
            family, c_in, c_out, rank = FAMILIES[int(shape[0])], int(shape[1]), int(shape[2]), int(shape[3]) or None
        stitch = Stitch(c_in, c_out, tuple(state["out_size"].tolist()), resize, front_kind=front_kind,
                        end_kind=end_kind, family=family, rank=rank)
        stitch.load_state_dict({k: v for k, v in state.items() if k not in ("out_size", "kinds", "family")})
        device = next((v.device for k, v in state.items() if k not in ("out_size", "kinds", "family")),
                      state["out_size"].device)  # an identity stitch has no weights to tell the device
        return StitchedModel(front, end, stitch.to(device), self.job, self.front_bn, self.end_bn)


STITCH_KINDS = ("conv", "token", "vector")


def _stitch_state(stitch: Stitch) -> dict:
    state = {k: v.detach().clone() for k, v in stitch.state_dict().items()}
    state["out_size"] = torch.tensor(stitch.out_size, dtype=torch.long)
    if (stitch.front_kind, stitch.end_kind) != ("conv", "conv"):  # conv -> conv states keep their old form
        state["kinds"] = torch.tensor([STITCH_KINDS.index(stitch.front_kind), STITCH_KINDS.index(stitch.end_kind)])
    if stitch.family != "affine":  # affine states keep their old form
        state["family"] = torch.tensor([FAMILIES.index(stitch.family), stitch.in_channels, stitch.out_channels,
                                        stitch.rank or 0])
    return state


# ----------------------------------------------------------------------------------------------------
# The multi-job trainer


def _job_seed(seed: int, job: StitchJob) -> int:
    """Each job's own random stream (PGD starts): independent of which other jobs run beside it."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{job.name}".encode()).digest()[:7], "little")


def _autocast(device: torch.device):
    # bf16 on CUDA for the convolutions; losses and the least-squares solve are computed in fp32
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def init_stitches(front, end, jobs: Sequence[StitchJob], data: ImageSet, cfg: StitchConfig) -> list[Stitch]:
    """Least-squares (DM) initialisation of every job's stitch on K training images, models in eval mode."""
    jobs = [resolve_job(j, front, end) for j in jobs]
    sample = data.take(cfg.lstsq_samples, seed=cfg.seed)
    x = sample.images.float() / 255
    with torch.no_grad(), eval_mode(front, end):
        front_acts = [torch.cat(t) for t in zip(*(front.activations(xb) for xb in x.split(256)))]
        end_acts = [torch.cat(t) for t in zip(*(end.activations(xb) for xb in x.split(256)))]
    stitches = []
    for job in jobs:
        a, t = front_acts[job.front_point], end_acts[job.end_point]
        stitch = Stitch.between(tuple(a.shape[1:]), tuple(t.shape[1:]), cfg.resize, family=cfg.family,
                                rank=cfg.rank).to(a.device)
        weight, bias = lstsq_init(stitch.adapt(a), t, cfg.lstsq_solver)
        stitch.set_affine(weight, bias)
        stitches.append(stitch)
    return stitches


class _BNBank:
    """Every job's running statistics of one frozen model, one row per job, in two flat tensors: the
    running means and variances of every BN layer concatenated ([J, P], the layers' dtype) and the counts
    (num_batches_tracked, [J, L]).

    A job's per-layer buffers are views of its row, in get_bn_state's order. Swapped into the layers
    (swap_bn_state), they let a train-mode forward update that job's statistics in place, with no copy in
    or out; and the shared clean forward's update reaches every clean job in two operations on the whole
    bank (apply_captured) instead of three per layer and job.

    layer_major=True (the end model's bank) stores each buffer of every job as one [J, C] tensor (and the
    counts as [L, J]), with job k in row slots[k]: jobs in consecutive slots then have one layer's statistics
    as one contiguous [J' * C] vector (group), which the batched clean forward (_grouped_train_bn) hands
    to a single BatchNorm call over J' jobs' channels. It has no apply_captured.
    """

    def __init__(self, model: nn.Module, n_jobs: int, layer_major: bool = False, slots: list[int] | None = None):
        self.layers = bn_layers(model)
        for m in self.layers:
            if m.momentum is None:
                raise ValueError("cumulative-average BatchNorm (momentum=None) is not supported by the multi-job "
                                 "trainer: give the layers a momentum, or train with bn_mode='eval'")
        floats = [b for m in self.layers for b in (m.running_mean, m.running_var)]
        if len({b.dtype for b in floats}) > 1:
            raise ValueError("BN running statistics of mixed dtypes: convert the model to one dtype first")
        device = floats[0].device if floats else torch.device("cpu")
        self.sizes = [b.numel() for b in floats]
        values0 = torch.cat([b.reshape(-1) for b in floats]) if floats else torch.zeros(0, device=device)
        counts0 = torch.stack([m.num_batches_tracked for m in self.layers]) if self.layers else \
            torch.zeros(0, dtype=torch.long, device=device)
        self.layer_major = layer_major
        if layer_major:
            slots = list(range(n_jobs)) if slots is None else list(slots)
            if sorted(slots) != list(range(n_jobs)):
                raise ValueError(f"slots must be a permutation of 0..{n_jobs - 1}, got {slots}")
            self.buffers = [b.detach().reshape(1, -1).repeat(n_jobs, 1) for b in floats]  # [J, C] each
            self.counts = counts0.reshape(-1, 1).repeat(1, n_jobs)  # [L, J]
            shapes = [b.shape for b in floats]
            self.rows = []
            for k in range(n_jobs):
                row = []
                for layer in range(len(self.layers)):
                    row += [self.buffers[2 * layer][slots[k]].view(shapes[2 * layer]),
                            self.buffers[2 * layer + 1][slots[k]].view(shapes[2 * layer + 1]),
                            self.counts[layer, slots[k]]]
                self.rows.append(row)
            return
        self.values, self.counts = values0.repeat(n_jobs, 1), counts0.repeat(n_jobs, 1)
        self.scratch_values, self.scratch_counts = torch.zeros_like(values0), torch.zeros_like(counts0)
        momenta = {m.momentum for m in self.layers}
        if len(momenta) <= 1:  # the usual case: the same Python scalar as apply_bn_update uses, per element
            self.decay = 1 - momenta.pop() if momenta else 1.0
        else:
            self.decay = torch.cat([torch.full((n,), 1 - m.momentum, dtype=values0.dtype, device=device)
                                    for m in self.layers for n in (m.running_mean.numel(), m.running_var.numel())])
        self.rows = [self._views(self.values[k], self.counts[k]) for k in range(n_jobs)]
        self.scratch = self._views(self.scratch_values, self.scratch_counts)

    def _views(self, values: torch.Tensor, counts: torch.Tensor) -> list[torch.Tensor]:
        parts, counts = values.split(self.sizes), counts.unbind(0)
        shapes = [b.shape for m in self.layers for b in (m.running_mean, m.running_var)]
        out = []
        for k in range(len(self.layers)):
            out += [parts[2 * k].view(shapes[2 * k]), parts[2 * k + 1].view(shapes[2 * k + 1]), counts[k]]
        return out

    def group(self, layer: int, first: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(running mean, running var) of BN layer `layer` for the jobs in slots first..stop-1, each one contiguous
        [(stop - first) * C] view, slot by slot (layer-major banks only)."""
        return self.buffers[2 * layer][first:stop].view(-1), self.buffers[2 * layer + 1][first:stop].view(-1)

    @contextlib.contextmanager
    def capture(self, model: nn.Module):
        """Train-mode forwards inside write their running-statistics update into zeroed scratch buffers
        (capture_bn_update's m * batch statistic, without touching the live buffers)."""
        self.scratch_values.zero_(), self.scratch_counts.zero_()
        with swap_bn_state(model, self.scratch, self.layers):
            yield

    def apply_captured(self, rows: list[int]) -> None:
        """state <- (1 - m) state + captured for the given jobs' rows (apply_bn_update, all jobs at once)."""
        if self.layer_major:
            raise NotImplementedError("apply_captured works on job-major banks (the front's)")
        if not rows or not self.layers:
            return
        if len(rows) == len(self.rows):
            self.values.mul_(self.decay).add_(self.scratch_values)
            self.counts.add_(self.scratch_counts)
            return
        idx = torch.tensor(rows, device=self.values.device)
        self.values.index_copy_(0, idx, self.values.index_select(0, idx).mul_(self.decay).add_(self.scratch_values))
        self.counts.index_copy_(0, idx, self.counts.index_select(0, idx).add_(self.scratch_counts))


class _Job:
    """Mutable training state of one job inside the trainer. Its BN statistics are views of its row of
    the banks; its stitch's parameters are stepped by the trainer's one optimiser."""

    def __init__(self, job, stitch, cfg, front_bn, end_bn, device):
        self.job, self.stitch = job, stitch
        self.params = list(stitch.parameters())
        self.front_bn, self.end_bn = front_bn, end_bn
        self.gen = torch.Generator(device=device).manual_seed(_job_seed(cfg.seed, job))
        self.loss_sum = torch.zeros((), device=device)
        self.losses: list[float] = []
        self.error: str | None = None

    def state(self, opt: torch.optim.Optimizer, sched) -> dict:
        """The job's checkpoint, in the form a job with its own Adam and scheduler had (resumable both ways)."""
        group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
        opt_state = {"state": {k: {n: (v.clone() if torch.is_tensor(v) else v) for n, v in opt.state[p].items()}
                               for k, p in enumerate(self.params) if p in opt.state},
                     "param_groups": [{**group, "params": list(range(len(self.params)))}]}
        copy = (lambda bn: None if bn is None else [t.clone() for t in bn])
        return {"stitch": self.stitch.state_dict(), "opt": opt_state, "sched": sched.state_dict(),
                "front_bn": copy(self.front_bn), "end_bn": copy(self.end_bn), "gen": self.gen.get_state(),
                "losses": self.losses, "error": self.error}

    def load(self, s: dict, opt: torch.optim.Optimizer) -> None:
        self.stitch.load_state_dict(s["stitch"])
        for k, p in enumerate(self.params):
            if k in s["opt"]["state"]:
                opt.state[p] = {n: (v.clone() if torch.is_tensor(v) else v) for n, v in s["opt"]["state"][k].items()}
        for mine, saved in ((self.front_bn, s["front_bn"]), (self.end_bn, s["end_bn"])):
            if mine is not None:
                torch._foreach_copy_(mine, saved)
        self.losses, self.error = s["losses"], s["error"]
        self.gen.set_state(s["gen"])


def _optimiser(jobs: list[_Job], cfg: StitchConfig, steps: int):
    """One Adam (multi-tensor) and one LR schedule over every job's stitch: the jobs share lr, weight decay
    and milestones, and Adam's state is per parameter, so each stitch gets exactly the steps its own
    optimiser would give it (a stopped job's parameters get no gradient, and Adam skips them)."""
    params = [p for st in jobs for p in st.params]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    milestones = sorted({max(1, round(f * cfg.epochs)) * steps for f in cfg.lr_milestones})
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=cfg.lr_gamma)


def objective_loss(job: StitchJob, stitch_out, end, y, targets, end_logits, cfg, need_forward: bool):
    """The job's loss on one input batch, given the end model's targets on that same batch."""
    j = job.end_point
    if job.objective == "hint":
        loss = relative_error(stitch_out, targets[j], cfg.fula_reduction)
        if need_forward:  # train-BN: the stitched forward re-estimates g_{>j}'s statistics, as a full run would
            with torch.no_grad():
                end.forward_from(stitch_out.detach(), j)
        return loss
    if job.objective == "fula":
        later, _ = end.activations_from(stitch_out, j, with_logits=True)
        return fula_loss([stitch_out] + later, targets[j:], job.fula_weights, cfg.fula_reduction)
    logits = end.forward_from(stitch_out, j)
    if job.objective == "slm":
        return slm_loss(logits, end_logits)
    return F.cross_entropy(logits.float(), y)  # tlm / hlm


class _Engine:
    """What every batch of one train_stitches call shares: the frozen models, their BN-layer lists and
    statistics banks, the one optimiser and schedule, each adversarial job's stitched model."""

    def __init__(self, front, end, active: list[tuple[int, _Job]], cfg: StitchConfig, train_bn: bool, steps: int,
                 front_bank: _BNBank | None, end_bank: _BNBank | None, engine: EngineConfig = EngineConfig()):
        self.front, self.end, self.cfg, self.train_bn, self.engine = front, end, cfg, train_bn, engine
        self.front_bank, self.end_bank = front_bank, end_bank
        self.front_layers, self.end_layers = bn_layers(front), bn_layers(end)
        self.bn_consts = {"front": {}, "end": {}}  # _per_job_eval_bn's per-layer constants, built once
        self.row = {n: k for k, (n, _) in enumerate(active)}
        # each job's slot: its row of the end bank and of loss_sums; the clean jobs sit in consecutive slots by
        # end point (_slot_order), so a batched group reads and writes one slice of each
        slots = _slot_order([st.job for _, st in active])
        self.slot = {n: slots[k] for k, (n, _) in enumerate(active)}
        self.loss_sums = torch.zeros(len(active), device=next(front.parameters()).device)
        for n, st in active:
            st.loss_sum = self.loss_sums[self.slot[n]]  # a view: the job's own running sum, as before
        self.clean_groups: tuple[tuple, list] = ((), [])  # (running jobs, their batched groups), see _clean_groups
        self.opt, self.sched = _optimiser([st for _, st in active], cfg, steps)
        self.stitched_eval = {n: StitchedModel(front, end, st.stitch, st.job, st.front_bn, st.end_bn)
                              for n, st in active if st.job.alpha > 0}


class _Affine(torch.autograd.Function):
    """y = x * scale + shift with constant scale and shift: one kernel forward (addcmul) and one backward
    (grad * scale), where autograd's generic addcmul backward adds further multiplies and views."""

    @staticmethod
    def forward(ctx, x, scale, shift):
        ctx.save_for_backward(scale)
        return torch.addcmul(shift, x, scale)

    @staticmethod
    def backward(ctx, grad):
        (scale,) = ctx.saved_tensors
        return grad * scale, None, None


@contextlib.contextmanager
def _per_job_eval_bn(layers: list[nn.Module], states: list[list[torch.Tensor]], batch: int, consts: dict | None = None):
    """Eval-mode BN layers that normalise the k-th block of `batch` samples with job k's running statistics:
    the J jobs' inputs go through the shared frozen weights as one [J * batch] batch.

    Eval-mode BN is a per-channel affine map; it is computed as the CPU kernel does (invstd = 1 / sqrt(var +
    eps), scale = invstd * weight, shift = bias - mean * scale, y = x * scale + shift), for every layer and
    job at once on the concatenated statistics, then each job's scale and shift repeated over its block.
    `consts`: a dict kept by the caller across calls, for the layers' eps, weights and biases concatenated."""
    if not layers:
        yield
        return
    n = [m.running_mean.numel() for m in layers]
    like = layers[0].running_mean
    mean = torch.stack([torch.cat(state[0::3]) for state in states])  # [J, sum C] (running stats are 1-D)
    var = torch.stack([torch.cat(state[1::3]) for state in states])
    consts = {} if consts is None else consts
    if not consts:
        consts["eps"] = torch.cat([torch.full((c,), m.eps, dtype=like.dtype, device=like.device)
                                   for c, m in zip(n, layers)])
        consts["weight"] = torch.cat([m.weight.detach() if m.weight is not None else torch.ones_like(m.running_mean)
                                      for m in layers])
        consts["bias"] = torch.cat([m.bias.detach() if m.bias is not None else torch.zeros_like(m.running_mean)
                                    for m in layers])
    eps, weight, bias = consts["eps"], consts["weight"], consts["bias"]
    scale = 1 / torch.sqrt(var + eps) * weight
    shift = bias - mean * scale
    scale, shift = scale.repeat_interleave(batch, dim=0), shift.repeat_interleave(batch, dim=0)  # [J * batch, sum C]
    # per-layer views: split once along the channels, for 2-D inputs and (the common case) 4-D feature maps
    split2 = list(zip(scale.split(n, dim=1), shift.split(n, dim=1)))
    split4 = list(zip(scale[:, :, None, None].split(n, dim=1), shift[:, :, None, None].split(n, dim=1)))
    try:
        for m, two, four in zip(layers, split2, split4):
            shaped: dict[int, tuple[torch.Tensor, torch.Tensor]] = {2: two, 4: four}  # by input rank [N, C, ...]

            def forward(x, shaped=shaped):
                if x.dim() not in shaped:
                    extra = (1,) * (x.dim() - 2)
                    shaped[x.dim()] = tuple(t.reshape(*t.shape, *extra) for t in shaped[2])
                s, t = shaped[x.dim()]
                return _Affine.apply(x, s, t)

            m.forward = forward  # the instance attribute shadows the class's forward for this block only
        yield
    finally:
        for m in layers:
            m.__dict__.pop("forward", None)


def _batched_pgd(eng: "_Engine", group: list[tuple[int, "_Job"]], x: torch.Tensor, y: torch.Tensor) -> dict:
    """PGD (attacks.pgd_linf's steps) against the stitched models of several jobs at one stitch point at once:
    their inputs stacked into one batch, the shared front and end run once per step, each job's stitch
    on its own block and each job's eval-mode BN statistics on its block (_per_job_eval_bn). Every sample's
    loss depends on its own input only, so the gradient of the summed loss is each job's own."""
    cfg, front, end = eng.cfg, eng.front, eng.end
    (i, j), b = (group[0][1].job.front_point, group[0][1].job.end_point), len(x)
    x = x.detach()
    if cfg.pgd_random_start:  # each job's own generator, as pgd_linf draws it
        starts = []
        for _, st in group:
            u = torch.rand(x.shape, generator=st.gen, device=st.gen.device, dtype=x.dtype)
            starts.append((x + cfg.pgd_eps * (2.0 * u.to(x.device) - 1.0)).clamp(0.0, 1.0))
        x_adv = torch.cat(starts)
    else:
        x_adv = x.repeat(len(group), *([1] * (x.dim() - 1)))
    lower = (x - cfg.pgd_eps).clamp(min=0.0).repeat(len(group), *([1] * (x.dim() - 1)))
    upper = (x + cfg.pgd_eps).clamp(max=1.0).repeat(len(group), *([1] * (x.dim() - 1)))
    targets = y.repeat(len(group))
    train_bn = eng.train_bn
    front_states = [st.front_bn for _, st in group] if train_bn else [get_bn_state(front)] * len(group)
    end_states = [st.end_bn for _, st in group] if train_bn else [get_bn_state(end)] * len(group)
    with eval_mode(front, end), _per_job_eval_bn(eng.front_layers, front_states, b, eng.bn_consts["front"]), \
            _per_job_eval_bn(eng.end_layers, end_states, b, eng.bn_consts["end"]):
        for _ in range(cfg.pgd_steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                a = front.activations_upto(x_adv, i)
                out = torch.cat([st.stitch(part) for (_, st), part in zip(group, a.split(b))])
                loss = F.cross_entropy(end.forward_from(out, j), targets, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + cfg.pgd_step * grad.sign()
            x_adv = torch.max(torch.min(x_adv, upper), lower)
    return {n: xa for (n, _), xa in zip(group, x_adv.detach().split(b))}


def _slot_order(jobs: Sequence[StitchJob]) -> list[int]:
    """Each job's slot (_Engine.slot): clean jobs first, by end point (where they enter g), then front point,
    objective and FuLA weights; so the clean jobs that have entered g by any of its layers, in the order they
    entered, sit in consecutive slots (one slice of the layer-major end bank: _grouped_train_bn)."""
    order = sorted(range(len(jobs)), key=lambda k: (jobs[k].alpha > 0, jobs[k].end_point, jobs[k].front_point,
                                                    jobs[k].objective, str(jobs[k].fula_weights), k))
    slots = [0] * len(jobs)
    for slot, k in enumerate(order):
        slots[k] = slot
    return slots


@dataclass
class _CleanGroup:
    """Clean jobs (alpha = 0) in consecutive slots first..stop-1, in slot order, trained in one pass through
    the end model g (_train_clean_group), each entering g at its own point j.

    entries: (point, positions in `jobs`) of the jobs whose stitch outputs go through g (all in train-BN mode,
    where hint's forward re-estimates the statistics; none of hint's in eval-BN mode, where it needs no forward),
    by point. In g's batch they lie along a job dimension in slot order, which is the order they enter, so the
    jobs inside any layer are the group's first few slots.
    The loss of job k is sum_t weight[t] * term[t] over the terms t with owner[t] = k, the terms produced in this
    order: hint's relative errors (`hint`: (point, positions)), FuLA's relative errors at each point p of g
    (`fula_at`: (p, positions of the terms' jobs along g's job dimension, or None when they are all the jobs
    there), each weighted by the job's normalised weight of p), then SLM's and TLM/HLM's (`slm`, `labels`:
    positions along the job dimension of the logits)."""

    jobs: list
    first: int
    stop: int
    entries: list
    hint: list
    fula_at: list
    slm: torch.Tensor | None
    labels: torch.Tensor | None
    owner: torch.Tensor
    weight: torch.Tensor
    needs_grad: bool  # some job's loss reads g's outputs (not only hint's, which are detached)
    bn: dict = dataclasses.field(default_factory=dict)  # train-BN: (layer, jobs inside) -> views of the end bank
    counts_step: dict = dataclasses.field(default_factory=dict)  # layers run -> num_batches_tracked increments


def _segmented(end) -> bool:
    """Whether g can be walked point by point (end.segment), so that jobs of different points share one pass
    (a wrapped network only when traced: its hook fallback has no segments)."""
    return callable(getattr(end, "segment", None)) and getattr(end, "traced", True)


def _clean_groups(eng: "_Engine", running: list[tuple[int, "_Job"]]) -> list[_CleanGroup]:
    """The running clean jobs in runs of consecutive slots, the runs of two or more jobs (a job alone trains as
    before); a run spans every stitch point when g can be walked point by point, else one end point. Cached
    until the set of running jobs changes (a job stops)."""
    key = tuple(n for n, _ in running)
    if eng.clean_groups[0] == key:
        return eng.clean_groups[1]
    segmented = _segmented(eng.end)
    clean = sorted(((eng.slot[n], n, st) for n, st in running if st.job.alpha == 0), key=lambda t: t[0])
    runs: list[list] = []
    for slot, n, st in clean:
        last = runs[-1][-1] if runs else None
        if last is not None and last[0] == slot - 1 and (segmented or last[2].job.end_point == st.job.end_point):
            runs[-1].append((slot, n, st))
        else:
            runs.append([(slot, n, st)])
    groups = [_clean_group(eng, run) for run in runs if len(run) >= 2]
    eng.clean_groups = (key, groups)
    return groups


def _clean_group(eng: "_Engine", run: list) -> _CleanGroup:
    """The plan of one group's pass (_CleanGroup): who enters g where, and which loss terms belong to whom."""
    jobs = [(n, st) for _, n, st in run]
    spec = [st.job for _, st in jobs]
    device = eng.loss_sums.device
    points = len(eng.end.stitch_points)

    def by_point(ks):
        return [(j, [k for k in ks if spec[k].end_point == j]) for j in sorted({spec[k].end_point for k in ks})]

    def index(positions):
        return torch.tensor(positions, dtype=torch.long, device=device)

    through = [k for k, job in enumerate(spec) if eng.train_bn or job.objective != "hint"]
    if [spec[k].end_point for k in through] != sorted(spec[k].end_point for k in through):
        raise AssertionError("clean jobs must sit in slots by end point (_slot_order): they join g in that order")
    position = {k: p for p, k in enumerate(through)}  # along g's job dimension
    hint = by_point([k for k, job in enumerate(spec) if job.objective == "hint"])
    owner = [k for _, ks in hint for k in ks]
    weight = [1.0] * len(owner)
    fula_at = []
    for p in range(spec[through[0]].end_point if through else points, points):
        inside = [k for k in through if spec[k].end_point <= p]  # g's batch at point p
        terms = []
        for k in inside:
            if spec[k].objective == "fula":
                w = spec[k].fula_weights or (1.0,) * (points - spec[k].end_point)
                if w[p - spec[k].end_point]:  # fula_loss skips the terms of weight zero
                    terms.append((k, w[p - spec[k].end_point] / sum(w)))
        if terms:
            ks = [k for k, _ in terms]
            fula_at.append((p, None if ks == inside else index([position[k] for k in ks])))
            owner += ks
            weight += [w for _, w in terms]
    heads = []
    for objectives in (("slm",), ("tlm", "hlm")):
        ks = [k for k in through if spec[k].objective in objectives]
        heads.append(index([position[k] for k in ks]) if ks else None)
        owner += ks
        weight += [1.0] * len(ks)
    return _CleanGroup(jobs, run[0][0], run[-1][0] + 1, by_point(through), hint, fula_at, heads[0], heads[1],
                       index(owner), torch.tensor(weight, device=device),
                       any(spec[k].objective != "hint" for k in through))


@contextlib.contextmanager
def _grouped_train_bn(eng: "_Engine", group: _CleanGroup, batch: int):
    """Train-mode BN layers of the end model that treat a batch of `batch` * J samples, sample b of job k in row
    b * J + k, as J jobs' batches: viewed as [batch, J * C, ...], one BatchNorm call normalises every (job,
    channel) with its own batch statistics over its job's samples, exactly as the job's own forward would, and
    updates each job's running statistics in place. The J jobs inside a layer are the group's first J slots,
    whose rows of the layer-major end bank are one contiguous [J * C] vector. The counts of the layers that ran
    are advanced after the block, for the jobs that were inside them. (A channels_last input cannot be viewed
    so; reshape copies it, which only costs time.)"""
    layers, bank = eng.end_layers, eng.end_bank
    reps = eng.bn_consts.setdefault("end_repeated", {})
    ran: list[tuple[int, int]] = []
    try:
        for index, m in enumerate(layers):

            def forward(x, m=m, index=index):
                jobs = x.shape[0] // batch
                key = (index, jobs)
                ran.append(key)
                if key not in group.bn:  # views, made once per group (cached while the running jobs stay)
                    group.bn[key] = bank.group(index, group.first, group.first + jobs)
                if key not in reps:  # the frozen affine parameters, once per layer and number of jobs
                    reps[key] = tuple(None if t is None else t.detach().repeat(jobs) for t in (m.weight, m.bias))
                (mean, var), (weight, bias) = group.bn[key], reps[key]
                grouped = x.reshape(batch, jobs * x.shape[1], *x.shape[2:])
                out = F.batch_norm(grouped, mean, var, weight, bias, True, m.momentum, m.eps)
                return out.reshape(x.shape)

            m.__dict__["forward"] = forward  # shadows the class's forward for this block only (no Module.__setattr__)
        yield
    finally:
        for m in layers:
            m.__dict__.pop("forward", None)
    if ran:  # num_batches_tracked += 1 for each layer that ran and each job inside it, in one addition
        key = tuple(ran)
        if key not in group.counts_step:
            counts = bank.counts[:, group.first:group.stop]
            step = torch.zeros_like(counts)
            for index, jobs in ran:
                step[index, :jobs] += 1
            group.counts_step[key] = (counts, step)
        counts, step = group.counts_step[key]
        counts.add_(step)


def _relative_errors(a: torch.Tensor, t: torch.Tensor, reduction: str) -> torch.Tensor:
    """relative_error of each job's block: a [B, J, ...] (job k's batch at [:, k]) against the targets t [B, ...]
    -> [J]."""
    a, t = a.float(), t.float()
    d = (a - t.unsqueeze(1)).flatten(2)  # [B, J, D]
    if reduction == "batch":
        return torch.linalg.vector_norm(d, dim=(0, 2)) / t.norm()
    if reduction == "sample":
        return (torch.linalg.vector_norm(d, dim=2) / t.flatten(1).norm(dim=1).unsqueeze(1)).mean(0)
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _through_end(end, entering: list[tuple[int, torch.Tensor]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One pass of g for jobs that enter at several points: `entering` holds, by point, their stitch outputs
    [B, J_p, ...]. From the first point on, g runs segment by segment; at each point the jobs entering there
    join the batch along the job dimension. Returns g's batch at every point from the first ([B, J', ...],
    the J' jobs entered so far) and the logits of all jobs [B, J, classes]. Without end.segment all jobs enter
    at one point (_clean_groups) and g_{>j} runs at once."""
    (j, a), b = entering[0], entering[0][1].shape[0]

    def jobs_apart(t):  # [B * J', ...] -> [B, J', ...] (a view: sample b of job k is row b * J' + k)
        return t.reshape(b, -1, *t.shape[1:])

    if len(entering) == 1 and not _segmented(end):
        later, logits = end.activations_from(a.flatten(0, 1), j, with_logits=True)
        return [a] + [jobs_apart(t) for t in later], jobs_apart(logits)
    joining, last = dict(entering[1:]), len(end.stitch_points) - 1
    acts = [a]
    for p in range(j + 1, last + 1):
        a = jobs_apart(end.segment(a.flatten(0, 1), p - 1))
        if p in joining:
            a = torch.cat([a, joining[p]], 1)
        acts.append(a)
    return acts, jobs_apart(end.forward_from(a.flatten(0, 1), last))


def _train_clean_group(eng: "_Engine", group: _CleanGroup, x, y, clean_targets) -> None:
    """objective_loss and its backward for every job of a clean group in one pass (EngineConfig.batch_clean).

    Each job's stitch maps its shared front activation; the outputs enter g at their own points and go through
    the rest of g as one batch (_through_end; _grouped_train_bn in train-BN mode, eval-mode BN is per sample
    anyway); each job's loss is a weighted sum of terms computed on its own block, by objective and point in a
    few batched operations (_CleanGroup); the losses' sum is backpropagated once, which gives each stitch its own
    loss's gradient (the jobs share no parameters, and no sample of one job reaches another's loss: BN statistics
    are per job). The losses go to the jobs' slots of loss_sums."""
    cfg, end, train_bn = eng.cfg, eng.end, eng.train_bn
    front_acts, targets, end_logits = clean_targets
    jobs, b = group.jobs, x.shape[0]
    terms = []
    with _autocast(x.device):
        outs = [st.stitch(front_acts[st.job.front_point]) for _, st in jobs]
        for j, ks in group.hint:  # hint: the relative error at its point, of its stitch's own output
            terms.append(_relative_errors(torch.stack([outs[k] for k in ks], 1), targets[j], cfg.fula_reduction))
        if group.entries:
            # hint's outputs only re-estimate g's statistics (train-BN): no gradient flows back through g to them
            entering = [(j, torch.stack([outs[k].detach() if jobs[k][1].job.objective == "hint" else outs[k]
                                         for k in ks], 1)) for j, ks in group.entries]
            with torch.set_grad_enabled(group.needs_grad), \
                    _grouped_train_bn(eng, group, b) if train_bn else contextlib.nullcontext():
                acts, logits = _through_end(end, entering)
            first = group.entries[0][0]
            for p, inside in group.fula_at:
                a = acts[p - first] if inside is None else acts[p - first].index_select(1, inside)
                terms.append(_relative_errors(a, targets[p], cfg.fula_reduction))
            if group.slm is not None:
                log_h = F.log_softmax(logits.index_select(1, group.slm).float(), 2)
                log_g = F.log_softmax(end_logits.float(), 1).unsqueeze(1)
                terms.append((log_g.exp() * (log_g - log_h)).sum((0, 2)) / b)  # slm_loss's batchmean KL per job
            if group.labels is not None:  # tlm / hlm
                out = logits.index_select(1, group.labels).float()
                terms.append(F.cross_entropy(out.permute(0, 2, 1), y.unsqueeze(1).expand(b, out.shape[1]),
                                             reduction="none").mean(0))
    terms = torch.cat(terms) if len(terms) > 1 else terms[0]
    losses = torch.zeros(len(jobs), device=terms.device).index_add_(0, group.owner, terms * group.weight)
    losses.sum().backward()
    eng.loss_sums[group.first:group.stop].add_(losses.detach())


def _train_batch(eng: _Engine, running: list[tuple[int, _Job]], x, y) -> None:
    """One optimiser step of every running job on batch (x, y)."""
    cfg, train_bn, front, end = eng.cfg, eng.train_bn, eng.front, eng.end
    # 1. adversarial inputs, crafted before this batch touches any running statistics
    x_adv = {}
    bf16 = eng.engine.pgd_bf16 and x.device.type == "cuda"
    if eng.engine.batch_pgd and cfg.pgd_steps > 0 and cfg.pgd_eps != 0:
        groups: dict[tuple[int, int], list] = {}
        for n, st in running:
            if st.job.alpha > 0:
                groups.setdefault((st.job.front_point, st.job.end_point), []).append((n, st))
        for group in groups.values():
            if len(group) > 1:
                with torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                    x_adv.update(_batched_pgd(eng, group, x, y))
    for n, st in running:
        if st.job.alpha > 0 and n not in x_adv:
            with torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                x_adv[n] = attacks.pgd_linf(eng.stitched_eval[n], x, y, eps=cfg.pgd_eps, step_size=cfg.pgd_step,
                                            steps=cfg.pgd_steps, random_start=cfg.pgd_random_start, generator=st.gen)
    # 2. one front and one end forward on the clean batch for every job that trains on clean inputs
    clean = [(n, st) for n, st in running if st.job.alpha < 1]
    clean_targets = _shared_forward(eng, x, clean)
    # 3. each job's stitched forward(s) and loss; then one step of all stitches
    if clean_targets is None:  # (else _shared_forward has just set these modes)
        front.train(train_bn), end.train(train_bn)
    eng.opt.zero_grad(set_to_none=True)
    batched = set()
    if eng.engine.batch_clean:
        for group in _clean_groups(eng, running):
            _train_clean_group(eng, group, x, y, clean_targets)
            batched.update(n for n, _ in group.jobs)
    for n, st in running:
        if n in batched:
            continue
        batch_inputs = []
        if st.job.alpha < 1:
            batch_inputs.append((1 - st.job.alpha, clean_targets))
        if st.job.alpha > 0:
            batch_inputs.append((st.job.alpha, _own_forward(eng, x_adv[n], st)))
        total = 0.0
        with swap_bn_state(end, st.end_bn if train_bn else None, eng.end_layers):
            for share, (front_acts, targets, end_logits) in batch_inputs:
                with _autocast(x.device):
                    out = st.stitch(front_acts[st.job.front_point])
                    loss = objective_loss(st.job, out, end, y, targets, end_logits, cfg, train_bn)
                (share * loss).backward()
                total = total + share * loss.detach()
        st.loss_sum += total
    eng.opt.step()
    eng.sched.step()


def train_stitches(front: StitchableResNet, end: StitchableResNet, jobs: Sequence[StitchJob], data: ImageSet,
                   cfg: StitchConfig = StitchConfig(), *, init_data: ImageSet | None = None,
                   checkpoint: Checkpointer = NO_CHECKPOINT, progress: bool = True,
                   engine: EngineConfig = EngineConfig()) -> list[StitchOutcome]:
    """Train every job's stitch in one pass over `data` (front and end stay frozen).

    Per batch: PGD inputs are crafted for each adversarial job (its stitched model in eval mode with its
    own BN statistics); one front and one end forward on the clean batch serve every job with alpha < 1;
    jobs with alpha > 0 then forward their own adversarial batch. The loss is (1 - alpha) L(clean) +
    alpha L(adversarial), every target computed on the same input the stitched model sees. One Adam
    steps every stitch (its state is per parameter: the same steps as one optimiser per job).

    Args:
        data: training images (labels for TLM; IRIs for invariance-aware stitching).
        init_data: images for the least-squares init (default `data`; the authors use real images for IRI runs).
        checkpoint: where the state after each epoch goes, so a killed run resumes where it stopped.
        engine: CUDA speed settings (EngineConfig); ignored on the CPU.
    Returns one StitchOutcome per job, in order; a job whose loss became non-finite is stopped and
    reported in `.error` while the others go on.
    """
    device = next(front.parameters()).device
    if device.type != "cuda":
        engine = dataclasses.replace(engine, pgd_bf16=False, channels_last=False, cudnn_benchmark=False,
                                     batch_pgd=bool(engine.batch_pgd), batch_clean=bool(engine.batch_clean))
    else:
        engine = dataclasses.replace(engine, batch_pgd=engine.batch_pgd is not False,
                                     batch_clean=engine.batch_clean is not False)
    was = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = was or engine.cudnn_benchmark
    try:
        return _train_stitches(front, end, jobs, data, cfg, init_data, checkpoint, progress, engine)
    finally:
        torch.backends.cudnn.benchmark = was


def _train_stitches(front, end, jobs, data, cfg, init_data, checkpoint, progress, engine: EngineConfig):
    from tqdm.auto import tqdm

    if not jobs:
        return []
    if len({j.name for j in jobs}) != len(jobs):
        raise ValueError("duplicate stitch jobs: each (front, end, objective, alpha, weights) once")
    given_jobs, jobs = list(jobs), [resolve_job(j, front, end) for j in jobs]  # points as indices from here on
    _check_inputs(front, end, jobs, data, init_data)
    device = next(front.parameters()).device
    freeze(front), freeze(end)
    if engine.channels_last:  # in place, as .to() is for modules; the numbers are the same up to summation order
        front.to(memory_format=torch.channels_last), end.to(memory_format=torch.channels_last)
    data, init_data = data.to(device), (init_data or data).to(device)
    stitches = init_stitches(front, end, jobs, init_data, cfg)
    if engine.channels_last:
        for stitch in stitches:
            stitch.to(memory_format=torch.channels_last)
    train_bn = cfg.bn_mode == "train"
    outcomes: list[StitchOutcome | None] = [None] * len(jobs)
    steps = steps_per_epoch(len(data), cfg.batch_size)
    # jobs with something to train: not the closed-form DM, not a parameter-free stitch (the identity family)
    trained = [n for n, (job, stitch) in enumerate(zip(jobs, stitches))
               if job.objective != "dm" and cfg.epochs > 0 and any(True for _ in stitch.parameters())]
    # every trained job's running statistics start from the models' own (rows of the banks)
    front_bank = _BNBank(front, len(trained)) if train_bn and trained else None
    end_bank = _BNBank(end, len(trained), layer_major=True, slots=_slot_order([jobs[n] for n in trained])) \
        if train_bn and trained else None
    active: list[tuple[int, _Job]] = []
    for n, (job, stitch) in enumerate(zip(jobs, stitches)):
        if n not in trained:
            outcomes[n] = StitchOutcome(job, _stitch_state(stitch), None, None, [])
        else:
            k = len(active)
            active.append((n, _Job(job, stitch, cfg, front_bank.rows[k] if front_bank else None,
                                   end_bank.rows[k] if end_bank else None, device)))

    live_front_bn, live_end_bn = get_bn_state(front), get_bn_state(end)
    eng = _Engine(front, end, active, cfg, train_bn, steps, front_bank, end_bank, engine) if active else None
    data_gen = torch.Generator().manual_seed(cfg.seed)  # one data order for all jobs (CPU: randperm)
    start_epoch = 0
    resumed = checkpoint.load() if active else None
    if resumed is not None:
        start_epoch = resumed["epoch"]
        data_gen.set_state(resumed["data_gen"])
        for (_, st), s in zip(active, resumed["jobs"]):
            st.load(s, eng.opt)
        # the shared schedule (and the learning rate it set) from a job that was still training
        s = next((s for s in resumed["jobs"] if s["error"] is None), resumed["jobs"][0])
        eng.sched.load_state_dict(s["sched"])
        eng.opt.param_groups[0]["lr"] = s["opt"]["param_groups"][0]["lr"]

    try:
        bar = tqdm(desc=f"{len(active)} stitches", total=cfg.epochs * steps, initial=start_epoch * steps,
                   disable=not progress or not active, unit="batch")
        for epoch in range(start_epoch, cfg.epochs if active else 0):
            for x, y in batches(data, cfg.batch_size, shuffle=True, generator=data_gen, augment_data=cfg.augment,
                                    drop_last=True):
                if engine.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                _train_batch(eng, [(n, st) for n, st in active if st.error is None], x, y)
                bar.update()
            for n, st in active:
                if st.error is None:
                    mean_loss = float(st.loss_sum) / steps
                    st.loss_sum.zero_()
                    if not math.isfinite(mean_loss):
                        st.error = f"stopped: non-finite loss ({mean_loss}) in epoch {epoch + 1} of job {st.job.name}"
                    st.losses.append(mean_loss)
            bar.set_postfix(epoch=epoch + 1)
            checkpoint.save({"epoch": epoch + 1, "data_gen": data_gen.get_state(),
                             "jobs": [st.state(eng.opt, eng.sched) for _, st in active]})

        bar.close()
    finally:  # the live buffers are never written (the jobs' own are swapped in); restore them all the same
        set_bn_state(front, live_front_bn), set_bn_state(end, live_end_bn)
    front.eval(), end.eval()
    own = (lambda bn: None if bn is None else [t.clone() for t in bn])  # not views of the whole bank
    for n, st in active:
        outcomes[n] = StitchOutcome(st.job, _stitch_state(st.stitch), own(st.front_bn), own(st.end_bn), st.losses,
                                    st.error)
    for n, job in enumerate(given_jobs):  # each outcome carries the job as the caller gave it (names stay names)
        outcomes[n].job = job
    return outcomes  # type: ignore[return-value]


def _check_inputs(front, end, jobs: Sequence[StitchJob], data: ImageSet, init_data: ImageSet | None) -> None:
    """Errors that name the mismatched part, instead of a shape error deep inside a convolution or a loss."""
    for images in (data, init_data or data):
        channels = images.images.shape[1]
        for part, model in (("front", front), ("end", end)):
            expected = getattr(model, "in_channels", None)
            if expected is not None and channels != expected:
                raise ValueError(f"{images.name} has {channels}-channel images but the {part} model takes "
                                 f"{expected} channels: stitch models of the same input kind")
    uses_labels = any(j.objective in ("tlm", "hlm") or j.alpha > 0 for j in jobs)  # TLM/HLM losses and PGD use labels
    classes = getattr(end, "num_classes", None)
    if uses_labels and classes is not None and len(data) and int(data.labels.max()) >= classes:
        raise ValueError(f"{data.name} has label {int(data.labels.max())}, outside the end model's "
                         f"{classes} classes: train on the end model's task (or data.first_classes(k))")


def _shared_forward(eng: _Engine, x, clean_jobs: list[tuple[int, _Job]]):
    """Front and end activations (and end logits) on a batch, once for all jobs that train on it."""
    if not clean_jobs:
        return None
    front, end, train_bn = eng.front, eng.end, eng.train_bn
    front.train(train_bn), end.train(train_bn)
    with torch.no_grad(), _autocast(x.device):
        if train_bn:
            with eng.front_bank.capture(front):
                front_acts = front.activations(x)
            with batch_statistics_only(end, eng.end_layers):  # targets: batch statistics, no job's update
                targets, end_logits = end.activations(x, with_logits=True)
            eng.front_bank.apply_captured([eng.row[n] for n, _ in clean_jobs])
        else:
            front_acts = front.activations(x)
            targets, end_logits = end.activations(x, with_logits=True)
    return front_acts, targets, end_logits


class _AtPoint:
    """A list-like holding one activation at index k (what objective_loss reads of a job's front/targets)."""

    def __init__(self, k: int, value: torch.Tensor):
        self.k, self.value = k, value

    def __getitem__(self, k):
        if k != self.k:
            raise IndexError(f"only point {self.k} was computed, not {k}")
        return self.value


def _own_forward(eng: _Engine, x, st: _Job):
    """Front and end forwards on one job's own (adversarial) batch, with that job's running statistics.

    Only what the job reads is run: the front up to its point i (f_{<=i}: the layers after i do not act on
    the stitched model) and, of the end model (batch statistics, nothing updated), the activation at j for
    hint, every later point for FuLA, the logits for SLM and nothing for TLM/HLM."""
    front, end, train_bn = eng.front, eng.end, eng.train_bn
    i, j, objective = st.job.front_point, st.job.end_point, st.job.objective
    front.train(train_bn), end.train(train_bn)
    with torch.no_grad(), _autocast(x.device):
        with swap_bn_state(front, st.front_bn if train_bn else None, eng.front_layers):
            front_acts = _AtPoint(i, front.activations_upto(x, i))
        targets = end_logits = None
        if objective in ("hint", "fula", "slm"):
            with batch_statistics_only(end, eng.end_layers) if train_bn else contextlib.nullcontext():
                if objective == "hint":
                    targets = _AtPoint(j, end.activations_upto(x, j))
                else:
                    targets, end_logits = end.activations(x, with_logits=True)
    return front_acts, targets, end_logits


# ----------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def predict(model, data: ImageSet, batch_size: int = 500) -> torch.Tensor:
    """Logits of `model` (eval mode, each submodule's mode restored afterwards) on every image of `data`."""
    device = data.images.device
    with eval_mode(model) if isinstance(model, nn.Module) else contextlib.nullcontext():
        out = [model(xb.float().div(255)) for xb in data.images.split(batch_size)]
    return torch.cat(out).float().to(device)


def evaluate(model, data: ImageSet, end_logits: torch.Tensor | None = None, batch_size: int = 500) -> dict[str, float]:
    """Accuracy (and agreement with the end model, when its logits on `data` are given), in percent."""
    logits = predict(model, data, batch_size)
    result = {"accuracy": metrics.accuracy(logits, data.labels)}
    if end_logits is not None:
        result["agreement"] = metrics.agreement_probability(logits, end_logits)
    return result


def result_row(job: StitchJob, **fields) -> dict:
    """A tidy result row: the job's fields plus the given values."""
    return {**dataclasses.asdict(job), "job": job.name, **fields}
