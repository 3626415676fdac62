"""The engine against its previous version (benchmarks/baseline_engine.py, fula_core/stitching.py before the
issue-14 overhead work), on CPU: bit-identical stitches, losses and running statistics.

The one intended difference: a job with alpha > 0 now runs only f_{<=i} on its adversarial batch, so the
front's BN layers after its point i (which the stitched model never runs) no longer move with that batch.
Those layers are left out of the comparison for such jobs; every layer h runs is compared bit for bit.
"""
import copy
import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch

from fula_core import attacks, data, models, stitching
from fula_core.stitching import StitchConfig, StitchJob
from fula_core.store import Checkpointer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import baseline_engine  # noqa: E402

CFG = StitchConfig(epochs=2, batch_size=32, lstsq_samples=32, pgd_eps=0.1, pgd_step=0.05, pgd_steps=2,
                   pgd_random_start=True)
JOBS = [StitchJob(2, 2, "tlm"), StitchJob(4, 4, "slm"), StitchJob(3, 5, "hint"), StitchJob(6, 6, "fula"),
        StitchJob(4, 4, "dm"), StitchJob(5, 5, "tlm", alpha=1.0), StitchJob(5, 5, "hint", alpha=1.0),
        StitchJob(5, 5, "fula", alpha=0.5), StitchJob(1, 1, "slm", alpha=1.0)]


def _warm(net, x):
    net.train()
    with torch.no_grad():
        for xb in x.split(32):
            net(xb)
    return net.eval()


@pytest.fixture(scope="module")
def setup():
    train = data.load("synthetic", "train").take(96)
    x = train.images.float() / 255
    torch.manual_seed(0)
    front = _warm(models.build("resnet18", 4, width=4), x)
    torch.manual_seed(1)
    end = _warm(models.build("resnet18", 4, width=4), x)
    return front, end, train


def _front_layers_h_runs(front, job):
    """Indices (in bn_layers order) of the front's BN layers inside f_{<=i}."""
    used = {id(m) for u in front.units[: front._point_unit[job.front_point] + 1] for m in u.modules()}
    return [k for k, m in enumerate(stitching.bn_layers(front)) if id(m) in used]


def _assert_same(new, old, front):
    for a, b in zip(new, old):
        assert a.losses == b.losses, a.job.name
        assert a.stitch_state.keys() == b.stitch_state.keys()
        for k in a.stitch_state:
            assert torch.equal(a.stitch_state[k], b.stitch_state[k]), (a.job.name, k)
        if b.end_bn is None:
            assert a.end_bn is None and a.front_bn is None
            continue
        assert all(torch.equal(x, y) for x, y in zip(a.end_bn, b.end_bn)), a.job.name
        layers = range(len(b.front_bn) // 3) if a.job.alpha == 0 else _front_layers_h_runs(front, a.job)
        for k in layers:
            for t in range(3):
                assert torch.equal(a.front_bn[3 * k + t], b.front_bn[3 * k + t]), (a.job.name, k, t)


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_engine_is_bit_identical_to_the_previous_engine(setup, bn_mode):
    front, end, train = setup
    cfg = dataclasses.replace(CFG, bn_mode=bn_mode)
    new = stitching.train_stitches(copy.deepcopy(front), copy.deepcopy(end), JOBS, train, cfg, progress=False)
    old = baseline_engine.train_stitches(copy.deepcopy(front), copy.deepcopy(end), JOBS, train, cfg, progress=False)
    _assert_same(new, old, front)


def test_subset_of_jobs_running_updates_only_theirs(setup, monkeypatch):
    """A stopped job: the bank updates only the running jobs' rows (index_copy path), still bit-identical."""
    front, end, train = setup
    jobs = [StitchJob(2, 2, "slm"), StitchJob(4, 4, "fula"), StitchJob(3, 3, "hint")]
    cfg = dataclasses.replace(CFG, epochs=3)
    outs = []
    for module in (stitching, baseline_engine):
        real = module.objective_loss

        def poisoned(job, *args, _real=real, **kw):
            loss = _real(job, *args, **kw)
            return loss * float("nan") if job.objective == "slm" else loss

        monkeypatch.setattr(module, "objective_loss", poisoned)
        outs.append(module.train_stitches(copy.deepcopy(front), copy.deepcopy(end), jobs, train, cfg, progress=False))
    assert outs[0][0].error is not None and outs[0][1].error is None
    new, old = outs
    for a, b in zip(new[1:], old[1:]):
        assert a.losses == b.losses
        assert all(torch.equal(a.stitch_state[k], b.stitch_state[k]) for k in a.stitch_state)
        assert all(torch.equal(x, y) for x, y in zip(a.end_bn + a.front_bn, b.end_bn + b.front_bn))


def test_checkpoints_resume_across_engines(setup, tmp_path):
    """A checkpoint keeps the per-job form (own Adam and schedule state): the previous engine's checkpoint
    resumes in this one to the same result."""
    front, end, train = setup
    jobs = [StitchJob(2, 2, "fula"), StitchJob(5, 5, "tlm", alpha=1.0)]
    cfg3 = dataclasses.replace(CFG, epochs=3)
    straight = stitching.train_stitches(copy.deepcopy(front), copy.deepcopy(end), jobs, train, cfg3, progress=False)

    class StopAfter(Checkpointer):
        def save(self, state):
            super().save(state)
            if state["epoch"] == 2:
                raise KeyboardInterrupt

    ckpt = tmp_path / "run.partial.pt"
    with pytest.raises(KeyboardInterrupt):
        baseline_engine.train_stitches(copy.deepcopy(front), copy.deepcopy(end), jobs, train, cfg3,
                                       checkpoint=StopAfter(ckpt), progress=False)
    resumed = stitching.train_stitches(copy.deepcopy(front), copy.deepcopy(end), jobs, train, cfg3,
                                       checkpoint=Checkpointer(ckpt), progress=False)
    for a, b in zip(straight, resumed):
        assert a.losses == b.losses
        assert all(torch.equal(a.stitch_state[k], b.stitch_state[k]) for k in a.stitch_state)


def test_attack_enters_the_stitched_models_context_once(setup):
    """pgd_linf enters a StitchedModel's eval/BN context once per attack, and gives the same inputs."""
    front, end, train = setup
    (out,) = stitching.train_stitches(front, end, [StitchJob(3, 3, "tlm")], train, dataclasses.replace(CFG, epochs=1),
                                      progress=False)
    model = out.model(front, end)
    x, y = train.images[:16].float() / 255, train.labels[:16]
    entered = {"n": 0}
    real = model.entered

    def counting():
        entered["n"] += 1
        return real()

    model.entered = counting
    adv = attacks.pgd_linf(model, x, y, eps=0.1, step_size=0.02, steps=4, random_start=False)
    assert entered["n"] == 1
    old = baseline_engine.StitchedModel(front, end, model.stitch, model.job, out.front_bn, out.end_bn)
    assert torch.equal(adv, attacks.pgd_linf(old, x, y, eps=0.1, step_size=0.02, steps=4, random_start=False))
    assert all(not m.training for m in end.modules())  # modes restored


def test_engine_settings_do_not_change_cpu_results(setup):
    """EngineConfig's CUDA settings (bf16 PGD, channels_last, cudnn.benchmark) leave CPU results alone."""
    front, end, train = setup
    jobs = [StitchJob(3, 3, "fula"), StitchJob(4, 4, "tlm", alpha=1.0)]
    cfg = dataclasses.replace(CFG, epochs=1)
    plain = stitching.train_stitches(copy.deepcopy(front), copy.deepcopy(end), jobs, train, cfg, progress=False,
                                     engine=stitching.EngineConfig(False, False, False))
    fast = stitching.train_stitches(copy.deepcopy(front), copy.deepcopy(end), jobs, train, cfg, progress=False,
                                    engine=stitching.EngineConfig(pgd_bf16=True, channels_last=True, cudnn_benchmark=True))
    for a, b in zip(plain, fast):
        assert a.losses == b.losses and all(torch.equal(a.stitch_state[k], b.stitch_state[k]) for k in a.stitch_state)
    assert torch.backends.cudnn.benchmark is False or torch.cuda.is_available()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_engine_settings_stay_close_to_fp32(setup):
    """On CUDA: channels_last + cudnn.benchmark + bf16 PGD train stitches close to the plain CUDA run
    (bf16 autocast is already used for the models' forwards, so the tolerance is bf16's)."""
    front, end, train = setup
    jobs = [StitchJob(3, 3, "fula"), StitchJob(4, 4, "tlm", alpha=1.0)]
    cfg = dataclasses.replace(CFG, epochs=1)
    runs = []
    for engine in (stitching.EngineConfig(False, False, False), stitching.EngineConfig(True, True, True)):
        f, e = copy.deepcopy(front).cuda(), copy.deepcopy(end).cuda()
        runs.append(stitching.train_stitches(f, e, jobs, train, cfg, progress=False, engine=engine))
    for a, b in zip(*runs):
        for k in a.stitch_state:
            if a.stitch_state[k].is_floating_point():
                torch.testing.assert_close(a.stitch_state[k], b.stitch_state[k], rtol=0.05, atol=0.02)
        assert a.losses == pytest.approx(b.losses, rel=0.1, abs=0.05)


def test_batched_pgd_matches_each_jobs_own_pgd(setup):
    """EngineConfig(batch_pgd=True): one PGD over the adversarial jobs of a stitch point. Stated tolerance: its
    eval-mode BN rounds differently in the last bit, so a PGD sign can flip where a gradient is ~0: at most
    0.1% of the adversarial pixels differ from each job's own pgd_linf, and training ends within 1e-3."""
    front, end, train = setup
    jobs = [StitchJob(5, 5, "tlm", alpha=1.0), StitchJob(5, 5, "hint", alpha=1.0), StitchJob(5, 5, "fula", alpha=0.5),
            StitchJob(2, 2, "slm", alpha=1.0), StitchJob(2, 2, "tlm", alpha=1.0), StitchJob(4, 4, "fula")]
    cfg = dataclasses.replace(CFG, epochs=2, pgd_steps=3)
    outs = [stitching.train_stitches(copy.deepcopy(front), copy.deepcopy(end), jobs, train, cfg, progress=False,
                                     engine=stitching.EngineConfig(batch_pgd=flag)) for flag in (False, True)]
    for a, b in zip(*outs):
        assert a.losses == pytest.approx(b.losses, rel=1e-3), a.job.name
        for k in a.stitch_state:
            torch.testing.assert_close(a.stitch_state[k], b.stitch_state[k], rtol=1e-3, atol=1e-3)

    # the attack itself, on trained stitches with their own statistics
    group = [(n, stitching._Job(o.job, o.model(front, end).stitch, cfg, o.front_bn, o.end_bn, "cpu"))
             for n, o in enumerate(outs[0][:3])]
    eng = stitching._Engine(front, end, group, cfg, True, 1, None, None)
    x, y = train.images[:32].float() / 255, train.labels[:32]
    batched = stitching._batched_pgd(eng, group, x, y)
    for n, st in group:
        own = attacks.pgd_linf(stitching.StitchedModel(front, end, st.stitch, st.job, st.front_bn, st.end_bn), x, y,
                               eps=cfg.pgd_eps, step_size=cfg.pgd_step, steps=cfg.pgd_steps,
                               random_start=cfg.pgd_random_start,
                               generator=torch.Generator().manual_seed(stitching._job_seed(cfg.seed, st.job)))
        assert (batched[n] != own).float().mean() <= 1e-3, st.job.name


CLEAN_JOBS = [StitchJob(3, 3, "tlm"), StitchJob(3, 3, "slm"), StitchJob(3, 3, "hint"), StitchJob(3, 3, "fula"),
              StitchJob(3, 3, "hlm"), StitchJob(3, 3, "fula", fula_weights=(0, 1, 0, 2, 0, 1)),
              StitchJob(2, 4, "fula"), StitchJob(2, 4, "hint"), StitchJob(6, 6, "tlm"), StitchJob(6, 6, "hint"),
              StitchJob(5, 5, "slm"), StitchJob(1, 3, "slm"), StitchJob(8, 8, "fula"), StitchJob(3, 3, "tlm", alpha=1.0),
              StitchJob(2, 4, "slm", alpha=0.5), StitchJob(7, 7, "dm")]


@pytest.fixture(params=["one pass", "per point"])
def passes(request, monkeypatch):
    """batch_clean's two forms: one pass through g for the clean jobs of every point (a model with segment), and
    one pass per end point (a model without it, e.g. a wrapped network): the second by hiding segment."""
    if request.param == "per point":
        monkeypatch.delattr(models.StitchableResNet, "segment")
    return request.param


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
@pytest.mark.parametrize("reduction", ["batch", "sample"])
def test_batched_clean_jobs_match_the_job_by_job_engine(setup, bn_mode, reduction, passes):
    """EngineConfig(batch_clean=True): the clean jobs train in one forward/backward of g, entering at their own
    points (or, per point, of g_{>j}). Jobs: six at 3 -> 3 (tlm, slm, hint, hlm, fula with uniform and with own
    weights) and an slm at 1 -> 3 (another front point, same entry), two at 2 -> 4 (FuLA over the five later
    points), an slm at 5 -> 5 (alone at its point), two at 6 -> 6, a FuLA at the last point 8 -> 8 (one term),
    besides adversarial and mixed jobs at the same points and a DM job. Stated tolerance (float summation order
    only): losses within rel 1e-5, stitches and running statistics within rtol 1e-4 / atol 1e-6 after 6 steps;
    the counts and the front's statistics (untouched by the batching) are equal."""
    front, end, train = setup
    cfg = dataclasses.replace(CFG, bn_mode=bn_mode, fula_reduction=reduction, pgd_steps=1)
    outs = [stitching.train_stitches(copy.deepcopy(front), copy.deepcopy(end), CLEAN_JOBS, train, cfg, progress=False,
                                     engine=stitching.EngineConfig(batch_clean=flag)) for flag in (False, True)]
    for a, b in zip(*outs):
        assert b.error is None and len(b.losses) == (0 if a.job.objective == "dm" else CFG.epochs)
        assert b.losses == pytest.approx(a.losses, rel=1e-5, abs=1e-7), a.job.name
        for k in a.stitch_state:
            torch.testing.assert_close(b.stitch_state[k], a.stitch_state[k], rtol=1e-4, atol=1e-6, msg=a.job.name)
        if a.end_bn is None:
            assert b.end_bn is None
            continue
        for x, z in zip(b.end_bn, a.end_bn):
            torch.testing.assert_close(x, z, rtol=1e-4, atol=1e-6, msg=a.job.name)
            if not x.is_floating_point():
                assert torch.equal(x, z)
        assert all(torch.equal(x, z) for x, z in zip(b.front_bn, a.front_bn)), a.job.name


def test_batched_clean_path_is_taken_and_default_is_off_on_cpu(setup, monkeypatch, passes):
    """batch_clean=True runs every clean group of two or more jobs through _train_clean_group: one group of all
    clean jobs of every point when g can be walked point by point (end.segment), else one per end point (where a
    lone clean job keeps its own path); the adversarial jobs keep theirs. The CPU default never calls it."""
    front, end, train = setup
    seen = []
    real = stitching._train_clean_group

    def spy(eng, group, *args):
        seen.append(tuple(st.job.name for _, st in group.jobs))
        return real(eng, group, *args)

    monkeypatch.setattr(stitching, "_train_clean_group", spy)
    cfg = dataclasses.replace(CFG, epochs=1, pgd_steps=1)
    stitching.train_stitches(copy.deepcopy(front), copy.deepcopy(end), CLEAN_JOBS, train, cfg, progress=False)
    assert seen == []
    stitching.train_stitches(copy.deepcopy(front), copy.deepcopy(end), CLEAN_JOBS, train, cfg, progress=False,
                             engine=stitching.EngineConfig(batch_clean=True))
    groups = set(seen)
    clean = {j.name for j in CLEAN_JOBS if j.alpha == 0 and j.objective != "dm"}
    if passes == "one pass":
        assert len(groups) == 1 and set(next(iter(groups))) == clean
    else:
        assert sorted(len(g) for g in groups) == [2, 2, 7]  # points 3, 4 and 6; the jobs at 5 and 8 are alone
        assert all(len({name.split("->")[1] for name in g}) == 1 for g in groups)
    assert all("a1" not in name and "a0.5" not in name for g in groups for name in g)


def test_clean_groups_split_where_a_job_stopped(setup):
    """A stopped job leaves its group: the rest form runs of consecutive slots (one BN call needs one slice)."""
    front, end, train = setup
    jobs = [stitching.resolve_job(j, front, end) for j in CLEAN_JOBS[:6]]
    stitches = stitching.init_stitches(front, end, jobs, train, CFG)
    active = [(n, stitching._Job(job, st, CFG, None, None, "cpu")) for n, (job, st) in enumerate(zip(jobs, stitches))]
    eng = stitching._Engine(front, end, active, CFG, False, 1, None, None)
    (whole,) = stitching._clean_groups(eng, active)
    assert [eng.slot[n] for n, _ in whole.jobs] == list(range(whole.first, whole.stop)) and len(whole.jobs) == 6
    middle = whole.jobs[2][0]
    parts = stitching._clean_groups(eng, [(n, st) for n, st in active if n != middle])
    assert [len(g.jobs) for g in parts] == [2, 3] and all(middle not in dict(g.jobs) for g in parts)


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_batched_clean_job_with_non_finite_loss_stops_alone(setup, monkeypatch, bn_mode):
    """A clean job whose stitch outputs NaN (its bias poisoned) inside the one pass through g: it is stopped after
    the first epoch in both engines, and the other jobs -- entering before and after it, of every objective,
    among them a group of hints alone at one point -- end as in the job-by-job engine (same tolerance as above):
    nothing of one job reaches another's statistics, loss or gradient, and the pass re-forms without it."""
    front, end, train = setup
    jobs = [StitchJob(1, 1, "tlm"), StitchJob(2, 2, "hint"), StitchJob(1, 2, "hint"),
            StitchJob(3, 4, "fula"), StitchJob(4, 4, "fula"), StitchJob(4, 4, "slm"), StitchJob(7, 7, "tlm")]
    poisoned = "fula[4->4]a0"
    real = stitching.init_stitches

    def init(front, end, jobs, *args):
        stitches = real(front, end, jobs, *args)
        for job, stitch in zip(jobs, stitches):
            if job.name == poisoned:
                with torch.no_grad():
                    stitch.conv.bias.fill_(float("nan"))
        return stitches

    monkeypatch.setattr(stitching, "init_stitches", init)
    cfg = dataclasses.replace(CFG, bn_mode=bn_mode, epochs=3)
    outs = [stitching.train_stitches(copy.deepcopy(front), copy.deepcopy(end), jobs, train, cfg, progress=False,
                                     engine=stitching.EngineConfig(batch_clean=flag)) for flag in (False, True)]
    for a, b in zip(*outs):
        if a.job.name == poisoned:
            assert a.error is not None and b.error is not None and len(b.losses) == 1
            continue
        assert b.error is None and len(b.losses) == cfg.epochs and all(map(math.isfinite, b.losses)), b.job.name
        assert b.losses == pytest.approx(a.losses, rel=1e-5, abs=1e-7), a.job.name
        for k in a.stitch_state:
            torch.testing.assert_close(b.stitch_state[k], a.stitch_state[k], rtol=1e-4, atol=1e-6, msg=a.job.name)
        for x, z in zip(b.end_bn or [], a.end_bn or []):
            torch.testing.assert_close(x, z, rtol=1e-4, atol=1e-6, msg=a.job.name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batched_clean_jobs_stay_close_to_job_by_job(setup):
    """On CUDA (bf16 autocast forwards): batch_clean on (the CUDA default) against off, train-mode BN."""
    front, end, train = setup
    cfg = dataclasses.replace(CFG, epochs=1, pgd_steps=1)
    runs = []
    for flag in (False, True):
        f, e = copy.deepcopy(front).cuda(), copy.deepcopy(end).cuda()
        runs.append(stitching.train_stitches(f, e, CLEAN_JOBS, train, cfg, progress=False,
                                             engine=stitching.EngineConfig(batch_clean=flag)))
    for a, b in zip(*runs):
        for k in a.stitch_state:
            if a.stitch_state[k].is_floating_point():
                torch.testing.assert_close(a.stitch_state[k], b.stitch_state[k], rtol=0.05, atol=0.02)
        assert a.losses == pytest.approx(b.losses, rel=0.05, abs=0.02)


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_wrapped_network_takes_the_one_pass_too(bn_mode, monkeypatch):
    """A traced wrapped network (the zoo's VGG-16, BN after every conv) walks g point by point with
    Stitchable.segment: its clean jobs of every point form one group, and match the job-by-job engine within the
    tolerance of test_batched_clean_jobs_match_the_job_by_job_engine. (Dropout off: with train-mode BN the head's
    active dropout would draw other masks batched than job by job, as EngineConfig.batch_clean says.)"""
    train = data.load("synthetic", "train").take(64)
    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = models.build("vgg16", 4, 3, width=2)
        for m in net.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        nets.append(_warm(net, train.images.float() / 255))
    front, end = nets
    x = torch.rand(2, 3, 16, 16)
    a = end.activations_upto(x, 1)
    assert torch.equal(end.segment(a, 1), end.activations_from(a, 1)[0])
    jobs = [StitchJob(1, 1, "fula"), StitchJob(1, 1, "slm"), StitchJob(2, 3, "hint"), StitchJob(3, 3, "tlm"),
            StitchJob(4, 4, "fula", fula_weights=(1.0, 0.0))]
    cfg = dataclasses.replace(CFG, bn_mode=bn_mode, epochs=1, pgd_steps=1)
    seen = []
    real = stitching._train_clean_group
    monkeypatch.setattr(stitching, "_train_clean_group",
                        lambda eng, group, *args: seen.append(len(group.jobs)) or real(eng, group, *args))
    outs = [stitching.train_stitches(copy.deepcopy(front), copy.deepcopy(end), jobs, train, cfg, progress=False,
                                     engine=stitching.EngineConfig(batch_clean=flag)) for flag in (False, True)]
    assert set(seen) == {len(jobs)}
    for a, b in zip(*outs):
        assert b.losses == pytest.approx(a.losses, rel=1e-5, abs=1e-7), a.job.name
        for k in a.stitch_state:
            torch.testing.assert_close(b.stitch_state[k], a.stitch_state[k], rtol=1e-4, atol=1e-6, msg=a.job.name)
        for u, v in zip(b.end_bn or [], a.end_bn or []):
            torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-6, msg=a.job.name)
