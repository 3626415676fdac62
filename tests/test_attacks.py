"""Tests for fula_core.attacks on a tiny model trained in a couple of seconds.

The data set is synthetic: 4 classes, each a fixed random 1x8x8 template around grey 0.5
plus Gaussian pixel noise, clipped to [0, 1].  The classes overlap little, so a small MLP
reaches >90% clean accuracy, and an L-inf budget of eps=0.06 is enough to break about half
of the points.  AutoAttack is run with n_iter=20 and eot_iter=1 (instead of 100 and 20) to
keep the file fast; eot_iter=1 is exact for this deterministic eval-mode model.
"""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fula_core.attacks import autoattack_rand, pgd_linf, robust_accuracy

NUM_CLASSES = 4
EPS = 0.06
PGD = dict(eps=EPS, step_size=EPS / 4, steps=10)  # Madry-style: step eps/4, 10 steps
AA_FAST = dict(n_iter=20, eot_iter=1, seed=0)


def _make_data(templates, n, generator):
    y = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    x = (templates[y] + 0.2 * torch.randn(n, 1, 8, 8, generator=generator)).clamp(0, 1)
    return x, y


def _mlp(num_classes=NUM_CLASSES):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes))


@pytest.fixture(scope="module")
def tiny(one_thread):
    """A trained tiny classifier (eval mode) and a held-out test set."""
    g = torch.Generator().manual_seed(0)
    templates = (0.5 + 0.1 * torch.randn(NUM_CLASSES, 1, 8, 8, generator=g)).clamp(0, 1)
    x_train, y_train = _make_data(templates, 2048, g)
    x_test, y_test = _make_data(templates, 512, g)

    torch.manual_seed(0)
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        idx = torch.randint(0, len(x_train), (128,), generator=g)
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.zero_grad(set_to_none=True)
    return model, x_test, y_test


def _acc(model, x, y):
    with torch.no_grad():
        return 100.0 * (model(x).argmax(1) == y).float().mean().item()


# ------------------------------------------------------------------------------ PGD


def test_tiny_model_is_accurate(tiny):
    model, x, y = tiny
    assert _acc(model, x, y) > 90.0


def test_pgd_stays_in_eps_ball_and_box(tiny):
    model, x, y = tiny
    x_adv = pgd_linf(model, x, y, **PGD, generator=torch.Generator().manual_seed(1))
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= EPS + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    # Large steps from a random start must still be projected back.
    x_big = pgd_linf(model, x, y, eps=EPS, step_size=1.0, steps=3)
    assert (x_big - x).abs().max().item() <= EPS + 1e-6
    assert x_big.min().item() >= 0.0 and x_big.max().item() <= 1.0


def test_pgd_lowers_accuracy_clearly(tiny):
    model, x, y = tiny
    clean = _acc(model, x, y)
    adv = _acc(model, pgd_linf(model, x, y, **PGD, generator=torch.Generator().manual_seed(1)), y)
    assert clean > 90.0
    assert adv < 70.0
    assert clean - adv > 25.0


def test_pgd_more_steps_do_not_raise_accuracy(tiny):
    model, x, y = tiny
    accs = [
        robust_accuracy(model, x, y, attack="pgd", eps=EPS, step_size=EPS / 4, steps=s,
                        generator=torch.Generator().manual_seed(1))
        for s in (1, 5, 20)
    ]
    assert accs[0] >= accs[1] >= accs[2]
    assert accs[0] > accs[2]  # the comparison is not vacuous


def test_pgd_generator_makes_it_reproducible(tiny):
    model, x, y = tiny
    a = pgd_linf(model, x, y, **PGD, generator=torch.Generator().manual_seed(7))
    b = pgd_linf(model, x, y, **PGD, generator=torch.Generator().manual_seed(7))
    c = pgd_linf(model, x, y, **PGD, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_pgd_zero_budget_returns_input(tiny):
    model, x, y = tiny
    assert torch.equal(pgd_linf(model, x, y, eps=0.0, step_size=0.01, steps=10), x)
    assert torch.equal(pgd_linf(model, x, y, eps=EPS, step_size=0.01, steps=0), x)


def test_pgd_without_random_start_is_deterministic(tiny):
    model, x, y = tiny
    a = pgd_linf(model, x, y, **PGD, random_start=False)
    b = pgd_linf(model, x, y, **PGD, random_start=False)
    assert torch.equal(a, b)
    # One sign step from x moves every coordinate with a non-zero gradient, inside the box.
    one = pgd_linf(model, x, y, eps=EPS, step_size=EPS, steps=1, random_start=False)
    assert (one - x).abs().max().item() == pytest.approx(EPS, abs=1e-6)


def test_pgd_leaves_parameter_grads_alone_and_works_under_no_grad(tiny):
    model, x, y = tiny
    with torch.no_grad():
        x_adv = pgd_linf(model, x[:64], y[:64], **PGD)
    assert not torch.equal(x_adv, x[:64])
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------ AutoAttack


@pytest.fixture(scope="module")
def aa_result(tiny):
    model, x, y = tiny
    return autoattack_rand(model, x, y, eps=EPS, **AA_FAST)


def test_autoattack_stays_in_eps_ball_and_box(tiny, aa_result):
    _, x, _ = tiny
    assert aa_result.shape == x.shape
    assert (aa_result - x).abs().max().item() <= EPS + 1e-6
    assert aa_result.min().item() >= 0.0 and aa_result.max().item() <= 1.0


def test_autoattack_at_least_as_strong_as_pgd(tiny, aa_result):
    model, x, y = tiny
    pgd_acc = robust_accuracy(model, x, y, attack="pgd", **PGD,
                              generator=torch.Generator().manual_seed(1))
    aa_acc = _acc(model, aa_result, y)
    assert aa_acc <= pgd_acc
    assert aa_acc < _acc(model, x, y) - 25.0


def test_autoattack_returns_clean_inputs_for_unbroken_points(tiny, aa_result):
    # As in the original AutoAttack: only broken points carry a perturbation.
    model, x, y = tiny
    with torch.no_grad():
        still_right = model(aa_result).argmax(1) == y
    assert 0 < still_right.sum() < len(y)
    assert torch.equal(aa_result[still_right], x[still_right])
    assert (aa_result[~still_right] != x[~still_right]).flatten(1).any(1).float().mean() > 0.9


def test_autoattack_robust_accuracy_matches_returned_examples(tiny, aa_result):
    model, x, y = tiny
    acc = robust_accuracy(model, x, y, attack="autoattack", eps=EPS, batch_size=10_000, **AA_FAST)
    assert acc == pytest.approx(_acc(model, aa_result, y))


def test_autoattack_is_seeded_and_restores_global_rng(tiny):
    model, x, y = tiny
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = autoattack_rand(model, x[:64], y[:64], eps=EPS, **AA_FAST)
    after = torch.rand(3)
    b = autoattack_rand(model, x[:64], y[:64], eps=EPS, **AA_FAST)
    assert torch.equal(a, b)
    assert torch.equal(after, expected)  # torchattacks' manual_seed did not leak out


def test_autoattack_respects_model_mode_and_grads(tiny):
    model, x, y = tiny

    class Recorder(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.modes = set()

        def forward(self, inp):
            self.modes.add(self.training)
            return self.inner(inp)

    rec = Recorder(model)
    rec.train()  # torchattacks alone would switch this to eval during the attack
    autoattack_rand(rec, x[:32], y[:32], eps=EPS, n_iter=5, eot_iter=1)
    assert rec.modes == {True}
    assert rec.training
    model.eval()
    assert all(p.grad is None for p in model.parameters())


def test_autoattack_accepts_plain_callables(tiny):
    model, x, y = tiny
    fn = lambda inp: model(inp)  # noqa: E731  (not an nn.Module)
    out = autoattack_rand(fn, x[:32], y[:32], eps=EPS, n_iter=5, eot_iter=1)
    assert (out - x[:32]).abs().max().item() <= EPS + 1e-6


def test_autoattack_needs_three_classes():
    model = _mlp(num_classes=2).eval()
    x = torch.rand(8, 1, 8, 8)
    y = torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match="3 classes"):
        autoattack_rand(model, x, y, eps=EPS, n_iter=5, eot_iter=1)


def test_autoattack_rejects_inputs_outside_the_box(tiny):
    model, x, y = tiny
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        autoattack_rand(model, x[:8] * 2.0 - 0.5, y[:8], eps=EPS, n_iter=5, eot_iter=1)


# ------------------------------------------------------------------------------ robust_accuracy


def test_robust_accuracy_batches_like_one_pass(tiny):
    model, x, y = tiny
    kw = dict(attack="pgd", eps=EPS, step_size=EPS / 4, steps=5, random_start=False)
    assert robust_accuracy(model, x, y, batch_size=100, **kw) == pytest.approx(
        robust_accuracy(model, x, y, batch_size=10_000, **kw))


def test_robust_accuracy_unknown_attack_raises(tiny):
    model, x, y = tiny
    with pytest.raises(ValueError, match="unknown attack"):
        robust_accuracy(model, x, y, attack="fgsm", eps=EPS)


# ------------------------------------------------------------------------------ CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_attacks_run_on_cuda(tiny):
    model, x, y = tiny
    model_cuda = copy.deepcopy(model).cuda().eval()
    xc, yc = x[:128].cuda(), y[:128].cuda()
    for gen in (torch.Generator(device="cuda").manual_seed(1), torch.Generator().manual_seed(1)):
        x_adv = pgd_linf(model_cuda, xc, yc, **PGD, generator=gen)
        assert x_adv.device == xc.device
        assert (x_adv - xc).abs().max().item() <= EPS + 1e-6
    torch.cuda.manual_seed(5)
    expected = torch.rand(3, device="cuda")
    torch.cuda.manual_seed(5)
    aa = autoattack_rand(model_cuda, xc, yc, eps=EPS, **AA_FAST)
    assert torch.equal(torch.rand(3, device="cuda"), expected)  # CUDA RNG restored too
    assert aa.device == xc.device
    assert (aa - xc).abs().max().item() <= EPS + 1e-6
    # Same attack, same seed: the CUDA result breaks about as many points as on the CPU.
    cpu_acc = _acc(model, autoattack_rand(model, x[:128], y[:128], eps=EPS, **AA_FAST), y[:128])
    assert _acc(model_cuda, aa, yc) == pytest.approx(cpu_acc, abs=3.0)
