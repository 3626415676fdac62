"""Tests for fula_core.metrics against hand computations and reference formulas."""

import itertools
import math

import numpy as np
import pytest
import torch

from fula_core.metrics import (
    MinibatchCKA,
    accuracy,
    agreement_probability,
    chance_normalised_agreement,
    excess_agreement,
    linear_cka,
)



# ------------------------------------------------------------------------------ accuracy


def test_accuracy_in_percent():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [4.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    assert accuracy(logits, labels) == pytest.approx(50.0)


# ------------------------------------------------------------------------------ agreement


def _softmax(row):
    e = [math.exp(v) for v in row]
    s = sum(e)
    return [v / s for v in e]


def test_agreement_matches_hand_computation():
    stitched = [[1.0, 0.0, -1.0], [0.5, 0.5, 2.0], [3.0, -2.0, 0.0]]
    end = [[0.0, 1.0, 0.0], [0.5, 0.4, 2.1], [-1.0, 2.0, 0.5]]
    per_sample = []
    for s_row, g_row in zip(stitched, end):
        p_s, p_g = _softmax(s_row), _softmax(g_row)
        overlap = sum(a * b for a, b in zip(p_s, p_g))
        norm = max(sum(b * b for b in p_g), sum(a * a for a in p_s))
        per_sample.append(overlap / norm)
    expected = 100.0 * sum(per_sample) / len(per_sample)
    got = agreement_probability(torch.tensor(stitched), torch.tensor(end))
    assert got == pytest.approx(expected, rel=1e-6)
    assert 0.0 < got < 100.0


def test_agreement_is_symmetric_and_100_for_identical_logits():
    torch.manual_seed(0)
    a, b = torch.randn(50, 10, dtype=torch.float64), torch.randn(50, 10, dtype=torch.float64)
    assert agreement_probability(a, a) == pytest.approx(100.0, abs=1e-9)
    # A constant shift of the logits does not change the softmax.
    assert agreement_probability(a, a + 3.0) == pytest.approx(100.0, abs=1e-9)
    assert agreement_probability(a, b) == pytest.approx(agreement_probability(b, a))
    assert agreement_probability(a, b) < 100.0


@pytest.mark.parametrize("num_classes", [2, 10, 100])
def test_agreement_one_hot_vs_uniform_is_one_over_k(num_classes):
    # p_S one-hot, p_g uniform: overlap 1/K, max(1/K, 1) = 1  ->  100/K percent.
    one_hot = torch.zeros(4, num_classes)
    one_hot[:, 0] = 1e4  # softmax is exactly one-hot in float64
    uniform = torch.zeros(4, num_classes)
    assert agreement_probability(one_hot, uniform) == pytest.approx(100.0 / num_classes)
    assert agreement_probability(uniform, one_hot) == pytest.approx(100.0 / num_classes)


def test_agreement_shape_mismatch_raises():
    with pytest.raises(ValueError):
        agreement_probability(torch.zeros(3, 10), torch.zeros(3, 9))


def test_chance_normalisation_endpoints():
    for k in (2, 10, 100):
        assert chance_normalised_agreement(100.0 / k, k) == pytest.approx(0.0, abs=1e-12)
        assert chance_normalised_agreement(100.0, k) == pytest.approx(100.0)
    # Linear in between: halfway between chance and 100 maps to 50.
    assert chance_normalised_agreement(55.0, 10) == pytest.approx(50.0)
    with pytest.raises(ValueError):
        chance_normalised_agreement(50.0, 1)


def test_excess_agreement():
    assert excess_agreement(73.5, 73.5) == 0.0
    assert excess_agreement(90.0, 40.0) == pytest.approx(50.0)
    assert excess_agreement(40.0, 90.0) == pytest.approx(-50.0)


# ------------------------------------------------------------------------------ linear CKA


def _reference_cka(x, y):
    """Kornblith et al. (2019), Gram form with an explicit centring matrix H (numpy)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h) / (n - 1) ** 2

    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def _random_pair(n, dx, dy, seed):
    # float64, so that transforms applied by the tests do not add float32 rounding.
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dx, generator=g, dtype=torch.float64)
    # y shares a linear signal with x plus independent noise, so CKA is strictly inside (0, 1).
    w = torch.randn(dx, dy, generator=g, dtype=torch.float64)
    y = x @ w + 2.0 * torch.randn(n, dy, generator=g, dtype=torch.float64)
    return x, y


def test_linear_cka_of_a_representation_with_itself_is_one():
    x, _ = _random_pair(64, 20, 5, seed=0)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    # Also for image-shaped activations (flattened per sample).
    acts = torch.randn(16, 3, 4, 4)
    assert linear_cka(acts, acts) == pytest.approx(1.0, abs=1e-12)


def test_linear_cka_invariant_to_orthogonal_transform_and_isotropic_scaling():
    x, y = _random_pair(100, 12, 8, seed=1)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    base = linear_cka(x, y)
    assert linear_cka(x, y @ q) == pytest.approx(base, abs=1e-9)
    assert linear_cka(x, 7.5 * y) == pytest.approx(base, abs=1e-9)
    assert linear_cka(x, y + 3.0) == pytest.approx(base, abs=1e-9)  # features are centred
    # Not invariant to an anisotropic rescaling: the invariance checks are not vacuous.
    scale = torch.linspace(0.1, 10.0, 8, dtype=torch.float64)
    assert abs(linear_cka(x, y * scale) - base) > 1e-3


@pytest.mark.parametrize("n,dx,dy", [(30, 50, 40), (200, 6, 3)])  # Gram and feature forms
def test_linear_cka_matches_reference_formula(n, dx, dy):
    x, y = _random_pair(n, dx, dy, seed=3)
    expected = _reference_cka(x.numpy(), y.numpy())
    assert 0.05 < expected < 0.95
    assert linear_cka(x, y) == pytest.approx(expected, abs=1e-10)
    assert linear_cka(x.float(), y.float()) == pytest.approx(expected, abs=1e-6)


def test_linear_cka_of_independent_features_is_small():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(4000, 3, generator=g), torch.randn(4000, 3, generator=g)
    assert linear_cka(x, y) < 0.01


# ------------------------------------------------------------------------------ minibatch CKA


def _unbiased_hsic_ustatistic(k, l):
    """HSIC as the U-statistic of Song et al. (2012), summed over distinct index tuples.

    E[k_ij l_ij] + E[k_ij] E[l_qr] - 2 E[k_ij l_iq], each expectation estimated without
    bias by averaging over tuples of distinct indices.  O(n^4): tiny n only.
    """
    n = len(k)
    pairs = list(itertools.permutations(range(n), 2))
    triples = list(itertools.permutations(range(n), 3))
    quads = list(itertools.permutations(range(n), 4))
    t1 = sum(k[i, j] * l[i, j] for i, j in pairs) / len(pairs)
    t2 = sum(k[i, j] * l[q, r] for i, j, q, r in quads) / len(quads)
    t3 = sum(k[i, j] * l[i, q] for i, j, q in triples) / len(triples)
    return t1 + t2 - 2.0 * t3


@pytest.mark.parametrize("dx,dy", [(4, 3), (6, 5)])  # feature-space and Gram forms
def test_minibatch_cka_single_batch_equals_u_statistic(dx, dy):
    x, y = _random_pair(7, dx, dy, seed=5)
    xd, yd = x.numpy(), y.numpy()
    k, l = xd @ xd.T, yd @ yd.T
    expected = _unbiased_hsic_ustatistic(k, l) / math.sqrt(
        _unbiased_hsic_ustatistic(k, k) * _unbiased_hsic_ustatistic(l, l))
    cka = MinibatchCKA()
    cka.update(x, y)
    assert cka.value() == pytest.approx(expected, rel=1e-9)


def test_minibatch_cka_needs_no_centring():
    # The unbiased HSIC is exactly invariant to shifting the features.
    x, y = _random_pair(40, 6, 5, seed=6)
    a, b = MinibatchCKA(), MinibatchCKA()
    a.update(x, y)
    b.update(x + 5.0, y - 2.0)
    assert a.value() == pytest.approx(b.value(), rel=1e-9)


def test_minibatch_cka_close_to_linear_cka_on_large_n():
    x, y = _random_pair(3000, 10, 6, seed=7)
    one = MinibatchCKA()
    one.update(x, y)
    full = linear_cka(x, y)
    assert one.value() == pytest.approx(full, abs=5e-3)
    # Averaging over minibatches of 250 estimates the same quantity.
    mini = MinibatchCKA()
    for xb, yb in zip(x.split(250), y.split(250)):
        mini.update(xb, yb)
    assert mini.num_batches == 12
    assert mini.value() == pytest.approx(full, abs=2e-2)
    # Plain CKA on small batches is biased upwards; the unbiased average is not.
    biased = np.mean([linear_cka(xb, yb) for xb, yb in zip(x.split(25), y.split(25))])
    unbiased = MinibatchCKA()
    for xb, yb in zip(x.split(25), y.split(25)):
        unbiased.update(xb, yb)
    assert abs(unbiased.value() - full) < abs(biased - full)


def test_minibatch_cka_identical_inputs_and_errors():
    x, _ = _random_pair(32, 5, 2, seed=8)
    cka = MinibatchCKA()
    with pytest.raises(RuntimeError):
        cka.value()
    cka.update(x[:16], x[:16])
    cka.update(x[16:], x[16:])
    assert cka.value() == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError):
        cka.update(x[:3], x[:3])
    cka.reset()
    assert cka.num_batches == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metrics_on_cuda_match_cpu():
    x, y = _random_pair(300, 20, 10, seed=9)
    assert linear_cka(x.cuda(), y.cuda()) == pytest.approx(linear_cka(x, y), abs=1e-10)
    a, b = MinibatchCKA(), MinibatchCKA()
    for xb, yb in zip(x.split(100), y.split(100)):
        a.update(xb, yb)
        b.update(xb.cuda(), yb.cuda())
    assert b.value() == pytest.approx(a.value(), abs=1e-10)
    logits_s, logits_g = x[:, :10].float(), y.float()
    assert agreement_probability(logits_s.cuda(), logits_g.cuda()) == pytest.approx(
        agreement_probability(logits_s, logits_g), abs=1e-8)
    labels = torch.arange(300) % 10
    assert accuracy(logits_g.cuda(), labels.cuda()) == accuracy(logits_g, labels)
