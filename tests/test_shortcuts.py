"""Tests for fula_core.shortcuts: the six marker kinds land where they should with the right values."""
import pytest
import torch

from fula_core.data import ImageSet
from fula_core.shortcuts import (SHORTCUT_KINDS, add_shortcut, aruco_patterns, class_colours,
                                 class_locations)

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
    assert marked.name == f"cifar10/train+{kind}"
    assert not torch.equal(marked.images, ds.images) and torch.equal(ds.images, make_set().images)  # a copy


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
    expected = aruco_patterns(K)[ds.labels].unsqueeze(1).expand(-1, 3, 4, 4)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("kind", ["location", "pixel_location", "aruco_location"])
def test_location_markers_sit_at_the_class_location(kind):
    ds = make_set()
    corners = top_left(patch_mask(kind, ds.labels))
    assert torch.equal(corners, class_locations(K, 32)[ds.labels])


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
def test_shift_one_pastes_the_next_classes_marker(kind):
    ds = make_set()
    shifted = add_shortcut(ds, kind, seed=2, shift=1)
    relabelled = ImageSet(ds.images, (ds.labels + 1) % K, ds.classes, ds.name)
    # Shifting the marker is the same as pasting the correct marker of label y+1 (mod K, so 9 -> 0).
    assert torch.equal(shifted.images, add_shortcut(relabelled, kind, seed=2).images)
    assert not torch.equal(shifted.images, add_shortcut(ds, kind, seed=2).images)
    assert shifted.name == f"cifar10/train+{kind}(shift=1)" and torch.equal(shifted.labels, ds.labels)


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


# ---------------------------------------------------------------------------------------------------
# Colours, locations, patterns
# ---------------------------------------------------------------------------------------------------

def test_class_colours_are_far_apart_and_deterministic():
    colours = class_colours(K, 3)
    assert colours.dtype == torch.uint8 and colours.shape == (K, 3)
    assert torch.equal(colours, class_colours(K, 3))
    distances = torch.cdist(colours.float(), colours.float()) + torch.eye(K) * 1e9
    # No 10 colours can be more than 0.866 * 255 = 221 apart (that is already the optimum for 9 points in
    # a cube: its corners and centre), so 170 is within 77% of the best possible spread; it also means two
    # classes differ by about 100 grey levels per channel, far beyond JPEG or BatchNorm-scale noise.
    assert distances.min() >= 170
    for k in (1, 2, 8, 50):
        c = class_colours(k, 3).float()
        assert len({tuple(x) for x in c.tolist()}) == k


def test_grey_colours_are_evenly_spaced_and_never_black():
    grey = class_colours(K, 1).flatten().float()
    assert grey[0] > 20 and grey[-1] == 255  # black would vanish on an MNIST-like background
    assert torch.allclose(grey.diff(), torch.full((K - 1,), 255 / K), atol=1)


def test_class_locations_fixed_distinct_inside_and_away_from_the_border():
    locs = class_locations(K, 32)
    assert locs.shape == (K, 2) and torch.equal(locs, class_locations(K, 32))
    assert not torch.equal(locs, class_locations(K, 32, seed=1))
    for i in range(K):
        for j in range(i + 1, K):
            assert (locs[i] - locs[j]).abs().max() >= 4  # 4x4 patches do not overlap
    assert locs.min() >= 4 and locs.max() <= 32 - 8  # off the border ring, so a 4-pixel crop keeps them
    assert class_locations(4, 16).shape == (4, 2)
    with pytest.raises(ValueError, match="cannot place 17"):
        class_locations(17, 16)


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


def test_larger_aruco_patch_is_upscaled_blockwise():
    ds = make_set(fill=0)
    marked = add_shortcut(ds, "aruco_location", patch=8).images
    r, c = class_locations(K, 32, patch=8)[ds.labels[0]].tolist()
    expected = aruco_patterns(K)[0].repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(marked[0, 1, r:r + 8, c:c + 8], expected)
    with pytest.raises(ValueError, match="multiple of 4"):
        add_shortcut(ds, "aruco", patch=6)


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(ValueError, match="pixel, location, pixel_location, random, aruco, aruco_location"):
        add_shortcut(make_set(), "checkerboard")
