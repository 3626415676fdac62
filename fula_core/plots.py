"""Figures and tidy-table helpers of the paper-1 notebooks (§3.1 adversarial, §3.2 shortcuts and class subsets).

The stitching plot (Balogh & Jelasity): x is the depth of the stitch, with the front model's baseline at
0, stitch point k (0-based, as in `StitchJob`) at k + 1 (the paper's "layer k + 1") and the end model's
baseline at 10; every objective is one line through its stitch points, its ends tied to the two baselines.

Rows are the tidy dicts of `experiments.Stitcher.evaluate` (objective, front_point, end_point, alpha, job,
eval, metric, value, error) plus whatever columns a notebook adds to tell its testbeds apart (task, pair,
kind, k). A failed job has value NaN: its point is left out of the line, nothing crashes.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Sequence

import pandas as pd

from .models import NUM_STITCH_POINTS

# ----------------------------------------------------------------------------------------------------
# Names, colours and the layout of the paper's figures

OBJECTIVE_LABELS = {"slm": "SLM", "tlm": "TLM", "hlm": "HLM", "dm": "DM", "hint": "Hint", "fula": "FuLA",
                    "fula_last": "FuLA (last hint)"}
# One colour per objective in every figure of both papers (invariance_figures reads this mapping by label).
OBJECTIVE_COLOURS = {"slm": "tab:orange", "tlm": "tab:red", "hlm": "tab:pink", "dm": "tab:gray", "hint": "tab:blue",
                     "fula": "tab:green", "fula_last": "tab:olive"}
# Where curves overlap (several objectives reach the same accuracy, Figs 4-5) the one drawn last would hide the
# others: each objective also has its own hollow marker and a small fixed sideways offset (in points, so the
# data stay at the stitch points).
OBJECTIVE_MARKERS = {"slm": "s", "tlm": "^", "hlm": "v", "dm": "x", "hint": "D", "fula": "o", "fula_last": "P"}
_OFFSET_ORDER = ("slm", "tlm", "hlm", "dm", "hint", "fula", "fula_last")
OFFSET_POINTS = 1.6  # between neighbouring objectives


def objective_offset(ax, objective: str):
    """A transform that draws `objective`'s curve a few points to the side of the data positions."""
    from matplotlib.transforms import ScaledTranslation

    k = _OFFSET_ORDER.index(objective) if objective in _OFFSET_ORDER else len(_OFFSET_ORDER) // 2
    dx = (k - (len(_OFFSET_ORDER) - 1) / 2) * OFFSET_POINTS / 72
    return ax.transData + ScaledTranslation(dx, 0, ax.figure.dpi_scale_trans)
TASK_BASED = ("slm", "tlm")
ALIGNMENT_BASED = ("hint", "fula")

# front -> end robustness, in the paper's column order: (c) is non-robust -> robust (Fig. 5c)
ROBUSTNESS_COMBOS = ((False, False), (True, False), (False, True), (True, True))

# appendix figure names per architecture: (cross-task, same-task)
ADVERSARIAL_FIGURES = {"resnet18_noskip": (13, 14), "resnet18": (15, 16), "resnet34": (17, 18)}
SHORTCUT_FIGURES = {"resnet18_noskip": (19, 20), "resnet18": (21, 22), "resnet34": (23, 24)}
CLASS_SUBSET_FIGURES = {"resnet18_noskip": 25, "resnet18": 26, "resnet34": 27}

FRONT_X, END_X = 0, NUM_STITCH_POINTS + 1


def pair_label(front_robust: bool, end_robust: bool) -> str:
    """'non-robust → robust' style column titles."""
    name = {False: "non-robust", True: "robust"}
    return f"{name[front_robust]} → {name[end_robust]}"


def robustness_pairs(configs: Mapping[str, object], front_id: str, end_id: str) -> list[tuple[str, object, object]]:
    """(label, front config, end config) for the four front/end robustness combinations of §3.1, in the
    paper's column order. `configs` is `zoo.zoo_configs(P, arch)`; robust twins are "<id> robust"."""
    out = []
    for front_robust, end_robust in ROBUSTNESS_COMBOS:
        f = configs[front_id + (" robust" if front_robust else "")]
        e = configs[end_id + (" robust" if end_robust else "")]
        out.append((pair_label(front_robust, end_robust), f, e))
    return out


def plot_x(point: int) -> int:
    """x position of stitch point `point` (0-based) in a stitching plot: the paper's layer number."""
    return int(point) + 1


def point_label(point: int, name: str | None = None) -> str:
    """A stitch point as the papers number it, with its layer name where there is room: '5 · layer2.1' for
    0-based index 4 (every figure, table and the explorer use this numbering)."""
    return str(plot_x(point)) if name is None else f"{plot_x(point)} · {name}"


def label_rows(rows: Iterable[Mapping], **columns) -> list[dict]:
    """Copies of tidy rows with extra columns (task=..., pair=...) that tell testbeds apart."""
    return [{**r, **columns} for r in rows]


# ----------------------------------------------------------------------------------------------------
# Selecting from tidy tables (for the Checks cells)


def select(df: pd.DataFrame, **filters) -> pd.DataFrame:
    """Rows whose columns equal the given values (a list/tuple/set value means 'any of these')."""
    mask = pd.Series(True, index=df.index)
    for col, value in filters.items():
        if col not in df.columns:
            raise KeyError(f"no column {col!r} in the table (have {', '.join(map(str, df.columns))})")
        if isinstance(value, (list, tuple, set, frozenset)):
            mask &= df[col].isin(list(value))
        else:
            mask &= df[col] == value
    return df[mask]


def curves(df: pd.DataFrame, *, eval_name: str = "test", metric: str = "accuracy", by: str = "objective",
           x: str = "front_point", **filters) -> pd.DataFrame:
    """A wide table: one column per `by` value (objectives), one row per `x` (stitch point), mean values."""
    sub = select(df, eval=eval_name, metric=metric, **filters)
    if sub.empty:
        return pd.DataFrame()
    return sub.pivot_table(index=x, columns=by, values="value", aggfunc="mean", dropna=False).sort_index()


def group_mean(df: pd.DataFrame, objectives: Sequence[str], *, eval_name: str = "test", metric: str = "accuracy",
               **filters) -> float:
    """Mean value over the given objectives and every matching row (NaN rows of failed jobs ignored)."""
    sub = select(df, eval=eval_name, metric=metric, objective=list(objectives), **filters)
    return float(sub["value"].mean()) if len(sub) else float("nan")


def fmt_curve(series: pd.Series, digits: int = 1) -> str:
    """'1:81.2 3:80.0 ...' with the paper's layer numbers (point + 1), for Checks details."""
    return " ".join(f"{plot_x(k)}:{v:.{digits}f}" for k, v in series.items())


def share_at_least(a: pd.Series, b: pd.Series, tol: float = 0.0) -> tuple[int, int]:
    """(#points where a >= b - tol, #points compared), NaNs skipped."""
    both = pd.concat([a, b], axis=1).dropna()
    return int((both.iloc[:, 0] >= both.iloc[:, 1] - tol).sum()), len(both)


# ----------------------------------------------------------------------------------------------------
# Stitching plots


def _baseline_value(baselines, role: str) -> float | None:
    if not baselines or role not in baselines or baselines[role] is None:
        return None
    v = float(baselines[role])
    return None if math.isnan(v) else v


def style_stitching_axes(ax, points: Sequence[int] | None = None) -> None:
    """x ticks: 'front', the paper's layer numbers, 'end'."""
    pts = list(range(NUM_STITCH_POINTS)) if points is None else sorted(points)
    ticks = [FRONT_X] + [plot_x(p) for p in pts] + [END_X]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["front"] + [str(plot_x(p)) for p in pts] + ["end"], fontsize=7)
    ax.set_xlim(FRONT_X - 0.4, END_X + 0.4)
    ax.grid(alpha=0.3)


def stitching_plot(ax, rows, metric: str = "accuracy", eval_name: str = "test", objectives: Sequence[str] | None = None,
                   baselines: Mapping[str, float] | None = None, *, linestyle: str = "-", x: str = "front_point",
                   colours: Mapping[str, str] | None = None, labels: Mapping[str, str] | None = None,
                   label_suffix: str = "", style_axes: bool = True, spread: bool = False) -> list:
    """One line per objective: value of `metric` on `eval_name` against the stitch point.

    Args:
        ax: matplotlib axes.
        rows: tidy rows (list of dicts or DataFrame) of one testbed (one front/end pair, one alpha, ...).
        objectives: objectives to draw, in this order (default: those present). Missing ones are skipped.
        baselines: {"front": value, "end": value}: the line starts at the front baseline (x = 0) and ends
            at the end baseline (x = 10); both are also marked in black. None or NaN: no end point.
        colours / labels: per-objective overrides of OBJECTIVE_COLOURS / OBJECTIVE_LABELS.
        spread: where a point has several rows (stitch seeds), the line is their mean and a vertical bar
            spans their range (min to max).
    Returns the objective lines drawn (baseline markers are separate artists with gid 'baseline').
    """
    df = pd.DataFrame(list(rows)) if not isinstance(rows, pd.DataFrame) else rows
    colours = {**OBJECTIVE_COLOURS, **(colours or {})}
    labels = {**OBJECTIVE_LABELS, **(labels or {})}
    front, end = _baseline_value(baselines, "front"), _baseline_value(baselines, "end")
    lines = []
    if not df.empty:
        sub = df[(df["metric"] == metric) & (df["eval"] == eval_name)]
        present = list(dict.fromkeys(sub["objective"]))
        for obj in (objectives if objectives is not None else present):
            o = sub[sub["objective"] == obj]
            if o.empty:
                continue
            if spread:
                _spread_bars(ax, o, x, colours.get(obj), objective_offset(ax, obj))
            o = o.groupby(x)["value"].mean().sort_index()
            xs = [plot_x(p) for p in o.index]
            ys = [float(v) for v in o.values]
            if front is not None:
                xs, ys = [FRONT_X] + xs, [front] + ys
            if end is not None:
                xs, ys = xs + [END_X], ys + [end]
            (line,) = ax.plot(xs, ys, linestyle=linestyle, marker=OBJECTIVE_MARKERS.get(obj, "o"), markersize=4,
                              markerfacecolor="none", linewidth=1.3, alpha=0.9, color=colours.get(obj),
                              label=f"{labels.get(obj, obj)}{label_suffix}", transform=objective_offset(ax, obj))
            lines.append(line)
    for xpos, v in ((FRONT_X, front), (END_X, end)):
        if v is not None:
            ax.plot([xpos], [v], linestyle="none", marker="s", markersize=5, color="black", gid="baseline",
                    fillstyle="full" if linestyle == "-" else "none")
    if style_axes:
        points = sorted(set(df[x])) if not df.empty and x in df else None
        style_stitching_axes(ax, points)
    return lines


def _spread_bars(ax, df: pd.DataFrame, x: str, colour, transform=None, x_of: Callable | None = plot_x,
                 seed_column: str = "seed", y: str = "value") -> None:
    """The one way every figure shows spread over stitch seeds: a vertical bar from the lowest to the highest
    per-seed value at each x that has two or more seeds (the curve itself is the mean over seeds). Rows are
    first averaged within a seed, so a panel that pools several points (Fig. 9's mean) still spans seeds
    only. Without a seed column every row counts as one repeat."""
    if seed_column in df.columns:
        values = df.groupby([x, seed_column])[y].mean().groupby(level=0)
    else:
        values = df.groupby(x)[y]
    lo, hi, n = values.min(), values.max(), values.count()
    several = n[n > 1].index
    if len(several):
        ax.vlines([x_of(p) if x_of else p for p in several], lo[several], hi[several], colors=colour, linewidth=1.0,
                  alpha=0.6, transform=transform if transform is not None else ax.transData, gid="spread")


EvalStyles = Mapping[str, str]  # eval name -> linestyle, e.g. {"test": "-", "test/pgd": "--"}


def _legend(fig, objectives: Sequence[str], eval_styles: EvalStyles, eval_labels: Mapping[str, str] | None,
            colours: Mapping[str, str] | None = None, ncol: int | None = None, baseline: bool = True,
            objective_styles: Mapping[str, str] | None = None, extra: Sequence = ()) -> None:
    from matplotlib.lines import Line2D

    colours = {**OBJECTIVE_COLOURS, **(colours or {})}
    handles = [Line2D([], [], color=colours.get(o), label=OBJECTIVE_LABELS.get(o, o), linewidth=2,
                      marker=OBJECTIVE_MARKERS.get(o, "o"), markerfacecolor="none", markersize=5,
                      linestyle=(objective_styles or {}).get(o, "-")) for o in objectives]
    handles += [Line2D([], [], color="black", linestyle=ls, label=(eval_labels or {}).get(e, e))
                for e, ls in eval_styles.items()]
    if baseline:
        handles.append(Line2D([], [], color="black", marker="s", linestyle="none", label="front / end baseline"))
    handles += list(extra)
    fig.legend(handles=handles, loc="lower center", ncol=ncol or len(handles), frameon=False, fontsize=8,
               bbox_to_anchor=(0.5, -0.01))


def stitching_grid(rows, baselines=None, *, row_key: str = "alpha", col_key: str = "pair",
                   row_values: Sequence | None = None, col_values: Sequence | None = None,
                   eval_styles: EvalStyles | Callable[[object], EvalStyles] = None,
                   eval_labels: Mapping[str, str] | None = None, objectives: Sequence[str] | None = None,
                   metric: str = "accuracy", row_label: Callable[[object], str] | None = None,
                   col_label: Callable[[object], str] | None = None, title: str | None = None,
                   ylabel: str = "accuracy (%)", panel_size=(2.6, 2.1), ylim=(0, 100), spread: bool = False):
    """The Fig. 4/5/8 layout: a grid of stitching plots, rows by `row_key` (alpha), columns by `col_key`
    (front/end robustness pair, shortcut kind); in each panel one colour per objective and one line style
    per evaluation (clean solid, robust or shortcut dashed).

    Args:
        rows: tidy rows with `row_key` and `col_key` columns.
        baselines: tidy baseline rows (role in {front, end}, eval, metric, value, and row_key / col_key
            columns where they differ by row or column), or None. A key column the baselines lack (or a
            NaN in it) matches every row / column of the grid.
        eval_styles: {eval name: linestyle}, or a function of the column value giving one (for shortcut
            kinds, whose evaluation is named after the kind). Default {"test": "-"}.
        spread: bars over the seeds' range at each point (stitching_plot).
    Returns (fig, axes) with axes a 2-D array [rows, cols].
    """
    import matplotlib.pyplot as plt

    df = pd.DataFrame(list(rows)) if not isinstance(rows, pd.DataFrame) else rows
    base = pd.DataFrame(list(baselines)) if baselines is not None and not isinstance(baselines, pd.DataFrame) else baselines
    row_values = list(row_values) if row_values is not None else (list(dict.fromkeys(df[row_key])) if len(df) else [None])
    col_values = list(col_values) if col_values is not None else (list(dict.fromkeys(df[col_key])) if len(df) else [None])
    if eval_styles is None:
        eval_styles = {"test": "-"}
    styles_of = eval_styles if callable(eval_styles) else (lambda _c: eval_styles)
    if objectives is None:
        objectives = list(dict.fromkeys(df["objective"])) if len(df) else []
    nr, nc = len(row_values), len(col_values)
    fig, axes = plt.subplots(nr, nc, figsize=(panel_size[0] * nc + 0.6, panel_size[1] * nr + 0.9),
                             sharex=True, sharey=True, squeeze=False)
    for i, rv in enumerate(row_values):
        for j, cv in enumerate(col_values):
            ax = axes[i, j]
            panel = df[(df[row_key] == rv) & (df[col_key] == cv)] if len(df) else df
            for e, ls in styles_of(cv).items():
                b = None
                if base is not None and len(base):
                    bsel = base[(base["eval"] == e) & (base["metric"] == metric)]
                    for key, val in ((row_key, rv), (col_key, cv)):  # a column the baselines lack matches all
                        if key in bsel.columns:
                            bsel = bsel[bsel[key].isna() | (bsel[key] == val)]
                    b = {r: float(bsel[bsel["role"] == r]["value"].mean()) if (bsel["role"] == r).any() else None
                         for r in ("front", "end")}
                stitching_plot(ax, panel, metric=metric, eval_name=e, objectives=objectives, baselines=b,
                               linestyle=ls, spread=spread)
            if ylim is not None:
                ax.set_ylim(*ylim)
            if i == 0:
                ax.set_title(col_label(cv) if col_label else str(cv), fontsize=9)
            if j == 0:
                ax.set_ylabel((row_label(rv) + "\n" if row_label else "") + ylabel, fontsize=8)
            if i == nr - 1:
                ax.set_xlabel("stitch layer", fontsize=8)
    all_styles = {}
    for cv in col_values:
        for e, ls in styles_of(cv).items():
            all_styles.setdefault(ls, e)
    _legend(fig, objectives, {e: ls for ls, e in all_styles.items()}, eval_labels)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06 if nr > 1 else 0.1, 1, 1))
    return fig, axes


def lines_by(ax, df: pd.DataFrame, *, x: str, y: str = "value", hue: str, order: Sequence | None = None,
             linestyle: str = "-", colours: Mapping | None = None, x_of: Callable | None = None, label_suffix="",
             spread: bool = False):
    """One line per `hue` value (y against x, sorted by x, mean over duplicates; with `spread`, a bar over the
    duplicates' range, e.g. stitch seeds). Returns the lines."""
    order = list(order) if order is not None else list(dict.fromkeys(df[hue]))
    palette = dict(zip(order, [f"C{i}" for i in range(len(order))]))
    palette.update(colours or {})
    lines = []
    for h in order:
        sub = df[df[hue] == h]
        s = sub.groupby(x)[y].mean().sort_index()
        if s.empty:
            continue
        xs = [x_of(v) if x_of else v for v in s.index]
        if spread:
            _spread_bars(ax, sub, x, palette[h], x_of=x_of, y=y)
        (line,) = ax.plot(xs, s.values, marker="o", markersize=3, linestyle=linestyle, color=palette[h],
                          label=f"{h}{label_suffix}")
        lines.append(line)
    return lines


def similarity_figure(cka: pd.DataFrame, functional: pd.DataFrame, *, pair_order: Sequence[str],
                      functional_styles: EvalStyles = None, functional_labels: Mapping[str, str] | None = None,
                      functional_title: str = "(b) FuLA with the last hint only\n(stitched-model accuracy)",
                      spread: bool = False):
    """Fig. 6: (a) penultimate-layer CKA between the end model and the DM-initialised stitched model on
    adversarial examples; (b) the last-hint-only FuLA stitch's accuracy. One line per robustness pair.

    cka: rows (pair, front_point, value); functional: tidy Stitcher rows with a `pair` column.
    """
    import matplotlib.pyplot as plt

    functional_styles = functional_styles or {"test/pgd": "--"}
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.5, 3.4))
    if len(cka):
        lines_by(a, cka, x="front_point", hue="pair", order=pair_order, x_of=plot_x, spread=spread)
    a.set_title("(a) CKA at the penultimate layer\n(DM-initialised stitch vs end model, adversarial inputs)", fontsize=9)
    a.set_ylabel("linear CKA")
    a.set_ylim(0, 1.02)
    for e, ls in functional_styles.items():
        sub = functional[(functional["eval"] == e) & (functional["metric"] == "accuracy")] if len(functional) else functional
        if len(sub):
            lines_by(b, sub, x="front_point", hue="pair", order=pair_order, x_of=plot_x, linestyle=ls, spread=spread)
    b.set_title(functional_title, fontsize=9)
    b.set_ylabel("accuracy (%)")
    b.set_ylim(0, 100)
    points = sorted(set(cka["front_point"])) if len(cka) else None
    for ax in (a, b):
        ax.set_xticks([plot_x(p) for p in (points or range(NUM_STITCH_POINTS))])
        ax.set_xlabel("stitch layer")
        ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=f"C{i}", label=p) for i, p in enumerate(pair_order)]
    handles += [Line2D([], [], color="black", linestyle=ls, label=(functional_labels or {}).get(e, e))
                for e, ls in functional_styles.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


# ----------------------------------------------------------------------------------------------------
# Shortcut markers (Figs. 7, 12)


def marker_examples(examples: Mapping[str, object], *, classes: Sequence[int] | None = None, title: str | None = None,
                    kind_labels: Mapping[str, str] | None = None, size: float = 1.0):
    """A grid of example images: one row per shortcut kind, one column per class (the first image of that
    class in each set, so every row shows the same underlying images).

    examples: {kind: ImageSet with that kind's markers}; "clean" (or any name) may hold unmarked images.
    Returns the figure; axes carry the class names as titles and the kinds as row labels.
    """
    import matplotlib.pyplot as plt

    kinds = list(examples)
    if not kinds:
        raise ValueError("marker_examples needs at least one image set")
    first = examples[kinds[0]]
    classes = list(range(first.num_classes)) if classes is None else list(classes)
    fig, axes = plt.subplots(len(kinds), len(classes), figsize=(size * len(classes) + 1.0, size * len(kinds) + 0.5),
                             squeeze=False)
    for i, kind in enumerate(kinds):
        data = examples[kind]
        for j, c in enumerate(classes):
            ax = axes[i, j]
            idx = (data.labels == c).nonzero()
            ax.set_xticks([]), ax.set_yticks([])
            if len(idx):
                img = data.images[int(idx[0, 0])].cpu()
                if img.shape[0] == 1:
                    ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
                else:
                    ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
            if i == 0:
                ax.set_title(str(data.classes[c])[:12], fontsize=7)
            if j == 0:
                ax.set_ylabel((kind_labels or {}).get(kind, kind), fontsize=8, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------
# Class subsets (Fig. 9)


def class_subset_grid(rows, *, row_key: str = "task", row_values: Sequence | None = None,
                      points: Sequence[int] | None = None, objectives: Sequence[str] | None = None,
                      eval_name: str = "test", metric: str = "accuracy", with_mean: bool = True,
                      row_label: Callable | None = None, chance: float | None = None, title: str | None = None,
                      spread: bool = False):
    """Fig. 9 layout: accuracy on all classes against k (the stitch trained on the first k classes), one
    panel per stitch point (plus their mean), one row per `row_key` value (cross-/same-task), one line per
    objective; with `spread`, bars over the stitch seeds' range (as in stitching_plot). Returns (fig, axes)."""
    import matplotlib.pyplot as plt

    df = pd.DataFrame(list(rows)) if not isinstance(rows, pd.DataFrame) else rows
    df = df[(df["eval"] == eval_name) & (df["metric"] == metric)] if len(df) else df
    row_values = list(row_values) if row_values is not None else list(dict.fromkeys(df[row_key]))
    points = sorted(set(df["front_point"])) if points is None else list(points)
    objectives = list(objectives) if objectives is not None else list(dict.fromkeys(df["objective"]))
    cols = [*points, "mean"] if with_mean else list(points)
    fig, axes = plt.subplots(len(row_values), len(cols), figsize=(2.3 * len(cols) + 0.6, 2.1 * len(row_values) + 0.8),
                             sharex=True, sharey=True, squeeze=False)
    ks = sorted(set(df["k"])) if len(df) else []
    for i, rv in enumerate(row_values):
        sub = df[df[row_key] == rv]
        for j, col in enumerate(cols):
            ax = axes[i, j]
            panel = sub if col == "mean" else sub[sub["front_point"] == col]
            for obj in objectives:
                o = panel[panel["objective"] == obj]
                s = o.groupby("k")["value"].mean().sort_index()
                if spread and len(s):
                    _spread_bars(ax, o, "k", OBJECTIVE_COLOURS.get(obj), objective_offset(ax, obj), x_of=None)
                if len(s):
                    ax.plot(s.index, s.values, marker=OBJECTIVE_MARKERS.get(obj, "o"), markersize=4,
                            markerfacecolor="none", linewidth=1.3, transform=objective_offset(ax, obj),
                            color=OBJECTIVE_COLOURS.get(obj), label=OBJECTIVE_LABELS.get(obj, obj),
                            linestyle=":" if obj == "dm" else "-")  # DM: the untrained initialisation
            if chance is not None:
                ax.axhline(chance, color="black", linewidth=0.8, linestyle=":", gid="chance")
            if ks:
                ax.set_xticks(ks)
            ax.grid(alpha=0.3)
            ax.set_ylim(0, 100)
            if i == 0:
                ax.set_title("mean over layers" if col == "mean" else f"layer {plot_x(col)}", fontsize=9)
            if j == 0:
                ax.set_ylabel((row_label(rv) if row_label else str(rv)) + "\naccuracy, all classes (%)", fontsize=8)
            if i == len(row_values) - 1:
                ax.set_xlabel("classes k in stitch training", fontsize=8)
    from matplotlib.lines import Line2D

    chance_handle = [Line2D([], [], color="black", linewidth=0.8, linestyle=":", label="chance")] if chance is not None else []
    _legend(fig, objectives, {}, None, baseline=False, objective_styles={"dm": ":"}, extra=chance_handle)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig, axes
