"""Claims as statements with their uncertainty: a margin, its 95% interval and a verdict.

A claim compares two quantities A and B computed from result rows and asserts A > B (write the claim the
other way round for "A < B"). Its margin is A - B; the interval comes from resampling what varies between
runs, cheapest first:

  images   a paired bootstrap over test images: A and B are scored on the same images, so each resample
           draws one set of image indices for both (free: the per-image scores are already there)
  seeds    clustered over seeds: each resample first draws seeds with replacement (stitch seeds, or base-model
           seeds where a profile has several), then images within them

  HOLDS          the interval lies above zero: the data support the statement
  CONTRADICTED   the interval lies below zero: the data support its opposite
  INCONCLUSIVE   the interval contains zero: the difference is inside the noise

Kinds: "paper" for a claim of one of the papers, "target" for a goal this project set itself (e.g. a base
model's accuracy), "sanity" for what must hold for the testbed to mean anything. Only paper claims count in
the README's summary; all three are listed in `figures/<profile>/claims.csv`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

VERDICTS = ("HOLDS", "CONTRADICTED", "INCONCLUSIVE")
KINDS = ("paper", "target", "sanity")
LEVEL = 0.95  # two-sided coverage of every interval
N_BOOT = 2000  # bootstrap resamples: the interval's ends move by ~0.1 of a point between 2000-resample runs
CSV_COLUMNS = ("notebook", "claim_id", "statement", "figure", "kind", "a", "b", "value_a", "value_b", "margin",
               "ci_low", "ci_high", "n", "sources", "verdict")


@dataclass(frozen=True)
class Claim:
    """What is claimed: an id, where (notebook, figure), the statement, and what A and B are."""

    id: str
    notebook: str
    figure: str
    statement: str  # one line, as the paper says it (A > B is what it asserts)
    a: str  # the quantity that should be larger
    b: str
    kind: str = "paper"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"claim {self.id}: kind must be one of {KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class Verdict:
    """A claim judged on data."""

    claim: Claim
    value_a: float
    value_b: float
    margin: float  # value_a - value_b
    ci_low: float
    ci_high: float
    n: int  # test images (times seeds) behind each value
    sources: str  # what the interval resamples, e.g. "images" or "images+seeds"

    @property
    def verdict(self) -> str:
        return verdict_of(self.ci_low, self.ci_high)

    def row(self) -> dict:
        c = self.claim
        return {"notebook": c.notebook, "claim_id": c.id, "statement": c.statement, "figure": c.figure, "kind": c.kind,
                "a": c.a, "b": c.b, "value_a": self.value_a, "value_b": self.value_b, "margin": self.margin,
                "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n, "sources": self.sources,
                "verdict": self.verdict}


def verdict_of(ci_low: float, ci_high: float) -> str:
    """HOLDS above zero, CONTRADICTED below, INCONCLUSIVE when the interval contains zero (or is NaN)."""
    if ci_low > 0:
        return "HOLDS"
    if ci_high < 0:
        return "CONTRADICTED"
    return "INCONCLUSIVE"


def _as_units(x, seeds) -> tuple[np.ndarray, np.ndarray]:
    """Per-image scores as [units, images] and each unit's seed (all 0 when none are given)."""
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"per-image scores must be [units, images] with at least one image, got shape {x.shape}")
    seeds = np.zeros(len(x), dtype=int) if seeds is None else np.asarray(seeds)
    if len(seeds) != len(x):
        raise ValueError(f"{len(seeds)} seeds for {len(x)} units")
    return x, seeds


def paired_bootstrap(a, b, *, seeds_a: Sequence | None = None, seeds_b: Sequence | None = None,
                     n_boot: int = N_BOOT, level: float = LEVEL, rng_seed: int = 0) -> tuple[float, float, float, str]:
    """Margin mean(A) - mean(B) and its percentile interval.

    Args:
        a, b: per-image scores [units, images] (b may be a number: a fixed threshold) (a unit is one stitched model: an objective at a point, a seed...;
            each row a score per test image, e.g. 100 * correct, or the agreement probability). Both must score
            the same images in the same order (paired).
        seeds_a, seeds_b: the seed of each unit; when more than one seed occurs, resamples draw seeds first
            (the same draw for A and B: a seed's A and B units stay together), then images.
    Returns (margin, ci_low, ci_high, sources).
    """
    a, sa = _as_units(a, seeds_a)
    if np.isscalar(b):  # a fixed threshold (a project target): B is that value on every image
        b, seeds_b = np.full_like(a, float(b)), sa
    b, sb = _as_units(b, seeds_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"A and B must score the same images: {a.shape[1]} vs {b.shape[1]}")
    margin = float(a.mean() - b.mean())
    seeds = np.unique(np.concatenate([sa, sb]))
    rng = np.random.default_rng(rng_seed)
    n_img = a.shape[1]
    # per seed, the mean over that seed's units of each image: [seeds, images]
    per_seed_a = np.stack([a[sa == s].mean(0) if (sa == s).any() else np.full(n_img, np.nan) for s in seeds])
    per_seed_b = np.stack([b[sb == s].mean(0) if (sb == s).any() else np.full(n_img, np.nan) for s in seeds])
    draws = np.empty(n_boot)
    for k in range(n_boot):
        chosen = rng.integers(0, len(seeds), len(seeds)) if len(seeds) > 1 else np.zeros(1, dtype=int)
        images = rng.integers(0, n_img, n_img)
        draws[k] = np.nanmean(per_seed_a[chosen][:, images]) - np.nanmean(per_seed_b[chosen][:, images])
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(draws, [tail, 100 - tail])
    return margin, float(low), float(high), "images+seeds" if len(seeds) > 1 else "images"


def judge(claim: Claim, a, b, **kw) -> Verdict:
    """The claim's verdict from per-image scores of A and B (see `paired_bootstrap` for the arguments)."""
    a_arr, _ = _as_units(a, kw.get("seeds_a"))
    b_arr = np.full_like(a_arr, float(b)) if np.isscalar(b) else _as_units(b, kw.get("seeds_b"))[0]
    margin, low, high, sources = paired_bootstrap(a, b, **kw)
    return Verdict(claim, float(a_arr.mean()), float(b_arr.mean()), margin, low, high, a_arr.shape[1], sources)


def units(rows, seed_column: str = "seed", **filters) -> tuple[np.ndarray, np.ndarray | None]:
    """The per-image scores of the selected result rows as [units, images] (rows from experiments.eval_rows:
    a `scores` array each), with each unit's seed from `seed_column` when the rows have it (None otherwise).

    `filters`: column=value or column=[values] (e.g. objective=["slm", "tlm"], metric="accuracy",
    eval="test/pgd"). Units are sorted by every label column, so A and B built with the same filters but one
    changed value pair up unit by unit. Raises a clear error when nothing matches or the rows score
    different numbers of images."""
    import pandas as pd

    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    mask = np.ones(len(df), dtype=bool)
    for col, val in filters.items():
        if col not in df.columns:
            raise KeyError(f"claims.units: the rows have no column {col!r} (columns: {', '.join(map(str, df.columns))})")
        mask &= df[col].isin(val if isinstance(val, (list, tuple, set)) else [val]).to_numpy()
    sel = df[mask]
    if not len(sel):
        raise ValueError(f"claims.units: no result row matches {filters}")
    lengths = {len(x) for x in sel["scores"]}
    if len(lengths) != 1:
        raise ValueError(f"claims.units: the selected rows score different numbers of images {sorted(lengths)}: "
                         f"A and B must be scored on the same test images ({filters})")
    keep = ~np.array([np.isnan(np.asarray(x, dtype=float)).all() for x in sel["scores"]])  # failed stitches
    sel = sel[keep]
    if not len(sel):
        raise ValueError(f"claims.units: every selected stitch failed (NaN) for {filters}")
    x = np.stack([np.asarray(v, dtype=float) for v in sel["scores"]])
    seeds = sel[seed_column].to_numpy() if seed_column in sel.columns else None
    return x, seeds


def judge_rows(claim: Claim, rows, a: dict, b: dict, *, seed_column: str = "seed", **common) -> Verdict:
    """Judge `claim` on result rows: A is the rows matching `common` and `a`, B those matching `common`
    and `b` (filters as in `units`); the interval resamples images, and seeds when the rows carry several."""
    xa, sa = units(rows, seed_column, **common, **a)
    xb, sb = units(rows, seed_column, **common, **b)
    return judge(claim, xa, xb, seeds_a=sa, seeds_b=sb)


def seed_means(rows, seed_column: str = "seed", **filters) -> tuple[np.ndarray, np.ndarray, int]:
    """Per seed, the mean over the selected units of each image's score: ([seeds, images], the seeds in
    sorted order, units per seed). Rows without `seed_column` count as one seed (0). Raises a clear error
    when the seeds hold different numbers of units (a missing stitch would tilt one seed's mean)."""
    x, seeds = units(rows, seed_column, **filters)
    seeds = np.zeros(len(x), dtype=int) if seeds is None else seeds
    order = np.unique(seeds)
    counts = {int(s): int((seeds == s).sum()) for s in order}
    if len(set(counts.values())) != 1:
        raise ValueError(f"claims.seed_means: the seeds hold different numbers of units {counts} for {filters}")
    return np.stack([x[seeds == s].mean(0) for s in order]), order, next(iter(counts.values()))


def paired_difference(rows, plus: dict, minus: dict, *, seed_column: str = "seed",
                      **common) -> tuple[np.ndarray, np.ndarray]:
    """Per seed and test image, the mean score of the `plus` rows minus that of the `minus` rows (filters as
    in `units`, both with `common`): the same stitches scored two ways (with and without markers), or two
    stitch sets trained two ways (k classes against all), on the same images. Both sides must hold the
    same seeds and the same number of units per seed. Returns ([seeds, images], seeds) for `judge`."""
    xp, sp, n_plus = seed_means(rows, seed_column, **common, **plus)
    xm, sm, n_minus = seed_means(rows, seed_column, **common, **minus)
    if not np.array_equal(sp, sm) or n_plus != n_minus:
        raise ValueError(f"claims.paired_difference: {plus} has seeds {sp.tolist()} x {n_plus} units, {minus} has "
                         f"seeds {sm.tolist()} x {n_minus}: a paired difference needs the same units on both sides")
    if xp.shape[1] != xm.shape[1]:
        raise ValueError(f"claims.paired_difference: {xp.shape[1]} vs {xm.shape[1]} images: not the same test images")
    return xp - xm, sp


def judge_all(claim: Claim, parts: Sequence[Verdict]) -> Verdict:
    """A claim that is the conjunction of `parts` (e.g. "the gain is positive AND larger than B's"):
    HOLDS only when every part holds, CONTRADICTED when any part is, INCONCLUSIVE otherwise (an
    intersection-union test: each part at the 95% level keeps the conjunction at 95%). The returned
    verdict carries the binding part's numbers (a contradicted part, else the part with the lowest interval
    end) under `claim`, its A and B named after that part."""
    if not parts:
        raise ValueError(f"claim {claim.id}: judge_all needs at least one part")
    import dataclasses

    contradicted = [p for p in parts if p.verdict == "CONTRADICTED"]
    binding = min(contradicted, key=lambda p: p.ci_high) if contradicted else min(parts, key=lambda p: p.ci_low)
    named = dataclasses.replace(claim, a=f"{binding.claim.a} (binding part of {len(parts)})", b=binding.claim.b)
    return dataclasses.replace(binding, claim=named)


def judge_values(claim: Claim, a: Sequence[float], b: Sequence[float], *, n_boot: int = N_BOOT,
                 level: float = LEVEL, rng_seed: int = 0) -> Verdict:
    """For quantities with no per-image score (CKA, an IRI error): a bootstrap over the repeated values
    (seeds, points) of A and B, paired by position. With a single value each the interval is that point:
    say so by passing more repeats; the verdict is then only as good as one run."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"judge_values needs paired 1-D values of equal length, got {a.shape} and {b.shape}")
    d = a - b
    rng = np.random.default_rng(rng_seed)
    draws = np.array([d[rng.integers(0, len(d), len(d))].mean() for _ in range(n_boot)])
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Verdict(claim, float(a.mean()), float(b.mean()), float(d.mean()), float(low), float(high), len(d),
                   f"{len(d)} paired values")


def table(verdicts: Sequence[Verdict]):
    """The verdicts as a DataFrame with the claims.csv columns."""
    import pandas as pd

    return pd.DataFrame([v.row() for v in verdicts], columns=list(CSV_COLUMNS))


def render(verdicts: Sequence[Verdict]):
    """A readable verdict table for a notebook: claim, figure, values, margin [interval], verdict."""
    df = table(verdicts)
    shown = df[["claim_id", "statement", "figure", "kind"]].copy()
    shown["A vs B"] = [f"{a}: {va:.1f} vs {b}: {vb:.1f}" for a, va, b, vb in zip(df.a, df.value_a, df.b, df.value_b)]
    shown["margin [95% CI]"] = [f"{m:+.1f} [{lo:+.1f}, {hi:+.1f}]" for m, lo, hi in zip(df.margin, df.ci_low, df.ci_high)]
    shown["n"] = df.n
    shown["verdict"] = df.verdict
    return shown


def save(verdicts: Sequence[Verdict], profile: str, notebook: str):
    """Write this notebook's verdicts into figures/<profile>/claims.csv (the other notebooks' rows are kept).

    `notebook`: the notebook's name or number ("01_adversarial" or "01"); its rows replace every earlier row of
    that notebook number, and carry the name given here, whatever the claims themselves call it."""
    import pandas as pd

    from .paths import figures_dir
    from .store import atomic_write_text, file_lock

    path = figures_dir(profile) / "claims.csv"
    rows = table(verdicts).assign(notebook=notebook)
    with file_lock(path):
        old = pd.read_csv(path, dtype={"notebook": str}) if path.exists() else pd.DataFrame(columns=list(CSV_COLUMNS))
        new = pd.concat([old[old.notebook.str[:2] != notebook[:2]], rows], ignore_index=True)
        atomic_write_text(path, new.sort_values(["notebook", "claim_id"]).to_csv(index=False))
    return path


def summary(path) -> str:
    """The README's one-line count of a claims.csv: paper claims by verdict, then per notebook (HOLDS/total),
    then targets and sanity checks apart. `paths.figures_dir(profile) / "claims.csv"` is the usual path."""
    import pandas as pd

    df = pd.read_csv(path, dtype={"notebook": str})
    paper = df[df.kind == "paper"]
    counts = paper.verdict.value_counts()
    per_nb = ", ".join(f"{nb[:2]}: {int((g.verdict == 'HOLDS').sum())}/{len(g)}"
                       for nb, g in paper.groupby("notebook", sort=True))
    others = df[df.kind != "paper"]
    return (f"{len(paper)} paper claims: {int(counts.get('HOLDS', 0))} hold, "
            f"{int(counts.get('CONTRADICTED', 0))} contradicted, {int(counts.get('INCONCLUSIVE', 0))} inconclusive "
            f"({per_nb}); {len(others)} project targets and sanity checks: "
            f"{int((others.verdict == 'HOLDS').sum())} hold")


def judge_proportions(claim: Claim, a: float, n_a: int, b: float, n_b: int | None = None, *, shift: float = 0.0,
                      n_boot: int = N_BOOT, level: float = LEVEL, rng_seed: int = 0) -> Verdict:
    """For accuracies kept only as percentages (a Table 1 row, an explorer lookup): A = a% of n_a images,
    B = b% of n_b images, or a fixed threshold b when n_b is None. Resampling n images with replacement from
    a 0/1 score vector is a binomial draw, so this is the image bootstrap of `judge` without the pairing
    (wider than a paired one when A and B share images). `shift` is added to A (a tolerance: "A + 2 > B")."""
    rng = np.random.default_rng(rng_seed)
    da = rng.binomial(int(n_a), a / 100, n_boot) / int(n_a) * 100 + shift
    db = np.full(n_boot, float(b)) if n_b is None else rng.binomial(int(n_b), b / 100, n_boot) / int(n_b) * 100
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(da - db, [tail, 100 - tail])
    value_a = float(a) + shift
    return Verdict(claim, value_a, float(b), value_a - float(b), float(low), float(high), int(n_a),
                   "images (unpaired)" if n_b is not None else "images")
