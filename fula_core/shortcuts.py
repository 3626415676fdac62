"""4x4 shortcut markers (FuLA paper Sec. 3.2, Figs. 7 and 12; invariance-aware protocol, testbed 3).

A shortcut is a small marker pasted into every image that reveals the class, a cue the front and end
models never saw. The paper's configurations combine *what* is pasted with *where*:

=================  =====================================  ===========================================
kind               patch content                          patch location
=================  =====================================  ===========================================
pixel              solid class colour                     random per image
location           uniform noise, fresh per image         fixed per class
pixel_location     solid class colour                     fixed per class
random             uniform noise, fresh per image         random per image (control: no class signal)
aruco              the class's 4x4 ArUco bit pattern      random per image
aruco_location     the class's 4x4 ArUco bit pattern      fixed per class
=================  =====================================  ===========================================

The marker of a sample with label y is that of class (y + shift) mod K: shift=0 pastes the correct marker,
shift=1 the "shifted markers" used to measure excess agreement (agreement with correct markers minus
agreement with markers of the next class).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import torch

from .data import ImageSet

SHORTCUT_KINDS = ("pixel", "location", "pixel_location", "random", "aruco", "aruco_location")

_COLOUR_KINDS = ("pixel", "pixel_location")
_ARUCO_KINDS = ("aruco", "aruco_location")
_CLASS_LOCATION_KINDS = ("location", "pixel_location", "aruco_location")
_ARUCO_DICTIONARY_SIZE = 50  # DICT_4X4_50


def class_colours(num_classes: int, channels: int) -> torch.Tensor:
    """One colour per class, uint8 [K, C], spread out so that no two classes look alike.

    Colour images: greedy farthest-point selection over a regular grid of the colour cube (levels 0, 64,
    128, 191, 255 per channel, finer if K needs it): from a start colour, each next colour is the grid point
    farthest from all chosen ones (first in grid order on ties). Every grid point is tried as the start and
    the selection with the largest smallest pairwise distance is kept (the first such on ties), which
    makes the result deterministic. For K=10 RGB colours the smallest pairwise distance is 180 (the
    cube's edge is 255).
    Grey images (C=1): K evenly spaced grey levels 255/K, 2*255/K, ..., 255; black is left out because it
    is the background of MNIST-like images, where a black marker would be invisible.
    """
    if num_classes < 1 or channels < 1:
        raise ValueError(f"class_colours needs num_classes >= 1 and channels >= 1, got {num_classes}, {channels}")
    return _farthest_point_colours(num_classes, channels).clone()


@functools.lru_cache(maxsize=None)  # the search takes ~0.1 s and every add_shortcut call needs its result
def _farthest_point_colours(num_classes: int, channels: int) -> torch.Tensor:
    """The search behind class_colours (cached; callers get a copy)."""
    if channels == 1:
        return torch.linspace(255 / num_classes, 255, num_classes).round().to(torch.uint8).view(num_classes, 1)
    levels_per_channel = max(5, math.ceil(num_classes ** (1 / channels)))
    levels = torch.linspace(0, 255, levels_per_channel).round()
    grid = torch.cartesian_prod(*[levels] * channels).view(-1, channels)  # [levels^C, C]
    distances = torch.cdist(grid, grid)
    best, best_spread = None, -1.0
    for start in range(len(grid)):
        chosen = [start]
        nearest = distances[start].clone()  # distance of every grid colour to its nearest chosen colour
        for _ in range(num_classes - 1):
            farthest = int(nearest.argmax())
            chosen.append(farthest)
            nearest = torch.minimum(nearest, distances[farthest])
        pairwise = distances[chosen][:, chosen]
        spread = float(pairwise[~torch.eye(num_classes, dtype=torch.bool)].min()) if num_classes > 1 else 0.0
        if spread > best_spread:
            best, best_spread = chosen, spread
    return grid[best].to(torch.uint8)


def class_locations(num_classes: int, image_size: int, patch: int = 4, seed: int = 0) -> torch.Tensor:
    """A fixed top-left (row, col) per class, int64 [K, 2], with non-overlapping patches.

    The image is tiled into patch x patch cells; each class gets a distinct cell drawn with `seed`. Cells on
    the image border are avoided when enough inner cells exist, so that random-crop augmentation (a shift
    of a few pixels with zero padding) never pushes a class marker out of the image.
    """
    cells_per_side = image_size // patch
    cells = [(r, c) for r in range(cells_per_side) for c in range(cells_per_side)]
    inner = [(r, c) for r, c in cells if 0 < r < cells_per_side - 1 and 0 < c < cells_per_side - 1]
    pool = inner if len(inner) >= num_classes else cells
    if num_classes > len(pool):
        raise ValueError(f"cannot place {num_classes} non-overlapping {patch}x{patch} markers in a "
                         f"{image_size}x{image_size} image (room for {len(pool)})")
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:num_classes]
    return torch.tensor([pool[i] for i in order.tolist()], dtype=torch.int64) * patch


def aruco_patterns(num_classes: int) -> torch.Tensor:
    """The inner 4x4 bits of ArUco markers 0..K-1 of OpenCV's DICT_4X4_50, uint8 [K, 4, 4] with values 0/255.

    OpenCV draws each marker with a one-cell black border; drawn at 6x6 pixels every cell is one pixel, and
    the inner 4x4 pixels are the marker's bits.
    """
    if not 1 <= num_classes <= _ARUCO_DICTIONARY_SIZE:
        raise ValueError(f"DICT_4X4_50 has {_ARUCO_DICTIONARY_SIZE} markers; cannot give {num_classes} classes one each")
    try:
        import cv2
    except ImportError as err:
        raise ImportError("ArUco shortcuts need OpenCV: pip install opencv-python-headless") from err
    dictionary = cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_4X4_50)
    patterns = [cv2.aruco.generateImageMarker(dictionary, marker_id, 6)[1:5, 1:5] for marker_id in range(num_classes)]
    return torch.stack([torch.from_numpy(p.copy()) for p in patterns]).to(torch.uint8)


def add_shortcut(data: ImageSet, kind: str, *, seed: int = 0, shift: int = 0, patch: int = 4) -> ImageSet:
    """A copy of `data` with a `patch` x `patch` marker of the given `kind` pasted into every image.

    The marker encodes class (label + shift) mod K. Random locations are uniform over every position where
    the patch fits; class locations are class_locations(K, image size, patch). Random locations and noise
    come from torch.Generator().manual_seed(seed) and are drawn the same way for every kind and regardless
    of the labels, so the same seed gives the same random locations for `pixel`, `random` and `aruco`, and
    the `random` control is identical for any labelling of the images.
    """
    if kind not in SHORTCUT_KINDS:
        raise ValueError(f"unknown shortcut kind {kind!r}; valid kinds: {', '.join(SHORTCUT_KINDS)}")
    n, channels, height, width = data.images.shape
    if patch > min(height, width):
        raise ValueError(f"a {patch}x{patch} marker does not fit in {height}x{width} images")
    device = data.images.device
    k = data.num_classes
    marker_class = (data.labels + shift) % k

    # Random draws first, all on the CPU from one seeded generator: identical on every device.
    gen = torch.Generator().manual_seed(seed)
    random_rows = torch.randint(0, height - patch + 1, (n,), generator=gen)
    random_cols = torch.randint(0, width - patch + 1, (n,), generator=gen)
    noise = torch.randint(0, 256, (n, channels, patch, patch), generator=gen, dtype=torch.uint8)

    # Patch content, [n, C, patch, patch].
    if kind in _COLOUR_KINDS:
        colours = class_colours(k, channels).to(device)[marker_class]  # [n, C]
        content = colours.view(n, channels, 1, 1).expand(n, channels, patch, patch)
    elif kind in _ARUCO_KINDS:
        if patch % 4:
            raise ValueError(f"ArUco markers have 4x4 bits; patch must be a multiple of 4, got {patch}")
        bits = aruco_patterns(k).to(device)[marker_class]  # [n, 4, 4]
        scale = patch // 4
        bits = bits.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)  # blocky upscaling
        content = bits.unsqueeze(1).expand(n, channels, patch, patch)  # same bits in every channel
    else:  # "location" and "random": the fresh uniform noise drawn above
        content = noise.to(device)

    # Patch location, top-left [n] rows and cols.
    if kind in _CLASS_LOCATION_KINDS:
        if height != width:
            raise ValueError(f"class locations assume square images, got {height}x{width}")
        where = class_locations(k, height, patch).to(device)[marker_class]  # [n, 2]
        rows, cols = where[:, 0], where[:, 1]
    else:
        rows, cols = random_rows.to(device), random_cols.to(device)

    # Paste all patches at once: pixel (rows_n + i, cols_n + j) of image n gets content[n, :, i, j].
    offsets = torch.arange(patch, device=device)
    row_idx = (rows.view(n, 1) + offsets).view(n, patch, 1)
    col_idx = (cols.view(n, 1) + offsets).view(n, 1, patch)
    batch_idx = torch.arange(n, device=device).view(n, 1, 1)
    images = data.images.clone()
    images[batch_idx, :, row_idx, col_idx] = content.permute(0, 2, 3, 1)  # indexed view is [n, p, p, C]
    suffix = f"+{kind}" + (f"(shift={shift})" if shift else "")
    return dataclasses.replace(data.with_images(images), name=data.name + suffix)
