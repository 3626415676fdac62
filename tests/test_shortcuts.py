"""Tests for fula_core.shortcuts: the six marker kinds land where they should with the right values, and
the layout (colours, permutation, locations, shift) follows the authors' procedure."""

import pytest
import torch

from fula_core.data import ImageSet
from fula_core.shortcuts import (SHORTCUT_KINDS, MarkerSpec, add_shortcut, aruco_patterns, class_colours,
                                 class_locations, class_permutation, farthest_point_colours, marker_layout)

K = 10


def make_set(n=60, channels=3, size=32, fill=None, labels=None, seed=0):
    """A CIFAR-shaped set with random (or constant `fill`) images and labels cycling through K classes."""
    if fill is None:
        images = torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(seed),
                               dtype=torch.uint8)
    else:
        images = torch.full((n, channels, size, size), fill, dtype=torch.uint8)
    labels = torch.arange(n) % K if labels is None else labels
    return ImageSet(images, labels, tuple(f"class{i}" for i in range(K)), "cifar10/train")


def patch_mask(kind, labels, channels=3, size=32, **kwargs):
    """Where the marker is, per image, found without knowing the implementation: a pixel belongs to the
    marker iff pasting onto an all-black and an all-white image gives the same value there."""
    shape = dict(n=len(labels), channels=channels, size=size, labels=labels)
    black = add_shortcut(make_set(fill=0, **shape), kind, **kwargs).images
    white = add_shortcut(make_set(fill=255, **shape), kind, **kwargs).images
    return (black == white).all(1)  # [N, H, W]


def top_left(mask):
    """Top-left (row, col) of each image's marker, checking that the marker is one solid 4x4 square."""
    corners = []
    for m in mask:
        rows, cols = torch.nonzero(m, as_tuple=True)
        r, c = int(rows.min()), int(cols.min())
        assert m.sum() == 16 and m[r:r + 4, c:c + 4].all(), "marker is not a 4x4 square"
        corners.append((r, c))
    return torch.tensor(corners)


def patches(images, corners):
    """The 4x4 marker of each image, [N, C, 4, 4]."""
    return torch.stack([img[:, r:r + 4, c:c + 4] for img, (r, c) in zip(images, corners.tolist())])


# ---------------------------------------------------------------------------------------------------
# Every kind pastes one 4x4 marker and nothing else
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", SHORTCUT_KINDS)
def test_one_marker_and_the_rest_unchanged(kind):
    ds = make_set()
    marked = add_shortcut(ds, kind, seed=1)
    mask = patch_mask(kind, ds.labels, seed=1)
    top_left(mask)  # one 4x4 square per image
    outside = ~mask.unsqueeze(1).expand_as(ds.images)
    assert torch.equal(marked.images[outside], ds.images[outside])
    assert torch.equal(marked.labels, ds.labels) and marked.classes == ds.classes
    assert marked.name == f"cifar10/train+{kind}(layout=0)(draws=1)"
    assert not torch.equal(marked.images, ds.images) and torch.equal(ds.images, make_set().images)  # a copy
    assert torch.equal(marked.clean_images, ds.images) and marked.markers == MarkerSpec(kind, 0, 0, 4)


@pytest.mark.parametrize("kind", ["pixel", "pixel_location"])
def test_colour_markers_hold_the_class_colour(kind):
    ds = make_set()
    corners = top_left(patch_mask(kind, ds.labels))
    got = patches(add_shortcut(ds, kind).images, corners)
    expected = class_colours(K, 3)[ds.labels].view(-1, 3, 1, 1).expand(-1, 3, 4, 4)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("kind", ["aruco", "aruco_location"])
def test_aruco_markers_hold_the_class_pattern_in_every_channel(kind):
    ds = make_set()
    corners = top_left(patch_mask(kind, ds.labels))
    got = patches(add_shortcut(ds, kind).images, corners)
    patterns = aruco_patterns(K)[class_permutation(K, 0)]  # class c gets the perm[c]-th marker, as the colours
    expected = patterns[ds.labels].unsqueeze(1).expand(-1, 3, 4, 4)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("kind", ["location", "pixel_location", "aruco_location"])
def test_location_markers_sit_at_the_class_location(kind):
    ds = make_set()
    corners = top_left(patch_mask(kind, ds.labels))
    assert torch.equal(corners, class_locations(K, 32, kind=kind)[ds.labels])


@pytest.mark.parametrize("kind", ["pixel", "random", "aruco"])
def test_random_locations_vary_and_cover_the_image(kind):
    ds = make_set(n=200, labels=torch.zeros(200, dtype=torch.long))
    corners = top_left(patch_mask(kind, ds.labels))
    assert len(set(map(tuple, corners.tolist()))) > 100  # same class, many places
    assert corners.min() >= 0 and corners.max() <= 28 and corners[:, 0].max() >= 24 and corners[:, 0].min() <= 4


@pytest.mark.parametrize("kind", ["location", "random"])
def test_noise_markers_are_fresh_uniform_noise(kind):
    ds = make_set(n=400, labels=torch.zeros(400, dtype=torch.long))
    corners = top_left(patch_mask(kind, ds.labels))
    noise = patches(add_shortcut(ds, kind).images, corners).float()
    assert len({tuple(p.flatten().tolist()) for p in noise}) == 400  # a new patch for every image
    assert abs(noise.mean() - 127.5) < 3 and noise.min() == 0 and noise.max() == 255


# ---------------------------------------------------------------------------------------------------
# Shifted markers, the random control, reproducibility
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["pixel", "pixel_location", "aruco", "aruco_location", "location"])
def test_shift_one_pastes_the_previous_classes_marker(kind):
    ds = make_set()
    shifted = add_shortcut(ds, kind, seed=2, shift=1)
    relabelled = ImageSet(ds.images, (ds.labels - 1) % K, ds.classes, ds.name)
    # Shifting the marker is the same as pasting the correct marker of label y-1 (mod K, so 0 -> 9).
    assert torch.equal(shifted.images, add_shortcut(relabelled, kind, seed=2).images)
    assert not torch.equal(shifted.images, add_shortcut(ds, kind, seed=2).images)
    assert shifted.name == f"cifar10/train+{kind}(shift=1)(layout=0)(draws=2)" and torch.equal(shifted.labels, ds.labels)


@pytest.mark.parametrize("kind", ["pixel_location", "aruco_location"])
def test_shift_matches_the_authors_roll_of_the_marker_table(kind):
    """The authors index their marker and location tables with torch.roll(arange(K), shifts=1): row c of
    the shifted table is row c - 1 of the correct one. Written out by hand for K = 10: class 0 gets class
    9's marker, class 3 class 2's."""
    correct = marker_layout(MarkerSpec(kind, 0, 5), K, 3, 32, 32)
    shifted = marker_layout(MarkerSpec(kind, 1, 5), K, 3, 32, 32)
    authors_index = torch.roll(torch.arange(K), shifts=1, dims=0)
    assert authors_index.tolist() == [9, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert torch.equal(shifted.content, correct.content[authors_index])
    assert torch.equal(shifted.locations, correct.locations[authors_index])
    assert torch.equal(shifted.content[3], correct.content[2]) and torch.equal(shifted.content[0], correct.content[9])


def test_random_control_carries_no_class_information():
    ds = make_set()
    other_labels = ImageSet(ds.images, torch.randperm(60, generator=torch.Generator().manual_seed(0)) % K,
                            ds.classes, ds.name)
    assert torch.equal(add_shortcut(ds, "random", seed=4).images, add_shortcut(other_labels, "random", seed=4).images)
    assert torch.equal(add_shortcut(ds, "random", seed=4, shift=1).images, add_shortcut(ds, "random", seed=4).images)


@pytest.mark.parametrize("kind", SHORTCUT_KINDS)
def test_reproducible_from_the_seed(kind):
    ds = make_set()
    a, b = add_shortcut(ds, kind, seed=7), add_shortcut(ds, kind, seed=7)
    assert torch.equal(a.images, b.images)
    changes_with_seed = kind != "pixel_location" and kind != "aruco_location"  # those are fully determined by y
    assert changes_with_seed == (not torch.equal(a.images, add_shortcut(ds, kind, seed=8).images))
    # The layout seed moves everything that is fixed per class; the random control has nothing fixed.
    changes_with_layout = kind != "random"
    assert changes_with_layout == (not torch.equal(a.images, add_shortcut(ds, kind, seed=7, layout_seed=1).images))


def test_marking_a_marked_set_is_refused():
    marked = add_shortcut(make_set(), "pixel")
    with pytest.raises(ValueError, match="already carries pixel markers"):
        add_shortcut(marked, "location")


# ---------------------------------------------------------------------------------------------------
# Colours, locations, patterns
# ---------------------------------------------------------------------------------------------------

def rgb_grid(k):
    """The authors' colour grid for k classes: k levels per channel, all triples, black first."""
    levels = torch.linspace(0, 1, k, dtype=torch.float64)
    return torch.cartesian_prod(levels, levels, levels)


@pytest.mark.parametrize("k", [4, 10])
def test_farthest_point_colours_start_at_black_and_each_is_farthest(k):
    chosen = farthest_point_colours(k, 3)
    assert chosen.dtype == torch.uint8 and chosen.shape == (k, 3)
    assert chosen[0].tolist() == [0, 0, 0] and chosen[1].tolist() == [255, 255, 255]  # then the far corner
    grid = rgb_grid(k)
    on_grid = chosen.double() / 255
    # every colour is a grid point, up to the uint8 rounding (at most 0.5/255 per channel)
    assert torch.cdist(on_grid, grid).min(dim=1).values.max() < 3 ** 0.5 * 0.5 / 255 + 1e-9
    exact = grid[torch.cdist(on_grid, grid).argmin(dim=1)]  # the grid points before rounding
    for i in range(1, k):
        # colour i is at the largest distance any grid point has from the colours chosen before it
        nearest_of_grid = torch.cdist(grid, exact[:i]).min(dim=1).values
        nearest_of_chosen = torch.cdist(exact[i:i + 1], exact[:i]).min()
        assert abs(float(nearest_of_chosen) - float(nearest_of_grid.max())) < 1e-6
    assert len({tuple(c) for c in chosen.tolist()}) == k


def test_farthest_point_colours_for_ten_classes():
    """The selection for CIFAR-10, written out (levels k/9 rounded to uint8; ties fall on the first grid
    point in float32 as in the authors' code)."""
    assert farthest_point_colours(10, 3).tolist() == [
        [0, 0, 0], [255, 255, 255], [0, 113, 255], [113, 255, 0], [255, 0, 113],
        [142, 142, 142], [0, 255, 142], [142, 0, 255], [255, 142, 0], [0, 142, 28]]
    distances = torch.cdist(farthest_point_colours(10, 3).float(), farthest_point_colours(10, 3).float())
    assert (distances + torch.eye(10) * 1e9).min() > 140  # no two classes closer than 140 (cube edge 255)


def test_grey_colours_are_the_ten_grey_levels_from_black():
    grey = farthest_point_colours(K, 1).flatten()
    assert grey[0] == 0 and grey[1] == 255
    assert sorted(grey.tolist()) == [round(255 * i / 9) for i in range(10)]


def test_class_colours_are_the_farthest_point_colours_permuted_by_the_seed():
    for seed in (0, 1, 2):
        torch.manual_seed(seed)  # the authors: torch.manual_seed(seed), then randperm(K) on the global generator
        authors_perm = torch.randperm(K)
        assert torch.equal(class_permutation(K, seed), authors_perm)
        assert torch.equal(class_colours(K, 3, seed), farthest_point_colours(K, 3)[authors_perm])
    assert not torch.equal(class_colours(K, 3, 0), class_colours(K, 3, 1))
    assert class_colours(1, 3).tolist() == [[0, 0, 0]]


@pytest.mark.parametrize("kind", ["location", "pixel_location", "aruco_location"])
def test_class_locations_follow_the_authors_draws(kind):
    """The authors draw, after seeding, the class permutation (colour and ArUco kinds only) and then per
    class a row and a column uniform over every fitting position."""
    for seed in (0, 3):
        torch.manual_seed(seed)
        if kind != "location":
            torch.randperm(K)
        expected = [(torch.randint(0, 29, (1,)).item(), torch.randint(0, 29, (1,)).item()) for _ in range(K)]
        assert class_locations(K, 32, seed=seed, kind=kind).tolist() == [list(e) for e in expected]
    locs = class_locations(K, 28, kind=kind)
    assert locs.min() >= 0 and locs.max() <= 24 and torch.equal(locs, class_locations(K, 28, kind=kind))
    with pytest.raises(ValueError, match="no class locations"):
        class_locations(K, 32, kind="pixel")


def test_aruco_patterns_match_opencv_dictionary_bits():
    cv2 = pytest.importorskip("cv2")
    patterns = aruco_patterns(K)
    assert patterns.shape == (K, 4, 4) and set(patterns.unique().tolist()) == {0, 255}
    dictionary = cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_4X4_50)
    for marker_id in range(K):
        bits = cv2.aruco.Dictionary.getBitsFromByteList(dictionary.bytesList[marker_id:marker_id + 1], 4)
        assert torch.equal(patterns[marker_id], torch.from_numpy(bits).to(torch.uint8) * 255)
    assert len({tuple(p.flatten().tolist()) for p in patterns}) == K
    with pytest.raises(ValueError, match="50 markers"):
        aruco_patterns(51)


# ---------------------------------------------------------------------------------------------------
# Other shapes and errors
# ---------------------------------------------------------------------------------------------------

def test_grey_images_get_grey_markers():
    ds = make_set(channels=1, size=28)
    corners = top_left(patch_mask("pixel_location", ds.labels, channels=1, size=28))
    got = patches(add_shortcut(ds, "pixel_location").images, corners)
    assert torch.equal(got, class_colours(K, 1)[ds.labels].view(-1, 1, 1, 1).expand(-1, 1, 4, 4))
    assert torch.equal(corners, class_locations(K, 28)[ds.labels])


def test_larger_aruco_patch_is_upscaled_blockwise():
    ds = make_set(fill=0)
    marked = add_shortcut(ds, "aruco_location", patch=8).images
    r, c = class_locations(K, 32, patch=8, kind="aruco_location")[ds.labels[0]].tolist()
    expected = aruco_patterns(K)[class_permutation(K, 0)[0]].repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(marked[0, 1, r:r + 8, c:c + 8], expected)
    with pytest.raises(ValueError, match="multiple of 4"):
        add_shortcut(ds, "aruco", patch=6)


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(ValueError, match="pixel, location, pixel_location, random, aruco, aruco_location"):
        add_shortcut(make_set(), "checkerboard")
