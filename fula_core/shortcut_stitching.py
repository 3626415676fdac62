"""Stitching under shortcut markers (FuLA paper §3.2, App. A.2 and B.2; Figs 7, 8, 12 and 19-24).

Front and end models trained on clean data are stitched on training data that carries a shortcut neither
model has seen: a 4x4 marker per image that reveals the class (shortcuts.py draws them). Each stitch is
trained with SLM, TLM, Hint or FuLA (alpha 0) at every stitch point of the profile, for the non-robust
cross-task pair (<cross>_0 -> <end>_0) and same-task pair (<end>_1 -> <end>_0), and scored on the same clean
test images twice: as they are, and with the correct markers of its kind pasted in (the marked test set keeps
the order of the clean subset, so every image is scored both ways). Stitches trained without markers
("none", notebook 01's alpha = 0 stitches: equal specs, shared cache) are the reference.

  marker gain       accuracy on the marked test images minus accuracy on the same images clean: what a
                    stitch gains from reading the marker (the 4x4 patch also hides 16 pixels, so a stitch
                    that ignores it loses a little)
  clean loss        clean test accuracy of the stitch trained without markers minus that of the stitch
                    trained with them (same objective, point, pair and seed)

Each (pair, marker kind, stitch seed) is one training pass with every objective x stitch point. A stitch
seed s is StitchConfig.seed = s (data order, least-squares sample); the marker layout stays the data's
(DataSpec.seed 0), so seed 0 shares its keys with notebook 01's stitches. Claims pool the stitch points and
marker kinds and resample test images, and stitch seeds when the profile has several (claims.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pandas as pd

from . import claims as C
from .config import Profile
from .experiments import (DataSpec, EvalSpec, StitchGroup, baseline_table, check_rows, clean_eval_spec,
                          stitch_train_spec)
from .stitching import StitchConfig, StitchJob

NOTEBOOK = "02"
TASKS = ("cross", "same")
NO_MARKERS = "none"  # the kind of the marker-free reference stitches
TASK_BASED = ("slm", "tlm")
ALIGNMENT_BASED = ("hint", "fula")
KEEP_TOLERANCE = 5.0  # points of clean accuracy Hint/FuLA may lose to the markers and still "keep" it
KIND_LABELS = {"clean": "clean", "pixel": "pixel\n(random place)", "location": "noise\n(class place)",
               "pixel_location": "pixel\n(class place)", "aruco": "ArUco\n(random place)",
               "aruco_location": "ArUco\n(class place)"}
EXAMPLE_KINDS = ("pixel", "location", "pixel_location", "aruco", "aruco_location")  # Fig 12: every configuration


# ----------------------------------------------------------------------------------------------------
# What runs


def end_id(P: Profile) -> str:
    return f"{P.end_dataset}_{P.seeds[0]}"


def front_ids(P: Profile) -> dict[str, str]:
    """Task -> front model id (zoo ids): cross-task <cross>_0, same-task <end>_1."""
    return {"cross": f"{P.cross_dataset}_{P.seeds[0]}", "same": f"{P.end_dataset}_{P.seeds[1]}"}


def seeds_of(P: Profile) -> tuple[int, ...]:
    """The stitch seeds of this testbed: Profile.shortcut_seeds, or notebook 01's stitch_seeds when unset."""
    own = getattr(P, "shortcut_seeds", None)
    return tuple(own) if own is not None else tuple(P.stitch_seeds)


def eval_name(kind: str) -> str:
    """The evaluation name of the marked test set of `kind` (experiments.EvalSpec.name)."""
    return "test" if kind == NO_MARKERS else f"test/{kind}"


@dataclass(frozen=True)
class Testbed:
    """One training pass: a pair (task), the markers in its training data, one stitch seed, one architecture."""

    arch: str
    task: str
    kind: str
    seed: int


@dataclass
class Plan:
    """The jobs and data of the testbed at one profile (cheap: nothing is trained)."""

    profile: Profile
    kinds: tuple[str, ...]  # NO_MARKERS first, then the profile's shortcut kinds
    seeds: tuple[int, ...]
    jobs: list[StitchJob]
    testbeds: list[Testbed] = field(default_factory=list)

    def train_spec(self, kind: str) -> DataSpec:
        """Stitch training data: notebook 01's clean subset, with markers of `kind` pasted per batch."""
        return stitch_train_spec(self.profile, shortcut=None if kind == NO_MARKERS else kind)

    def eval_specs(self, kind: str, dataset: str | None = None) -> list[EvalSpec]:
        """Clean test images, and (for a marked kind) the same images with the correct markers of `kind`."""
        marked = [] if kind == NO_MARKERS else [clean_eval_spec(self.profile, dataset, shortcut=kind)]
        return [clean_eval_spec(self.profile, dataset), *marked]

    def baseline_specs(self, dataset: str) -> list[EvalSpec]:
        """Front and end baselines on clean test data and with the markers of every kind."""
        return [clean_eval_spec(self.profile, dataset),
                *[clean_eval_spec(self.profile, dataset, shortcut=k) for k in self.kinds if k != NO_MARKERS]]

    def stitch_config(self, seed: int) -> StitchConfig:
        return dataclasses.replace(self.profile.stitch, seed=seed)

    def expected_rows(self) -> int:
        """Result rows run() must return: per testbed, every job x evaluation x metric (accuracy, agreement)."""
        return sum(len(self.jobs) * len(self.eval_specs(t.kind)) * 2 for t in self.testbeds)

    def summary(self) -> pd.DataFrame:
        """One row per (architecture, task, kind): stitches per seed, seeds, evaluations, and whether notebook
        01 trains the same stitches (the marker-free ones, at the seeds it shares)."""
        rows = {}
        for t in self.testbeds:
            r = rows.setdefault((t.arch, t.task, t.kind), {
                "arch": t.arch, "task": t.task, "markers": t.kind, "stitches per seed": len(self.jobs), "seeds": [],
                "evaluations": ", ".join(s.name for s in self.eval_specs(t.kind))})
            r["seeds"].append(t.seed)
        out = pd.DataFrame(list(rows.values()))
        shared = set(self.profile.stitch_seeds)
        out["seeds shared with 01"] = [", ".join(str(x) for x in s if x in shared) if k == NO_MARKERS else ""
                                       for k, s in zip(out.markers, out.seeds)]
        out["seeds"] = [", ".join(map(str, s)) for s in out.seeds]
        return out

    def run_config(self) -> dict:
        """What determines every result of the run (for the figure manifest and the tables' config hash)."""
        from .zoo import zoo_configs

        P = self.profile
        return dict(stitch=P.stitch, seeds=self.seeds, train=[self.train_spec(k) for k in self.kinds],
                    evals=self.baseline_specs(P.end_dataset), testbeds=self.testbeds,
                    zoo=[zoo_configs(P, a)[i] for a in P.archs for i in (end_id(P), *front_ids(P).values())])


def plan(P: Profile) -> Plan:
    """Every (architecture, task, marker kind, stitch seed) pass with every objective x stitch point."""
    kinds = (NO_MARKERS, *P.shortcut_kinds)
    seeds = seeds_of(P)
    if not seeds:
        raise ValueError(f"profile {P.name}: no stitch seeds for notebook 02 (set stitch_seeds or shortcut_seeds)")
    jobs = [StitchJob(k, k, o) for o in P.objectives for k in P.stitch_points]
    testbeds = [Testbed(arch, task, kind, seed) for arch in P.archs for task in TASKS for kind in kinds for seed in seeds]
    return Plan(P, kinds, seeds, jobs, testbeds)


def stitch_group(pl: Plan, t: Testbed) -> StitchGroup:
    """The training pass of one testbed: every job on its marked training data, scored clean and marked."""
    from .zoo import zoo_configs

    P = pl.profile
    cfgs = zoo_configs(P, t.arch)
    jobs = tuple(pl.jobs)
    return StitchGroup(cfgs[front_ids(P)[t.task]], cfgs[end_id(P)], pl.stitch_config(t.seed), pl.train_spec(t.kind),
                       jobs, ((jobs, tuple(pl.eval_specs(t.kind))),),
                       (("notebook", "02"), ("arch", t.arch), ("task", t.task), ("markers", t.kind), ("seed", t.seed)))


def stitch_groups(pl: Plan) -> list[StitchGroup]:
    """Every training pass of the notebook, in the order run() takes them."""
    return [stitch_group(pl, t) for t in pl.testbeds]


@dataclass
class Results:
    rows: pd.DataFrame  # one row per testbed x job x evaluation x metric, with per-image `scores`
    baselines: pd.DataFrame  # front / end models on clean and marked test data (accuracy)
    plan: Plan


def run(P: Profile, store, device, plan_: Plan | None = None, *, data_dir=None, progress: bool = True) -> Results:
    """Train what is missing (cached), evaluate every stitch on clean and marked test images, score the
    front and end baselines. Rows: arch, task, kind, seed + Stitcher.evaluate's columns."""
    pl = plan_ if plan_ is not None else plan(P)
    rows, models = [], {}
    for t in pl.testbeds:
        g = stitch_group(pl, t)
        if progress:
            print(f"[{t.arch} | {t.task}-task | markers: {t.kind} | seed {t.seed}] {len(pl.jobs)} jobs", flush=True)
        st = g.stitcher(store, device, data_dir=data_dir, progress=progress)
        (jobs, specs), = g.evals
        rows += [{"arch": t.arch, "task": t.task, "kind": t.kind, "seed": t.seed, **r}
                 for r in st.evaluate(list(jobs), list(specs))]
        models[(t.arch, t.task)] = ((st.front, g.front_cfg), (st.end, g.end_cfg))
    df = pd.DataFrame(rows)
    base = baseline_table(store, models, pl.baseline_specs, device, key_names=("arch", "task"), data_dir=data_dir)
    check_structure(df, pl)
    return Results(df, base, pl)


def check_structure(rows: pd.DataFrame, pl: Plan) -> None:
    """Every testbed has every job x evaluation x metric exactly once; a clear error otherwise."""
    check_rows(rows, pl.expected_rows(), ["arch", "task", "kind", "seed", "job", "eval", "metric"], "notebook 02")


def accuracy_table(res: Results, arch: str | None = None) -> pd.DataFrame:
    """Mean accuracy (over stitch points and seeds) per task and marker kind, on clean and marked test data."""
    acc = res.rows[(res.rows.metric == "accuracy") & (res.rows.arch == (arch or res.plan.profile.archs[0]))]
    acc = acc.assign(on=["clean" if e == "test" else "markers" for e in acc["eval"]])
    return acc.pivot_table(index=["task", "kind"], columns=["objective", "on"], values="value").round(1)


def marker_examples(P: Profile, data_dir=None) -> dict:
    """Figs 7 and 12: the end task's test set clean and with each marker configuration (one draw, seed 1)."""
    from .data import load
    from .shortcuts import add_shortcut

    src = load(P.end_dataset, "test", root=data_dir)
    return {"clean": src, **{k: add_shortcut(src, k, seed=1) for k in EXAMPLE_KINDS}}


# ----------------------------------------------------------------------------------------------------
# Figures


def _styles(kind: str) -> dict[str, str]:
    return {"test": "-"} if kind == NO_MARKERS else {"test": "-", eval_name(kind): "--"}


def figure8(res: Results, arch: str | None = None, tasks=TASKS, title: str | None = None):
    """Fig 8 (and 19-24 per architecture and task): rows tasks, columns marker kinds; solid clean test
    accuracy, dashed with the correct markers; error bars over stitch seeds where there are several."""
    from . import plots

    P = res.plan.profile
    arch = arch or P.archs[0]
    rows = res.rows[res.rows.arch == arch]
    base = res.baselines[res.baselines.arch == arch]
    fig, _ = plots.stitching_grid(rows, base, row_key="task", col_key="kind", row_values=list(tasks),
                                  col_values=list(res.plan.kinds), eval_styles=_styles, objectives=P.objectives,
                                  spread=len(res.plan.seeds) > 1, title=title,
                                  eval_labels={"test": "clean test data",
                                               **{eval_name(k): "test data with markers" for k in res.plan.kinds}},
                                  row_label=lambda t: f"{t}-task",
                                  col_label=lambda k: "no markers" if k == NO_MARKERS else f"markers: {k}")
    return fig


def appendix_figure_names(P) -> list[tuple[str, str, str]]:
    """(arch, task, figure name) of Figs 19-24: only at profiles with more than one architecture."""
    from .plots import SHORTCUT_FIGURES

    if len(P.archs) < 2:
        return []
    return [(arch, task, f"fig{no}_{task}_task_shortcuts_{arch}") for arch in P.archs
            for task, no in zip(TASKS, SHORTCUT_FIGURES[arch])]


def appendix_figures(res: Results) -> dict:
    """Figs 19-24 (profiles with several architectures): name -> figure, one per architecture and task."""
    return {name: figure8(res, arch, (task,), f"{task.capitalize()}-task stitching under shortcuts ({arch})")
            for arch, task, name in appendix_figure_names(res.plan.profile)}


# ----------------------------------------------------------------------------------------------------
# Claims of §3.2 (shortcuts). Every claim pools the profile's stitch points and marker kinds (its main
# architecture); intervals resample test images, and stitch seeds where the rows have several.


def _acc(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows.metric == "accuracy"]


def _marked(rows: pd.DataFrame) -> list[str]:
    return sorted(k for k in set(rows.kind) if k != NO_MARKERS)


def marker_gain(rows, objectives, *, task: str, kinds=None, points=None):
    """Per seed and test image: accuracy with the correct markers minus accuracy on the same image clean,
    averaged over the stitches of `objectives` trained with markers of `kinds` (default: every marked kind)
    at `points` (default: all). Returns ([seeds, images], seeds)."""
    rows = _acc(rows)
    kinds = list(kinds) if kinds is not None else _marked(rows)
    common = dict(task=task, kind=kinds, objective=list(objectives))
    if points is not None:
        common["front_point"] = list(points)
    return C.paired_difference(rows, {"eval": [eval_name(k) for k in kinds]}, {"eval": "test"}, **common)


def clean_loss(rows, objectives, *, task: str):
    """Per seed and test image: clean accuracy of the marker-free stitches minus that of the stitches trained
    with markers (the same objectives and points, one marker-free unit per marked kind)."""
    rows = _acc(rows[rows["eval"] == "test"])
    kinds = _marked(rows)
    marked = rows[(rows.task == task) & rows.kind.isin(kinds)]
    # the marker-free stitch is the reference of every marked kind: repeat its rows once per kind
    ref = pd.concat([rows[(rows.task == task) & (rows.kind == NO_MARKERS)].assign(kind=k, ref=True) for k in kinds])
    both = pd.concat([marked.assign(ref=False), ref], ignore_index=True)
    return C.paired_difference(both, {"ref": True}, {"ref": False}, objective=list(objectives))


def _judge_diff(claim, a, b) -> C.Verdict:
    """Judge per-seed difference matrices a (and b, or a number)."""
    (xa, sa) = a
    if isinstance(b, tuple):
        xb, sb = b
        return C.judge(claim, xa, xb, seeds_a=sa, seeds_b=sb)
    return C.judge(claim, xa, b, seeds_a=sa)


def _claim(cid, statement, a, b, figure="Fig 8", kind="paper") -> C.Claim:
    return C.Claim(cid, NOTEBOOK, figure, statement, a, b, kind)


def _positive_and_larger(cid: str, statement: str, name_a: str, name_b: str, a, b) -> C.Verdict:
    """The conjunction (claims.judge_all) "A > 0 and A > B" on per-seed difference matrices a, b."""
    positive = _judge_diff(_claim("", "", name_a, "0"), a, 0.0)
    larger = _judge_diff(_claim("", "", name_a, name_b), a, b)
    return C.judge_all(_claim(cid, statement, name_a, "see parts"), [positive, larger])


def claim_task_exploits(rows, task: str) -> C.Verdict:
    """Paper (Fig 8): task-based stitching (SLM/TLM) exploits the shortcut markers, more than Hint/FuLA.

    Tested as the statement itself, a conjunction (claims.judge_all): the marker gain of SLM/TLM (accuracy
    with the correct markers minus without, per test image) is positive, AND it exceeds Hint/FuLA's gain.
    Negative gains cannot hold. Sources: test images (paired: the same images with and without markers),
    stitch seeds when several."""
    stmt = f"{task}-task: SLM/TLM exploit shortcut markers (gain > 0) and more than Hint/FuLA"
    gt, ga = marker_gain(rows, TASK_BASED, task=task), marker_gain(rows, ALIGNMENT_BASED, task=task)
    return _positive_and_larger(f"02_{task}_task_based_exploit_markers", stmt, "SLM/TLM marker gain",
                                "Hint/FuLA marker gain", gt, ga)


def claim_task_loses_clean(rows, task: str) -> C.Verdict:
    """Paper (Fig 8): task-based stitching loses clean accuracy by exploiting the markers, more than Hint/FuLA.

    Conjunction: the clean loss of SLM/TLM (clean accuracy of the marker-free stitch minus the marked one's,
    on the same clean test images) is positive, AND larger than Hint/FuLA's. Sources: test images, stitch
    seeds when several."""
    stmt = f"{task}-task: SLM/TLM lose clean accuracy to the markers (loss > 0) and more than Hint/FuLA"
    lt, la = clean_loss(rows, TASK_BASED, task=task), clean_loss(rows, ALIGNMENT_BASED, task=task)
    return _positive_and_larger(f"02_{task}_task_based_lose_clean", stmt, "SLM/TLM clean loss",
                                "Hint/FuLA clean loss", lt, la)


def claim_alignment_keeps_clean(rows, task: str, tolerance: float = KEEP_TOLERANCE) -> C.Verdict:
    """Paper (Fig 8): alignment-based stitching (Hint/FuLA) keeps its clean accuracy under markers.

    A = the tolerance (points), B = Hint/FuLA's clean loss to the markers: holds when the loss is below the
    tolerance with its interval. Sources: test images, stitch seeds when several."""
    loss = clean_loss(rows, ALIGNMENT_BASED, task=task)
    claim = _claim(f"02_{task}_alignment_keeps_clean",
                   f"{task}-task: Hint/FuLA keep their clean accuracy under markers (loss < {tolerance:g} points)",
                   f"{tolerance:g} points", "Hint/FuLA clean loss")
    v = _judge_diff(claim, (tolerance - loss[0], loss[1]), 0.0)  # margin = tolerance - loss
    return dataclasses.replace(v, value_a=tolerance, value_b=tolerance - v.value_a)


def claim_fula_beats_hint(rows) -> C.Verdict:
    """Paper (§3.2): FuLA beats Hint in clean accuracy when trained on marked data.

    A = FuLA's, B = Hint's clean test accuracy, stitches trained with markers, pooled over tasks, kinds and
    points. Sources: test images, stitch seeds when several."""
    rows = _acc(rows[rows["eval"] == "test"])
    d = C.paired_difference(rows, {"objective": "fula"}, {"objective": "hint"}, kind=_marked(rows))
    return _judge_diff(_claim("02_fula_beats_hint", "FuLA keeps more clean accuracy than Hint under shortcuts",
                              "FuLA clean accuracy", "Hint clean accuracy", figure="Fig 8"), d, 0.0)


def claim_location_cross_vs_same(rows, point: int) -> C.Verdict:
    """Paper (§3.2): Hint/FuLA still pick up location markers where the models are functionally dissimilar
    (a deep layer, cross-task), but not between same-task models.

    Conjunction: at `point` (the deepest of the profile), Hint/FuLA's marker gain on location markers is
    positive cross-task, AND larger than same-task. Both pairs share the end model and test images, so the
    cross/same difference is paired per image. Sources: test images, stitch seeds when several."""
    from .plots import plot_x

    g = {t: marker_gain(rows, ALIGNMENT_BASED, task=t, kinds=["location"], points=[point]) for t in TASKS}
    return _positive_and_larger("02_alignment_location_cross_task",
                                f"Hint/FuLA exploit location markers at layer {plot_x(point)} cross-task (gain > 0) "
                                f"and more than same-task", "Hint/FuLA location gain, cross-task", "same-task",
                                g["cross"], g["same"])


def claims(res: Results, P: Profile | None = None) -> list[C.Verdict]:
    """Every verdict of notebook 02 on the main architecture's rows."""
    P = P or res.plan.profile
    rows = res.rows[res.rows.arch == P.archs[0]]
    out = []
    for task in TASKS:
        out += [claim_task_exploits(rows, task), claim_task_loses_clean(rows, task),
                claim_alignment_keeps_clean(rows, task)]
    out.append(claim_fula_beats_hint(rows))
    if "location" in P.shortcut_kinds:
        out.append(claim_location_cross_vs_same(rows, max(P.stitch_points)))
    return out
