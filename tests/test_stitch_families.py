"""Stitch families (capacity ablation): each starts where it should (identity: the activation itself; affine,
mlp: the least-squares map; low_rank: its SVD truncation), trains, and survives a store round trip."""
import dataclasses

import pytest
import torch

from fula_core import models, stitching
from fula_core.data import load
from fula_core.stitching import Stitch, StitchConfig, StitchJob, lstsq_init, truncated_svd
from fula_core.store import config_key


def _acts(c_in=6, c_out=5, n=40, hw=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, c_in, hw, hw, generator=g)
    t = torch.einsum("oi,nihw->nohw", torch.randn(c_out, c_in, generator=g), a) + torch.randn(n, c_out, hw, hw, generator=g)
    return a, t


def _affine(a, w, b):
    return torch.einsum("oi,nihw->nohw", w, a) + b.view(1, -1, 1, 1)


@pytest.mark.parametrize("kind", ["conv", "vector"])
def test_affine_and_mlp_start_at_the_least_squares_map(kind):
    a, t = _acts()
    if kind == "vector":
        a, t = a.mean((2, 3)), t.mean((2, 3))
    w, b = lstsq_init(a, t)
    expected = _affine(a, w.reshape(5, 6), b) if kind == "conv" else a @ w.T + b
    for family in ("affine", "mlp"):
        s = Stitch.between(tuple(a.shape[1:]), tuple(t.shape[1:]), family=family)
        s.set_affine(w, b)
        # mlp: relu(z) - relu(-z) = z on every input, not only the least-squares sample
        assert torch.allclose(s(a), expected, atol=1e-5), family
        probe = 10 * torch.randn_like(a)
        ref = Stitch.between(tuple(a.shape[1:]), tuple(t.shape[1:]))
        ref.set_affine(w, b)
        assert torch.allclose(s(probe), ref(probe), atol=1e-4), family
    mlp = Stitch.between(tuple(a.shape[1:]), tuple(t.shape[1:]), family="mlp")
    assert any(isinstance(m, torch.nn.ReLU) for m in mlp.modules())


def test_identity_is_the_activation_itself_and_needs_equal_widths():
    a, _ = _acts(c_in=5)
    s = Stitch.between((5, 3, 3), (5, 3, 3), family="identity")
    s.set_affine(torch.randn(5, 5, 1, 1), torch.randn(5))  # ignored: no alignment
    assert torch.equal(s(a), a) and not list(s.parameters())
    with pytest.raises(ValueError, match="equal channel counts"):
        Stitch.between((6, 3, 3), (5, 3, 3), family="identity")


@pytest.mark.parametrize("rank", [1, 3, 5, 99])
def test_low_rank_init_is_the_truncated_least_squares_solution(rank):
    a, t = _acts()
    w, b = lstsq_init(a, t)
    w2 = w.reshape(5, 6)
    s = Stitch.between((6, 3, 3), (5, 3, 3), family="low_rank", rank=rank)
    s.set_affine(w, b)
    r = min(rank, 5)
    assert s.rank == r
    u, sv, vh = torch.linalg.svd(w2.double())
    truncated = (u[:, :r] * sv[:r]) @ vh[:r]
    product = s.map[1].weight[:, :, 0, 0].double() @ s.map[0].weight[:, :, 0, 0].double()
    assert torch.linalg.matrix_rank(product) == r
    assert torch.allclose(product, truncated, atol=1e-5)
    assert torch.allclose(s(a), _affine(a, truncated.float(), b), atol=1e-4)
    if r == 5:  # full rank: the least-squares map itself
        assert torch.allclose(truncated.float(), w2, atol=1e-5)
    u_r, s_r, vh_r = truncated_svd(w2, r)
    assert torch.allclose((u_r * s_r) @ vh_r, truncated.float(), atol=1e-5)


def test_config_checks_and_default_cache_keys():
    with pytest.raises(ValueError, match="family"):
        StitchConfig(family="wide")
    with pytest.raises(ValueError, match="rank"):
        StitchConfig(family="low_rank")
    with pytest.raises(ValueError, match="rank"):
        StitchConfig(rank=2)
    # the default family keeps the keys stitches were cached under before families existed
    cfg = StitchConfig()
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in ("family", "rank")}
    assert config_key(cfg) == config_key(fields)
    assert config_key(StitchConfig(family="mlp")) != config_key(cfg)


@pytest.mark.parametrize("family,rank", [("identity", None), ("low_rank", 2), ("mlp", None)])
def test_families_train_and_restore(family, rank):
    torch.manual_seed(0)
    data = load("synthetic", "train").take(128)
    front, end = models.build("resnet18", 4, width=4, image_size=16), models.build("resnet18", 4, width=4, image_size=16)
    cfg = StitchConfig(epochs=1, batch_size=32, lstsq_samples=32, family=family, rank=rank)
    jobs = [StitchJob(2, 2, "fula"), StitchJob(2, 2, "dm")]
    outcomes = stitching.train_stitches(front, end, jobs, data, cfg, progress=False)
    x = data.images[:8].float() / 255
    for o in outcomes:
        model = o.model(front, end)
        assert model.stitch.family == family and o.error is None
        assert model(x).shape == (8, 4)
    if family != "identity":  # the trained stitch moved away from its start, the dm one did not train
        assert outcomes[0].losses and not outcomes[1].losses
        assert any(not torch.equal(outcomes[0].stitch_state[k], outcomes[1].stitch_state[k])
                   for k in outcomes[0].stitch_state if k.startswith("map."))
    else:  # nothing to train: both are the identity
        assert not outcomes[0].losses
