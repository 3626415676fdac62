import dataclasses
import math

import matplotlib
import pytest
import torch

from fula_core import data, models, simclr, toy
from fula_core.store import Checkpointer, ResultStore

matplotlib.use("Agg")

TINY = simclr.SimCLRConfig("synthetic", width=4, epochs=4, batch_size=64, proj_hidden=32, proj_dim=16,
                        probe_epochs=10, train_subset=256)


@pytest.fixture(scope="module")
def train_set():
    return data.load("synthetic", "train")


# --- NT-Xent ----------------------------------------------------------------------------------------

def test_nt_xent_matches_hand_computation():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z2 = torch.tensor([[1.0, 1.0], [3.0, -1.0]])
    t = 0.5
    views = [[c / math.hypot(*v) for c in v] for v in z1.tolist() + z2.tolist()]
    partner = {0: 2, 1: 3, 2: 0, 3: 1}
    total = 0.0
    for k in range(4):
        sim = {l: (views[k][0] * views[l][0] + views[k][1] * views[l][1]) / t for l in range(4)}
        total += -sim[partner[k]] + math.log(sum(math.exp(sim[l]) for l in range(4) if l != k))
    assert float(simclr.nt_xent(z1, z2, t)) == pytest.approx(total / 4, rel=1e-6)


def test_nt_xent_rewards_matching_views_and_checks_inputs():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 16, generator=g)
    matched = simclr.nt_xent(z, z + 0.01 * torch.randn(8, 16, generator=g))
    unmatched = simclr.nt_xent(z, torch.randn(8, 16, generator=g))
    assert matched < unmatched
    with pytest.raises(ValueError, match="same shape"):
        simclr.nt_xent(z, z[:4])
    with pytest.raises(ValueError, match="temperature"):
        simclr.nt_xent(z, z, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        dataclasses.replace(TINY, temperature=-1.0)


# --- views ------------------------------------------------------------------------------------------

def test_views_crop_flip_and_jitter():
    n, w = 64, 16
    ramp = torch.linspace(0, 1, w).view(1, 1, 1, w).expand(n, 3, w, w).contiguous()  # brighter to the right
    g = torch.Generator().manual_seed(0)
    plain = simclr.simclr_views(ramp, g, flip=False, jitter_p=0.0, grey_p=0.0)
    assert plain.shape == ramp.shape
    assert (plain.diff(dim=3) >= -1e-6).all()  # crops of a ramp, resampled, stay increasing
    assert plain[:, :, :, -1].mean() - plain[:, :, :, 0].mean() < 0.99  # ...but zoomed in: a crop, not the image

    flipped = simclr.simclr_views(ramp, g, flip=True, jitter_p=0.0, grey_p=0.0)
    decreasing = (flipped[:, 0, 0, -1] < flipped[:, 0, 0, 0]).float().mean()
    assert 0.25 < decreasing < 0.75  # about half the views mirrored

    x = torch.rand(n, 3, w, w, generator=torch.Generator().manual_seed(1))
    views = simclr.simclr_views(x, torch.Generator().manual_seed(2))
    assert views.min() >= 0 and views.max() <= 1
    assert torch.equal(views, simclr.simclr_views(x, torch.Generator().manual_seed(2)))  # seeded
    assert not torch.allclose(views, simclr.simclr_views(x, torch.Generator().manual_seed(3)))
    grey = simclr.simclr_views(x, g, grey_p=1.0)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    single = simclr.simclr_views(x[:, :1], g)  # 1-channel data: crop, flip, brightness/contrast
    assert single.shape == (n, 1, w, w) and 0 <= single.min() and single.max() <= 1


# --- training ---------------------------------------------------------------------------------------

def test_simclr_loss_decreases_and_the_front_is_cached(train_set, tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    model, log = simclr.get_simclr_model(store, TINY, data=train_set, progress=False, return_log=True)
    losses = log["pretrain_losses"]
    assert len(losses) == TINY.epochs and losses[-1] < losses[0] - 0.05, losses
    assert log["probe_losses"][-1] < log["probe_losses"][0]
    assert isinstance(model, models.StitchableResNet) and not model.training
    assert model(train_set.images[:4].float() / 255).shape == (4, 4)

    monkeypatch.setattr(simclr, "train_simclr", lambda *a, **k: pytest.fail("a cached SimCLR model was retrained"))
    again = simclr.get_simclr_model(store, TINY, progress=False)
    for (k, v), w in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(v, w), k


def test_linear_probe_trains_only_fc(train_set):
    torch.manual_seed(0)
    model = models.build("resnet18", 4, width=4).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = simclr.fit_linear_probe(model, train_set.take(128), dataclasses.replace(TINY, probe_epochs=3), progress=False)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"fc.weight", "fc.bias"}
    assert len(probe["losses"]) == 3 and 0 <= probe["train_accuracy"] <= 100


def test_killed_pretraining_resumes_to_the_same_result(train_set, tmp_path, monkeypatch):
    cfg = dataclasses.replace(TINY, epochs=2)
    subset = train_set.take(128)
    straight, straight_losses = simclr.pretrain_simclr(cfg, subset, progress=False)

    ckpt = Checkpointer(tmp_path / "simclr.partial.pt")
    real_save = ckpt.save

    def save_then_die(state):
        real_save(state)
        raise KeyboardInterrupt  # killed right after epoch 1 was saved

    monkeypatch.setattr(ckpt, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        simclr.pretrain_simclr(cfg, subset, checkpoint=ckpt, progress=False)
    resumed, resumed_losses = simclr.pretrain_simclr(cfg, subset, checkpoint=Checkpointer(ckpt.path), progress=False)
    assert resumed_losses == pytest.approx(straight_losses)
    for (k, v), w in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(v.float(), w.float(), atol=1e-6), k


# --- the 1-D toy ------------------------------------------------------------------------------------

def test_toy_forward_fits_but_forward_backward_cannot():
    fits = toy.fit_toy()
    fwd, both = fits["forward"], fits["forward_backward"]
    assert fwd.a == pytest.approx(0.5) and fwd.b == pytest.approx(-0.75)  # s(u) = (u - 1.5) / 2
    assert fwd.rmse < 1e-9 and fwd.max_error < 1e-9
    assert both.rmse > 0.1 and both.max_error > 0.3  # x and 0.5 - x share f but not g
    # the forward stitch is exact on its data yet wrong on the inputs f cannot tell apart
    assert fwd(toy.front(0.1)) == pytest.approx(0.4)  # g(0.1) = 0.1
    with pytest.raises(ValueError, match="unknown mode"):
        toy.fit_stitch("backward")


def test_toy_plot():
    import matplotlib.pyplot as plt

    fig = toy.plot_toy()
    assert len(fig.axes) == 2
    plt.close(fig)
    fig, ax = plt.subplots()
    assert toy.plot_toy(ax) is fig and len(ax.lines) == 3
    plt.close(fig)
