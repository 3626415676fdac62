"""The 1-D toy of forward vs forward-backward compatibility (invariance-aware stitching, notebook 05).

Front f(x) = 2|x - 0.25| + 2 on [0, 1] is not injective: x and 0.5 - x (for x in [0, 0.25]) give the
same f, so f is invariant to that reflection. End g(x) = x is injective: it tells them apart.

* Forward compatibility: fit an affine stitch s(u) = a u + b so that s(f(x)) = g(x) on the data,
  here x in [0.25, 1], where f happens to be injective. s(u) = (u - 1.5) / 2 fits exactly, and the
  stitch looks perfect although f and g have different invariances.
* Forward-backward compatibility: the stitch must also hold on the inputs f cannot tell apart from the
  data, i.e. on all of [0, 1]. Then x and 0.5 - x reach s with the same u but g wants different
  outputs, so no affine s fits, and the error exposes the mismatch in invariances.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DOMAINS = {"forward": (0.25, 1.0), "forward_backward": (0.0, 1.0)}


def front(x):
    """f(x) = 2 |x - 0.25| + 2: the front model, invariant to x <-> 0.5 - x around 0.25."""
    return 2 * np.abs(np.asarray(x, dtype=float) - 0.25) + 2


def end(x):
    """g(x) = x: the end model, injective."""
    return np.asarray(x, dtype=float)


@dataclass(frozen=True)
class ToyFit:
    """An affine stitch s(u) = a u + b fitted by least squares on a grid over `domain`."""

    mode: str  # "forward" or "forward_backward"
    domain: tuple[float, float]
    a: float
    b: float
    rmse: float  # root-mean-square error of s(f(x)) - g(x) over the fitting grid
    max_error: float

    def __call__(self, u):
        """s(u)."""
        return self.a * np.asarray(u, dtype=float) + self.b


def fit_stitch(mode: str, samples: int = 1001) -> ToyFit:
    """Least-squares affine stitch s with s(f(x)) ~ g(x) on `samples` evenly spaced x over the mode's domain."""
    if mode not in DOMAINS:
        raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(DOMAINS)}")
    if samples < 2:
        raise ValueError(f"need at least 2 samples to fit an affine map, got {samples}")
    x = np.linspace(*DOMAINS[mode], samples)
    design = np.stack([front(x), np.ones_like(x)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, end(x), rcond=None)
    residual = design @ np.array([a, b]) - end(x)
    return ToyFit(mode, DOMAINS[mode], float(a), float(b), float(np.sqrt(np.mean(residual**2))),
                  float(np.abs(residual).max()))


def fit_toy(samples: int = 1001) -> dict[str, ToyFit]:
    """Both fits: {"forward": ..., "forward_backward": ...}."""
    return {mode: fit_stitch(mode, samples) for mode in DOMAINS}


def plot_toy(target=None, samples: int = 1001):
    """Draw the toy and return the figure.

    `target` may be None (a new 2-panel figure), a Figure (2 panels added to it), a pair of Axes, or
    a single Axes (the stitched-output panel only). Left panel: f and a pair of inputs it cannot tell
    apart. Right panel: g against both fitted stitches s(f(x)).
    """
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    if target is None:
        fig, (ax_front, ax_out) = plt.subplots(1, 2, figsize=(8, 3))
    elif isinstance(target, Figure):
        fig = target
        ax_front, ax_out = fig.subplots(1, 2)
    elif isinstance(target, Axes):
        fig, ax_front, ax_out = target.figure, None, target
    else:
        ax_front, ax_out = target
        fig = ax_out.figure

    fits = fit_toy(samples)
    x = np.linspace(0, 1, samples)
    if ax_front is not None:
        ax_front.plot(x, front(x), color="k")
        pair = np.array([0.1, 0.4])  # x and 0.5 - x: the same f
        ax_front.plot(pair, front(pair), "o--", color="tab:red", label="f cannot tell these apart")
        ax_front.axvspan(0, 0.25, color="0.9")
        ax_front.set(xlabel="x", ylabel="f(x)", title="front f(x) = 2|x - 0.25| + 2")
        ax_front.legend(fontsize="small", loc="upper center")

    ax_out.axvspan(0, 0.25, color="0.9", label="only in the backward check")
    ax_out.plot(x, end(x), color="k", lw=2, label="end g(x) = x")
    for mode, colour in (("forward", "tab:blue"), ("forward_backward", "tab:orange")):
        fit = fits[mode]
        lo, hi = fit.domain
        ax_out.plot(x, fit(front(x)), color=colour, ls="--",
                    label=f"s(f(x)), fit on [{lo:g}, {hi:g}]: RMSE {fit.rmse:.3f}")
    ax_out.set(xlabel="x", ylabel="output", title="stitched s(f(x)) vs end g(x)")
    ax_out.legend(fontsize="x-small", loc="upper left")
    fig.tight_layout()
    return fig
