"""data.batches(draw_per_epoch=True): the epoch's random numbers drawn up front give the very batches, and
leave the generator in the very state, of the batch-by-batch loop (issue 14, item 4).

The order of the draws is pinned against `_reference_batches`, a copy of the per-batch loop as it was before
the per-epoch path existed (randperm, then per batch: crop offsets, flips, then marker rows, columns, noise,
each drawn from the CPU generator and moved to the data's device).
"""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from fula_core import data
from fula_core.data import ImageSet
from fula_core.shortcuts import add_shortcut, marker_layout


def _reference_augment(images, padding, flip, generator):
    n, c, h, w = images.shape
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flipped = torch.rand(n, generator=generator) < 0.5
    if not flip:
        flipped = torch.zeros_like(flipped)
    padded = F.pad(images, (padding,) * 4)
    cols = torch.where(flipped.view(n, 1), w - 1 - torch.arange(w), torch.arange(w))
    rows = (dy.view(n, 1) + torch.arange(h)).view(n, 1, h, 1)
    return padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(c).view(1, c, 1, 1), rows,
                  (dx.view(n, 1) + cols).view(n, 1, 1, w)]


def _reference_paste(images, labels, spec, num_classes, generator):
    n, c, h, w = images.shape
    p = spec.patch
    layout = marker_layout(spec, num_classes, c, h, w)
    rows = torch.randint(0, h - p + 1, (n,), generator=generator)
    cols = torch.randint(0, w - p + 1, (n,), generator=generator)
    noise = torch.randint(0, 256, (n, c, p, p), generator=generator, dtype=torch.uint8)
    content = noise if layout.content is None else layout.content[labels]
    if layout.locations is not None:
        rows, cols = layout.locations[labels][:, 0], layout.locations[labels][:, 1]
    out = images.clone()
    out[torch.arange(n).view(n, 1, 1), :, (rows.view(n, 1) + torch.arange(p)).view(n, p, 1),
        (cols.view(n, 1) + torch.arange(p)).view(n, 1, p)] = content.permute(0, 2, 3, 1)
    return out


def _reference_batches(ds, batch_size, generator, augment, drop_last):
    """The per-batch loop before issue 14 (CPU), shuffled."""
    info = data.augmentation_of(ds) if augment else {}
    order = torch.randperm(len(ds), generator=generator)
    stop = len(ds) - len(ds) % batch_size if drop_last else len(ds)
    source = ds.images if ds.markers is None else ds.clean_images
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        images, labels = source[idx], ds.labels[idx]
        if augment and (info["crop_padding"] or info["flip"]):
            images = _reference_augment(images, info["crop_padding"], info["flip"], generator)
        if ds.markers is not None:
            images = _reference_paste(images, labels, ds.markers, ds.num_classes, generator)
        yield images.float().div_(255.0), labels


def _ramp_set(n=200, k=10):
    """CIFAR-shaped images (crops with padding 4 and flips) with a left-to-right ramp and a per-image offset,
    so crops, flips and the order all show."""
    ramp = (60 + 4 * torch.arange(32)).view(1, 1, 1, 32) + (torch.arange(n) % 50).view(n, 1, 1, 1)
    images = ramp.expand(n, 3, 32, 32).to(torch.uint8).contiguous()
    return ImageSet(images, torch.arange(n) % k, tuple(f"c{i}" for i in range(k)), "cifar10/train")


SETS = {
    "augmented": lambda: _ramp_set(),
    "pixel_markers": lambda: add_shortcut(_ramp_set(), "pixel", seed=1, layout_seed=2),
    "random_markers": lambda: add_shortcut(_ramp_set(), "random", seed=1),
    "location_markers_no_flip": lambda: dataclasses.replace(add_shortcut(_ramp_set(), "location", layout_seed=4),
                                                            augmentation={"crop_padding": 2, "flip": False}),
}


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("augment", [True, False])
@pytest.mark.parametrize("which", list(SETS))
def test_per_epoch_draws_equal_the_per_batch_loop(which, augment, drop_last):
    ds = SETS[which]()
    runs = {}
    for path in ("reference", False, True):
        gen = torch.Generator().manual_seed(7)
        epochs = []
        for _ in range(2):  # two epochs: the second starts from the state the first left
            if path == "reference":
                epochs.append(list(_reference_batches(ds, 64, gen, augment, drop_last)))
            else:
                epochs.append(list(data.batches(ds, 64, shuffle=True, generator=gen, augment_data=augment,
                                                drop_last=drop_last, draw_per_epoch=path)))
        runs[path] = (epochs, gen.get_state())
    ref_epochs, ref_state = runs["reference"]
    assert [len(y) for _, y in ref_epochs[0]] == ([64] * 3 if drop_last else [64] * 3 + [8])
    assert not torch.equal(ref_epochs[0][0][0], ref_epochs[1][0][0])  # the epochs differ
    for path in (False, True):
        epochs, state = runs[path]
        assert torch.equal(state, ref_state), path  # the generator ends where the per-batch loop left it
        for ref_epoch, epoch in zip(ref_epochs, epochs):
            assert len(epoch) == len(ref_epoch)
            for (x0, y0), (x1, y1) in zip(ref_epoch, epoch):
                assert torch.equal(x0, x1) and torch.equal(y0, y1), path


def test_per_epoch_draws_resume_from_a_checkpointed_state():
    """A generator state saved after an epoch (as the trainers checkpoint it) resumes the next epoch exactly."""
    ds = SETS["pixel_markers"]()
    gen = torch.Generator().manual_seed(3)
    list(data.batches(ds, 32, shuffle=True, generator=gen, augment_data=True, draw_per_epoch=True))
    saved = gen.get_state()
    straight = list(data.batches(ds, 32, shuffle=True, generator=gen, augment_data=True, draw_per_epoch=True))
    resumed_gen = torch.Generator()
    resumed_gen.set_state(saved)
    resumed = list(data.batches(ds, 32, shuffle=True, generator=resumed_gen, augment_data=True, draw_per_epoch=False))
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(straight, resumed))


def test_epoch_draws_move_in_one_transfer(monkeypatch):
    """The per-epoch path moves its numbers with one .to() of one buffer; augment_uint8 and paste_markers take
    the pre-drawn numbers and draw nothing themselves."""
    ds = SETS["random_markers"]()
    calls = {"draw": 0}
    real = torch.randint

    def counting(*args, **kw):
        calls["draw"] += 1
        return real(*args, **kw)

    gen = torch.Generator().manual_seed(0)
    order, aug, marks = data._epoch_draws(ds, ds.clean_images, 64, len(ds), True, gen, 4)
    assert order.shape == (200,) and [t.shape for t in aug] == [(200,)] * 3
    assert marks[2].shape == (200, 3, 4, 4) and marks[0].dtype == torch.int64 and aug[2].dtype == torch.bool
    storage = order.untyped_storage().data_ptr()  # all views of the one moved buffer
    assert all(t.untyped_storage().data_ptr() == storage for t in (*aug, *marks))
    monkeypatch.setattr(torch, "randint", counting)
    images = data.augment_uint8(ds.clean_images[:64], 4, True, draws=tuple(t[:64] for t in aug))
    from fula_core.shortcuts import paste_markers

    paste_markers(images, ds.labels[:64], ds.markers, 10, draws=tuple(t[:64] for t in marks))
    assert calls["draw"] == 0
    with pytest.raises(ValueError, match="draws for 64 images"):
        data.augment_uint8(ds.clean_images[:32], 4, True, draws=tuple(t[:64] for t in aug))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_set_with_cpu_generator_draws_per_epoch_by_default(monkeypatch):
    """A CUDA set with the trainers' CPU generator takes the per-epoch path by default, with the batches (moved
    back) and the generator state of the per-batch path."""
    ds = SETS["pixel_markers"]().to("cuda")
    called = []
    real = data._epoch_draws
    monkeypatch.setattr(data, "_epoch_draws", lambda *a: called.append(1) or real(*a))
    runs = []
    for per_epoch in (None, False):
        gen = torch.Generator().manual_seed(11)
        runs.append(([(x.cpu(), y.cpu()) for x, y in data.batches(ds, 64, shuffle=True, generator=gen, augment_data=True,
                                                                  draw_per_epoch=per_epoch)], gen.get_state()))
    assert called == [1]
    assert torch.equal(runs[0][1], runs[1][1])
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(runs[0][0], runs[1][0]))
