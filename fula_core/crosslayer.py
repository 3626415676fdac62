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

import dataclasses
import math
from typing import Sequence

import numpy as np

from . import claims as claims_lib
from .config import Profile
from .experiments import DataSpec, EvalSpec, StitchGroup, clean_eval_spec, stitch_train_spec
from .models import NUM_STITCH_POINTS
from .plots import OBJECTIVE_LABELS, plot_x
from .stitching import OBJECTIVES, StitchJob

NOTEBOOK = "04_cross_layer"

PAIR_KINDS = ("self", "same", "cross")
PAIR_TITLES = {"self": "self-stitching", "same": "same-task", "cross": "cross-task"}
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


def stitch_group(P: Profile, kind: str, jobs: Sequence[StitchJob], configs: dict, *,
                 arch: str | None = None) -> StitchGroup:
    """The training pass of one pair kind: all its jobs on the end task's stitch data, scored clean."""
    front_id, end_id = pair_ids(P)[kind]
    front_cfg, end_cfg = configs[front_id], configs[end_id]
    dataset = end_cfg.dataset
    jobs = tuple(jobs)
    return StitchGroup(front_cfg, end_cfg, P.stitch, train_spec(P, dataset), jobs, ((jobs, (eval_spec(P, dataset),)),),
                       (("notebook", "04"), ("arch", arch or P.archs[0]), ("pair", kind)))


def profile_plans(P: Profile, objectives: Sequence[str]) -> dict[str, dict[str, list[StitchJob]]]:
    """Architecture -> run()'s jobs_by_pair for the whole notebook grid (the sweep on the main architecture)."""
    return {arch: plan(P, objectives, sweep_on="self" if arch == P.archs[0] else None) for arch in P.archs}


def stitch_groups(P: Profile, objectives: Sequence[str]) -> list[StitchGroup]:
    """Every training pass of run_profile, in its order."""
    from .zoo import zoo_configs

    return [stitch_group(P, kind, jobs, zoo_configs(P, arch), arch=arch)
            for arch, by_pair in profile_plans(P, objectives).items() for kind, jobs in by_pair.items()]


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
        g = stitch_group(P, kind, jobs, configs, arch=arch)
        st = g.stitcher(store, device, data_dir=data_dir, progress=progress)
        by_name = {j.name: j for j in jobs}
        (_, specs), = g.evals
        for r in st.evaluate(jobs, list(specs)):
            job = by_name[r["job"]]
            rows.append({"arch": arch or P.archs[0], "pair": kind, "front_model": front_id, "end_model": end_id,
                         **r, "n_terms": n_terms(job) if job.objective == "fula" else None,
                         "sweep": job.fula_weights is not None})
    return pd.DataFrame(rows)


def run_profile(store, P: Profile, device, objectives: Sequence[str], *, data_dir=None, progress: bool = True,
                check: bool = True):
    """The whole notebook grid: every pair kind for every architecture of the profile, the FuLA sweep on the
    self pair of the main architecture only (Fig. 11 shows that one). One DataFrame, as `run` returns;
    `check_structure` raises when a cell or sweep step has no accuracy."""
    import pandas as pd

    frames = [run(store, P, device, jobs_by_pair, arch=arch, data_dir=data_dir, progress=progress)
              for arch, jobs_by_pair in profile_plans(P, objectives).items()]
    df = pd.concat(frames, ignore_index=True)
    if check:
        check_structure(df, P, objectives)
    return df


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


def self_accuracy_tables(df, P: Profile, objectives: Sequence[str]):
    """`self_accuracy_table` for every architecture of the profile, one DataFrame with an `arch` column."""
    import pandas as pd

    return pd.concat([self_accuracy_table(df[df.arch == arch], P.cross_layer_points, objectives).assign(arch=arch)
                      for arch in P.archs], ignore_index=True)


def plan_summary(P: Profile, objectives: Sequence[str]):
    """What the notebook runs: one row per pair kind (front and end model, stitches of the main architecture),
    the FuLA sweep's pairs in the paper's 1..9 numbering."""
    import pandas as pd

    jobs = plan(P, objectives)
    sweep = ", ".join(f"{plot_x(i)}->{plot_x(j)}" for i, j in sweep_pairs(P.cross_layer_points))
    return pd.DataFrame([{"pair": PAIR_TITLES[kind], "front": front, "end": end, "stitches": len(jobs[kind]),
                          "FuLA sweep": sweep if kind == "self" else ""}
                         for kind, (front, end) in pair_ids(P).items()])


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
            ax.set_xticks(range(len(points)), [str(plot_x(p)) for p in points])  # the paper's 1..9
            ax.set_yticks(range(len(points)), [str(plot_x(p)) for p in points])
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
        ax.plot([plot_x(p) for p in g.deepest_point], g.accuracy, marker="o" if deep else "s",
                mfc=f"C{colour}" if deep else "white", linestyle="-" if deep else "--", color=f"C{colour}",
                label=f"[{plot_x(i)}→{plot_x(j)}] {'deep→shallow' if deep else 'shallow→deep'}")
    if end_accuracy is not None:
        ax.axhline(end_accuracy, color="grey", linestyle=":", label="end model")
    ax.set_xlabel("deepest FuLA hint switched on (end-model stitch point)")
    ax.set_ylabel("stitched clean accuracy (%)")
    ax.set_xticks([plot_x(p) for p in range(NUM_STITCH_POINTS)])  # the paper's 1..9
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
# The claims of §3.3 / App. B.4, each a claims.Verdict with a 95% interval
#
# Every stitch of one architecture ends in the same end model and is scored on the same test images, so
# every interval is a paired bootstrap over those images. Where the claim compares stitch accuracies
# (directionality, the sweep) it is claims.judge on the per-image scores; where it compares a number
# derived from whole matrices (Self-Accuracy, the largest drop of a sweep) each resample recomputes the
# matrices from the resampled images and the number from them. Cross-layer stitches have one seed (the
# profile's stitch seed), so the only source is "images".


def _scores(df):
    """The per-image score arrays of `df`'s rows; a clear error for rows read back from a CSV (no scores)."""
    if "scores" not in df.columns:
        raise ValueError("the cross-layer claims need the per-image `scores` of crosslayer.run's rows; a table read "
                         "back from CSV has none: rerun crosslayer.run_profile (everything is cached)")
    return df["scores"]


def _n_images(df) -> int:
    lengths = {len(x) for x in _scores(df)}
    if len(lengths) != 1:
        raise ValueError(f"the rows score different numbers of test images {sorted(lengths)}: the claims need "
                         f"every stitch scored on the same images")
    return lengths.pop()


def cells(df, pair: str, objective: str, points: Sequence[int], metric: str = "accuracy") -> np.ndarray:
    """The per-image scores behind `matrix`: [front point, end point, image] (NaN where a stitch is missing)."""
    sel = df[(df.pair == pair) & (df.objective == objective) & (df.metric == metric) & ~df.sweep]
    index = {p: n for n, p in enumerate(points)}
    out = np.full((len(points), len(points), _n_images(df)), np.nan)
    for i, j, x in zip(sel.front_point, sel.end_point, _scores(sel)):
        if i in index and j in index:
            out[index[i], index[j]] = np.asarray(x, dtype=float)
    return out


def bootstrap_derived(blocks: Sequence[np.ndarray], statistic, *, n_boot: int = claims_lib.N_BOOT,
                      level: float = claims_lib.LEVEL, rng_seed: int = 0) -> tuple[float, float, float, float]:
    """A paired image bootstrap of a statistic of per-image means.

    blocks: arrays [..., images] of per-image scores on the same images; statistic(means) -> (A, B) takes the
    list of their means over images (same shapes without the last axis). Each resample draws one set of image
    indices for every block (as multinomial counts, so a resample is a matrix product). Returns
    (A, B, ci_low, ci_high) of A - B."""
    flat = [b.reshape(-1, b.shape[-1]) for b in blocks]
    n_img = flat[0].shape[1]
    a, b = statistic([f.mean(1).reshape(bl.shape[:-1]) for f, bl in zip(flat, blocks)])
    rng = np.random.default_rng(rng_seed)
    draws = []
    for start in range(0, n_boot, 250):  # in chunks: [images, resamples] of counts stays small
        k = min(250, n_boot - start)
        counts = rng.multinomial(n_img, np.full(n_img, 1 / n_img), size=k).T / n_img  # [images, k]
        means = [f @ counts for f in flat]  # [cells, k]
        for r in range(k):
            ra, rb = statistic([m[:, r].reshape(bl.shape[:-1]) for m, bl in zip(means, blocks)])
            draws.append(ra - rb)
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(draws, [tail, 100 - tail])
    return float(a), float(b), float(low), float(high)


def _verdict(claim, a, b, low, high, n) -> claims_lib.Verdict:
    return claims_lib.Verdict(claim, a, b, a - b, low, high, n, "images")


def _claim(cid: str, statement: str, a: str, b: str, figure: str, kind: str = "paper") -> claims_lib.Claim:
    return claims_lib.Claim(cid, NOTEBOOK, figure, statement, a, b, kind)


def _mean_self_accuracy(matrices, averaged: bool) -> float:
    """Mean Self-Accuracy (in percent) over matrices, of the averaged measure or the directional one."""
    return 100 * float(np.mean([self_accuracy(symmetrize(m) if averaged else m) for m in matrices]))


def claim_averaging_finds_layers(df, points: Sequence[int], objectives: Sequence[str], pairs: Sequence[str] = ("self",),
                                 *, cid: str = "averaged_self_accuracy_self", figure: str = "Fig 10") -> claims_lib.Verdict:
    """Fig. 10 (§3.3): under the non-directional measure (M + M^T) / 2 corresponding layers are found more
    often than under the directional one, in self-stitching.

    A: the averaged measure's Self-Accuracy, B: the directional Self-Accuracy, both in percent and averaged
    over `objectives` and `pairs`. Interval: paired bootstrap over test images (each resample recomputes every
    matrix from the resampled images, then both Self-Accuracies)."""
    blocks = [cells(df, p, o, points) for p in pairs for o in objectives]
    stat = lambda ms: (_mean_self_accuracy(ms, True), _mean_self_accuracy(ms, False))  # noqa: E731
    where = "self-stitching" if tuple(pairs) == ("self",) else "every pair (" + ", ".join(pairs) + ")"
    claim = _claim(cid, f"{where}: averaging both stitching directions finds corresponding layers more often "
                        f"than the directional measure", "averaged Self-Accuracy (%)", "directional Self-Accuracy (%)",
                   figure)
    return _verdict(claim, *bootstrap_derived(blocks, stat), _n_images(df))


def claim_averaging_every_setting(df, points: Sequence[int], objectives: Sequence[str],
                                  pairs: Sequence[str] = PAIR_KINDS) -> claims_lib.Verdict:
    """App. B.4 (Figs 28-30): averaging both directions raises Self-Accuracy in every setting, not only in
    self-stitching. A and B as in `claim_averaging_finds_layers`, pooled over every pair kind and objective;
    interval: paired bootstrap over test images."""
    return claim_averaging_finds_layers(df, points, objectives, pairs, cid="averaged_self_accuracy_all_pairs",
                                        figure="Figs 10, 28-30")


def _direction_units(df, objective: str, direction: str, pairs: Sequence[str] = PAIR_KINDS):
    """Per-image scores [stitches, images] of the off-diagonal grid stitches deep -> shallow (front point
    deeper) or shallow -> deep, sorted so that a stitch and its reverse sit in the same row."""
    sel = df[df.pair.isin(list(pairs)) & (df.objective == objective) & (df.metric == "accuracy") & ~df.sweep]
    deep = sel.front_point > sel.end_point
    sel = sel[deep if direction == "deep->shallow" else (sel.front_point < sel.end_point)]
    lo, hi = np.minimum(sel.front_point, sel.end_point), np.maximum(sel.front_point, sel.end_point)
    sel = sel.assign(_lo=lo, _hi=hi).sort_values(["pair", "_lo", "_hi"])
    if not len(sel):
        raise ValueError(f"no {direction} {objective} stitches in the rows: the grid needs at least two points")
    return np.stack([np.asarray(x, dtype=float) for x in _scores(sel)])


def claim_fula_directional(df, objective: str = "fula", pairs: Sequence[str] = PAIR_KINDS) -> claims_lib.Verdict:
    """§3.3 / Fig. 10: FuLA is directional: deep -> shallow stitches (front point i deeper than end point j)
    score higher than the reverse shallow -> deep ones.

    A: mean accuracy of every deep -> shallow grid stitch of `objective` over `pairs`, B: the same for their
    reverses. Interval: paired bootstrap over test images."""
    a = _direction_units(df, objective, "deep->shallow", pairs)
    b = _direction_units(df, objective, "shallow->deep", pairs)
    name = OBJECTIVE_LABELS.get(objective, objective)
    claim = _claim(f"{objective}_directional", f"{name} is directional: deep->shallow stitches score higher than "
                   "shallow->deep ones", "deep->shallow accuracy (%)", "shallow->deep accuracy (%)", "Fig 10")
    return claims_lib.judge(claim, a, b)


def _sweep_scores(df, points: Sequence[int], pair: str = "self") -> dict[tuple[int, int], np.ndarray]:
    """(front, end) -> per-image accuracy of its sweep stitches [n_terms, images], fewest terms first, for
    every swept pair of `points` (sweep_pairs; the last step is the uniform FuLA stitch of the grid)."""
    sel = df[(df.pair == pair) & (df.objective == "fula") & (df.metric == "accuracy") & df.n_terms.notna()]
    out = {}
    for i, j in sweep_pairs(points):
        g = sel[(sel.front_point == i) & (sel.end_point == j)].sort_values("n_terms")
        if len(g):
            out[i, j] = np.stack([np.asarray(x, dtype=float) for x in _scores(g)])
    if not out:
        raise ValueError(f"no FuLA sweep rows on the {pair} pair: run the plan with sweep_on={pair!r}")
    return out


def claim_sweep_rises(df, points: Sequence[int], pair: str = "self") -> claims_lib.Verdict:
    """Fig. 11: switching on the deeper FuLA hints raises deep -> shallow stitched accuracy.

    A: accuracy of the deep -> shallow sweep stitches with every hint on, B: the same stitches with the hint
    at the stitch point only (one term), pooled over the swept pairs. Interval: paired bootstrap over images."""
    seqs = {p: s for p, s in _sweep_scores(df, points, pair).items() if p[0] > p[1] and len(s) > 1}
    if not seqs:
        raise ValueError("no deep->shallow sweep with more than one hint term")
    claim = _claim("sweep_deeper_hints_raise", "switching on deeper FuLA hints raises deep->shallow accuracy",
                   "every hint on (%)", "hint at the stitch point only (%)", "Fig 11")
    return claims_lib.judge(claim, np.stack([s[-1] for s in seqs.values()]), np.stack([s[0] for s in seqs.values()]))


def _largest_drop(seqs) -> float:
    """The largest fall of accuracy between two consecutive sweep steps (0 when every step rises)."""
    return max([0.0] + [float(s[k] - s[k + 1]) for s in seqs for k in range(len(s) - 1)])


def claim_sweep_smooth(df, points: Sequence[int], pair: str = "self", tolerance: float = SMOOTH_TOLERANCE) -> claims_lib.Verdict:
    """Fig. 11: the deep -> shallow rise is smooth: no step of a sweep loses more than `tolerance` points.

    A: the tolerance, B: the largest drop between two consecutive steps of any deep -> shallow sweep (A > B:
    smooth). Interval: paired bootstrap over test images (each resample recomputes every step's accuracy)."""
    seqs = [s for p, s in _sweep_scores(df, points, pair).items() if p[0] > p[1] and len(s) > 1]
    if not seqs:
        raise ValueError("no deep->shallow sweep with more than one hint term")
    claim = _claim("sweep_rise_is_smooth", f"the deep->shallow sweep rises smoothly (no step drops more than "
                   f"{tolerance:g} points)", "tolerance (points)", "largest drop between steps (points)", "Fig 11")
    stat = lambda ms: (tolerance, _largest_drop(ms))  # noqa: E731
    return _verdict(claim, *bootstrap_derived(seqs, stat), _n_images(df))


def claim_sweep_directional(df, points: Sequence[int], pair: str = "self") -> claims_lib.Verdict:
    """Fig. 11: deeper hints do not rescue shallow -> deep stitching: with every hint on, each swept
    deep -> shallow pair stays above its shallow -> deep reverse.

    A: accuracy of the deep -> shallow sweep stitches with every hint on, B: their reverses with every hint
    on. Interval: paired bootstrap over test images."""
    seqs = _sweep_scores(df, points, pair)
    both = [(i, j) for (i, j) in seqs if i > j and (j, i) in seqs]
    if not both:
        raise ValueError("no swept pair was run in both directions")
    claim = _claim("sweep_stays_directional", "with every FuLA hint on, deep->shallow stays above its "
                   "shallow->deep reverse", "deep->shallow, every hint (%)", "shallow->deep, every hint (%)", "Fig 11")
    return claims_lib.judge(claim, np.stack([seqs[p][-1] for p in both]), np.stack([seqs[j, i][-1] for i, j in both]))


def claims(df, P: Profile, objectives: Sequence[str]) -> list[claims_lib.Verdict]:
    """Every verdict of notebook 04: the Self-Accuracy claims per architecture, directionality when FuLA is
    among the objectives, and the sweep's claims on the main architecture (the only one swept)."""
    points = P.cross_layer_points
    out = []
    for arch in P.archs:
        part = df[df.arch == arch]
        pairs = [p for p in PAIR_KINDS if p in set(part.pair)]
        found = [claim_averaging_finds_layers(part, points, objectives),
                 claim_averaging_every_setting(part, points, objectives, pairs)]
        if "fula" in objectives:
            found.append(claim_fula_directional(part, pairs=pairs))
        if len(P.archs) > 1:  # one id per architecture
            found = [dataclasses.replace(v, claim=dataclasses.replace(v.claim, id=f"{v.claim.id}_{arch}")) for v in found]
        out += found
    main = df[df.arch == P.archs[0]]
    return out + [claim_sweep_rises(main, points), claim_sweep_smooth(main, points), claim_sweep_directional(main, points)]


def check_structure(df, P: Profile, objectives: Sequence[str]) -> None:
    """Every heatmap cell of every architecture, pair and objective, and every sweep step, has a finite
    accuracy; raises a clear error naming what is missing (a failed stitch is NaN)."""
    missing = []
    for arch in P.archs:
        part = df[df.arch == arch]
        for pair in PAIR_KINDS:
            for obj in objectives:
                m = matrix(part, pair, obj, P.cross_layer_points)
                missing += [f"{arch} {pair} {obj} [{plot_x(P.cross_layer_points[a])}->{plot_x(P.cross_layer_points[b])}]"
                            for a, b in zip(*np.where(~np.isfinite(m)))]
    main = df[df.arch == P.archs[0]]
    sweep = sweep_table(main, sweep_pairs(P.cross_layer_points))
    expected = sum(len(sweep_weights(j)) for _, j in sweep_pairs(P.cross_layer_points))
    if len(sweep) != expected or not sweep.accuracy.notna().all():
        missing.append(f"FuLA sweep: {int(sweep.accuracy.notna().sum())} of {expected} steps have an accuracy")
    if missing:
        raise ValueError(f"cross-layer results incomplete ({len(missing)}): " + "; ".join(missing[:10])
                         + " -- a NaN is a stitch that stopped on a non-finite loss; rerun to retrain missing ones")


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
