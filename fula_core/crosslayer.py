"""Cross-layer stitching (FuLA paper §3.3, App. A.2 and B.4; Figs 10, 11, 28-30).

Every front point i is stitched to every end point j (bilinear resize when the resolutions differ, built
into the Stitch) for self- (end model with itself), same-task and cross-task pairs, per objective. The
accuracy matrix M[i, j] has the front point as row and the end point as column, as in Fig. 10.

  Self-Accuracy        how often a layer is most similar to itself: the share of rows i whose maximum is on
                       the diagonal, M[i, i] >= max_j M[i, j] (ties count as found)
  averaged (non-directional) measure   (M + M^T) / 2: similarity of layers i and j is the mean of both
                       stitching directions (App. A.2); its Self-Accuracy is the number in parentheses
  FuLA weight sweep    (Fig. 11) the FuLA terms at the end point and each later point are switched on one
                       by one: weights (1, 0, ..., 0), (1, 1, 0, ...), ..., uniform

All stitches of one (front, end) pair train together in one multi-job pass (experiments.Stitcher), so the
whole grid of a pair (and the sweep, for the pair it runs on) is one job list.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .config import Profile
from .experiments import DataSpec, EvalSpec, Stitcher, clean_eval_spec, stitch_train_spec
from .models import NUM_STITCH_POINTS
from .stitching import OBJECTIVES, StitchJob

PAIR_KINDS = ("self", "same", "cross")
PAIR_TITLES = {"self": "self-stitching", "same": "same-task", "cross": "cross-task"}
OBJECTIVE_LABELS = {"slm": "SLM", "tlm": "TLM", "hlm": "HLM", "hint": "Hint", "fula": "FuLA", "dm": "DM"}
# paper figure names per architecture: Fig 10 is the main architecture (P.archs[0]); App. B.4 has all three
APPENDIX_FIGURES = {"resnet18_noskip": "fig28_cross_layer_resnet18_noskip", "resnet18": "fig29_cross_layer_resnet18",
                    "resnet34": "fig30_cross_layer_resnet34"}
SMOOTH_TOLERANCE = 2.0  # accuracy points a sweep may drop between two steps and still count as a smooth rise


# ----------------------------------------------------------------------------------------------------
# What runs


def pair_ids(P: Profile) -> dict[str, tuple[str, str]]:
    """Pair kind -> (front model id, end model id), zoo ids as in zoo.zoo_configs."""
    end = f"{P.end_dataset}_{P.seeds[0]}"
    return {"self": (end, end), "same": (f"{P.end_dataset}_{P.seeds[1]}", end),
            "cross": (f"{P.cross_dataset}_{P.seeds[0]}", end)}


def heatmap_objectives(P: Profile, choice: str = "profile") -> tuple[str, ...]:
    """The objectives of the heatmaps.

    "profile": the profile's `cross_layer_objectives` when it has that field, else P.objectives;
    "all": P.objectives; or a comma-separated list such as "hint,fula".
    """
    choice = choice.strip()
    if choice == "profile":
        return tuple(getattr(P, "cross_layer_objectives", P.objectives))
    if choice in ("", "all"):
        return tuple(P.objectives)
    chosen = tuple(o.strip() for o in choice.split(",") if o.strip())
    unknown = [o for o in chosen if o not in OBJECTIVES]
    if unknown:
        raise ValueError(f"unknown objective(s) {', '.join(unknown)}: choose from {', '.join(OBJECTIVES)}, "
                         f"'all' or 'profile'")
    return tuple(dict.fromkeys(chosen))


def grid_jobs(points: Sequence[int], objectives: Sequence[str]) -> list[StitchJob]:
    """Every front point x end point x objective (clean stitch training, alpha 0)."""
    return [StitchJob(i, j, o) for o in objectives for i in points for j in points]


def sweep_pairs(points: Sequence[int]) -> list[tuple[int, int]]:
    """(front, end) pairs of the FuLA weight sweep: for two (shallow, deep) point pairs of the grid, both
    directions, deep -> shallow first. With points (0, 2, 4, 6, 8): 6->2, 2->6, 8->0, 0->8."""
    pts = sorted(set(points))
    if len(pts) < 2:
        raise ValueError(f"the sweep needs at least two stitch points, got {tuple(points)}")
    spans = [(pts[1], pts[-2])] if len(pts) > 3 else []
    spans.append((pts[0], pts[-1]))
    pairs = []
    for lo, hi in spans:
        pairs += [(hi, lo), (lo, hi)]
    return pairs


def sweep_weights(end_point: int) -> list[tuple[float, ...] | None]:
    """FuLA weights that switch on the hints at end_point, end_point + 1, ... one at a time. The last
    (every term on) is the default uniform FuLA, returned as None so it shares the heatmap's stitch."""
    n = NUM_STITCH_POINTS - end_point
    return [tuple(1.0 if t < k else 0.0 for t in range(n)) for k in range(1, n)] + [None]


def sweep_jobs(pairs: Sequence[tuple[int, int]]) -> list[StitchJob]:
    return [StitchJob(i, j, "fula", fula_weights=w) for i, j in pairs for w in sweep_weights(j)]


def n_terms(job: StitchJob) -> int:
    """How many FuLA hint terms a job uses (the deepest switched-on term counts: 1 = stitch point only)."""
    if job.fula_weights is None:
        return NUM_STITCH_POINTS - job.end_point
    return max(t + 1 for t, w in enumerate(job.fula_weights) if w > 0)


def plan(P: Profile, objectives: Sequence[str], *, sweep_on: str | None = "self",
         pairs: Sequence[str] = PAIR_KINDS) -> dict[str, list[StitchJob]]:
    """Pair kind -> its whole job list (grid, plus the sweep on `sweep_on`), duplicates removed."""
    grid = grid_jobs(P.cross_layer_points, objectives)
    out = {}
    for kind in pairs:
        jobs = grid + (sweep_jobs(sweep_pairs(P.cross_layer_points)) if kind == sweep_on else [])
        out[kind] = list({j.name: j for j in jobs}.values())
    return out


def job_counts(P: Profile, objectives: Sequence[str], **kw) -> dict[str, int]:
    """Stitches per pair kind (and in total) that the cross-layer notebook needs at this profile."""
    counts = {kind: len(jobs) for kind, jobs in plan(P, objectives, **kw).items()}
    counts["total"] = sum(counts.values())
    return counts


def train_spec(P: Profile, dataset: str) -> DataSpec:
    """The stitch training data of the profile (shared with the other notebooks, so their stitches are reused)."""
    return stitch_train_spec(P, dataset)


def eval_spec(P: Profile, dataset: str) -> EvalSpec:
    """Clean test accuracy on the profile's evaluation subset."""
    return clean_eval_spec(P, dataset)


def run(store, P: Profile, device, jobs_by_pair: dict[str, list[StitchJob]], *, arch: str | None = None,
        configs: dict | None = None, data_dir=None, progress: bool = True):
    """Train what is missing and evaluate every job: a tidy DataFrame with one row per pair x job x metric.

    Columns: arch, pair, front_model, end_model, objective, front_point, end_point, n_terms, sweep (True for
    partial FuLA weights), job, eval, metric, value, error. `configs` (model id -> TrainConfig) defaults to
    the profile's zoo.
    """
    import pandas as pd

    from .zoo import zoo_configs

    configs = configs if configs is not None else zoo_configs(P, arch)
    ids = pair_ids(P)
    rows = []
    for kind, jobs in jobs_by_pair.items():
        front_id, end_id = ids[kind]
        front_cfg, end_cfg = configs[front_id], configs[end_id]
        dataset = end_cfg.dataset
        st = Stitcher(store, front_cfg, end_cfg, P.stitch, train_spec(P, dataset), device, data_dir=data_dir,
                      progress=progress)
        by_name = {j.name: j for j in jobs}
        for r in st.evaluate(jobs, [eval_spec(P, dataset)]):
            job = by_name[r["job"]]
            rows.append({"arch": arch or P.archs[0], "pair": kind, "front_model": front_id, "end_model": end_id,
                         **r, "n_terms": n_terms(job) if job.objective == "fula" else None,
                         "sweep": job.fula_weights is not None})
    return pd.DataFrame(rows)


def run_profile(store, P: Profile, device, objectives: Sequence[str], *, data_dir=None, progress: bool = True):
    """The whole notebook grid: every pair kind for every architecture of the profile, the FuLA sweep on the
    self pair of the main architecture only (Fig. 11 shows that one). One DataFrame, as `run` returns."""
    import pandas as pd

    frames = [run(store, P, device, plan(P, objectives, sweep_on="self" if arch == P.archs[0] else None),
                  arch=arch, data_dir=data_dir, progress=progress) for arch in P.archs]
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------------------------------
# Heatmaps and Self-Accuracy


def matrix(df, pair: str, objective: str, points: Sequence[int], metric: str = "accuracy") -> np.ndarray:
    """M[a, b] = metric of the stitch front point points[a] -> end point points[b] (NaN where missing)."""
    sel = df[(df.pair == pair) & (df.objective == objective) & (df.metric == metric) & ~df.sweep]
    index = {p: n for n, p in enumerate(points)}
    m = np.full((len(points), len(points)), np.nan)
    for i, j, v in zip(sel.front_point, sel.end_point, sel.value):
        if i in index and j in index:
            m[index[i], index[j]] = v
    return m


def symmetrize(m: np.ndarray) -> np.ndarray:
    """The non-directional measure: the mean of both stitching directions, (M + M^T) / 2."""
    return (m + m.T) / 2


def self_accuracy(m: np.ndarray) -> float:
    """Share of rows whose maximum is on the diagonal (ties count as found; NaN never wins)."""
    m = np.where(np.isnan(m), -np.inf, m)
    if m.size == 0:
        return float("nan")
    return float(np.mean([m[i, i] > -np.inf and m[i, i] >= m[i].max() for i in range(len(m))]))


def directionality(m: np.ndarray, points: Sequence[int]) -> dict:
    """Deep -> shallow (M[i, j], i > j) against shallow -> deep (M[j, i]) over every pair of grid points."""
    diffs = [m[a, b] - m[b, a] for a in range(len(points)) for b in range(a) if not np.isnan(m[a, b] - m[b, a])]
    return {"pairs": len(diffs), "deep_wins": int(sum(d > 0 for d in diffs)),
            "mean_diff": float(np.mean(diffs)) if diffs else float("nan")}


def self_accuracy_table(df, points: Sequence[int], objectives: Sequence[str], pairs: Sequence[str] = PAIR_KINDS):
    """One row per pair x objective: directional and averaged Self-Accuracy, deep->shallow statistics."""
    import pandas as pd

    rows = []
    for pair in pairs:
        for obj in objectives:
            m = matrix(df, pair, obj, points)
            d = directionality(m, points)
            rows.append({"pair": pair, "objective": obj, "self_accuracy": self_accuracy(m),
                         "self_accuracy_averaged": self_accuracy(symmetrize(m)), "layer_pairs": d["pairs"],
                         "deep_to_shallow_wins": d["deep_wins"], "deep_minus_shallow": d["mean_diff"]})
    return pd.DataFrame(rows)


def plot_heatmaps(df, points: Sequence[int], objectives: Sequence[str], pairs: Sequence[str] = PAIR_KINDS,
                  *, title: str | None = None, metric: str = "accuracy"):
    """Fig. 10: one heatmap per pair (rows) and objective (columns), cells annotated, Self-Accuracy in titles."""
    import matplotlib.pyplot as plt

    n_r, n_c = len(pairs), len(objectives)
    cell = max(2.2, 0.36 * len(points) + 1.0)
    fig, axes = plt.subplots(n_r, n_c, figsize=(cell * n_c + 1.0, cell * n_r + 0.6), squeeze=False,
                             constrained_layout=True)
    ids = {r.pair: (r.front_model, r.end_model) for r in df[["pair", "front_model", "end_model"]].drop_duplicates().itertuples()}
    image = None
    font = max(5.5, 10 - 0.5 * len(points))
    for r, pair in enumerate(pairs):
        for c, obj in enumerate(objectives):
            ax = axes[r, c]
            m = matrix(df, pair, obj, points, metric)
            image = ax.imshow(m, vmin=0, vmax=100, cmap="viridis", origin="upper")
            for a in range(len(points)):
                for b in range(len(points)):
                    if not np.isnan(m[a, b]):
                        ax.text(b, a, f"{m[a, b]:.0f}", ha="center", va="center", fontsize=font,
                                color="white" if m[a, b] < 60 else "black")
            ax.set_xticks(range(len(points)), [str(p) for p in points])
            ax.set_yticks(range(len(points)), [str(p) for p in points])
            sa, sa_avg = self_accuracy(m), self_accuracy(symmetrize(m))
            ax.set_title(f"{OBJECTIVE_LABELS.get(obj, obj)}\nSelf-Acc {_pct(sa)} ({_pct(sa_avg)})", fontsize=9)
            if c == 0:
                front, end = ids.get(pair, ("?", "?"))
                who = front if pair == "self" else f"{front} → {end}"
                ax.set_ylabel(f"{PAIR_TITLES.get(pair, pair)}\n{who}\nfront point i", fontsize=8)
            if r == n_r - 1:
                ax.set_xlabel("end point j", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label=f"stitched clean {metric} (%)")
    if title:
        fig.suptitle(title)
    return fig


def _pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.0f}%"


# ----------------------------------------------------------------------------------------------------
# Fig. 11: the FuLA weight sweep


def sweep_table(df, pairs: Sequence[tuple[int, int]], pair: str = "self"):
    """Accuracy of every sweep stitch (partial weights and the uniform end point) of the (front, end)
    `pairs` on pair kind `pair`: columns front_point, end_point, n_terms, accuracy, deepest_point,
    direction, in the order of `pairs` and by n_terms."""
    sel = df[(df.pair == pair) & (df.objective == "fula") & (df.metric == "accuracy")]
    order = {p: n for n, p in enumerate(pairs)}
    sel = sel[[(i, j) in order for i, j in zip(sel.front_point, sel.end_point)]]
    out = sel[["front_point", "end_point", "n_terms", "value"]].rename(columns={"value": "accuracy"}).copy()
    out["n_terms"] = out.n_terms.astype(int)
    out["deepest_point"] = out.end_point + out.n_terms - 1
    out["direction"] = np.where(out.front_point > out.end_point, "deep->shallow",
                                np.where(out.front_point < out.end_point, "shallow->deep", "same point"))
    out["_order"] = [order[(i, j)] for i, j in zip(out.front_point, out.end_point)]
    return out.sort_values(["_order", "n_terms"]).drop(columns="_order").reset_index(drop=True)


def sweep_sequences(table) -> dict[tuple[int, int], list[float]]:
    """(front, end) -> accuracies ordered by the number of hint terms."""
    return {(int(i), int(j)): list(g.sort_values("n_terms").accuracy)
            for (i, j), g in table.groupby(["front_point", "end_point"])}


def rises_smoothly(seq: Sequence[float], tolerance: float = SMOOTH_TOLERANCE) -> bool:
    """The last value is above the first and no step drops by more than `tolerance` points."""
    seq = list(seq)
    if len(seq) < 2 or any(math.isnan(v) for v in seq):
        return False
    return seq[-1] > seq[0] and all(b >= a - tolerance for a, b in zip(seq, seq[1:]))


def plot_sweep(table, *, end_accuracy: float | None = None, title: str | None = None):
    """Fig. 11: stitched accuracy against the deepest FuLA term switched on, one line per front -> end pair
    (deep -> shallow solid, shallow -> deep dashed)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.6, 3.8), constrained_layout=True)
    spans: dict[tuple[int, int], int] = {}  # a pair and its reverse share a colour
    for (i, j), g in table.groupby(["front_point", "end_point"], sort=False):
        g = g.sort_values("n_terms")
        deep = i > j
        colour = spans.setdefault((min(i, j), max(i, j)), len(spans))
        ax.plot(g.deepest_point, g.accuracy, marker="o" if deep else "s", mfc=f"C{colour}" if deep else "white",
                linestyle="-" if deep else "--", color=f"C{colour}",
                label=f"[{i}→{j}] {'deep→shallow' if deep else 'shallow→deep'}")
    if end_accuracy is not None:
        ax.axhline(end_accuracy, color="grey", linestyle=":", label="end model")
    ax.set_xlabel("deepest FuLA hint switched on (end-model stitch point)")
    ax.set_ylabel("stitched clean accuracy (%)")
    ax.set_xticks(range(NUM_STITCH_POINTS))
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def figure_names(P: Profile, arch: str) -> list[str]:
    """Paper names of the cross-layer figure(s) for one architecture: fig10 for the main one, plus
    figs 28-30 when the profile runs several architectures (the appendix shows each of them)."""
    names = ["fig10_cross_layer"] if arch == P.archs[0] else []
    if len(P.archs) > 1 and arch in APPENDIX_FIGURES:
        names.append(APPENDIX_FIGURES[arch])
    return names


# ----------------------------------------------------------------------------------------------------
# The claims of §3.3 / App. B.4: each returns (holds, the numbers behind it)


def averaging_helps(table, pairs: Sequence[str] = ("self",)) -> tuple[bool, str]:
    """Averaged (non-directional) Self-Accuracy >= directional for every objective of `pairs`
    (a row of self_accuracy_table each)."""
    sel = table[table.pair.isin(list(pairs))]
    holds = bool(len(sel)) and bool((sel.self_accuracy_averaged >= sel.self_accuracy).all())
    detail = "; ".join(f"{r.pair}/{OBJECTIVE_LABELS.get(r.objective, r.objective)}: {_pct(r.self_accuracy)} -> "
                       f"{_pct(r.self_accuracy_averaged)}" for r in sel.itertuples())
    return holds, detail


def is_directional(table, objective: str = "fula") -> tuple[bool, str]:
    """Deep -> shallow beats shallow -> deep in most layer pairs (pooled over the pair kinds of `table`),
    with a positive mean difference."""
    sel = table[table.objective == objective]
    pairs, wins = int(sel.layer_pairs.sum()), int(sel.deep_to_shallow_wins.sum())
    weighted = float((sel.deep_minus_shallow * sel.layer_pairs).sum() / pairs) if pairs else float("nan")
    holds = pairs > 0 and wins > pairs / 2 and weighted > 0
    detail = (f"{OBJECTIVE_LABELS.get(objective, objective)}: M[i,j] > M[j,i] (i deeper) in {wins} of {pairs} "
              f"layer pairs, mean difference {weighted:+.1f} points; "
              + "; ".join(f"{r.pair}: {r.deep_to_shallow_wins}/{r.layer_pairs}, {r.deep_minus_shallow:+.1f}"
                          for r in sel.itertuples()))
    return holds, detail


def _seq_text(seqs) -> str:
    return "; ".join(f"[{i}->{j}] " + " -> ".join(f"{v:.1f}" for v in s) for (i, j), s in seqs.items())


def sweep_rises(sweep, tolerance: float = SMOOTH_TOLERANCE) -> tuple[bool, str]:
    """Every deep -> shallow sweep (more than one term) rises smoothly as deeper hints are switched on."""
    seqs = sweep_sequences(sweep)
    deep = {p: s for p, s in seqs.items() if p[0] > p[1] and len(s) > 1}
    holds = bool(deep) and all(rises_smoothly(s, tolerance) for s in deep.values())
    return holds, f"accuracy by number of hint terms (smooth = no drop > {tolerance:g} points): {_seq_text(seqs)}"


def sweep_directional(sweep) -> tuple[bool, str]:
    """With every hint switched on, each deep -> shallow sweep pair ends above its shallow -> deep reverse."""
    seqs = sweep_sequences(sweep)
    both = [(i, j) for (i, j) in seqs if i > j and (j, i) in seqs]
    holds = bool(both) and all(seqs[i, j][-1] > seqs[j, i][-1] for i, j in both)
    detail = "; ".join(f"[{i}->{j}] {seqs[i, j][-1]:.1f} vs [{j}->{i}] {seqs[j, i][-1]:.1f}" for i, j in both)
    return holds, detail


def end_accuracy(store, P: Profile, device, *, arch: str | None = None, configs: dict | None = None,
                 data_dir=None) -> float:
    """Clean accuracy of the end model on the heatmaps' test subset (cached like every baseline)."""
    from .experiments import baseline_rows
    from .train import get_model
    from .zoo import zoo_configs

    configs = configs if configs is not None else zoo_configs(P, arch)
    cfg = configs[pair_ids(P)["self"][1]]
    model = get_model(store, cfg, device, data_dir=data_dir)
    rows = baseline_rows(store, model, cfg, "end", [eval_spec(P, cfg.dataset)], device, data_dir)
    return next(r["value"] for r in rows if r["metric"] == "accuracy")
