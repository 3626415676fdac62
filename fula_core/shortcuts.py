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

What is fixed per class (colours, ArUco patterns, locations) is the marker *layout*, drawn once from a
layout seed, the stitch's or the model's seed, as in the authors' code (their
dataloaders/shortcut_markers.py, class `Backdoor`): the class colours are chosen by farthest-point
sampling on a colour grid and then assigned to the classes in the order of a random permutation, and
class locations are drawn uniformly per class. What is random per image (locations of the `pixel`,
`random` and `aruco` kinds, the noise of `location` and `random`) is drawn afresh every time an image is
drawn. In training this happens per batch after crop/flip augmentation (`data.batches` calls
`paste_markers`), so a flip or crop never moves a class location or mirrors a pattern; `add_shortcut`
pastes one such draw into a stored copy of the set, for everything that reads the images directly
(test sets, least-squares samples, IRI sources, figures).

Shifted markers: with shift s the images of class c carry the marker of class c - s (mod K). The authors
build their shifted test sets by rolling the marker table by +1 (`torch.roll(arange(K), 1)` as the index
of the table: class c gets the marker of class c - 1), and shift=1 here is the same. Excess agreement is
the agreement with correct markers minus the agreement with shifted ones.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # data.py imports this module (batches pastes markers); no import cycle at run time
    from .data import ImageSet

SHORTCUT_KINDS = ("pixel", "location", "pixel_location", "random", "aruco", "aruco_location")

_COLOUR_KINDS = ("pixel", "pixel_location")
_ARUCO_KINDS = ("aruco", "aruco_location")
_CLASS_LOCATION_KINDS = ("location", "pixel_location", "aruco_location")
_ARUCO_DICTIONARY_SIZE = 50  # DICT_4X4_50 (the authors use DICT_4X4_100, whose first 50 markers are the same)


@dataclass(frozen=True)
class MarkerSpec:
    """Which shortcut markers a data set carries: everything needed to draw them again for any image.

    kind: one of SHORTCUT_KINDS.
    shift: images of class c carry the marker of class c - shift (mod K); 1 = the authors' shifted markers.
    seed: the layout seed (class colour / pattern permutation and class locations): the stitch's or
      the model's seed, so that a model trained with markers and the stitches of that model see one layout.
    patch: side of the square marker in pixels.
    """

    kind: str
    shift: int = 0
    seed: int = 0
    patch: int = 4

    def __post_init__(self):
        if self.kind not in SHORTCUT_KINDS:
            raise ValueError(f"unknown shortcut kind {self.kind!r}; valid kinds: {', '.join(SHORTCUT_KINDS)}")
        if self.patch < 1:
            raise ValueError(f"marker patch must be at least 1 pixel, got {self.patch}")
        if self.kind in _ARUCO_KINDS and self.patch % 4:
            raise ValueError(f"ArUco markers have 4x4 bits; patch must be a multiple of 4, got {self.patch}")

    @property
    def suffix(self) -> str:
        """What the marked set's name gets appended (the layout seed included: it changes the images)."""
        return f"+{self.kind}" + (f"(shift={self.shift})" if self.shift else "") + f"(layout={self.seed})"


# ---------------------------------------------------------------------------------------------------
# The per-class layout: colours, ArUco patterns, locations
# ---------------------------------------------------------------------------------------------------

def farthest_point_colours(num_classes: int, channels: int) -> torch.Tensor:
    """K colours by greedy farthest-point sampling, uint8 [K, C], in the order they are chosen.

    The authors' procedure (shortcut_markers.py, `_get_pixel_markers`): the grid holds K evenly spaced
    levels in [0, 1] per channel (`linspace(0, 1, K)`, so 10 levels for 10 classes) and, for RGB, all
    K^3 level triples in `cartesian_prod` order, which starts at black. The first colour is the grid's
    first point, black; each next one is the grid point whose Euclidean distance to the nearest chosen
    colour is largest (`torch.cdist`, first such point on ties, in float32 as theirs, so near-ties fall
    the same way). For 1-channel images the grid is the K grey levels themselves, so the K classes get
    all K levels (evenly spaced, black included). Levels are rounded to uint8 (theirs paste the floats
    k/(K-1) into float images; the difference is below 0.5/255).
    """
    if num_classes < 1:
        raise ValueError(f"farthest_point_colours needs num_classes >= 1, got {num_classes}")
    if channels not in (1, 3):
        raise ValueError(f"class colours exist for grey (1) or RGB (3) images, got {channels} channels")
    return _farthest_point_colours(num_classes, channels).clone()


@functools.lru_cache(maxsize=None)
def _farthest_point_colours(num_classes: int, channels: int) -> torch.Tensor:
    levels = torch.linspace(0, 1, steps=num_classes)
    grid = torch.cartesian_prod(levels, levels, levels).view(-1, 3) if channels == 3 else levels.view(-1, 1)
    chosen = torch.zeros(num_classes, grid.shape[1])
    chosen[0] = grid[0]
    for i in range(1, num_classes):
        nearest = torch.cdist(grid.unsqueeze(0), chosen[:i].unsqueeze(0), p=2).squeeze(0).min(dim=1).values
        chosen[i] = grid[torch.argmax(nearest)]
    return chosen.mul(255).round().to(torch.uint8)


def class_permutation(num_classes: int, seed: int) -> torch.Tensor:
    """The layout's class permutation: class c gets the perm[c]-th farthest-point colour (or ArUco marker).

    The authors seed torch's global generator with the run's seed and draw `torch.randperm(K)` as the
    first random number of the layout; a CPU generator seeded with the same seed gives the same
    permutation.
    """
    return torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed))


def class_colours(num_classes: int, channels: int, seed: int = 0) -> torch.Tensor:
    """The class colours of layout `seed`, uint8 [K, C]: row c is class c's colour (before any shift)."""
    return farthest_point_colours(num_classes, channels)[class_permutation(num_classes, seed)]


def aruco_patterns(num_classes: int) -> torch.Tensor:
    """The inner 4x4 bits of ArUco markers 0..K-1 of OpenCV's DICT_4X4_50, uint8 [K, 4, 4] with values 0/255.

    OpenCV draws each marker with a one-cell black border; drawn at 6x6 pixels every cell is one pixel, and
    the inner 4x4 pixels are the marker's bits. (The layout assigns them to classes by a permutation.)
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


@dataclass(frozen=True, eq=False)
class MarkerLayout:
    """The per-class part of a marker spec for one image geometry, rows in class order, shift applied:
    content uint8 [K, C, patch, patch] (None: fresh noise per image), locations int64 [K, 2] top-left
    (row, col) (None: a random location per image)."""

    content: torch.Tensor | None
    locations: torch.Tensor | None


def marker_layout(spec: MarkerSpec, num_classes: int, channels: int, height: int, width: int) -> MarkerLayout:
    """The layout of `spec` for K classes and C x H x W images (cached; callers must not modify it).

    The random numbers follow the authors' `Backdoor.__init__` in order, from one generator seeded with
    spec.seed: first the class permutation of the colours / ArUco patterns (only kinds that have them),
    then for class-location kinds one location per class, row then column, each uniform over every
    position where the patch fits (classes may overlap, as theirs). Finally the rows are rolled by
    spec.shift, which gives class c the marker and location of class c - shift.
    """
    if spec.patch > min(height, width):
        raise ValueError(f"a {spec.patch}x{spec.patch} marker does not fit in {height}x{width} images")
    return _marker_layout(spec, num_classes, channels, height, width)


@functools.lru_cache(maxsize=256)
def _marker_layout(spec: MarkerSpec, num_classes: int, channels: int, height: int, width: int) -> MarkerLayout:
    k, p = num_classes, spec.patch
    gen = torch.Generator().manual_seed(spec.seed)
    content = None
    if spec.kind in _COLOUR_KINDS:
        colours = farthest_point_colours(k, channels)[torch.randperm(k, generator=gen)]  # = class_colours(k, C, seed)
        content = colours.view(k, channels, 1, 1).expand(k, channels, p, p).contiguous()
    elif spec.kind in _ARUCO_KINDS:
        bits = aruco_patterns(k)[torch.randperm(k, generator=gen)]
        scale = p // 4
        bits = bits.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)  # blocky upscaling
        content = bits.unsqueeze(1).expand(k, channels, p, p).contiguous()  # the same bits in every channel
    locations = None
    if spec.kind in _CLASS_LOCATION_KINDS:
        locations = torch.tensor([[int(torch.randint(0, height - p + 1, (1,), generator=gen)),
                                   int(torch.randint(0, width - p + 1, (1,), generator=gen))] for _ in range(k)],
                                 dtype=torch.int64).view(k, 2)
    if content is not None:
        content = torch.roll(content, spec.shift, dims=0)
    if locations is not None:
        locations = torch.roll(locations, spec.shift, dims=0)
    return MarkerLayout(content, locations)


def class_locations(num_classes: int, image_size: int, patch: int = 4, seed: int = 0,
                    kind: str = "pixel_location") -> torch.Tensor:
    """The fixed top-left (row, col) of each class's marker, int64 [K, 2], for a class-location `kind`
    of layout `seed` on square images (the draws follow the class permutation for `pixel_location` and
    `aruco_location`, so the kind matters)."""
    if kind not in _CLASS_LOCATION_KINDS:
        raise ValueError(f"{kind!r} has no class locations; class-location kinds: {', '.join(_CLASS_LOCATION_KINDS)}")
    layout = marker_layout(MarkerSpec(kind, 0, seed, patch), num_classes, 3, image_size, image_size)  # any C
    return layout.locations.clone()


# ---------------------------------------------------------------------------------------------------
# Pasting
# ---------------------------------------------------------------------------------------------------

def draw_device(generator: torch.Generator | None) -> torch.device:
    """Where draws from `generator` are made: its own device; the CPU for torch's global generator (None)."""
    return generator.device if generator is not None else torch.device("cpu")


def draw_marker_randomness(n: int, channels: int, height: int, width: int, patch: int,
                           generator: torch.Generator | None = None):
    """The per-image random numbers of one paste_markers call, in its order, on the generator's device
    (CPU by default): top-left rows int64 [n], then columns int64 [n], each uniform over every position where
    the patch fits, then uniform noise uint8 [n, C, patch, patch]. data.batches draws a whole epoch's worth
    with it up front and pastes with paste_markers(..., draws=...)."""
    if patch > min(height, width):
        raise ValueError(f"a {patch}x{patch} marker does not fit in {height}x{width} images")
    draw_on = draw_device(generator)
    rows = torch.randint(0, height - patch + 1, (n,), generator=generator, device=draw_on)
    cols = torch.randint(0, width - patch + 1, (n,), generator=generator, device=draw_on)
    noise = torch.randint(0, 256, (n, channels, patch, patch), generator=generator, device=draw_on, dtype=torch.uint8)
    return rows, cols, noise


def paste_markers(images: torch.Tensor, labels: torch.Tensor, spec: MarkerSpec, num_classes: int,
                  generator: torch.Generator | None = None, *, draws=None) -> torch.Tensor:
    """A copy of uint8 `images` [n, C, H, W] with the marker of `spec` pasted into each, on their device.

    One draw of the per-image randomness (draw_marker_randomness): random top-left rows, then columns, each
    uniform over every position where the patch fits, then uniform uint8 noise [n, C, patch, patch]; all
    three are drawn for every kind and regardless of the labels (on the generator's device, CPU by default,
    then moved), so the generator's stream does not depend on the kind, and the `random` control is the same
    for any labelling. The kind then takes the class content or the noise, the class location or the random one.
    draws: (rows, cols, noise) of draw_marker_randomness, drawn before (best on the images' device), instead of
      drawing from `generator`.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(f"paste_markers expects uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    n, channels, height, width = images.shape
    p, device = spec.patch, images.device
    layout = marker_layout(spec, num_classes, channels, height, width)
    if draws is None:
        draws = draw_marker_randomness(n, channels, height, width, p, generator)
    rows, cols, noise = draws
    if rows.shape != (n,) or noise.shape != (n, channels, p, p):
        raise ValueError(f"paste_markers: draws for {rows.shape[0]} images of noise {tuple(noise.shape[1:])}, "
                         f"but {n} images need noise {(channels, p, p)}")
    # (only what the kind uses goes to the images' device)
    content = noise.to(device) if layout.content is None else layout.content.to(device)[labels]
    if layout.locations is not None:
        where = layout.locations.to(device)[labels]  # [n, 2]
        rows, cols = where[:, 0], where[:, 1]
    else:
        rows, cols = rows.to(device), cols.to(device)

    # Paste all patches at once: pixel (rows_n + i, cols_n + j) of image n gets content[n, :, i, j].
    offsets = torch.arange(p, device=device)
    row_idx = (rows.view(n, 1) + offsets).view(n, p, 1)
    col_idx = (cols.view(n, 1) + offsets).view(n, 1, p)
    batch_idx = torch.arange(n, device=device).view(n, 1, 1)
    out = images.clone()
    out[batch_idx, :, row_idx, col_idx] = content.permute(0, 2, 3, 1)  # the indexed view is [n, p, p, C]
    return out


def add_shortcut(data: "ImageSet", kind: str, *, seed: int = 0, shift: int = 0, patch: int = 4,
                 layout_seed: int = 0) -> "ImageSet":
    """`data` with a `patch` x `patch` marker of the given `kind` pasted into every image.

    seed: the per-image draws of this stored copy (random locations, noise), from
      torch.Generator().manual_seed(seed) via paste_markers.
    shift: images of class c carry the marker of class c - shift (mod K); see the module docstring.
    layout_seed: the class layout (colour / pattern permutation, class locations): the seed of the
      stitch or model that trains on or is scored with these markers.
    The result's `.images` hold the pasted copy, its `.clean_images` the images before, and its
    `.markers` the MarkerSpec, with which `data.batches` draws fresh markers per batch after augmentation.
    """
    if getattr(data, "markers", None) is not None:
        raise ValueError(f"{data.name!r} already carries {data.markers.kind} markers: paste onto the clean set")
    spec = MarkerSpec(kind, shift, layout_seed, patch)
    images = paste_markers(data.images, data.labels, spec, data.num_classes, torch.Generator().manual_seed(seed))
    return dataclasses.replace(data, images=images, clean_images=data.images, markers=spec,
                               name=f"{data.name}{spec.suffix}(draws={seed})")
