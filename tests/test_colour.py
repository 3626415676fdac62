"""Colour-Fashion-MNIST has the intended correlations: colour tells the class in Correlated and Colour-Only,
nothing in Shape; a model trained on colour alone transfers to Correlated but is at chance on Shape."""
import pytest
import torch

from fula_core import colour, data
from fula_core.stitching import evaluate
from fula_core.train import TrainConfig, train_model


@pytest.fixture(scope="module")
def tests():
    return {kind: data.load(name, "test").take(500, seed=0) for kind, name in colour.KINDS.items()}


def test_sets_have_the_intended_layout(tests):
    for kind, d in tests.items():
        assert d.images.shape[1:] == (3, 28, 28) and d.images.dtype == torch.uint8
        by_colour = (colour.nearest_colour(d.images) == d.labels).float().mean().item()
        # the background colour is the class in Correlated and Colour-Only, independent of it in Shape
        assert by_colour == 1.0 if kind != "shape" else 0.03 < by_colour < 0.2, (kind, by_colour)
    # jitter: no two backgrounds of a class are the same colour; Colour-Only has no garment (flat images)
    corners = tests["correlated"].images[:, :, 0, 0]
    assert len(torch.unique(corners[tests["correlated"].labels == 0], dim=0)) > 10
    flat = tests["colour_only"].images.float()
    assert (flat.amax((2, 3)) - flat.amin((2, 3))).max() == 0
    # the garment is the same image in every set: white where Fashion-MNIST is at full intensity
    grey = data.load("fashion_mnist", "test").take(500, seed=0).images
    full = (grey == 255).expand(-1, 3, -1, -1)
    assert full.any() and (tests["shape"].images[full] == 255).all()


def test_nearest_colour_reader_is_perfect_on_correlated_and_chance_on_shape(tests):
    """The colour cue alone (a nearest-colour classifier, the stand-in for a colour-only model): 100% on
    Correlated, ~10% on Shape."""
    acc = {k: 100 * (colour.nearest_colour(d.images) == d.labels).float().mean().item() for k, d in tests.items()}
    assert acc["correlated"] == 100 and acc["colour_only"] == 100
    assert 5 < acc["shape"] < 16, acc


@pytest.mark.slow
def test_colour_only_model_reads_colour_not_shape(tests):
    """A small ResNet trained for seconds on Colour-Only images reads colour: far above chance on Correlated,
    at chance on Shape. (It does not reach ~100% on Correlated: the white garment is outside everything it
    saw; probes: 82-86% on Colour-Only, ~50% on Correlated, ~8% on Shape.)"""
    cfg = TrainConfig(dataset=colour.KINDS["colour_only"], width=4, epochs=2, batch_size=32, lr=0.01, train_subset=1024,
                      augment=False)
    model = train_model(cfg, data.load(cfg.dataset, "train"), progress=False)
    correlated = evaluate(model, tests["correlated"])["accuracy"]
    shape = evaluate(model, tests["shape"])["accuracy"]
    assert correlated > 35, correlated
    assert shape < 16, shape
