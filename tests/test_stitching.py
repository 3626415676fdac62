import dataclasses

import pytest
import torch
import torch.nn.functional as F

from fula_core import attacks, data, models, stitching
from fula_core.stitching import StitchConfig, StitchJob
from fula_core.store import Checkpointer

CFG = StitchConfig(epochs=2, batch_size=64, lstsq_samples=64, pgd_eps=0.1, pgd_step=0.05, pgd_steps=1)


def _warm(net, x):
    """A few train-mode forwards so the running statistics are not the init values."""
    net.train()
    with torch.no_grad():
        for xb in x.split(64):
            net(xb)
    return net.eval()


@pytest.fixture(scope="module")
def synthetic():
    return data.load("synthetic", "train").take(256), data.load("synthetic", "test")


@pytest.fixture()
def pair(synthetic):
    torch.manual_seed(0)
    x = synthetic[0].images.float() / 255
    front = _warm(models.build("resnet18", 4, width=4), x)
    torch.manual_seed(1)
    end = _warm(models.build("resnet18", 4, width=6), x)
    return front, end


# --- least squares ---------------------------------------------------------------------------------

def test_lstsq_recovers_planted_affine_map():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20, 5, 6, 6, generator=g)
    weight, bias = torch.randn(7, 5, 1, 1, generator=g), torch.randn(7, generator=g)
    t = F.conv2d(a, weight, bias)
    w_hat, b_hat = stitching.lstsq_init(a, t)
    assert torch.allclose(w_hat, weight, atol=1e-5) and torch.allclose(b_hat, bias, atol=1e-5)


def test_lstsq_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="resize"):
        stitching.lstsq_init(torch.zeros(4, 3, 8, 8), torch.zeros(4, 3, 4, 4))


def test_self_stitch_with_identity_reproduces_logits(pair):
    net, _ = pair
    x = torch.rand(5, 3, 16, 16)
    for k, c in enumerate(net.stitch_channels):
        stitch = stitching.Stitch(c, c, tuple(net.activations_upto(x, k).shape[-2:]))
        with torch.no_grad():
            stitch.conv.weight.copy_(torch.eye(c).view(c, c, 1, 1)), stitch.conv.bias.zero_()
        model = stitching.StitchedModel(net, net, stitch, StitchJob(k, k, "dm"))
        assert torch.allclose(model(x), net(x), atol=1e-6)


def test_dm_on_itself_recovers_identity(pair, synthetic):
    net, _ = pair
    stitches = stitching.init_stitches(net, net, [StitchJob(k, k, "dm") for k in range(9)], synthetic[0], CFG)
    x = synthetic[0].images[:64].float() / 255
    acts = net.activations(x)
    for k, s in enumerate(stitches):
        live = acts[k].flatten(2).amax(dim=(0, 2)) > 0  # dead (all-zero) channels have no defined map
        w = s.conv.weight[:, :, 0, 0]
        assert torch.allclose(w[live][:, live], torch.eye(int(live.sum())), atol=1e-4)
        assert torch.allclose(s.conv.bias[live], torch.zeros(int(live.sum())), atol=1e-4)
        assert torch.allclose(s(acts[k]), acts[k], atol=1e-4)


# --- losses -----------------------------------------------------------------------------------------

def test_fula_loss_matches_hand_computation():
    a = [torch.tensor([[[[1.0, 2.0]]], [[[0.0, 1.0]]]]), torch.tensor([[[[3.0]]], [[[4.0]]]])]
    t = [torch.tensor([[[[1.0, 0.0]]], [[[0.0, 2.0]]]]), torch.tensor([[[[0.0]]], [[[4.0]]]])]
    # batch: ||a-t|| over the whole tensor / ||t||
    e0_batch = (2.0**2 + 1.0**2) ** 0.5 / (1.0 + 4.0) ** 0.5
    e1_batch = 3.0 / 4.0
    assert stitching.fula_loss(a, t) == pytest.approx((e0_batch + e1_batch) / 2, rel=1e-6)
    # sample: per-sample ratio, then mean
    e0_sample = (2.0 / 1.0 + 1.0 / 2.0) / 2
    w = (3.0, 1.0)
    # (the second term has a zero target for sample 0, so "sample" is checked on the first term alone)
    assert stitching.fula_loss(a[:1], t[:1], reduction="sample") == pytest.approx(e0_sample, rel=1e-6)
    assert stitching.fula_loss(a, t, weights=w) == pytest.approx((3 * e0_batch + 1 * e1_batch) / 4, rel=1e-6)
    # weight on the last term only = that single hint
    assert stitching.fula_loss(a, t, weights=(0.0, 1.0)) == pytest.approx(e1_batch, rel=1e-6)


def test_fula_loss_sample_reduction_non_uniform_weights():
    g = torch.Generator().manual_seed(1)
    a = [torch.randn(3, 2, 4, 4, generator=g) for _ in range(3)]
    t = [torch.randn(3, 2, 4, 4, generator=g) for _ in range(3)]
    w = (0.5, 0.0, 2.0)
    per = [float(torch.mean(torch.stack([(ai[n] - ti[n]).norm() / ti[n].norm() for n in range(3)]))) for ai, ti in zip(a, t)]
    want = sum(wi * p for wi, p in zip(w, per)) / sum(w)
    assert float(stitching.fula_loss(a, t, w, reduction="sample")) == pytest.approx(want, rel=1e-5)


def test_fula_loss_bad_weights():
    a = [torch.ones(1, 1, 1, 1)] * 2
    with pytest.raises(ValueError, match="need 2 FuLA weights"):
        stitching.fula_loss(a, a, weights=(1.0,))
    with pytest.raises(ValueError, match="non-negative"):
        stitching.fula_loss(a, a, weights=(1.0, -1.0))
    with pytest.raises(ValueError, match="reduction"):
        stitching.fula_loss(a, a, reduction="mean")


def test_slm_loss_is_kl_to_end_softmax():
    s, g = torch.randn(4, 5), torch.randn(4, 5)
    p = g.softmax(1)
    want = (p * (p.log() - s.log_softmax(1))).sum(1).mean()
    assert float(stitching.slm_loss(s, g)) == pytest.approx(float(want), rel=1e-5)
    assert float(stitching.slm_loss(g, g)) == pytest.approx(0.0, abs=1e-6)


# --- training --------------------------------------------------------------------------------------

JOBS = [StitchJob(0, 0, "tlm"), StitchJob(2, 2, "fula"), StitchJob(4, 4, "slm"), StitchJob(3, 3, "hint"),
        StitchJob(6, 6, "fula", fula_weights=(0.0, 0.0, 1.0)), StitchJob(5, 5, "tlm", alpha=1.0),
        StitchJob(1, 1, "hint", alpha=0.5), StitchJob(3, 3, "dm")]


def _params(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_only_the_stitch_trains(pair, synthetic, bn_mode):
    front, end = pair
    before_f, before_e = _params(front), _params(end)
    cfg = dataclasses.replace(CFG, bn_mode=bn_mode, epochs=1)
    out = stitching.train_stitches(front, end, JOBS[:2], synthetic[0], cfg, progress=False)
    # the frozen models' weights AND live running statistics are untouched
    for k, v in _params(front).items():
        assert torch.equal(v, before_f[k]), k
    for k, v in _params(end).items():
        assert torch.equal(v, before_e[k]), k
    init = stitching.init_stitches(front, end, JOBS[:2], synthetic[0], cfg)
    for o, s in zip(out, init):
        assert not torch.allclose(o.stitch_state["conv.weight"], s.conv.weight)  # the stitch did train
    if bn_mode == "train":  # each job's own statistics moved away from the models'
        assert not all(torch.equal(a, b) for a, b in zip(out[1].end_bn, stitching.get_bn_state(end)))
        assert not all(torch.equal(a, b) for a, b in zip(out[1].front_bn, stitching.get_bn_state(front)))
    else:
        assert out[0].end_bn is None and out[0].front_bn is None


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_multi_job_equals_each_job_alone(pair, synthetic, bn_mode):
    front, end = pair
    cfg = dataclasses.replace(CFG, bn_mode=bn_mode)
    together = stitching.train_stitches(front, end, JOBS, synthetic[0], cfg, progress=False)
    for job, joint in zip(JOBS, together):
        alone = stitching.train_stitches(front, end, [job], synthetic[0], cfg, progress=False)[0]
        for k in ("conv.weight", "conv.bias"):
            assert torch.allclose(joint.stitch_state[k], alone.stitch_state[k], atol=1e-5), (job.name, k)
        if bn_mode == "train" and job.objective != "dm":
            for a, b in zip(joint.end_bn + joint.front_bn, alone.end_bn + alone.front_bn):
                assert torch.allclose(a.float(), b.float(), atol=1e-5), job.name


def test_stitched_model_uses_its_own_statistics(pair, synthetic):
    front, end = pair
    out = stitching.train_stitches(front, end, [StitchJob(4, 4, "fula")], synthetic[0], CFG, progress=False)[0]
    model = out.model(front, end)
    x = synthetic[1].images[:32].float() / 255
    y1 = model(x)
    plain = stitching.StitchedModel(front, end, model.stitch, model.job)  # the models' own statistics
    assert not torch.allclose(y1, plain(x))
    assert torch.equal(model(x), y1)  # and evaluation leaves nothing behind


def test_non_finite_loss_stops_only_that_job(pair, synthetic, monkeypatch):
    front, end = pair
    real = stitching.objective_loss

    def poisoned(job, *args, **kw):
        loss = real(job, *args, **kw)
        return loss * float("nan") if job.objective == "slm" else loss

    monkeypatch.setattr(stitching, "objective_loss", poisoned)
    jobs = [StitchJob(4, 4, "slm"), StitchJob(2, 2, "fula")]
    out = stitching.train_stitches(front, end, jobs, synthetic[0], CFG, progress=False)
    assert out[0].error is not None and "slm[4->4]" in out[0].error and "non-finite" in out[0].error
    assert len(out[0].losses) == 1  # stopped after the first epoch
    assert out[1].error is None and all(torch.isfinite(torch.tensor(out[1].losses)))


def test_killed_training_resumes_to_the_same_result(pair, synthetic, tmp_path, monkeypatch):
    front, end = pair
    jobs = [StitchJob(2, 2, "fula"), StitchJob(5, 5, "tlm", alpha=1.0)]
    cfg = dataclasses.replace(CFG, epochs=3)
    straight = stitching.train_stitches(front, end, jobs, synthetic[0], cfg, progress=False)

    ckpt = Checkpointer(tmp_path / "job.partial.pt")
    calls = {"n": 0}
    real_save = ckpt.save

    def save_then_die(state):
        real_save(state)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed after epoch 2 was saved

    monkeypatch.setattr(ckpt, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        stitching.train_stitches(front, end, jobs, synthetic[0], cfg, checkpoint=ckpt, progress=False)
    resumed = stitching.train_stitches(front, end, jobs, synthetic[0], cfg, checkpoint=Checkpointer(ckpt.path),
                                       progress=False)
    for a, b in zip(straight, resumed):
        assert torch.allclose(a.stitch_state["conv.weight"], b.stitch_state["conv.weight"], atol=1e-6)
        assert a.losses == pytest.approx(b.losses)


def test_cross_layer_resize_and_errors(pair, synthetic):
    front, end = pair
    jobs = [StitchJob(8, 0, "fula"), StitchJob(0, 8, "tlm")]  # 2x2 -> 16x16 and 16x16 -> 2x2
    out = stitching.train_stitches(front, end, jobs, synthetic[0], dataclasses.replace(CFG, epochs=1), progress=False)
    x = synthetic[1].images[:8].float() / 255
    for o in out:
        assert o.model(front, end)(x).shape == (8, 4)
    with pytest.raises(ValueError, match="resize=True"):
        stitching.init_stitches(front, end, jobs[:1], synthetic[0], dataclasses.replace(CFG, resize=False))


def test_bad_jobs_and_configs():
    with pytest.raises(ValueError, match="unknown objective 'kd'"):
        StitchJob(0, 0, "kd")
    net = models.build("resnet18", 4, 3, width=2)
    with pytest.raises(IndexError, match="out of range"):  # ranges are the models' own: checked against them
        stitching.resolve_job(StitchJob(0, 9, "tlm"), net, net)
    with pytest.raises(IndexError, match="not a stitch point"):
        stitching.resolve_job(StitchJob("layer9", 0, "tlm"), net, net)
    with pytest.raises(IndexError, match="index >= 0 or a point name"):
        StitchJob(-1, 0, "tlm")
    with pytest.raises(ValueError, match=r"alpha .* \[0, 1\]"):
        StitchJob(0, 0, "tlm", alpha=2.0)
    with pytest.raises(ValueError, match="need 4 FuLA weights"):
        stitching.resolve_job(StitchJob(0, 5, "fula", fula_weights=(1.0,)), net, net)
    assert stitching.resolve_job(StitchJob("layer2.0", "stem", "tlm"), net, net).front_point == 3
    with pytest.raises(ValueError, match="bn_mode"):
        StitchConfig(bn_mode="frozen")


def test_evaluate_reports_accuracy_and_agreement(pair, synthetic):
    _, end = pair
    test = synthetic[1]
    end_logits = stitching.predict(end, test)
    result = stitching.evaluate(end, test, end_logits)
    assert result["agreement"] == pytest.approx(100.0)
    assert 0 <= result["accuracy"] <= 100


def test_evaluating_a_stitched_model_leaves_the_frozen_models_alone(pair, synthetic):
    front, end = pair
    front.eval(), end.eval()
    model = stitching.StitchedModel(front, end, stitching.init_stitches(front, end, [StitchJob(2, 2, "dm")],
                                                                        synthetic[0], CFG)[0], StitchJob(2, 2, "dm"))
    before = stitching.get_bn_state(end)
    stitching.evaluate(model, synthetic[1])
    assert not front.training and not end.training  # predict()'s model.train(was) must not reach them
    end(synthetic[1].images[:16].float() / 255)
    assert all(torch.equal(a, b) for a, b in zip(before, stitching.get_bn_state(end)))


# --- train-BN bookkeeping against a hand-written emulation of the authors' loop ---------------------


def _authors_loop(front, end, job: StitchJob, train: "data.ImageSet", cfg: StitchConfig):
    """One stitch trained the way the authors' code does it, written out plainly: per batch, the end
    model's targets with BN momentum 0 (batch statistics, no running update), then the stitched forward in
    train mode: the front on the batch, T, and g_{>j}. PGD inputs (alpha = 1) are crafted first against the
    stitched model in eval mode. Returns the trained stitch and both models' running buffers."""
    import copy

    front, end = copy.deepcopy(front), copy.deepcopy(end)
    models.freeze(front), models.freeze(end)
    (stitch,) = stitching.init_stitches(front, end, [job], train, cfg)
    opt = torch.optim.Adam(stitch.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = data.steps_per_epoch(len(train), cfg.batch_size)
    milestones = sorted({max(1, round(f * cfg.epochs)) * steps for f in cfg.lr_milestones})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=cfg.lr_gamma)
    attack_gen = torch.Generator().manual_seed(stitching._job_seed(cfg.seed, job))
    data_gen = torch.Generator().manual_seed(cfg.seed)
    i, j = job.front_point, job.end_point

    def stitched(x):
        return end.forward_from(stitch(front.activations_upto(x, i)), j)

    for _ in range(cfg.epochs):
        for x, y in data.batches(train, cfg.batch_size, shuffle=True, generator=data_gen, augment_data=cfg.augment,
                                 drop_last=True):
            if job.alpha > 0:
                front.eval(), end.eval()
                x = attacks.pgd_linf(stitched, x, y, eps=cfg.pgd_eps, step_size=cfg.pgd_step, steps=cfg.pgd_steps, random_start=cfg.pgd_random_start,
                                     generator=attack_gen)
            front.train(), end.train()
            for m in stitching.bn_layers(end):  # the authors' freeze_bn_running_stats
                m.momentum = 0.0
            with torch.no_grad():
                targets, end_logits = end.activations(x, with_logits=True)
            for m in stitching.bn_layers(end):
                m.momentum = 0.1
            out = stitch(front.activations(x)[i])
            if job.objective == "fula":
                later = end.activations_from(out, j)
                loss = stitching.fula_loss([out] + later, targets[j:])
            elif job.objective == "hint":
                loss = stitching.relative_error(out, targets[j])
                with torch.no_grad():
                    end.forward_from(out.detach(), j)
            elif job.objective == "slm":
                loss = stitching.slm_loss(end.forward_from(out, j), end_logits)
            else:
                loss = F.cross_entropy(end.forward_from(out, j), y)
            opt.zero_grad()
            loss.backward()
            opt.step(), sched.step()
    return stitch, front, end


def _used_bn_layers(net, point, side):
    """The BN layers a stitched model runs: the front's up to its stitch point, the end's after it."""
    units = net.units[: net._point_unit[point] + 1] if side == "front" else [*net.units[net._point_unit[point] + 1:]]
    return [m for u in units for m in u.modules() if isinstance(m, torch.nn.BatchNorm2d)]


@pytest.mark.parametrize("job", [StitchJob(2, 2, "hint"), StitchJob(4, 4, "fula"), StitchJob(6, 6, "slm"),
                                 StitchJob(3, 3, "tlm", alpha=1.0)], ids=lambda j: j.name)
def test_train_bn_statistics_match_the_authors_loop(pair, synthetic, job):
    """A job's running statistics (and its stitch) are what the authors' loop produces: the end model's
    target forward leaves every running buffer alone; g_{>j} sees only stitched activations."""
    front, end = pair
    train = synthetic[0].take(128)
    cfg = dataclasses.replace(CFG, epochs=2, augment=False, pgd_steps=2)
    (outcome,) = stitching.train_stitches(front, end, [job], train, cfg, progress=False)
    stitch_ref, front_ref, end_ref = _authors_loop(front, end, job, train, cfg)

    for side, net, ref, state in (("front", front, front_ref, outcome.front_bn), ("end", end, end_ref, outcome.end_bn)):
        point = job.front_point if side == "front" else job.end_point
        # the job's buffers, laid into a copy of the model, side by side with the emulation's
        import copy

        mine = copy.deepcopy(net)
        stitching.set_bn_state(mine, state)
        used_mine, used_ref = _used_bn_layers(mine, point, side), _used_bn_layers(ref, point, side)
        assert used_mine, f"no BN layer used on the {side} side"
        for a, b in zip(used_mine, used_ref):
            torch.testing.assert_close(a.running_mean, b.running_mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(a.running_var, b.running_var, rtol=1e-5, atol=1e-6)
    # the end layers after the stitch point moved away from the end model's own statistics
    moved = [not torch.allclose(a.running_mean, b.running_mean)
             for a, b in zip(_used_bn_layers(end_ref, job.end_point, "end"), _used_bn_layers(end, job.end_point, "end"))]
    assert any(moved)
    for k, v in stitch_ref.state_dict().items():
        torch.testing.assert_close(outcome.stitch_state[k], v, rtol=1e-4, atol=1e-5)


def test_target_forward_updates_no_running_statistics(pair):
    """batch_statistics_only: a train-mode forward uses batch statistics but leaves every buffer as it was."""
    _, end = pair
    before = stitching.get_bn_state(end)
    x = torch.rand(16, 3, 16, 16)
    end.train()
    with torch.no_grad(), stitching.batch_statistics_only(end):
        out = end(x)
    end.eval()
    for a, b in zip(before, stitching.get_bn_state(end)):
        assert torch.equal(a, b)
    with torch.no_grad():
        assert not torch.allclose(out, end(x))  # batch statistics, not the running ones, were used


def test_authors_lstsq_solver_drops_small_singular_values():
    """solver="authors" (float32 pinv with its default cutoff) equals the exact solution on a well-conditioned
    problem and differs from it where the design matrix has tiny singular values."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 5, 4, 4, generator=g)
    t = F.conv2d(a, torch.randn(3, 5, 1, 1, generator=g), torch.randn(3, generator=g))
    for x, y in zip(stitching.lstsq_init(a, t, "exact"), stitching.lstsq_init(a, t, "authors")):
        torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-4)
    # a nearly collinear channel: the exact solve uses it, the authors' cutoff does not
    a2 = torch.cat([a, a[:, :1] + 1e-7 * torch.randn(30, 1, 4, 4, generator=g)], dim=1)
    t2 = t + 1e-7 * a2[:, 5:6]
    w_exact, _ = stitching.lstsq_init(a2, t2, "exact")
    w_authors, _ = stitching.lstsq_init(a2, t2, "authors")
    assert not torch.allclose(w_exact, w_authors, atol=1e-2)
    with pytest.raises(ValueError, match="lstsq_solver"):
        StitchConfig(lstsq_solver="svd")
