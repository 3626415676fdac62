import dataclasses
import math

import matplotlib
import pytest
import torch

from fula_core import config, data, models, simclr, toy
from fula_core.store import Checkpointer, ResultStore

matplotlib.use("Agg")

TINY = simclr.SimCLRConfig("synthetic", width=4, epochs=4, batch_size=64, proj_hidden=32, proj_dim=16,
                           probe_epochs=3, probe_batch_size=64, train_subset=256)


@pytest.fixture(scope="module")
def train_set():
    return data.load("synthetic", "train")


# --- the authors' recipe --------------------------------------------------------------------------------

def test_defaults_are_the_authors_recipe():
    cfg = simclr.SimCLRConfig("cifar10")
    assert (cfg.epochs, cfg.total_probe_epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.nesterov) == (200, 200, 128, 0.1, 0.9, True)
    assert (cfg.weight_decay, cfg.temperature, cfg.proj_hidden, cfg.proj_dim) == (1e-4, 0.5, 1024, 128)
    assert (cfg.crop_scale, cfg.jitter, cfg.jitter_p, cfg.grey_p, cfg.probe_bn) == ((0.2, 1.0), (0.4, 0.4, 0.4, 0.1), 0.5, 0.1, "train")
    head = simclr.projector(512, cfg.proj_hidden, cfg.proj_dim)
    assert [type(m) for m in head] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]  # no BatchNorm
    # LR x0.1 from epoch int(200/3) = 66 and int(400/3) = 133 on (the authors' step_scheduler)
    lrs = [simclr.step_lr(0.1, e, 200, cfg.lr_milestones, 0.1) for e in (0, 65, 66, 132, 133, 199)]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert simclr.step_lr(0.1, 0, 1, cfg.lr_milestones, 0.1) == 0.1  # a one-epoch run is not decayed at once
    assert dataclasses.replace(cfg, probe_epochs=7).total_probe_epochs == 7
    for bad in (dict(probe_bn="frozen"), dict(jitter=(0.4, 0.4, 0.4, 0.6)), dict(crop_scale=(0.5, 0.2)),
                dict(probe_batch_size=1)):
        with pytest.raises(ValueError):
            dataclasses.replace(cfg, **bad)


def test_profiles_build_their_simclr_front():
    for name in config.PROFILES:
        P = config.get_profile(name)
        cfg = P.simclr_config(seed=3)
        assert (cfg.dataset, cfg.arch, cfg.width, cfg.seed) == (P.end_dataset, P.archs[0], P.base.width, 3)
        assert (cfg.epochs, cfg.train_subset) == (P.simclr_epochs, P.simclr_train_subset)
        assert all(getattr(cfg, k) == v for k, v in P.simclr_overrides.items())
    assert config.get_profile("paper").simclr_config(0).epochs == 200


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

NO_JITTER = dict(jitter_p=0.0, grey_p=0.0)


def test_views_crop_and_flip():
    n, w = 256, 16
    ramp = torch.linspace(0, 1, w).view(1, 1, 1, w).expand(n, 3, w, w).contiguous()  # brighter to the right
    g = torch.Generator().manual_seed(0)
    plain = simclr.simclr_views(ramp, g, flip=False, **NO_JITTER)
    assert plain.shape == ramp.shape
    assert (plain.diff(dim=3) >= -1e-6).all()  # crops of a ramp, resampled, stay increasing
    span = plain[:, 0, 0, -1] - plain[:, 0, 0, 0]  # ~ the crop's width: sqrt(area * aspect)
    assert span.max() <= 1 + 1e-6 and span.min() > 0.25  # area >= 0.2 of the image: never a sliver
    assert span.mean() < 0.95  # ...but zoomed in: crops, not the image

    flipped = simclr.simclr_views(ramp, g, flip=True, **NO_JITTER)
    decreasing = (flipped[:, 0, 0, -1] < flipped[:, 0, 0, 0]).float().mean()
    assert 0.35 < decreasing < 0.65  # about half the views mirrored


def test_views_colour_distortion():
    n, w = 512, 8
    x = torch.rand(n, 3, w, w, generator=torch.Generator().manual_seed(1))
    views = simclr.simclr_views(x, torch.Generator().manual_seed(2))
    assert views.min() >= 0 and views.max() <= 1 and views.is_contiguous()
    assert torch.equal(views, simclr.simclr_views(x, torch.Generator().manual_seed(2)))  # seeded
    assert not torch.allclose(views, simclr.simclr_views(x, torch.Generator().manual_seed(3)))
    g = torch.Generator().manual_seed(4)
    grey = simclr.simclr_views(x, g, grey_p=1.0)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    # jitter with probability jitter_p: on a flat image without crop effects, the share of views changed
    flat = torch.full((n, 3, w, w), 0.5)
    flat[:, 0] = 0.7  # a colour, so that saturation and hue act too
    changed = (simclr.simclr_views(flat, g, grey_p=0.0, jitter_p=0.5) - flat).abs().amax(dim=(1, 2, 3)) > 1e-4
    assert 0.4 < changed.float().mean() < 0.6
    single = simclr.simclr_views(x[:, :1], g, grey_p=1.0)  # 1-channel data: crop, flip, brightness/contrast
    assert single.shape == (n, 1, w, w) and 0 <= single.min() and single.max() <= 1
    with pytest.raises(ValueError, match="channels"):
        simclr.simclr_views(torch.rand(2, 2, w, w))


def test_hue_shift_matches_torchvision():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    x = torch.rand(6, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    x[0] = 0.3  # a grey image: hue has no effect
    for shift in (0.0, 0.1, -0.1, 1 / 3, -0.5):
        ours = simclr._shift_hue(x, torch.full((6, 1, 1, 1), shift))
        assert torch.allclose(ours, tvf.adjust_hue(x, shift), atol=1e-5), shift
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert torch.allclose(simclr._shift_hue(red, torch.full((1, 1, 1, 1), 1 / 3)), torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1), atol=1e-6)


# --- training ---------------------------------------------------------------------------------------

def test_simclr_loss_decreases_and_the_front_is_cached(train_set, tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    model, log = simclr.get_simclr_model(store, TINY, data=train_set, progress=False, return_log=True)
    losses = log["pretrain_losses"]
    assert len(losses) == TINY.epochs and losses[-1] < losses[0] - 0.05, losses
    assert len(log["probe_losses"]) == TINY.total_probe_epochs and log["probe_losses"][-1] < log["probe_losses"][0]
    assert 0 <= log["probe_test_accuracy"] <= 100
    assert isinstance(model, models.StitchableResNet) and not model.training
    assert model(train_set.images[:4].float() / 255).shape == (4, 4)

    monkeypatch.setattr(simclr, "train_simclr", lambda *a, **k: pytest.fail("a cached SimCLR model was retrained"))
    again = simclr.get_simclr_model(store, TINY, progress=False)
    for (k, v), w in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(v, w), k


@pytest.mark.parametrize("bn", ["train", "eval"])
def test_linear_probe_trains_only_fc_and_reestimates_bn_in_train_mode(train_set, bn):
    torch.manual_seed(0)
    model = models.build("resnet18", 4, width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = dataclasses.replace(TINY, probe_bn=bn)
    opt = torch.optim.SGD(model.fc.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    loss, acc = simclr.probe_epoch(model, train_set.take(128), opt, cfg, torch.Generator().manual_seed(0))
    assert math.isfinite(loss) and 0 <= acc <= 100
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    buffers = {k for k, _ in model.named_buffers()}
    assert {"fc.weight", "fc.bias"} <= changed
    assert not {k for k, _ in model.named_parameters() if not k.startswith("fc.")} & changed  # encoder frozen
    # train mode: every BN layer's running statistics follow the probe's images; eval mode: none move
    assert (changed & buffers == buffers) if bn == "train" else not changed & buffers


@pytest.mark.parametrize("killed_after", [1, 3])  # during pre-training / during the probe
def test_killed_training_resumes_to_the_same_result(train_set, tmp_path, monkeypatch, killed_after):
    cfg = dataclasses.replace(TINY, epochs=2, probe_epochs=2, train_subset=128)
    straight_log, resumed_log = {}, {}
    straight = simclr.train_simclr(cfg, train_set, progress=False, log=straight_log)

    ckpt = Checkpointer(tmp_path / "simclr.partial.pt")
    real_save = ckpt.save

    def save_then_maybe_die(state):
        real_save(state)
        if state["epoch"] == killed_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save", save_then_maybe_die)
    with pytest.raises(KeyboardInterrupt):
        simclr.train_simclr(cfg, train_set, checkpoint=ckpt, progress=False)
    resumed = simclr.train_simclr(cfg, train_set, checkpoint=Checkpointer(ckpt.path), progress=False, log=resumed_log)
    assert resumed_log["pretrain_losses"] == pytest.approx(straight_log["pretrain_losses"])
    assert resumed_log["probe_losses"] == pytest.approx(straight_log["probe_losses"])
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
