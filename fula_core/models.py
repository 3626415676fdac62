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
import math
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
NUM_STITCH_POINTS = 9  # of the project's ResNets (the papers' figures); other models: len(model.stitch_points)


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

    def point_index(self, k: int | str) -> int:
        """Stitch point `k`, given by name ("layer2.0") or index, as an index; a clear error otherwise."""
        if isinstance(k, str):
            if k in self.stitch_points:
                return self.stitch_points.index(k)
            raise IndexError(f"{k!r} is not a stitch point of {self.arch}: its points are {', '.join(self.stitch_points)}")
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(self.stitch_points):
            raise IndexError(
                f"stitch point {k!r} is out of range: {self.arch} has stitch points 0..{len(self.stitch_points) - 1} "
                f"({', '.join(self.stitch_points)})"
            )
        return k

    def _check_point(self, k: int | str) -> int:
        return self.point_index(k)

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
        k = self._check_point(k)
        for unit in self.units[: self._point_unit[k] + 1]:
            x = unit(x)
        return x

    def activations_from(self, a: torch.Tensor, k: int, with_logits: bool = False):
        """Place `a` at stitch point k and return the activations at every later stitch point (g_{>k})."""
        k = self._check_point(k)
        later = set(self._point_unit[k + 1 :])
        acts = []
        for i in range(self._point_unit[k] + 1, len(self.units)):
            a = self.units[i](a)
            if i in later:
                acts.append(a)
        return (acts, self.head(a)) if with_logits else acts

    def segment(self, a: torch.Tensor, k: int) -> torch.Tensor:
        """The activation at stitch point k + 1 when `a` is placed at point k: the units between the two points
        (the stitching engine walks g point by point, letting further stitched batches join at each point)."""
        k = self._check_point(k)
        if k + 1 >= len(self.stitch_points):
            raise IndexError(f"stitch point {k} is the last one: no segment follows it (forward_from gives the logits)")
        for unit in self.units[self._point_unit[k] + 1 : self._point_unit[k + 1] + 1]:
            a = unit(a)
        return a

    def forward_from(self, a: torch.Tensor, k: int) -> torch.Tensor:
        """Logits of the network when activation `a` is placed at stitch point k."""
        k = self._check_point(k)
        for unit in self.units[self._point_unit[k] + 1 :]:
            a = unit(a)
        return self.head(a)


# Paper 2's other architectures, built from torchvision through the generic wrapper (stitchable.py).
# name -> the authors' stitch points (their models/model_utils.py) in our module names
WRAPPED_ARCHITECTURES = {
    # VGG-16-BN: the ReLU after the first and second conv, then the last ReLU of stages 2-5 (before each pool)
    "vgg16": ["features.2", "features.5", "features.12", "features.22", "features.32", "features.42"],
    # ViT-Tiny/4: the output of each of the 12 encoder blocks, then the pre-logit (class-token) feature
    "vit_tiny": [f"encoder.layers.encoder_layer_{i}" for i in range(12)] + ["heads.pre_logits"],
}
# The authors train both with SGD at lr 0.01 (their base configs); the ResNets keep the paper's 0.1.
ARCH_TRAIN_OVERRIDES = {"vgg16": {"lr": 0.01}, "vit_tiny": {"lr": 0.01}}
VGG16_LAYOUT = (1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M")  # x width (64 = torchvision's)


def vgg16(num_classes: int, in_channels: int = 3, width: int = 64):
    """torchvision's VGG-16-BN for small images: `width` channels in the first stage (64 = the original),
    `in_channels` input channels, pools with ceil_mode (so 28x28 inputs keep a 1x1 map after the fifth
    pool; identical to floor mode on 32x32), and the ImageNet head (7x7 pooling, 4096 units) replaced by
    1x1 pooling and a three-layer head 8*width units wide, as CIFAR VGGs do. Stitch points are in
    `features` only, so the head's shape does not touch stitching."""
    from torchvision.models.vgg import VGG, make_layers

    from .stitchable import stitchable

    features = make_layers([v if v == "M" else v * width for v in VGG16_LAYOUT], batch_norm=True)
    features[0] = nn.Conv2d(in_channels, width, 3, padding=1)
    for m in features:
        if isinstance(m, nn.MaxPool2d):
            m.ceil_mode = True
    net = VGG(features, num_classes=num_classes)
    d = 8 * width
    net.avgpool = nn.AdaptiveAvgPool2d(1)
    net.classifier = nn.Sequential(nn.Linear(d, d), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(d, d), nn.ReLU(True),
                                   nn.Dropout(0.5), nn.Linear(d, num_classes))
    return stitchable(net, WRAPPED_ARCHITECTURES["vgg16"], in_channels=in_channels, num_classes=num_classes,
                      input_range=(-1.0, 1.0), input_shape=(in_channels, 32, 32))


def vit_tiny(num_classes: int, in_channels: int = 3, width: int = 64, image_size: int = 32, patch_size: int = 4):
    """ViT-Tiny/4 from torchvision's VisionTransformer: depth 12, 3 heads, embedding 3 * width (192 at
    width 64, ViT-Tiny's), MLP 4x, patches of 4 pixels (8x8 = 64 patch tokens + the class token on 32x32).
    The head is split into an identity `pre_logits` (the class-token feature, the 13th stitch point) and
    the linear classifier; a 1-channel variant takes `in_channels=1`."""
    from collections import OrderedDict

    from torchvision.models.vision_transformer import VisionTransformer

    from .stitchable import stitchable

    dim = 3 * width
    net = VisionTransformer(image_size=image_size, patch_size=patch_size, num_layers=12, num_heads=3, hidden_dim=dim,
                            mlp_dim=4 * dim, num_classes=num_classes)
    if in_channels != 3:
        old = net.conv_proj
        net.conv_proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        nn.init.trunc_normal_(net.conv_proj.weight, std=math.sqrt(1 / (in_channels * patch_size**2)))
        nn.init.zeros_(net.conv_proj.bias)
        del old
    head = net.heads.head
    net.heads = nn.Sequential(OrderedDict(pre_logits=nn.Identity(), head=head))
    return stitchable(net, WRAPPED_ARCHITECTURES["vit_tiny"], in_channels=in_channels, num_classes=num_classes,
                      input_range=(-1.0, 1.0), input_shape=(in_channels, image_size, image_size))


def num_stitch_points(arch: str) -> int:
    """The number of stitch points of a zoo architecture, without building it (9 for the ResNets, the
    authors' 6 for VGG-16 and 13 for ViT-Tiny/4)."""
    if arch in WRAPPED_ARCHITECTURES:
        return len(WRAPPED_ARCHITECTURES[arch])
    if arch in ARCHITECTURES:
        return NUM_STITCH_POINTS
    raise ValueError(f"unknown architecture {arch!r}: choose one of {', '.join([*ARCHITECTURES, *WRAPPED_ARCHITECTURES])}")


def build(arch: str, num_classes: int, in_channels: int = 3, width: int = 64, image_size: int = 32):
    """Build a network of the zoo with its stitch points.

    Args:
        arch: "resnet18", "resnet34", "resnet18_noskip" (ResNet18 without residual connections): the
            project's CIFAR ResNets with 9 stitch points; "vgg16" (6 points) or "vit_tiny" (ViT-Tiny/4,
            13 points): paper 2's other architectures, torchvision models in the generic wrapper.
        num_classes: outputs of the final linear layer.
        in_channels: image channels (3 for CIFAR-10/ImageNet, 1 for Fashion-MNIST/digits).
        width: channels of the first stage (64 in the paper; narrower for CPU profiles); the ViT's
            embedding is 3 * width.
        image_size: input side length (only the ViT's patch grid depends on it).

    Returns a network with `.stitch_points`, `.activations(x)`, `.activations_upto(x, k)`,
    `.activations_from(a, k)` and `.forward_from(a, k)` (k a point's name or index).
    """
    if arch not in ARCHITECTURES and arch not in WRAPPED_ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}: choose one of {', '.join([*ARCHITECTURES, *WRAPPED_ARCHITECTURES])}")
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("width", width)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise TypeError(f"models.build: {name} must be an integer, got {value!r}")
    num_classes, in_channels, width = int(num_classes), int(in_channels), int(width)
    if num_classes < 2 or in_channels < 1 or width < 1:
        raise ValueError(f"need num_classes >= 2, in_channels >= 1, width >= 1; got {num_classes}, {in_channels}, {width}")
    if arch == "vgg16":
        return vgg16(num_classes, in_channels, width)
    if arch == "vit_tiny":
        return vit_tiny(num_classes, in_channels, width, image_size)
    return StitchableResNet(arch, num_classes, in_channels, width)


def stitchable(model: nn.Module, points, **options):
    """Wrap any network whose stitch points are module names: see fula_core.stitchable.stitchable."""
    from .stitchable import stitchable as wrap

    return wrap(model, points, **options)


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
