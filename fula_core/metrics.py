"""Evaluation metrics: accuracy, agreement probability and (minibatch) linear CKA.

Agreement and its derived scores follow the invariance-aware stitching protocol
(``invariance_aware.md``); CKA follows Kornblith et al. (2019) and, for the minibatch
estimator, Nguyen, Raghu & Kornblith (2021).  Every function takes tensors on any device
and returns a Python float; the reduction to a float is the only host sync.
"""

from __future__ import annotations

import torch

__all__ = [
    "accuracy",
    "agreement_probability",
    "agreement_per_sample",
    "chance_normalised_agreement",
    "excess_agreement",
    "linear_cka",
    "MinibatchCKA",
]


# --------------------------------------------------------------------------------------
# Task and functional agreement
# --------------------------------------------------------------------------------------


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``logits`` [N, K] against integer ``labels`` [N], in percent."""
    if logits.shape[0] == 0:
        raise ValueError("accuracy of an empty batch is undefined")
    return 100.0 * (logits.argmax(dim=1) == labels).double().mean().item()


def agreement_probability(stitched_logits: torch.Tensor, end_logits: torch.Tensor) -> float:
    """Agreement between the stitched model S and the end model g, in percent.

    Per sample, with p_S and p_g the softmax outputs,
        sum_c p_S(c) p_g(c) / max(sum_c p_g(c)^2, sum_c p_S(c)^2),
    averaged over samples.  By Cauchy-Schwarz the ratio is at most 1, with equality
    exactly when the two distributions coincide (100%).
    """
    if stitched_logits.shape != end_logits.shape:
        raise ValueError(
            f"logit shapes differ: {tuple(stitched_logits.shape)} vs {tuple(end_logits.shape)}"
        )
    return agreement_per_sample(stitched_logits, end_logits).mean().item()


def agreement_per_sample(stitched_logits: torch.Tensor, end_logits: torch.Tensor) -> torch.Tensor:
    """The per-sample terms of `agreement_probability` [N], in percent (float64): what a paired
    bootstrap over test images resamples."""
    if stitched_logits.shape != end_logits.shape:
        raise ValueError(
            f"logit shapes differ: {tuple(stitched_logits.shape)} vs {tuple(end_logits.shape)}"
        )
    # float64: near-one-hot distributions make the squared norms tiny differences of ones.
    p_s = stitched_logits.double().softmax(dim=1)
    p_g = end_logits.double().softmax(dim=1)
    overlap = (p_s * p_g).sum(dim=1)
    norm = torch.maximum((p_g * p_g).sum(dim=1), (p_s * p_s).sum(dim=1))
    return 100.0 * overlap / norm


def chance_normalised_agreement(agreement: float, num_classes: int) -> float:
    """Rescale an agreement (percent) so that chance level 100/K maps to 0 and 100 to 100.

    ``(a - 100/K) / (100 - 100/K) * 100``; negative values mean below chance.
    """
    if num_classes < 2:
        raise ValueError(f"chance normalisation needs at least 2 classes, got {num_classes}")
    chance = 100.0 / num_classes
    return (agreement - chance) / (100.0 - chance) * 100.0


def excess_agreement(agreement_correct_markers: float, agreement_shifted_markers: float) -> float:
    """Shortcut score: agreement with the correct class markers minus agreement with the
    markers shifted cyclically by one class, in percentage points."""
    return agreement_correct_markers - agreement_shifted_markers


# --------------------------------------------------------------------------------------
# Linear CKA
# --------------------------------------------------------------------------------------


def _flatten64(a: torch.Tensor) -> torch.Tensor:
    """[N, ...] -> [N, D] in float64 (one feature vector per sample)."""
    return a.reshape(a.shape[0], -1).double()


def _kernel_inner_products(xf: torch.Tensor, yf: torch.Tensor):
    """<K, L>_F, <K, K>_F, <L, L>_F for the linear kernels K = X X^T, L = Y Y^T.

    <X X^T, Y Y^T>_F = ||X^T Y||_F^2, so either the N x N Gram matrices or the
    feature-space cross-products can be used; pick the cheaper one (Gram form when the
    batch is smaller than the total feature count, as for flattened conv activations).
    """
    n, dx, dy = xf.shape[0], xf.shape[1], yf.shape[1]
    if n < dx + dy:
        k, l = xf @ xf.T, yf @ yf.T
        return (k * l).sum(), (k * k).sum(), (l * l).sum()
    return (
        (xf.T @ yf).square().sum(),
        (xf.T @ xf).square().sum(),
        (yf.T @ yf).square().sum(),
    )


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al., 2019) between two activation batches [N, ...].

    With centred feature matrices X, Y (samples x features, flattened per sample),
        CKA = HSIC(X, Y) / sqrt(HSIC(X, X) HSIC(Y, Y)),
        HSIC(X, Y) ∝ <X X^T, Y Y^T>_F = ||X^T Y||_F^2,
    computed in float64.  Invariant to orthogonal transforms and isotropic scaling of
    either representation; 1 for a representation compared with itself.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"sample counts differ: {x.shape[0]} vs {y.shape[0]}")
    xf, yf = _flatten64(x), _flatten64(y)
    xf = xf - xf.mean(dim=0, keepdim=True)
    yf = yf - yf.mean(dim=0, keepdim=True)
    kl, kk, ll = _kernel_inner_products(xf, yf)
    return (kl / (kk.sqrt() * ll.sqrt())).item()


def _unbiased_hsic(kl, diag_k, diag_l, col_k, col_l) -> torch.Tensor:
    """Unbiased HSIC estimator of Song et al. (2012) for n x n kernels K, L (n >= 4):

        [tr(K~ L~) + (1'K~1)(1'L~1) / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)),

    where K~, L~ are the kernels with zeroed diagonals.  The kernels are never formed:
    it is written in terms of kl = <K, L>_F, the diagonals and the column sums K 1, L 1.
    """
    n = diag_k.shape[0]
    trace_kl = kl - (diag_k * diag_l).sum()  # tr(K~ L~): the diagonal terms removed
    col_k, col_l = col_k - diag_k, col_l - diag_l  # K~ 1 and L~ 1
    sums = col_k.sum() * col_l.sum() / ((n - 1) * (n - 2))
    return (trace_kl + sums - 2.0 * (col_k @ col_l) / (n - 2)) / (n * (n - 3))


class MinibatchCKA:
    """Minibatch linear CKA (Nguyen, Raghu & Kornblith, 2021).

    Each ``update(x, y)`` with a minibatch of paired activations adds the unbiased HSIC
    estimates HSIC_1(K, L), HSIC_1(K, K), HSIC_1(L, L) of its linear kernels K = X X^T,
    L = Y Y^T; ``value()`` returns
        mean_i HSIC_1(K_i, L_i) / sqrt(mean_i HSIC_1(K_i, K_i) * mean_i HSIC_1(L_i, L_i)).
    The unbiased estimator makes the average over small minibatches consistent (the
    biased, plain-CKA estimator would not be), and needs no centring of the features.
    Sums are kept as float64 tensors on the data's device, so updates do not sync.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget all accumulated minibatches."""
        self._hsic_xy: torch.Tensor | float = 0.0
        self._hsic_xx: torch.Tensor | float = 0.0
        self._hsic_yy: torch.Tensor | float = 0.0
        self.num_batches = 0

    @torch.no_grad()
    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add one minibatch of paired activations x [n, ...], y [n, ...] with n >= 4."""
        n = x.shape[0]
        if y.shape[0] != n:
            raise ValueError(f"sample counts differ: {n} vs {y.shape[0]}")
        if n < 4:
            raise ValueError(f"the unbiased HSIC estimator needs at least 4 samples, got {n}")
        xf, yf = _flatten64(x), _flatten64(y)
        kl, kk, ll = _kernel_inner_products(xf, yf)
        # Diagonals ||x_i||^2 and column sums K 1 = X (X^T 1) of the linear kernels.
        diag_k, diag_l = xf.square().sum(dim=1), yf.square().sum(dim=1)
        col_k, col_l = xf @ xf.sum(dim=0), yf @ yf.sum(dim=0)
        self._hsic_xy = self._hsic_xy + _unbiased_hsic(kl, diag_k, diag_l, col_k, col_l)
        self._hsic_xx = self._hsic_xx + _unbiased_hsic(kk, diag_k, diag_k, col_k, col_k)
        self._hsic_yy = self._hsic_yy + _unbiased_hsic(ll, diag_l, diag_l, col_l, col_l)
        self.num_batches += 1

    def value(self) -> float:
        """Minibatch CKA of everything accumulated so far (the 1/k averages cancel)."""
        if self.num_batches == 0:
            raise RuntimeError("MinibatchCKA.value() called before any update()")
        denom = torch.sqrt(torch.as_tensor(self._hsic_xx) * torch.as_tensor(self._hsic_yy))
        return (torch.as_tensor(self._hsic_xy) / denom).item()
