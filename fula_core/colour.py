"""Colour-Fashion-MNIST: Smith et al.'s colour testbed ("Functional Alignment Can Mislead", ICML 2025), built
from the offline Fashion-MNIST the way they build theirs from MNIST (a Biased-MNIST variant).

Every image is 3x28x28: a flat background of one of ten fixed colours, shifted per image by a small random
jitter (each channel independently, so two images of one colour are never identical), with the garment drawn
over it in white. Smith et al. binarise the digit (every non-zero pixel white); a garment's grey levels carry
its texture, so here the Fashion-MNIST intensity is the white's opacity: pixel = g * white + (1 - g) * colour,
g = intensity / 255. A garment pixel of full intensity is pure white, the background (g = 0) is pure colour.

Three data sets, each with a train and a test split:

  colour_fmnist_shape        background colour drawn uniformly, independent of the class: only the shape
                             tells the class (Smith et al.'s "unbiased", rho = 0.1)
  colour_fmnist_correlated   background colour = the class's colour: shape and colour both tell the class
                             (their "biased", rho = 1)
  colour_fmnist_colour_only  no garment, background colour = the class's colour: only colour tells the class

They are registered as built-in data sets, so `TrainConfig(dataset="colour_fmnist_shape")`, `data.load` and
`experiments.DataSpec` take their names. The sets are generated from fixed seeds: the same images every time.
"""
from __future__ import annotations

import functools

import torch

from . import data as _data

COLOUR_VERSION = 1  # the generated images: bump when a change here alters them (part of their names)

# Ten well separated background colours (RGB 0..255), one per class; none is white, the garment's colour.
CLASS_COLOURS = torch.tensor([
    [200, 30, 30],    # red
    [30, 160, 30],    # green
    [30, 60, 200],    # blue
    [210, 200, 20],   # yellow
    [190, 40, 190],   # magenta
    [20, 180, 180],   # cyan
    [230, 120, 20],   # orange
    [110, 60, 20],    # brown
    [120, 40, 230],   # violet
    [100, 100, 100],  # grey
], dtype=torch.float32)
JITTER = 16  # per-image, per-channel background shift, uniform in [-JITTER, JITTER] (0..255 scale)

KINDS = {"shape": "colour_fmnist_shape", "correlated": "colour_fmnist_correlated",
         "colour_only": "colour_fmnist_colour_only"}
_SPLIT_SEEDS = {"train": 11, "test": 12}  # colour draws and jitter of each split
_KIND_SEEDS = {"shape": 0, "correlated": 1, "colour_only": 2}


def colourise(grey: torch.Tensor, colour_index: torch.Tensor, *, garment: bool = True, jitter: int = JITTER,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 [N, 3, H, W]: the grey images [N, 1, H, W] (uint8) in white over flat backgrounds of the colours
    `colour_index` [N] (indices into CLASS_COLOURS), each jittered per image; garment=False leaves the garment out."""
    n = len(grey)
    shift = torch.randint(-jitter, jitter + 1, (n, 3), generator=generator).float() if jitter else torch.zeros(n, 3)
    background = (CLASS_COLOURS[colour_index] + shift).clamp(0, 255).view(n, 3, 1, 1)
    g = grey.float() / 255 if garment else torch.zeros_like(grey, dtype=torch.float32)
    out = g * 255 + (1 - g) * background
    return out.round().clamp(0, 255).to(torch.uint8)


def make(kind: str, split: str, root=None) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """(images, labels, classes) of one Colour-Fashion-MNIST set (`kind` one of KINDS) and split: generated
    once per process (a notebook loads each set several times), handed out as copies."""
    images, labels, classes = _make(kind, split, None if root is None else str(root))
    return images.clone(), labels.clone(), classes


@functools.lru_cache(maxsize=8)
def _make(kind: str, split: str, root: str | None):
    if kind not in KINDS:
        raise ValueError(f"unknown colour data set kind {kind!r}: choose one of {', '.join(KINDS)}")
    fmnist = _data.load("fashion_mnist", split, root=root)
    gen = torch.Generator().manual_seed(1000 * _KIND_SEEDS[kind] + _SPLIT_SEEDS[split])
    labels = fmnist.labels
    colours = torch.randint(0, len(CLASS_COLOURS), (len(labels),), generator=gen) if kind == "shape" else labels
    images = colourise(fmnist.images, colours, garment=kind != "colour_only", generator=gen)
    return images, labels.clone(), fmnist.classes


def _loader(kind: str):
    def load(root, split):
        return make(kind, split, root)
    load.__doc__ = f"Colour-Fashion-MNIST, {kind} (colour.make)"
    return load


# Registered like the built-in sets: crop (padding 2) and flips as Fashion-MNIST (clothes are mirror-symmetric)
for _kind, _name in KINDS.items():
    _data.DATASET_INFO[_name] = dict(in_channels=3, image_size=28, num_classes=10, flip=True, crop_padding=2)
    _data._LOADERS[_name] = _loader(_kind)


def nearest_colour(images: torch.Tensor) -> torch.Tensor:
    """The class whose colour is nearest to each image's corner pixel (always background): a model-free
    reader of the colour cue, for checking what the colour alone says about the class."""
    corner = images[:, :, 0, 0].float()
    return torch.cdist(corner, CLASS_COLOURS).argmin(1)
