"""Notebook support for 05_invariance_aware: the IRI bank, both data modes of a stitching pair, the
AutoAttack agreement score, and the figures and tables (spec: ``invariance_aware.md``).

The notebook names the testbeds; this module only runs and draws them:

* `IRIBank` generates (or loads) one IRI set per front model, source data and stitch point, and hands the
  same set to every testbed that asks for it (the cross-seed front is also the clean front of the
  adversarial testbed), so nothing is inverted twice.
* `stitch_modes` runs `invariance.invariance_aware_stitching` for one front/end pair on real data and on
  IRIs (and every stitch-training share alpha), with the pair's labels in every row.
* `plot_panels` draws the paper-style "value vs stitch point" panels: one colour per objective, solid for
  real data and dashed for IRIs, the mean over front seeds with a min-max band.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import torch

from . import attacks, invariance, metrics, plots
from .data import ImageSet
from .models import eval_mode
from .plots import select
from .stitching import StitchConfig
from .store import ResultStore, config_key

DATA_LABELS = {"real": "real data", "iri": "IRIs"}
DATA_STYLES = {"real": "-", "iri": "--", None: "-"}
# the same colour per objective as paper 1's figures (one mapping, fula_core.plots), keyed by label here
OBJECTIVE_COLOURS = {plots.OBJECTIVE_LABELS[k]: c for k, c in plots.OBJECTIVE_COLOURS.items()}
_FALLBACK_COLOURS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


# ----------------------------------------------------------------------------------------------------
# IRIs: one set per (front, source data, point), shared by all testbeds


class IRIBank:
    """The IRI sets of a notebook run, generated once per (front, source data, stitch point) and cached.

    Args:
        store: the results store (IRI sets are cached there by `invariance.iri_set`, kind "iri").
        steps, step_size, samples, seed: the inversion schedule and the source subset (iri_set's args).
    """

    def __init__(self, store: ResultStore, *, steps: int, step_size: float, samples: int | None, seed: int = 0,
                 progress: bool = True):
        self.store, self.steps, self.step_size, self.samples, self.seed = store, steps, step_size, samples, seed
        self.progress = progress
        self._sets: dict[tuple[str, str, int], invariance.IRIs] = {}
        self._users: dict[tuple[str, str, int], list[str]] = {}
        self._configs: dict[tuple[str, str, int], str] = {}

    def sources(self, data: ImageSet) -> ImageSet:
        """The real images that get inverted (the subset iri_set takes): the real-data stitches train on
        these too, so the two data modes differ only in x versus its IRI x'."""
        return data.take(self.samples, seed=self.seed) if self.samples else data

    def get(self, front_name: str, front_cfg, model, data: ImageSet, points: Iterable[int],
            testbed: str) -> dict[int, invariance.IRIs]:
        """{point: IRIs of `model` for `data`}; `front_name` labels the table, `testbed` who uses the set."""
        out = {}
        for point in points:
            key = (front_name, data.name, point)
            if key in self._configs and self._configs[key] != config_key(front_cfg):
                raise ValueError(f"two different front models are both named {front_name!r}: name them apart")
            self._configs[key] = config_key(front_cfg)
            if key not in self._sets:
                self._sets[key] = invariance.iri_set(self.store, front_cfg, model, point, data, steps=self.steps,
                                                     step_size=self.step_size, samples=self.samples, seed=self.seed,
                                                     progress=self.progress)
            users = self._users.setdefault(key, [])
            if testbed not in users:
                users.append(testbed)
            out[point] = self._sets[key]
        return out

    def table(self):
        """One row per IRI set: front, source data, the testbeds using it and IRIs.summary()."""
        import pandas as pd

        rows = [{"front": front, "source": source, "testbeds": ", ".join(self._users[(front, source, point)]),
                 **iris.summary()} for (front, source, point), iris in self._sets.items()]
        return pd.DataFrame(rows)

    def __len__(self) -> int:
        return len(self._sets)


# ----------------------------------------------------------------------------------------------------
# Stitching in both data modes


def stitch_modes(store: ResultStore, front, end, points: Sequence[int], objectives: Mapping[str, str],
                 source: ImageSet, iris: Mapping[int, invariance.IRIs], test: ImageSet, cfg: StitchConfig, *,
                 key: dict, alphas: Sequence[float] = (0.0,), extra_eval: Callable | None = None,
                 bn_mode: str = "eval", progress: bool = True, **labels) -> list[dict]:
    """Rows of `invariance.invariance_aware_stitching` for one pair, on real data and on IRIs, per alpha.

    Args:
        objectives: display name -> fula_core objective (e.g. {"DM": "hint"}); rows get "objective_name".
        source: the real training images (the IRIs' sources): real-data stitches train on them and both
            modes take their least-squares initialisation from them.
        key: what identifies the pair (and what extra_eval measures) in the row cache.
        labels: extra columns for every row (pair, seed, marker, ...).
    """
    names = {obj: name for name, obj in objectives.items()}
    rows = []
    for alpha in alphas:
        # dm is solved in closed form on clean data: it has no adversarial variant
        objs = [o for o in objectives.values() if not (alpha > 0 and o == "dm")]
        for mode, sets in (("real", None), ("iri", iris)):
            for row in invariance.invariance_aware_stitching(
                    front, end, points, objs, source, sets, test, cfg, alpha=alpha, bn_mode=bn_mode,
                    extra_eval=extra_eval, store=store, key=key, progress=progress):
                rows.append({**labels, "objective_name": names[row["objective"]], **row})
    return rows


def autoattack_agreement(stitched, end, data: ImageSet, *, eps: float, n_iter: int, eot_iter: int,
                         batch_size: int = 250) -> dict:
    """AutoAttack ('rand': APGD-CE + APGD-DLR) examples of the stitched model on `data`: the stitched model's
    robust accuracy and its agreement with the end model on those same examples (both in percent, as means
    and per image)."""
    device = next(end.parameters()).device
    data = data.to(device)
    s_logits, g_logits = [], []
    with eval_mode(stitched, end):
        for xb, yb in zip(data.images.float().div(255).split(batch_size), data.labels.split(batch_size)):
            adv = attacks.autoattack_rand(stitched, xb, yb, eps=eps, n_iter=n_iter, eot_iter=eot_iter)
            with torch.no_grad():
                s_logits.append(stitched(adv).float()), g_logits.append(end(adv).float())
    s_logits, g_logits = torch.cat(s_logits), torch.cat(g_logits)
    correct = (s_logits.argmax(1) == data.labels).float().mul(100).cpu()
    agree = metrics.agreement_per_sample(s_logits, g_logits).float().cpu()
    # per attacked image too (CPU float32 tensors [N], percent), for the paired bootstraps of the claims
    return {"autoattack_accuracy": float(correct.double().mean()), "autoattack_agreement": float(agree.double().mean()),
            "autoattack_accuracy_scores": correct, "autoattack_agreement_scores": agree}


# ----------------------------------------------------------------------------------------------------
# Small table helpers


def deeper_half(points: Sequence[int]) -> tuple[int, ...]:
    """The stitch points at or past the middle of the profile's points (the "deeper half")."""
    ordered = sorted(points)
    middle = (ordered[0] + ordered[-1]) / 2
    return tuple(p for p in ordered if p >= middle)


def mean_where(df, column: str, **filters) -> float:
    """Mean of `column` over the rows matching every filter (a value, or a list/tuple/set of values)."""
    sub = select(df, **filters)
    if sub.empty:
        raise KeyError(f"no rows with {filters}")
    return float(sub[column].mean())


def to_long(df, measures: Mapping[str, str], id_columns: Sequence[str]):
    """Wide score columns -> long rows: one row per original row and measure, with "measure" (the display
    name of `measures` {column: name}) and "value". Missing columns are skipped."""
    import pandas as pd

    parts = [df[list(id_columns)].assign(measure=name, value=df[column])
             for column, name in measures.items() if column in df]
    return pd.concat(parts, ignore_index=True)


# ----------------------------------------------------------------------------------------------------
# Figures


def _colour(name, order: list) -> str:
    if name in OBJECTIVE_COLOURS:
        return OBJECTIVE_COLOURS[name]
    others = [n for n in order if n not in OBJECTIVE_COLOURS]
    return _FALLBACK_COLOURS[others.index(name) % len(_FALLBACK_COLOURS)] if name in others else "k"


def _ordered(df, column, order):
    present = list(dict.fromkeys(df[column]))
    return [v for v in order if v in present] if order is not None else present


def plot_panels(df, *, panel: str, y: str = "value", x: str = "layer", rows: str | None = None,
                hue: str = "objective_name", style: str | None = "data", panel_order=None, row_order=None,
                hue_order=None, ylabel: str = "", chance: float | None = None, ylim=None, title: str | None = None,
                xlabel: str = "stitch point (1-9)"):
    """One panel per value of `panel` (columns) and of `rows` (rows): `y` against `x` for every `hue` (colour)
    and `style` (solid real data, dashed IRIs). Rows sharing (panel, row, hue, style, x), e.g. the front
    and stitch seeds, are drawn as their mean with a min-max band. NaNs (stopped stitches) are left out.
    x: "layer" (the paper's 1..9, the default) or a 0-based "point" column, shown as the paper's numbers;
    `xlabel` names it (another architecture: its own point count, iri_testbeds.point_label).
    Returns the figure."""
    import matplotlib.pyplot as plt

    if df.empty:
        raise ValueError("nothing to plot: the table is empty")
    if x == "layer" and "layer" not in df and "point" in df:
        df = df.assign(layer=df.point.map(plots.plot_x))
    elif x == "point":  # 0-based points are drawn at the paper's numbers
        df = df.assign(layer=df.point.map(plots.plot_x))
        x = "layer"
    panels = _ordered(df, panel, panel_order)
    row_values = [None] if rows is None else _ordered(df, rows, row_order)
    hues = _ordered(df, hue, hue_order)
    styles = [None] if style is None else _ordered(df, style, ["real", "iri"] if style == "data" else None)
    fig, axes = plt.subplots(len(row_values), len(panels), figsize=(3.3 * len(panels), 2.9 * len(row_values)),
                             squeeze=False, sharex=True, sharey="row")
    xs = sorted(df[x].unique())
    series = [(h, s) for h in hues for s in styles]
    # a single stitch point: spread the series side by side so that equal values do not hide each other
    dodge = {key: (n - (len(series) - 1) / 2) * 0.6 / max(len(series), 1) for n, key in enumerate(series)} \
        if len(xs) == 1 else {key: 0.0 for key in series}
    # one colour per fula_core objective in both papers: paper 2's "DM" is the trained hint objective, so it
    # takes Hint's colour, not the closed-form dm's (rows carry the objective beside its display name)
    colour_of = ({n: plots.OBJECTIVE_COLOURS.get(o) for n, o in zip(df[hue], df["objective"])}
                 if hue == "objective_name" and "objective" in df.columns else {})
    handles = {}
    for i, row_value in enumerate(row_values):
        for j, panel_value in enumerate(panels):
            ax = axes[i][j]
            sub = df[df[panel] == panel_value]
            if rows is not None:
                sub = sub[sub[rows] == row_value]
            for h in hues:
                for s in styles:
                    d = sub[sub[hue] == h] if s is None else sub[(sub[hue] == h) & (sub[style] == s)]
                    d = d.dropna(subset=[y])
                    if d.empty:
                        continue
                    agg = d.groupby(x)[y].agg(["mean", "min", "max"]).sort_index()
                    label = str(h) if s is None else f"{h} · {DATA_LABELS.get(s, s)}"
                    at = agg.index + dodge[h, s]
                    (line,) = ax.plot(at, agg["mean"], ls=DATA_STYLES.get(s, "-"), marker="o" if s != "iri" else "s",
                                      ms=3.5, color=colour_of.get(h) or _colour(h, hues), label=label,
                                      mfc="white" if s == "iri" else None)
                    handles.setdefault(label, line)
                    if (agg["max"] > agg["min"]).any():
                        if len(xs) == 1:
                            ax.vlines(at, agg["min"], agg["max"], color=line.get_color(), alpha=0.5)
                        else:
                            ax.fill_between(at, agg["min"], agg["max"], color=line.get_color(), alpha=0.15, lw=0)
            if chance is not None:
                ax.axhline(chance, color="0.5", lw=0.8, ls=":")
            if ylim is not None:
                ax.set_ylim(*ylim)
            heading = str(panel_value) if rows is None else f"{panel_value}\n{row_value}"
            ax.set_title(heading, fontsize="medium")
            if i == len(row_values) - 1:
                ax.set_xlabel(xlabel)
            if j == 0:
                ax.set_ylabel(ylabel)
            ax.set_xticks(xs)
            if len(xs) == 1:
                ax.set_xlim(xs[0] - 0.5, xs[0] + 0.5)
            ax.grid(alpha=0.3)
    if chance is not None:
        handles["chance"] = axes[0][0].axhline(chance, color="0.5", lw=0.8, ls=":")
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=min(len(handles), 4),
               fontsize="small", bbox_to_anchor=(0.5, 0.0), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_iri_errors(table, title: str | None = None):
    """Achieved relative error ||f(x') - f(x)|| / ||f(x)|| of every IRI set vs stitch point, one line per
    front and source (the stored uint8 IRIs; dotted: the uniform-noise starting points)."""
    import matplotlib.pyplot as plt

    if table.empty:
        raise ValueError("no IRI sets to plot")
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for n, ((front, source), d) in enumerate(table.groupby(["front", "source"], sort=False)):
        d = d.sort_values("point")
        layer = d.point.map(plots.plot_x)  # the paper's 1..9
        colour = f"C{n % 10}"
        marker = source.split("+", 1)[1].split("[")[0] if "+" in source else None
        label = front if marker is None or f"+{marker} markers" in front else f"{front} ({marker} markers in x)"
        ax.plot(layer, d.final_error, "o-", color=colour, label=label)
        ax.plot(layer, d.initial_error, ":", color=colour, alpha=0.6)
    # the ResNets' 9 points; with the further architectures of the information testbed (paper) the numbers are
    # each front's own (VGG-16 1-6, ViT-Tiny 1-13)
    xlabel = "stitch point (1-9)" if table.point.max() < 9 else "stitch point (1-based, each front's own)"
    ax.set(xlabel=xlabel, ylabel="relative error", ylim=(0, None),
           xticks=sorted(table.point.map(plots.plot_x).unique()))
    ax.set_title(title or "IRI inversion error (solid: IRIs, dotted: noise start)", fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return fig


def plot_iri_examples(source: ImageSet, iris: Mapping[int, invariance.IRIs], n: int = 4, title: str | None = None):
    """A few source images (first column) and their IRIs at each stitch point (one column per point)."""
    import matplotlib.pyplot as plt

    points = sorted(iris)
    n = min(n, len(source))
    fig, axes = plt.subplots(n, len(points) + 1, figsize=(1.3 * (len(points) + 1), 1.3 * n + 0.4), squeeze=False)
    columns = [("source x", source.images)] + [(f"IRI @ point {plots.plot_x(p)}", iris[p].images) for p in points]
    for c, (heading, images) in enumerate(columns):
        for r in range(n):
            img = images[r].cpu()
            ax = axes[r][c]
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=255)
            else:
                ax.imshow(img.permute(1, 2, 0).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(heading, fontsize="x-small")
    if title:
        fig.suptitle(title, fontsize="small")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------
# Front labels and CKA rows


def front_name(cfg) -> str:
    """A front model's label for tables: its config's label, plus "simclr" / the shortcut it trained on."""
    label = getattr(cfg, "label", None) or str(cfg)
    shortcut = getattr(cfg, "shortcut", None)
    return f"{label} +{shortcut} markers" if shortcut else label


def cka_rows(front, end, test: ImageSet, iris: Mapping[int, invariance.IRIs], points: Sequence[int],
             **labels) -> list[dict]:
    """Minibatch linear CKA between f_{<=l} and g_{<=l} at every point, on the real `test` images and on
    the point's IRIs: rows with `labels`, "point", "measure" and "value"."""
    real = invariance.cka_per_point(front, end, test, points)
    on_iris = invariance.cka_per_point(front, end, dict(iris), points)
    return [{**labels, "point": p, "measure": measure, "value": values[p]}
            for p in points for measure, values in (("CKA on real data", real), ("CKA on IRIs", on_iris))]


def show(fig) -> None:
    """Display `fig` once in the notebook, whatever the matplotlib backend: closed first, so that the inline
    backend does not draw it a second time at the end of the cell (and Agg runs still get the image)."""
    import matplotlib.pyplot as plt
    from IPython.display import display

    plt.close(fig)
    display(fig)
