"""CIFAR-style ResNets with named stitch points.

The papers stitch at 9 places in every architecture: the stem output, then the first and the last
residual block of each of the four stages, all taken after the block's final ReLU (FuLA paper, App. A.2).
Each network here is a flat sequence of *units* (stem, block, block, ...) followed by a head, so "run the
rest of the network from stitch point k" is a slice of that sequence.

Inputs are float images in [0, 1]; the network maps them to [-1, 1] itself so that attacks and IRIs work
in the natural input box.
"""
from __future__ import annotations

import contextlib
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F

MODELS_VERSION = 1  # part of every cache key: bump when a change here alters trained weights or outputs

ARCHITECTURES = {
    # name: (blocks per stage, residual connections)
    "resnet18": ((2, 2, 2, 2), True),
    "resnet34": ((3, 4, 6, 3), True),
    "resnet18_noskip": ((2, 2, 2, 2), False),
}
NUM_STITCH_POINTS = 9


class BasicBlock(nn.Module):
    """The standard two-conv residual block; `residual=False` removes the skip (the plain-CNN variant)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, residual: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.residual = residual
        self.shortcut = nn.Sequential()
        if residual and (stride != 1 or in_ch != out_ch):
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + self.shortcut(x)
        return F.relu(out)


def _standard_layout(x: torch.Tensor) -> torch.Tensor:
    """A copy with standard NCHW strides when x has odd ones (e.g. one channel permuted from NHWC, which
    counts as contiguous): torch's CPU convolution backward corrupts memory on such strides. Channels-last
    inputs pass through untouched."""
    if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1:
        return x
    n, c, h, w = x.shape
    if x.stride() != (c * h * w, h * w, w, 1):
        return x.clone(memory_format=torch.contiguous_format)
    return x


class Stem(nn.Module):
    """3x3 stride-1 conv + BN + ReLU, no max-pool: the CIFAR variant keeps 32x32 resolution."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x):
        return F.relu(self.bn(self.conv(_standard_layout(x) * 2 - 1)))  # [0,1] -> [-1,1]


class StitchableResNet(nn.Module):
    """A CIFAR ResNet whose 9 stitch points can be read out and re-entered.

    Attributes:
        stitch_points: names of the 9 stitch points, in depth order.
        stitch_channels: channel count at each stitch point.
    """

    def __init__(self, arch: str, num_classes: int, in_channels: int = 3, width: int = 64):
        super().__init__()
        stage_blocks, residual = ARCHITECTURES[arch]
        self.arch, self.num_classes, self.in_channels, self.width = arch, num_classes, in_channels, width
        units: list[nn.Module] = [Stem(in_channels, width)]
        names, channels, point_units = ["stem"], [width], [0]
        in_ch = width
        for stage, n_blocks in enumerate(stage_blocks):
            out_ch = width * 2**stage
            for b in range(n_blocks):
                stride = 2 if (stage > 0 and b == 0) else 1
                units.append(BasicBlock(in_ch, out_ch, stride, residual))
                in_ch = out_ch
                if b == 0 or b == n_blocks - 1:  # first and last block of each stage
                    names.append(f"layer{stage + 1}.{b}")
                    channels.append(out_ch)
                    point_units.append(len(units) - 1)
        self.units = nn.ModuleList(units)
        self.fc = nn.Linear(in_ch, num_classes)
        self.stitch_points: list[str] = names
        self.stitch_channels: list[int] = channels
        self._point_unit = point_units  # index into self.units of each stitch point

    def _check_point(self, k: int) -> None:
        if not isinstance(k, int) or not 0 <= k < NUM_STITCH_POINTS:
            raise IndexError(
                f"stitch point {k!r} is out of range: {self.arch} has stitch points 0..{NUM_STITCH_POINTS - 1} "
                f"({', '.join(self.stitch_points)})"
            )

    def head(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(a, 1), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = unit(x)
        return self.head(x)

    def activations(self, x: torch.Tensor, with_logits: bool = False):
        """The activations at all 9 stitch points in one forward pass (plus the logits if asked)."""
        acts, points = [], set(self._point_unit)
        for i, unit in enumerate(self.units):
            x = unit(x)
            if i in points:
                acts.append(x)
        return (acts, self.head(x)) if with_logits else acts

    def activations_upto(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The activation at stitch point k, running only the units it needs (f_{<=k})."""
        self._check_point(k)
        for unit in self.units[: self._point_unit[k] + 1]:
            x = unit(x)
        return x

    def activations_from(self, a: torch.Tensor, k: int, with_logits: bool = False):
        """Place `a` at stitch point k and return the activations at every later stitch point (g_{>k})."""
        self._check_point(k)
        later = set(self._point_unit[k + 1 :])
        acts = []
        for i in range(self._point_unit[k] + 1, len(self.units)):
            a = self.units[i](a)
            if i in later:
                acts.append(a)
        return (acts, self.head(a)) if with_logits else acts

    def forward_from(self, a: torch.Tensor, k: int) -> torch.Tensor:
        """Logits of the network when activation `a` is placed at stitch point k."""
        self._check_point(k)
        for unit in self.units[self._point_unit[k] + 1 :]:
            a = unit(a)
        return self.head(a)


def build(arch: str, num_classes: int, in_channels: int = 3, width: int = 64) -> StitchableResNet:
    """Build a CIFAR-style network with 9 stitch points.

    Args:
        arch: "resnet18", "resnet34" or "resnet18_noskip" (ResNet18 without residual connections).
        num_classes: outputs of the final linear layer.
        in_channels: image channels (3 for CIFAR-10/ImageNet, 1 for Fashion-MNIST/digits).
        width: channels of the stem and first stage (64 in the paper; narrower for CPU profiles).

    Returns a network with `.stitch_points`, `.activations(x)`, `.forward_from(a, k)` and
    `.activations_from(a, k)`.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("width", width)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise TypeError(f"models.build: {name} must be an integer, got {value!r}")
    num_classes, in_channels, width = int(num_classes), int(in_channels), int(width)
    if num_classes < 2 or in_channels < 1 or width < 1:
        raise ValueError(f"need num_classes >= 2, in_channels >= 1, width >= 1; got {num_classes}, {in_channels}, {width}")
    return StitchableResNet(arch, num_classes, in_channels, width)


@contextlib.contextmanager
def eval_mode(*modules: nn.Module):
    """Run the given modules in eval mode; on exit every submodule gets back its own train/eval flag.
    (module.train(was) would instead set the whole tree to the top module's flag, e.g. put the frozen front
    and end of a fresh, training-mode stitched model into training mode.)"""
    saved = [(m, m.training) for root in modules for m in root.modules()]
    for root in modules:
        root.eval()
    try:
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def freeze(model: nn.Module) -> nn.Module:
    """Stop gradients into a front/end model: only the stitch is trained (BN statistics may still update)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model
