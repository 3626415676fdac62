"""Stitching under adversarial training (FuLA paper §3.1, App. A.2 and B.1; Figs 3-6, 13-18).

Per architecture, task (cross: the other data set's front; same: a second seed of the end task) and front/end
robustness combination (non-robust or Madry-robust, four combinations), one front/end pair. Every pair gets
the grid objective x alpha x stitch point (i -> i): a 1x1-convolution stitch, least-squares initialised, then
trained with SLM, TLM, Hint or FuLA on a share alpha of PGD inputs crafted against the stitched model itself.
Each stitched model is scored on clean test images and on a fixed test subset attacked against it (PGD at the
CPU profiles, AutoAttack 'rand' at `paper`), at the profile's evaluation eps (`Profile.adv_eval_eps`).

  Fig. 3   DM (the closed-form least-squares stitch on `lstsq_samples` images, no BatchNorm update) against
           Hint (the same objective trained by gradient), non-robust pairs, alpha 0, clean accuracy
  Fig. 4/5 clean and robust accuracy against the stitch point, front and end baselines at the ends
  Fig. 6   same-task pairs: (a) linear CKA at the penultimate layer between the end model and the DM stitched
           model on inputs attacked against the stitched model; (b) FuLA with only its last hint, trained at
           the largest alpha

Adversarial stitches (alpha > 0) may train with their own StitchConfig (`Profile.adv_stitch`: more, smaller
Adam steps at the CPU profiles) and on their own training subset; clean stitches use `Profile.stitch` and the
standard training data, so notebooks 02 and 03 reuse them (equal cache keys). Every stitch is trained once per
stitch seed (`Profile.stitch_seeds`): its own data order, least-squares sample and PGD starts; the rows carry
the seed in a `seed` column and the claims cluster their intervals over it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from . import claims as C
from . import metrics, plots
from .config import Profile
from .experiments import (DataSpec, EvalSpec, StitchGroup, adv_train_spec, baseline_table, clean_eval_spec,
                          robust_eval_spec, stitch_train_spec)
from .models import NUM_STITCH_POINTS, eval_mode
from .stitching import StitchConfig, StitchJob

ADVERSARIAL_VERSION = 1  # the CKA cache key of Fig. 6a
NB = "01"
TASKS = ("cross", "same")
# names shared with the figures (plots): objectives by family, robustness combinations in the paper's order
TASK_BASED, ALIGNMENT_BASED = plots.TASK_BASED, plots.ALIGNMENT_BASED
ROBUSTNESS_COMBOS, APPENDIX_FIGURES, pair_label = plots.ROBUSTNESS_COMBOS, plots.ADVERSARIAL_FIGURES, plots.pair_label
PAIRS = tuple(pair_label(f, e) for f, e in ROBUSTNESS_COMBOS)
NR_NR, R_NR, NR_R, R_R = PAIRS
PAIR_TAGS = {NR_NR: "nr_nr", R_NR: "r_nr", NR_R: "nr_r", R_R: "r_r"}  # for claim ids


def last_hint_weights(end_point: int) -> tuple[float, ...]:
    """FuLA weights with every term 0 but the last hint (Fig. 6b): (0, ..., 0, 1), 9 - j terms."""
    n = NUM_STITCH_POINTS - end_point
    return tuple([0.0] * (n - 1) + [1.0])


# ----------------------------------------------------------------------------------------------------
# What runs


@dataclass(frozen=True)
class Testbed:
    """One front/end pair and the jobs it trains: `jobs` are scored clean and robust, `dm_jobs` clean only."""

    arch: str
    task: str
    pair: str
    front_id: str
    end_id: str
    front_cfg: object
    end_cfg: object
    jobs: tuple[StitchJob, ...]
    dm_jobs: tuple[StitchJob, ...] = ()
    cka: bool = False  # Fig. 6a: CKA of the DM stitches on adversarial inputs


@dataclass
class Plan:
    """Everything notebook 01 trains and scores, before anything runs."""

    testbeds: list[Testbed]
    seeds: tuple[int, ...]
    clean_cfg: StitchConfig  # alpha = 0 stitches (shared with notebooks 02, 03)
    adv_cfg: StitchConfig  # alpha > 0 stitches
    train: DataSpec
    adv_train: DataSpec
    clean: EvalSpec
    robust: EvalSpec
    top_alpha: float
    main_arch: str
    objectives: tuple[str, ...]  # of the grid (Figs 4, 5)

    def summary(self) -> pd.DataFrame:
        """One row per testbed: trained jobs per seed, how many adversarial, DM solutions, CKA values."""
        return pd.DataFrame([{"arch": t.arch, "task": t.task, "pair": t.pair, "front": t.front_id, "end": t.end_id,
                              "trained jobs": len(t.jobs), "of which adversarial": sum(j.alpha > 0 for j in t.jobs),
                              "DM (closed form)": len(t.dm_jobs), "stitch seeds": len(self.seeds)}
                             for t in self.testbeds])

    def describe(self) -> str:
        """A few lines on the data, the evaluations and the stitch training."""
        a, c = self.adv_cfg, self.clean_cfg

        def steps(cfg, spec):
            return f"{cfg.epochs} epochs x batch {cfg.batch_size} on {spec.subset or 'all'} images, Adam lr {cfg.lr:g}"
        return (f"clean: {self.clean.name} on {self.clean.data.subset or 'all'} images | robust: {self.robust.name} "
                f"eps {self.robust.eps:g} on {self.robust.data.subset} images\n"
                f"alpha = 0 stitches: {steps(c, self.train)}\n"
                f"alpha > 0 stitches: {steps(a, self.adv_train)}, PGD-{a.pgd_steps} eps {a.pgd_eps:g} step {a.pgd_step:g}\n"
                f"stitch seeds {self.seeds}")


def front_ids(P: Profile) -> dict[str, str]:
    return {"cross": f"{P.cross_dataset}_{P.seeds[0]}", "same": f"{P.end_dataset}_{P.seeds[1]}"}


def adv_stitch_config(P: Profile) -> StitchConfig:
    """The StitchConfig of alpha > 0 stitches: `Profile.adv_stitch`, else the profile's stitch config."""
    return P.adv_stitch if P.adv_stitch is not None else P.stitch


def eval_specs(P: Profile, dataset: str | None = None) -> list[EvalSpec]:
    """[clean, robust] on `dataset` (default: the end task): robust at the profile's evaluation eps."""
    return [clean_eval_spec(P, dataset), robust_eval_spec(P, dataset, eps=P.adv_eval_eps)]


def plan(P: Profile) -> Plan:
    """The testbeds and their jobs. On top of the grid, for the main architecture: DM stitches for Fig. 3 (the
    non-robust pairs) and Fig. 6a (the same-task pairs), and last-hint FuLA at the largest alpha (Fig. 6b)."""
    from .zoo import zoo_configs

    top = max(P.alphas)
    main = P.archs[0]
    end_id, fronts = f"{P.end_dataset}_{P.seeds[0]}", front_ids(P)
    grid = [StitchJob(k, k, o, a) for a in P.alphas for o in P.objectives for k in P.stitch_points]
    hint0 = [StitchJob(k, k, "hint") for k in P.stitch_points]
    dm = tuple(StitchJob(k, k, "dm") for k in P.stitch_points)
    last = [StitchJob(k, k, "fula", top, last_hint_weights(k)) for k in P.stitch_points]
    testbeds = []
    for arch in P.archs:
        cfgs = zoo_configs(P, arch)
        for task in TASKS:
            for (fr, er), pair in zip(ROBUSTNESS_COMBOS, PAIRS):
                f_id, e_id = fronts[task] + (" robust" if fr else ""), end_id + (" robust" if er else "")
                jobs, dms = list(grid), ()
                if arch == main and pair == NR_NR:  # Fig. 3
                    jobs += [j for j in hint0 if j not in jobs]
                    dms = dm
                if arch == main and task == "same":  # Fig. 6
                    jobs += last
                    dms = dm
                testbeds.append(Testbed(arch, task, pair, f_id, e_id, cfgs[f_id], cfgs[e_id], tuple(jobs), dms,
                                        cka=arch == main and task == "same"))
    clean, robust = eval_specs(P)
    return Plan(testbeds, tuple(P.stitch_seeds), P.stitch, adv_stitch_config(P), stitch_train_spec(P),
                adv_train_spec(P), clean, robust, top, main, tuple(P.objectives))


# ----------------------------------------------------------------------------------------------------
# Running it


@dataclass
class Results:
    """Tidy rows of notebook 01: `rows` (every stitched model x eval x metric, with per-image `scores`),
    `baselines` (front and end models, clean and robust), `cka` (Fig. 6a: pair, seed, front_point, value)."""

    rows: pd.DataFrame
    baselines: pd.DataFrame
    cka: pd.DataFrame
    plan: Plan = field(repr=False)


def testbed_groups(pl: Plan, t: Testbed, seed: int) -> list[StitchGroup]:
    """The training passes of one testbed at one stitch seed: one for all its jobs when alpha > 0 stitches
    train with the clean ones' config and data, else [clean and DM jobs, alpha > 0 jobs]. Evaluations: every
    trained stitch clean and robust, the DM solutions clean only."""
    clean_jobs = tuple(j for j in t.jobs if j.alpha == 0)
    adv_jobs = tuple(j for j in t.jobs if j.alpha > 0)
    specs = (pl.clean, pl.robust)
    clean_cfg, adv_cfg = dataclasses.replace(pl.clean_cfg, seed=seed), dataclasses.replace(pl.adv_cfg, seed=seed)
    labels = (("notebook", NB), ("arch", t.arch), ("task", t.task), ("pair", t.pair), ("seed", seed))
    group = lambda cfg, train, jobs, evals, kind: StitchGroup(  # noqa: E731
        t.front_cfg, t.end_cfg, cfg, train, jobs, evals, labels + (("stitches", kind),))
    if adv_cfg == clean_cfg and pl.adv_train == pl.train:  # every missing job of the pair in one training pass
        return [group(clean_cfg, pl.train, clean_jobs + adv_jobs + t.dm_jobs,
                      ((clean_jobs, specs), (adv_jobs, specs), (t.dm_jobs, specs[:1])), "all")]
    return [group(clean_cfg, pl.train, clean_jobs + t.dm_jobs, ((clean_jobs, specs), (t.dm_jobs, specs[:1])), "clean"),
            group(adv_cfg, pl.adv_train, adv_jobs, ((adv_jobs, specs),), "adversarial")]


def stitch_groups(pl: Plan) -> list[StitchGroup]:
    """Every training pass of the notebook, in the order run() takes them."""
    return [g for t in pl.testbeds for seed in pl.seeds for g in testbed_groups(pl, t, seed)]


def objective_name(job: StitchJob) -> str:
    """The objective column: 'fula_last' for FuLA with only its last hint (Fig. 6b)."""
    return "fula_last" if job.objective == "fula" and job.fula_weights is not None else job.objective


def run(P: Profile, store, device, plan_: Plan | None = None, *, data_dir=None, progress: bool = True) -> Results:
    """Train what is missing (cached, one multi-job pass per pair, seed and training set) and score it."""
    pl = plan_ or plan(P)
    specs = [pl.clean, pl.robust]
    rows, cka_rows, models = [], [], {}
    for t in pl.testbeds:
        clean_jobs = [j for j in t.jobs if j.alpha == 0]
        adv_jobs = [j for j in t.jobs if j.alpha > 0]
        for seed in pl.seeds:
            if progress:
                print(f"[{t.arch} | {t.task}-task | {t.pair} | seed {seed}] {len(t.jobs)} jobs + {len(t.dm_jobs)} DM",
                      flush=True)
            (front, _), (end, _) = models.get((t.arch, t.task, t.pair), ((None, None), (None, None)))
            groups = testbed_groups(pl, t, seed)
            st = groups[0].stitcher(store, device, front=front, end=end, data_dir=data_dir, progress=progress)
            st_adv = st if len(groups) == 1 else groups[1].stitcher(store, device, front=st.front, end=st.end,
                                                                    data_dir=data_dir, progress=progress)
            for g, stitcher in zip(groups, (st, st_adv)):
                stitcher.outcomes(list(g.jobs))
            labels = dict(arch=t.arch, task=t.task, pair=t.pair, seed=seed)
            for stitcher, jobs, sp in ((st, clean_jobs, specs), (st_adv, adv_jobs, specs), (st, list(t.dm_jobs), specs[:1])):
                by_name = {j.name: j for j in jobs}
                rows += [{**r, **labels, "objective": objective_name(by_name[r["job"]])}
                         for r in stitcher.evaluate(jobs, sp)]
            if t.cka:
                cka_rows += [{**labels, "front_point": j.front_point, "value": adversarial_cka(st, j, pl.robust)}
                             for j in t.dm_jobs]
            models[(t.arch, t.task, t.pair)] = ((st.front, t.front_cfg), (st.end, t.end_cfg))
    base = baseline_table(store, models, lambda d: eval_specs(P, d), device, key_names=("arch", "task", "pair"),
                          data_dir=data_dir)
    res = Results(pd.DataFrame(rows), base, pd.DataFrame(cka_rows, columns=["arch", "task", "pair", "seed",
                                                                            "front_point", "value"]), pl)
    check(res)
    return res


def check(res: Results) -> None:
    """Structure: every job x seed x eval x metric has a row, every testbed its baselines, every CKA value."""
    pl, df = res.plan, res.rows
    problems = []
    for t in pl.testbeds:
        sel = df[(df.arch == t.arch) & (df.task == t.task) & (df.pair == t.pair)]
        want = 2 * len(pl.seeds) * (2 * len(t.jobs) + len(t.dm_jobs))
        if len(sel) != want:
            problems.append(f"{t.arch}/{t.task}/{t.pair}: {len(sel)} result rows, expected {want}")
        b = res.baselines
        nb = len(b[(b.arch == t.arch) & (b.task == t.task) & (b.pair == t.pair)]) if len(b) else 0
        if nb != 4:
            problems.append(f"{t.arch}/{t.task}/{t.pair}: {nb} baseline rows, expected 4 (front/end x clean/robust)")
    n_cka = sum(len(t.dm_jobs) for t in pl.testbeds if t.cka) * len(pl.seeds)
    if len(res.cka) != n_cka:
        problems.append(f"{len(res.cka)} CKA values, expected {n_cka}")
    if problems:
        raise RuntimeError("adversarial.run: incomplete results (clear the cache entries of the failing testbed and "
                           "rerun): " + "; ".join(problems))


# ----------------------------------------------------------------------------------------------------
# Fig. 6a: activations and their CKA


@torch.no_grad()
def stitched_activation(model, x: torch.Tensor, point: int) -> torch.Tensor:
    """Activation of a `stitching.StitchedModel` h = g_{>j} o T o f_{<=i} at the end model's stitch point
    `point` (>= j): T's output itself at point j, else g's activation at that later point. Run with the
    job's own BatchNorm statistics in eval mode, exactly as h's forward."""
    job = model.job
    if not job.end_point <= point < NUM_STITCH_POINTS:
        raise IndexError(f"point {point} is not at or after the stitch's end point {job.end_point}")
    with model._job_bn():
        a = model.stitch(model.front.activations_upto(x, job.front_point))
        if point == job.end_point:
            return a
        return model.end.activations_from(a, job.end_point)[point - job.end_point - 1]


@torch.no_grad()
def end_activation(end, x: torch.Tensor, point: int) -> torch.Tensor:
    """The end model's own activation at `point` (eval mode)."""
    with eval_mode(end):
        return end.activations_upto(x, point)


def adversarial_cka(stitcher, job, spec, point: int = NUM_STITCH_POINTS - 1, batch_size: int = 500) -> float:
    """Fig. 6a: linear CKA between the stitched model's and the end model's activations at `point` (the
    penultimate layer by default) on inputs attacked against the stitched model (`spec`: an EvalSpec with
    an attack; clean inputs when its attack is None). Cached in the stitcher's store."""
    from .experiments import attack_inputs

    key = {"stitch": stitcher.key(job), "eval": spec, "point": point, "what": "adversarial_cka", "version": 1}

    def compute(_ckpt):
        outcome = stitcher.outcomes([job])[0]
        if outcome.error:
            return {"cka": float("nan")}
        model = outcome.model(stitcher.front, stitcher.end, stitcher.cfg.resize)
        model.eval()
        data = spec.data.load(stitcher.device, stitcher.data_dir)
        x = attack_inputs(model, data, spec)
        h = torch.cat([stitched_activation(model, xb, point) for xb in x.split(batch_size)])
        g = torch.cat([end_activation(stitcher.end, xb, point) for xb in x.split(batch_size)])
        return {"cka": metrics.linear_cka(h.float(), g.float())}

    return float(stitcher.store.get_or_compute("adversarial_cka", key, compute)["cka"])


# ----------------------------------------------------------------------------------------------------
# Claims: each compares two quantities with a paired bootstrap over test images, clustered over stitch seeds
# (claims.py). Unit = one stitched model (objective, point, seed); A and B are scored on the same images.


def _claim(id_, figure, statement, a, b, kind="paper") -> C.Claim:
    return C.Claim(id_, NB, figure, statement, a, b, kind)


def _rows(res_or_rows):
    return res_or_rows.rows if isinstance(res_or_rows, Results) else res_or_rows


def _baseline_units(base: pd.DataFrame, seeds: np.ndarray | None, **filters) -> tuple[np.ndarray, np.ndarray | None]:
    """A baseline's per-image scores repeated once per stitch seed (a baseline does not depend on the stitch
    seed; repeating it keeps every seed's A and B together in the clustered bootstrap)."""
    x, _ = C.units(base, **filters)
    x = x.mean(0, keepdims=True)
    if seeds is None:
        return x, None
    s = np.unique(seeds)
    return np.repeat(x, len(s), axis=0), s


def _best_baseline(base: pd.DataFrame, eval_name: str, n_images: int, **filters) -> tuple[str, dict]:
    """The role (front/end) with the higher mean accuracy among the baselines scored on the stitches'
    images (a cross-task front is scored on its own task, other images: only the end qualifies)."""
    sel = base[(base["eval"] == eval_name) & (base["metric"] == "accuracy")]
    for k, v in filters.items():
        sel = sel[sel[k] == v]
    end_data = set(sel[sel["role"] == "end"]["dataset"])  # the stitches are scored on the end model's task
    sel = sel[sel["dataset"].isin(end_data) & np.array([len(s) == n_images for s in sel["scores"]], dtype=bool)]
    if not len(sel):
        raise ValueError(f"no baseline scored on the stitches' {n_images} {eval_name} images for {filters}")
    best = sel.loc[sel["value"].idxmax()]
    return str(best["role"]), {**filters, "role": str(best["role"]), "dataset": str(best["dataset"])}


def claim_task_beats_alignment_robust(rows, task: str, alpha: float, eval_name: str, arch: str | None = None) -> C.Verdict:
    """Headline of §3.1 (Figs 4, 5; NR → NR at the largest alpha): task-based stitching (SLM/TLM) reports robust
    accuracy between two non-robust models that alignment-based stitching (Hint/FuLA) does not.
    A: robust accuracy of the SLM and TLM stitches (every point), B: of the Hint and FuLA stitches. Sources:
    test images, and stitch seeds where there are several."""
    c = _claim(f"adv_tb_gt_ab_robust_{task}", "Fig 4" if task == "cross" else "Fig 5",
               f"{task}-task, {NR_NR}, α = {alpha:g}: SLM/TLM report robust accuracy that Hint/FuLA do not",
               "robust acc. SLM/TLM", "robust acc. Hint/FuLA")
    f = dict(task=task, pair=NR_NR, alpha=alpha, eval=eval_name, metric="accuracy", **({"arch": arch} if arch else {}))
    return C.judge_rows(c, _rows(rows), a={"objective": list(TASK_BASED)}, b={"objective": list(ALIGNMENT_BASED)}, **f)


def claim_fabricated_robustness(rows, base, task: str, alpha: float, eval_name: str,
                                arch: str | None = None) -> C.Verdict:
    """§3.1 (Figs 4, 5): between two non-robust models SLM/TLM *fabricate* robustness: their stitched model is
    more robust than the more robust of its two baselines (the end model; for same-task pairs the front too,
    which is scored on the same images). A: robust accuracy of the SLM/TLM stitches; B: that baseline's, on
    the same attacked test subset (attacked against each model itself). Sources: images, stitch seeds."""
    c = _claim(f"adv_fabricated_{task}", "Fig 4" if task == "cross" else "Fig 5",
               f"{task}-task, {NR_NR}, α = {alpha:g}: SLM/TLM stitched models are more robust than both baselines",
               "robust acc. SLM/TLM", "robust acc. of the better baseline")
    f = dict(task=task, pair=NR_NR, eval=eval_name, metric="accuracy", **({"arch": arch} if arch else {}))
    xa, sa = C.units(_rows(rows), objective=list(TASK_BASED), alpha=alpha, **f)
    role, bf = _best_baseline(base, eval_name, xa.shape[1], task=task, pair=NR_NR, **({"arch": arch} if arch else {}))
    xb, sb = _baseline_units(base, sa, eval=eval_name, metric="accuracy", **bf)
    return C.judge(dataclasses.replace(c, b=f"robust acc. {role} baseline"), xa, xb, seeds_a=sa, seeds_b=sb)


def claim_clean_cost(rows, task: str, alpha: float, eval_name: str, arch: str | None = None) -> C.Verdict:
    """§3.1: SLM/TLM pay for the robustness they report in clean accuracy (NR → NR, the largest alpha).
    A: clean accuracy of the Hint/FuLA stitches, B: of the SLM/TLM stitches. Sources: images, stitch seeds."""
    c = _claim(f"adv_clean_cost_{task}", "Fig 4" if task == "cross" else "Fig 5",
               f"{task}-task, {NR_NR}, α = {alpha:g}: SLM/TLM pay in clean accuracy (below Hint/FuLA)",
               "clean acc. Hint/FuLA", "clean acc. SLM/TLM")
    f = dict(task=task, pair=NR_NR, alpha=alpha, eval=eval_name, metric="accuracy", **({"arch": arch} if arch else {}))
    return C.judge_rows(c, _rows(rows), a={"objective": list(ALIGNMENT_BASED)}, b={"objective": list(TASK_BASED)}, **f)


def claim_alignment_needs_robust_model(rows, task: str, pair: str, alpha: float, eval_name: str,
                                       arch: str | None = None) -> C.Verdict:
    """§3.1: Hint/FuLA reach robust accuracy only with a robust model in the pair. A: robust accuracy of the
    Hint/FuLA stitches of `pair` (a robust front and/or end), B: of those of NR → NR, at the same points and
    seeds, on the same attacked test subset. Sources: images, stitch seeds."""
    c = _claim(f"adv_ab_robust_{task}_{PAIR_TAGS[pair]}", "Fig 4" if task == "cross" else "Fig 5",
               f"{task}-task, α = {alpha:g}: Hint/FuLA are more robust in {pair} than in {NR_NR}",
               f"robust acc. Hint/FuLA, {pair}", f"robust acc. Hint/FuLA, {NR_NR}")
    f = dict(task=task, objective=list(ALIGNMENT_BASED), alpha=alpha, eval=eval_name, metric="accuracy",
             **({"arch": arch} if arch else {}))
    return C.judge_rows(c, _rows(rows), a={"pair": pair}, b={"pair": NR_NR}, **f)


def claim_interpolates(rows, base, task: str, eval_name: str, arch: str | None = None) -> C.Verdict:
    """§3.1 (the alpha = 0 rows of Figs 4, 5): clean stitching interpolates its baselines: no alpha = 0 stitch is
    more accurate than the better of its two models. A: that baseline's clean accuracy (per pair, repeated
    for each of the pair's stitches), B: the alpha = 0 stitches' clean accuracy (every objective, point, pair).
    Sources: images, stitch seeds."""
    c = _claim(f"adv_interpolates_{task}", "Figs 4, 5",
               f"{task}-task, α = 0: stitched clean accuracy stays below the better baseline of each pair",
               "clean acc. of the better baseline", "clean acc. of the α = 0 stitches", kind="sanity")
    rows, xa, xb, sa, sb = _rows(rows), [], [], [], []
    arch_f = {"arch": arch} if arch else {}
    for pair in PAIRS:
        f = dict(task=task, pair=pair, eval=eval_name, metric="accuracy", **arch_f)
        sel = rows[(rows.task == task) & (rows.pair == pair) & (rows.alpha == 0) & (rows.objective != "dm")]
        if not len(sel):
            continue
        x, s = C.units(rows, alpha=0.0, objective=sorted(set(sel.objective)), **f)
        _, bf = _best_baseline(base, eval_name, x.shape[1], task=task, pair=pair, **arch_f)
        b, _ = C.units(base, eval=eval_name, metric="accuracy", **bf)
        xb.append(x), xa.append(np.repeat(b.mean(0, keepdims=True), len(x), axis=0))
        seeds = s if s is not None else np.zeros(len(x), dtype=int)
        sa.append(seeds), sb.append(seeds)
    if not xa:
        raise ValueError(f"claim_interpolates: no alpha = 0 stitches for task {task!r}")
    return C.judge(c, np.concatenate(xa), np.concatenate(xb), seeds_a=np.concatenate(sa), seeds_b=np.concatenate(sb))


def claim_fula_beats_hint(rows, eval_name: str, arch: str | None = None) -> C.Verdict:
    """§3.1: FuLA mostly beats Hint (clean accuracy, every task, pair, alpha and point). A: FuLA's clean
    accuracy, B: Hint's, over the same stitched-model settings. Sources: images, stitch seeds."""
    c = _claim("adv_fula_gt_hint", "Figs 4, 5", "FuLA is more accurate than Hint (clean, all tasks, pairs, α, points)",
               "clean acc. FuLA", "clean acc. Hint")
    f = dict(eval=eval_name, metric="accuracy", **({"arch": arch} if arch else {}))
    rows = _rows(rows)
    hint_settings = set(zip(*[rows[rows.objective == "fula"][k] for k in ("task", "pair", "alpha", "front_point")]))
    sel = rows[[s in hint_settings for s in zip(rows.task, rows.pair, rows.alpha, rows.front_point)]]
    return C.judge_rows(c, sel, a={"objective": "fula"}, b={"objective": "hint"}, **f)


def claim_hint_beats_fula_deepest(rows, alpha: float, point: int, eval_name: str, arch: str | None = None) -> C.Verdict:
    """§3.1 (Fig. 5c): same-task non-robust → robust at the largest alpha, Hint is more accurate than FuLA at the
    deepest layer (FuLA's later hints pull towards a robust end model the front cannot match). A: Hint's clean
    accuracy there, B: FuLA's. Sources: images, stitch seeds."""
    c = _claim("adv_hint_gt_fula_deepest_nr_r", "Fig 5c",
               f"same-task, {NR_R}, α = {alpha:g}: Hint beats FuLA at the deepest layer {point + 1}",
               f"clean acc. Hint, layer {point + 1}", f"clean acc. FuLA, layer {point + 1}")
    f = dict(task="same", pair=NR_R, alpha=alpha, front_point=point, eval=eval_name, metric="accuracy",
             **({"arch": arch} if arch else {}))
    return C.judge_rows(c, _rows(rows), a={"objective": "hint"}, b={"objective": "fula"}, **f)


def _per_seed_drop(rows, pair: str, eval_name: str, last: int, best: int, arch_f: dict):
    """Per-image drop of last-hint FuLA from point `best` to the deepest point, one unit per seed."""
    f = dict(task="same", pair=pair, objective="fula_last", eval=eval_name, metric="accuracy", **arch_f)
    xb, sb = C.units(rows, front_point=best, **f)
    xl, sl = C.units(rows, front_point=last, **f)
    if sb is not None and not np.array_equal(np.sort(sb), np.sort(sl)):
        raise ValueError(f"claim_last_hint_decays: the seeds of points {best} and {last} differ for {pair}")
    sb = sb if sb is not None else np.zeros(len(xb), dtype=int)
    order_b, order_l = np.argsort(sb, kind="stable"), np.argsort(sl if sl is not None else sb, kind="stable")
    return xb[order_b] - xl[order_l], sb[order_b]


def claim_last_hint_decays(rows, eval_name: str, arch: str | None = None) -> C.Verdict:
    """Fig. 6b: FuLA restricted to its last hint loses accuracy with depth most in non-robust → robust (same task).
    Drop of a pair = clean accuracy at its best point minus at the deepest point. A: the drop of NR → R,
    B: the largest drop among the other pairs (chosen by its mean). Sources: images, stitch seeds."""
    rows = _rows(rows)
    arch_f = {"arch": arch} if arch else {}
    sel = rows[(rows.task == "same") & (rows.objective == "fula_last") & (rows["eval"] == eval_name)
               & (rows.metric == "accuracy")]
    if arch:
        sel = sel[sel.arch == arch]
    last = int(sel.front_point.max())
    drops = {}
    for pair in PAIRS:
        p = sel[sel.pair == pair]
        if len(p):
            best = int(p.groupby("front_point")["value"].mean().idxmax())
            drops[pair] = _per_seed_drop(rows, pair, eval_name, last, best, arch_f)
    rival = max((p for p in drops if p != NR_R), key=lambda p: drops[p][0].mean())
    c = _claim("adv_last_hint_decays_nr_r", "Fig 6b",
               f"same-task: FuLA with its last hint decays with depth most for {NR_R}",
               f"drop best → layer {last + 1}, {NR_R}", f"drop, {rival}")
    (xa, sa), (xb, sb) = drops[NR_R], drops[rival]
    return C.judge(c, xa, xb, seeds_a=sa, seeds_b=sb)


def claim_cka_least_similar(cka: pd.DataFrame, point: int | None = None) -> C.Verdict:
    """Fig. 6a: at the penultimate layer the DM stitched model of non-robust → robust is the least similar to its
    end model on adversarial inputs. A: the lowest CKA among the other pairs, B: NR → R's, paired per stitch
    seed (no per-image scores: a bootstrap over seeds; with one seed the interval is that single value)."""
    point = int(cka.front_point.max()) if point is None else point
    at = cka[cka.front_point == point].pivot_table(index="seed", columns="pair", values="value")
    others = [p for p in PAIRS if p != NR_R and p in at.columns]
    c = _claim("adv_cka_least_similar_nr_r", "Fig 6a",
               f"same-task, layer {point + 1}: CKA ranks {NR_R} least similar",
               "lowest CKA of the other pairs", f"CKA {NR_R}")
    return C.judge_values(c, at[others].min(axis=1).to_numpy(), at[NR_R].to_numpy())


def claim_hint_beats_dm(rows, task: str, eval_name: str, arch: str | None = None) -> C.Verdict:
    """Fig. 3: DM as proposed (closed form on few samples, no BatchNorm update) underperforms the same objective
    trained (Hint), non-robust pairs, alpha 0. A: Hint's clean accuracy, B: DM's, same points and seeds.
    Sources: images, stitch seeds."""
    c = _claim(f"adv_hint_gt_dm_{task}", "Fig 3", f"{task}-task, {NR_NR}: Hint is more accurate than DM",
               "clean acc. Hint", "clean acc. DM")
    f = dict(task=task, pair=NR_NR, alpha=0.0, eval=eval_name, metric="accuracy", **({"arch": arch} if arch else {}))
    return C.judge_rows(c, _rows(rows), a={"objective": "hint"}, b={"objective": "dm"}, **f)


def claims(res: Results, P: Profile) -> list[C.Verdict]:
    """Every claim of notebook 01 on the main architecture, in the order of the paper."""
    pl, arch = res.plan, res.plan.main_arch
    top, clean, robust = pl.top_alpha, pl.clean.name, pl.robust.name
    rows = res.rows[res.rows.arch == arch]
    base = res.baselines[res.baselines.arch == arch]
    out = []
    for task in TASKS:
        out += [claim_task_beats_alignment_robust(rows, task, top, robust),
                claim_fabricated_robustness(rows, base, task, top, robust),
                claim_clean_cost(rows, task, top, clean)]
        out += [claim_alignment_needs_robust_model(rows, task, p, top, robust) for p in PAIRS[1:]]
    out.append(claim_fula_beats_hint(rows, clean))
    out.append(claim_hint_beats_fula_deepest(rows, top, max(P.stitch_points), clean))
    out.append(claim_last_hint_decays(rows, clean))
    out.append(claim_cka_least_similar(res.cka[res.cka.arch == arch]))
    out += [claim_hint_beats_dm(rows, task, clean) for task in TASKS]
    if 0.0 in P.alphas:
        out += [claim_interpolates(rows, base, task, clean) for task in TASKS]
    return out


# ----------------------------------------------------------------------------------------------------
# Figures (drawn by plots; bars over the stitch seeds' range where the profile has several)


def _eval_labels(pl: Plan) -> dict[str, str]:
    attack = pl.robust.attack or "clean"
    return {pl.clean.name: "clean accuracy", pl.robust.name: f"robust accuracy ({attack}, ε = {pl.robust.eps:g})"}


def figure_grid(res: Results, arch: str, task: str, title: str):
    """Figs 4, 5 (13-18): rows alpha, columns the robustness pairs; clean solid, robust dashed."""
    pl = res.plan
    alphas = sorted(set(res.rows.alpha))
    sub = plots.select(res.rows, arch=arch, task=task, objective=list(pl.objectives))
    fig, _ = plots.stitching_grid(sub, plots.select(res.baselines, arch=arch, task=task), row_key="alpha",
                                  col_key="pair", row_values=alphas, col_values=list(PAIRS),
                                  eval_styles={pl.clean.name: "-", pl.robust.name: "--"}, eval_labels=_eval_labels(pl),
                                  objectives=list(pl.objectives), row_label=lambda a: f"α = {a:g}", title=title,
                                  spread=len(pl.seeds) > 1)
    return fig


def figure_dm_vs_hint(res: Results, title: str):
    """Fig. 3: DM (closed form) against Hint, non-robust pairs, alpha 0, clean accuracy."""
    pl = res.plan
    sub = plots.select(res.rows, arch=pl.main_arch, pair=NR_NR, alpha=0.0, objective=["dm", "hint"])
    fig, _ = plots.stitching_grid(sub, plots.select(res.baselines, arch=pl.main_arch, pair=NR_NR), row_key="alpha",
                                  col_key="task", col_values=["same", "cross"], objectives=["dm", "hint"],
                                  eval_styles={pl.clean.name: "-"}, eval_labels={pl.clean.name: "clean accuracy"},
                                  col_label=lambda t: f"{t}-task, {NR_NR}", title=title, panel_size=(3.4, 2.6),
                                  spread=len(pl.seeds) > 1)
    return fig


def figure_similarity(res: Results):
    """Fig. 6: (a) the DM stitches' penultimate CKA on adversarial inputs, (b) last-hint FuLA's accuracy."""
    pl = res.plan
    func = plots.select(res.rows, arch=pl.main_arch, task="same", objective="fula_last")
    attack = pl.robust.attack or "clean"
    return plots.similarity_figure(res.cka[res.cka.arch == pl.main_arch], func, pair_order=list(PAIRS),
                                   functional_styles={pl.clean.name: "-", pl.robust.name: "--"},
                                   functional_labels={pl.clean.name: "clean", pl.robust.name: f"robust ({attack})"},
                                   functional_title=f"(b) FuLA with the last hint only, trained at α = {pl.top_alpha:g}"
                                                    "\n(stitched-model accuracy)", spread=len(pl.seeds) > 1)


def appendix_figures(P: Profile) -> list[tuple[str, str, str]]:
    """(arch, task, figure name) of Figs 13-18: only at profiles with more than one architecture."""
    if len(P.archs) < 2:
        return []
    return [(arch, task, f"fig{no}_{task}_task_adversarial_{arch}") for arch in P.archs
            for task, no in zip(TASKS, APPENDIX_FIGURES[arch])]
