"""Stitching on a subset of classes (FuLA paper §3.2, label shift; App. B.3; Figs 9 and 25-27).

To relate stitching to overfitting under label shift, the stitch of a non-robust pair is trained only on the
samples of the first k classes of the end task and scored on all K classes. Every stitch starts from the
least-squares (DM) solution on samples of the same k classes; that DM solution itself (no training) is scored
too, as a reference. Pairs: cross-task (<cross>_0 -> <end>_0) and same-task (<end>_1 -> <end>_0); objectives
SLM, TLM, Hint and FuLA (alpha 0) at every stitch point of the profile.

How many images the stitch sees for k classes is Profile.class_subset_sampling: "per_class" (paper 1, the
authors' code) keeps every stitch-training image of the first k classes, so the count grows with k;
"fixed_total" draws the same number for every k from the first k classes, so only the label distribution
changes. With k = K the data are the ordinary stitch data: those stitches are notebook 01's alpha = 0
stitches (equal specs, shared cache, at stitch seed 0).

Every stitch is scored on the same clean test images (the profile's evaluation subset), so any two
accuracies are paired per image. A stitch seed s is StitchConfig.seed = s (data order, least-squares
sample); claims pool stitch points and resample test images, and stitch seeds where the profile has several.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pandas as pd

from . import claims as C
from .config import Profile
from .experiments import DataSpec, EvalSpec, StitchGroup, check_rows, clean_eval_spec, stitch_train_spec
from .stitching import StitchConfig, StitchJob

NOTEBOOK = "03"
TASKS = ("cross", "same")
TASK_BASED = ("slm", "tlm")
ALIGNMENT_BASED = ("hint", "fula")


def end_id(P: Profile) -> str:
    return f"{P.end_dataset}_{P.seeds[0]}"


def front_ids(P: Profile) -> dict[str, str]:
    """Task -> front model id (zoo ids): cross-task <cross>_0, same-task <end>_1."""
    return {"cross": f"{P.cross_dataset}_{P.seeds[0]}", "same": f"{P.end_dataset}_{P.seeds[1]}"}


def num_classes(P: Profile) -> int:
    from .data import DATASET_INFO

    return DATASET_INFO[P.end_dataset]["num_classes"]


def seeds_of(P: Profile) -> tuple[int, ...]:
    """The stitch seeds of this testbed: Profile.class_subset_seeds, or notebook 01's stitch_seeds when unset."""
    own = getattr(P, "class_subset_seeds", None)
    return tuple(own) if own is not None else tuple(P.stitch_seeds)


@dataclass(frozen=True)
class Testbed:
    """One training pass: a pair (task), the first k classes, one stitch seed, one architecture."""

    arch: str
    task: str
    k: int
    seed: int


@dataclass
class Plan:
    profile: Profile
    ks: tuple[int, ...]
    seeds: tuple[int, ...]
    jobs: list[StitchJob]  # trained stitches
    dm_jobs: list[StitchJob]  # their least-squares starts, scored untrained
    testbeds: list[Testbed] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return num_classes(self.profile)

    def train_spec(self, k: int) -> DataSpec:
        """The stitch data of the first k classes, as Profile.class_subset_sampling says (module docstring)."""
        P, K = self.profile, self.num_classes
        return stitch_train_spec(P, first_classes=None if k >= K else k,
                                 subset_first=P.class_subset_sampling == "per_class" and k < K)

    def eval_spec(self) -> EvalSpec:
        """Clean accuracy on all classes, the profile's evaluation subset."""
        return clean_eval_spec(self.profile)

    def stitch_config(self, seed: int) -> StitchConfig:
        return dataclasses.replace(self.profile.stitch, seed=seed)

    def expected_rows(self) -> int:
        return len(self.testbeds) * (len(self.jobs) + len(self.dm_jobs)) * 2  # accuracy and agreement

    def summary(self, data_dir=None, count_images: bool = True) -> pd.DataFrame:
        """One row per (architecture, task, k): stitches and DM solutions per seed, seeds, stitch-training
        images (loads the training set once when count_images), and whether notebook 01 trains the same."""
        rows = {}
        for t in self.testbeds:
            r = rows.setdefault((t.arch, t.task, t.k), {
                "arch": t.arch, "task": t.task, "k": t.k, "stitches per seed": len(self.jobs),
                "DM per seed": len(self.dm_jobs), "seeds": []})
            r["seeds"].append(t.seed)
        out = pd.DataFrame(list(rows.values()))
        if count_images:
            counts = {k: len(self.train_spec(k).load(data_dir=data_dir)) for k in self.ks}
            out["training images"] = [counts[k] for k in out.k]
        shared = set(self.profile.stitch_seeds)
        out["seeds shared with 01"] = [", ".join(str(x) for x in s if x in shared) if k == self.num_classes else ""
                                       for k, s in zip(out.k, out.seeds)]
        out["seeds"] = [", ".join(map(str, s)) for s in out.seeds]
        return out

    def run_config(self) -> dict:
        from .zoo import zoo_configs

        P = self.profile
        return dict(stitch=P.stitch, seeds=self.seeds, train=[self.train_spec(k) for k in self.ks],
                    evals=[self.eval_spec()], testbeds=self.testbeds,
                    zoo=[zoo_configs(P, a)[i] for a in P.archs for i in (end_id(P), *front_ids(P).values())])


def plan(P: Profile) -> Plan:
    """Every (architecture, task, k, stitch seed) pass: every objective x stitch point plus the DM solutions."""
    K = num_classes(P)
    if K not in P.class_subset_ks:
        raise ValueError(f"profile {P.name}: class_subset_ks {P.class_subset_ks} must include k = {K} (all classes), "
                         f"the reference every claim compares with")
    seeds = seeds_of(P)
    if not seeds:
        raise ValueError(f"profile {P.name}: no stitch seeds for notebook 03 (set stitch_seeds or class_subset_seeds)")
    jobs = [StitchJob(p, p, o) for o in P.objectives for p in P.stitch_points]
    dm_jobs = [StitchJob(p, p, "dm") for p in P.stitch_points]
    testbeds = [Testbed(arch, task, k, s) for arch in P.archs for task in TASKS for k in P.class_subset_ks for s in seeds]
    return Plan(P, tuple(P.class_subset_ks), seeds, jobs, dm_jobs, testbeds)


def stitch_group(pl: Plan, t: Testbed) -> StitchGroup:
    """The training pass of one testbed: every job and DM solution on the first k classes, scored on all."""
    from .zoo import zoo_configs

    P = pl.profile
    cfgs = zoo_configs(P, t.arch)
    jobs = tuple(pl.jobs + pl.dm_jobs)
    return StitchGroup(cfgs[front_ids(P)[t.task]], cfgs[end_id(P)], pl.stitch_config(t.seed), pl.train_spec(t.k),
                       jobs, ((jobs, (pl.eval_spec(),)),),
                       (("notebook", NOTEBOOK), ("arch", t.arch), ("task", t.task), ("k", t.k), ("seed", t.seed)))


def stitch_groups(pl: Plan) -> list[StitchGroup]:
    """Every training pass of the notebook, in the order run() takes them."""
    return [stitch_group(pl, t) for t in pl.testbeds]


@dataclass
class Results:
    rows: pd.DataFrame  # one row per testbed x job x metric (clean test, all classes), with per-image `scores`
    plan: Plan


def run(P: Profile, store, device, plan_: Plan | None = None, *, data_dir=None, progress: bool = True) -> Results:
    """Train what is missing (cached) and score every stitch and DM solution on all classes. Rows: arch,
    task, k, seed + Stitcher.evaluate's columns."""
    pl = plan_ if plan_ is not None else plan(P)
    rows = []
    for t in pl.testbeds:
        g = stitch_group(pl, t)
        if progress:
            print(f"[{t.arch} | {t.task}-task | first {t.k} classes | seed {t.seed}] {len(pl.jobs)} jobs "
                  f"+ {len(pl.dm_jobs)} DM", flush=True)
        st = g.stitcher(store, device, data_dir=data_dir, progress=progress)
        (jobs, specs), = g.evals
        rows += [{"arch": t.arch, "task": t.task, "k": t.k, "seed": t.seed, **r}
                 for r in st.evaluate(list(jobs), list(specs))]
    df = pd.DataFrame(rows)
    check_structure(df, pl)
    return Results(df, pl)


def check_structure(rows: pd.DataFrame, pl: Plan) -> None:
    """Every testbed has every job x metric exactly once; a clear error otherwise."""
    check_rows(rows, pl.expected_rows(), ["arch", "task", "k", "seed", "job", "eval", "metric"], "notebook 03")


def accuracy_table(res: Results, arch: str | None = None) -> pd.DataFrame:
    """Mean accuracy on all classes (over stitch points and seeds) per task and k, one column per objective."""
    rows = res.rows
    acc = rows[(rows.metric == "accuracy") & (rows.arch == (arch or res.plan.profile.archs[0]))]
    return acc.pivot_table(index=["task", "k"], columns="objective", values="value").round(1)


def figure9(res: Results, arch: str | None = None, title: str | None = None):
    """Fig 9 (25-27 per architecture): accuracy on all classes against k, one panel per stitch point and
    their mean, rows cross- and same-task; DM dotted, chance 1/K; error bars over seeds where several."""
    from . import plots

    P = res.plan.profile
    arch = arch or P.archs[0]
    rows = res.rows[res.rows.arch == arch]
    objectives = [*P.objectives, "dm"]
    fig, axes = plots.class_subset_grid(rows, row_values=list(TASKS), objectives=objectives,
                                        row_label=lambda t: f"{t}-task", chance=100 / res.plan.num_classes, title=title,
                                        spread=len(res.plan.seeds) > 1)
    return fig


def appendix_figure_names(P) -> list[tuple[str, str]]:
    """(arch, figure name) of Figs 25-27: only at profiles with more than one architecture."""
    from .plots import CLASS_SUBSET_FIGURES

    if len(P.archs) < 2:
        return []
    return [(a, f"fig{CLASS_SUBSET_FIGURES[a]}_class_subsets_{a}") for a in P.archs]


def appendix_figures(res: Results) -> dict:
    """Figs 25-27 (profiles with several architectures): name -> figure."""
    return {name: figure9(res, a, f"Stitching on a subset of classes ({a})")
            for a, name in appendix_figure_names(res.plan.profile)}


# ----------------------------------------------------------------------------------------------------
# Claims of §3.2 (label shift). Accuracies are on all classes, on the main architecture, pooled over the
# profile's stitch points; "few classes" are the profile's k below K. Intervals resample test images, and
# stitch seeds where the rows have several.


def _acc(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[(rows.metric == "accuracy") & (rows.objective != "dm")]


def few_ks(rows) -> list[int]:
    K = int(max(rows.k))
    return sorted(int(k) for k in set(rows.k) if k < K)


def _claim(cid, statement, a, b, figure="Fig 9") -> C.Claim:
    return C.Claim(cid, NOTEBOOK, figure, statement, a, b)


def _judge(claim, diff) -> C.Verdict:
    x, seeds = diff
    return C.judge(claim, x, 0.0, seeds_a=seeds)


def _named(v: C.Verdict, a: str, b: str, value_a: float, value_b: float) -> C.Verdict:
    """A verdict on a per-image difference, with A and B named and valued (margin = value_a - value_b)."""
    return dataclasses.replace(v, claim=dataclasses.replace(v.claim, a=a, b=b), value_a=value_a, value_b=value_b)


def _mean(rows, **f) -> float:
    x, _ = C.units(rows, **f)
    return float(x.mean())


def claim_fewer_classes_worse(rows, task: str) -> C.Verdict:
    """Paper (Fig 9): every method underperforms when the stitch is trained on few classes.

    Conjunction over the objectives (claims.judge_all): for each, accuracy on all classes when trained on
    all K classes (A) minus when trained on the fewest k of the profile (B), per test image, > 0.
    Sources: test images, stitch seeds when several."""
    acc = _acc(rows[rows.task == task])
    K, kmin = int(max(acc.k)), int(min(acc.k))
    parts = []
    for o in sorted(set(acc.objective)):
        d = C.paired_difference(acc, {"k": K}, {"k": kmin}, objective=o)
        v = _judge(_claim("", "", "", ""), d)
        parts.append(_named(v, f"{o} trained on {K} classes", f"on {kmin}", _mean(acc, objective=o, k=K),
                            _mean(acc, objective=o, k=kmin)))
    return C.judge_all(_claim(f"03_{task}_few_classes_worse",
                              f"{task}-task: every objective does worse on all classes trained on {kmin} class(es) "
                              f"than on all {K}", "trained on all classes", "few"), parts)


def claim_task_overfit_more(rows, task: str) -> C.Verdict:
    """Paper (Fig 9): with few classes, TLM and SLM overfit more than Hint and FuLA.

    A = SLM/TLM's drop (accuracy on all classes trained on all K classes minus trained on the first k), B =
    Hint/FuLA's, per test image, pooled over the profile's k < K and stitch points. Sources: test images,
    stitch seeds when several."""
    acc = _acc(rows[rows.task == task])
    K, few = int(max(acc.k)), few_ks(acc)

    def drop(objs):
        # the all-class stitch is the reference of every k: repeat it once per k so the units pair up
        ref = pd.concat([acc[(acc.k == K) & acc.objective.isin(objs)].assign(k_few=k, ref=True) for k in few])
        sub = acc[acc.k.isin(few) & acc.objective.isin(objs)].assign(k_few=lambda d: d.k, ref=False)
        return C.paired_difference(pd.concat([ref, sub], ignore_index=True), {"ref": True}, {"ref": False})

    (xt, s), (xa, _) = drop(list(TASK_BASED)), drop(list(ALIGNMENT_BASED))
    v = C.judge(_claim(f"03_{task}_task_based_overfit_more",
                       f"{task}-task: with few classes (k in {few}) SLM/TLM lose more accuracy on all classes than "
                       f"Hint/FuLA", "SLM/TLM drop", "Hint/FuLA drop"), xt, xa, seeds_a=s, seeds_b=s)
    return v


def _best(rows, objective: str, others, cid: str, statement: str) -> C.Verdict:
    """Conjunction: `objective`'s accuracy above each of `others`' (paired per image, pooled over rows)."""
    parts = []
    for o in others:
        d = C.paired_difference(rows, {"objective": objective}, {"objective": o})
        parts.append(_named(_judge(_claim("", "", "", ""), d), objective, o, _mean(rows, objective=objective),
                            _mean(rows, objective=o)))
    return C.judge_all(_claim(cid, statement, objective, "each other objective"), parts)


def claim_fula_best_cross(rows) -> C.Verdict:
    """Paper (Fig 9): cross-task, FuLA keeps the highest accuracy on all classes when trained on few classes.

    Conjunction: FuLA above SLM, TLM and Hint, paired per image, pooled over k < K and stitch points.
    Sources: test images, stitch seeds when several."""
    acc = _acc(rows[rows.task == "cross"])
    few = few_ks(acc)
    sel = acc[acc.k.isin(few)]
    return _best(sel, "fula", [o for o in sorted(set(sel.objective)) if o != "fula"], "03_cross_fula_best_few_classes",
                 f"cross-task: FuLA keeps the highest accuracy on all classes trained on few classes (k in {few})")


def claim_fula_best_same_one_class(rows) -> C.Verdict:
    """Paper (Fig 9): same-task, FuLA is best when the stitch is trained on a single class (the fewest k).

    Conjunction: FuLA above SLM, TLM and Hint at the smallest k, paired per image, pooled over stitch points.
    Sources: test images, stitch seeds when several."""
    acc = _acc(rows[rows.task == "same"])
    kmin = int(min(acc.k))
    sel = acc[acc.k == kmin]
    return _best(sel, "fula", [o for o in sorted(set(sel.objective)) if o != "fula"], "03_same_fula_best_fewest_classes",
                 f"same-task: FuLA is best trained on {kmin} class(es)")


def claim_tlm_lags_same(rows) -> C.Verdict | None:
    """Paper (Fig 9): same-task, beyond a single class SLM, Hint and FuLA are comparable and TLM lags.

    Tested: TLM lags, as a conjunction: SLM, Hint and FuLA each above TLM, paired per image, pooled over the
    k strictly between the fewest and K, and the stitch points ("comparable" asserts no direction and is
    not tested). None when the profile has no such k. Sources: test images, stitch seeds when several."""
    acc = _acc(rows[rows.task == "same"])
    mid = [k for k in few_ks(acc) if k > min(acc.k)]
    if not mid:
        return None
    sel = acc[acc.k.isin(mid)]
    parts = []
    for o in sorted(set(sel.objective) - {"tlm"}):
        d = C.paired_difference(sel, {"objective": o}, {"objective": "tlm"})
        parts.append(_named(_judge(_claim("", "", "", ""), d), o, "tlm", _mean(sel, objective=o),
                            _mean(sel, objective="tlm")))
    return C.judge_all(_claim("03_same_tlm_lags", f"same-task, k in {mid}: TLM is below SLM, Hint and FuLA",
                              "each other objective", "tlm"), parts)


def claims(res: Results, P: Profile | None = None) -> list[C.Verdict]:
    """Every verdict of notebook 03 on the main architecture's rows."""
    P = P or res.plan.profile
    rows = res.rows[res.rows.arch == P.archs[0]]
    out = []
    for task in TASKS:
        out += [claim_fewer_classes_worse(rows, task), claim_task_overfit_more(rows, task)]
    out += [claim_fula_best_cross(rows), claim_fula_best_same_one_class(rows)]
    lag = claim_tlm_lags_same(rows)
    return out + ([lag] if lag is not None else [])
