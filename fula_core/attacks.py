"""Adversarial attacks used for training and evaluating robust models.

Two threat models appear in the papers, both L-inf on inputs in [0, 1]:

* Madry et al. PGD (``pgd_linf``): the attack used for adversarial training (10 steps,
  eps 8/255, step 2/255 in the paper) and for PGD-stitching.
* AutoAttack, 'rand' version (``autoattack_rand``): APGD-CE followed by APGD-DLR, the
  evaluation attack of the paper ("we follow [1] and measure adversarial robustness using
  the 'rand' configuration of AutoAttack [8]").

``model`` is any callable mapping a batch of images to logits.  The caller chooses its mode
(normally eval); nothing here switches it.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["pgd_linf", "autoattack_rand", "robust_accuracy"]

Model = Callable[[torch.Tensor], torch.Tensor]


def _entered(model: Model):
    """The model's own context for many forwards, when it has one (a stitched model's eval mode and BN
    statistics: StitchedModel.entered), entered once around an attack rather than at every step."""
    enter = getattr(model, "entered", None)
    return enter() if callable(enter) else contextlib.nullcontext()


# --------------------------------------------------------------------------------------
# Madry PGD
# --------------------------------------------------------------------------------------


def pgd_linf(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L-inf projected gradient ascent on the cross-entropy (Madry et al., 2018).

    Starting from a point drawn uniformly from the eps-ball around ``x`` (or from ``x``
    itself when ``random_start`` is False), take ``steps`` steps
    ``x <- Proj(x + step_size * sign(grad_x CE(model(x), y)))``, where ``Proj`` clips to
    the eps-ball around the clean input and to the valid image box [0, 1].

    Args:
        model: callable x -> logits, already in the desired mode.
        x: clean inputs in [0, 1].
        y: integer labels.
        eps: radius of the L-inf ball.
        step_size: size of every sign-gradient step.
        steps: number of steps; ``steps == 0`` or ``eps == 0`` returns ``x`` unchanged.
        random_start: start from a uniform random point of the eps-ball.
        generator: optional RNG for the random start, normally on ``x``'s device, so that
            a run can be reproduced exactly (the global RNG is used otherwise).

    Returns:
        Detached adversarial inputs with the shape and dtype of ``x``.  Only gradients
        with respect to the input are formed: the parameters' ``.grad`` are never touched.
    """
    x = x.detach()
    if steps <= 0 or eps == 0:
        return x.clone()

    if random_start:
        # Draw where the generator lives (a CPU generator also works for CUDA inputs).
        noise_device = generator.device if generator is not None else x.device
        u = torch.rand(x.shape, generator=generator, device=noise_device, dtype=x.dtype)
        x_adv = (x + eps * (2.0 * u.to(x.device) - 1.0)).clamp(0.0, 1.0)
    else:
        x_adv = x.clone()

    lower = (x - eps).clamp(min=0.0)
    upper = (x + eps).clamp(max=1.0)
    with _entered(model):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            # enable_grad: the attack must work when called from inside a no_grad evaluation.
            with torch.enable_grad():
                # A summed loss gives every sample its own gradient, independent of batch size.
                loss = F.cross_entropy(model(x_adv), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + step_size * grad.sign()
            # Projection onto the intersection of the eps-ball and the [0, 1] box.
            x_adv = torch.max(torch.min(x_adv, upper), lower)
    return x_adv.detach()


# --------------------------------------------------------------------------------------
# AutoAttack, 'rand' version
# --------------------------------------------------------------------------------------


class _CallableAsModule(nn.Module):
    """Present an arbitrary callable to torchattacks, which expects an ``nn.Module``.

    torchattacks reads the device from ``next(model.parameters())`` and calls
    ``model.eval()`` / ``model.train()`` around every attack.  The wrapper owns a single
    empty parameter on the input device, and keeps the wrapped callable out of the module
    tree so that those mode switches never reach the caller's model.
    """

    def __init__(self, fn: Model, device: torch.device):
        super().__init__()
        # object.__setattr__ bypasses nn.Module's registration of sub-modules.
        object.__setattr__(self, "_fn", fn)
        self._device_marker = nn.Parameter(torch.empty(0, device=device), requires_grad=False)
        self.train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)


def _rng_devices(device: torch.device) -> list[int]:
    """CUDA devices whose RNG state must be saved around torchattacks' re-seeding."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def autoattack_rand(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    n_iter: int = 100,
    eot_iter: int = 20,
    seed: int = 0,
) -> torch.Tensor:
    """AutoAttack, 'rand' version (Croce & Hein, 2020), L-inf.

    The 'rand' version, meant for models that may be randomised, runs two attacks in
    sequence with the original settings: APGD with the cross-entropy loss, then APGD with
    the DLR loss on the points that are still robust; each with ``n_restarts=1``,
    ``rho=0.75``, ``n_iter=100`` iterations and ``eot_iter=20`` gradient samples per
    iteration (Expectation over Transformation).  For a deterministic eval-mode model
    every EOT sample is identical, so ``eot_iter=1`` gives the same attack 20 times faster.

    Built from ``torchattacks.APGD`` (not ``torchattacks.AutoAttack``, which silently runs
    10 iterations).  As in the original implementation, a point counts as broken only if
    the model misclassifies the returned example when it is re-evaluated.  APGD itself
    adapts its step size with host-side (numpy) checks, so unlike ``pgd_linf`` its loop
    synchronises with the device; that is acceptable for evaluation.

    Args:
        model: callable x -> logits with at least 3 classes (DLR uses the third-largest
            logit); its mode (train/eval) is left as the caller set it.
        x: clean images [N, C, H, W] in [0, 1].
        y: integer labels [N].
        eps: radius of the L-inf ball.
        n_iter: APGD iterations per attack.
        eot_iter: gradient samples averaged per iteration.
        seed: seed of APGD's random start; the caller's global RNG state is restored.

    Returns:
        Detached adversarial images.  Per sample, as in the original AutoAttack: clean
        points that are already misclassified are returned unchanged; a point broken by
        the first attack that succeeds (CE, then DLR) gets that attack's example (APGD
        keeps its latest misclassified iterate); points that resist both attacks are
        returned as the clean input (APGD returns no iterate for them).
    """
    import torchattacks  # local import: only evaluation needs this dependency

    if x.dim() != 4:
        raise ValueError(f"autoattack_rand expects images [N, C, H, W], got shape {tuple(x.shape)}")
    x, y = x.detach(), y.detach()
    # APGD clips every iterate to [0, 1]; inputs outside the box would be silently moved.
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError("autoattack_rand expects inputs in [0, 1]")

    with torch.no_grad():
        logits = model(x)
    if logits.shape[1] < 3:
        raise ValueError(
            f"AutoAttack's DLR loss needs at least 3 classes, the model has {logits.shape[1]}"
        )

    x_adv = x.clone()
    robust = logits.argmax(dim=1) == y
    wrapped = _CallableAsModule(model, x.device)
    for loss in ("ce", "dlr"):
        # One host sync per stage (not per step): select the points still to be attacked.
        idx = robust.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        apgd = torchattacks.APGD(
            wrapped, norm="Linf", eps=eps, steps=n_iter, n_restarts=1, seed=seed,
            loss=loss, eot_iter=eot_iter, rho=0.75, verbose=False,
        )
        # torchattacks re-seeds the *global* CPU and CUDA RNGs with `seed`; fork them so
        # that evaluating a model does not change the random stream of the caller.
        with torch.random.fork_rng(devices=_rng_devices(x.device)), _entered(model):
            adv = apgd(x[idx], y[idx]).detach()
        with torch.no_grad():
            broken = model(adv).argmax(dim=1) != y[idx]
        x_adv[idx[broken]] = adv[broken]
        robust[idx[broken]] = False
    return x_adv


# --------------------------------------------------------------------------------------
# Robust accuracy
# --------------------------------------------------------------------------------------

_ATTACKS = {"pgd": pgd_linf, "autoattack": autoattack_rand}


def robust_accuracy(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attack: str,
    eps: float,
    batch_size: int = 500,
    **attack_kwargs,
) -> float:
    """Accuracy (percent) of ``model`` on adversarial versions of ``(x, y)``.

    Args:
        model: callable x -> logits, already in the desired mode.
        x, y: clean inputs in [0, 1] and labels; attacked in batches of ``batch_size``.
        attack: ``"pgd"`` (``pgd_linf``; pass ``step_size`` and ``steps``, optionally
            ``random_start`` and ``generator``) or ``"autoattack"`` (``autoattack_rand``;
            optionally ``n_iter``, ``eot_iter``, ``seed``).
        eps: radius of the L-inf ball.

    Returns:
        Robust accuracy in percent.
    """
    if attack not in _ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; expected one of {sorted(_ATTACKS)}")
    if len(x) == 0:
        raise ValueError("robust_accuracy needs at least one sample")
    attack_fn = _ATTACKS[attack]

    # Count on the device and read the total once at the end.
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        xb_adv = attack_fn(model, xb, yb, eps=eps, **attack_kwargs)
        with torch.no_grad():
            correct += (model(xb_adv).argmax(dim=1) == yb).sum()
    return 100.0 * correct.item() / len(x)
