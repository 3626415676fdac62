"""Notebook 03's testbed: plan counts, every claim on synthetic rows (holds / contradicted / inside the noise),
and one tiny run at the smoke profile."""
import dataclasses

import numpy as np
import pandas as pd
import pytest

from fula_core import claims, config
from fula_core import class_subsets as CS
from fula_core.experiments import eval_rows

N = 400
RANK = np.random.default_rng(0).permutation(N)
OBJS = ("slm", "tlm", "hint", "fula")
KS = (1, 2, 5, 10)


def make_rows(acc, *, seeds=(0,), points=(0, 8), ks=KS, noise: int = 0, rng_seed: int = 2) -> pd.DataFrame:
    """Synthetic notebook-03 rows: acc(task, objective, k) -> accuracy on all classes (points); the stitch
    at accuracy p gets the easiest p N of the images right; `noise` images flipped at random per unit."""
    rng = np.random.default_rng(rng_seed)  # a fixed draw: a null part lands outside its 95% interval 1 time in 40
    rows = []
    for task in CS.TASKS:
        for k in ks:
            for obj in (*OBJS, "dm"):
                for pt in points:
                    for seed in seeds:
                        c = RANK < round(acc(task, obj, k) / 100 * N)
                        if noise:
                            flip = rng.choice(N, noise, replace=False)
                            c[flip] = ~c[flip]
                        sc = {"accuracy": 100 * c.mean(), "agreement": 100 * c.mean(), "correct": c,
                              "agree": 100 * c.astype(np.float32)}
                        rows += eval_rows(sc, arch="resnet18", task=task, k=k, seed=seed, objective=obj, front_point=pt,
                                          end_point=pt, alpha=0.0, job=f"{obj}{pt}", eval="test", error="")
    return pd.DataFrame(rows)


def flat(task, obj, k):
    return 70.0


# ----------------------------------------------------------------------------------------------------
# every objective does worse on few classes


def test_fewer_classes_worse_holds():
    v = CS.claim_fewer_classes_worse(make_rows(lambda t, o, k: 50 + 3 * k), "cross")
    assert v.verdict == "HOLDS" and "binding part of 4" in v.claim.a


def test_fewer_classes_worse_contradicted_when_one_objective_gains():
    v = CS.claim_fewer_classes_worse(make_rows(lambda t, o, k: 80 - (k if o == "hint" else -k)), "same")
    assert v.verdict == "CONTRADICTED" and v.claim.a.startswith("hint")


def test_fewer_classes_worse_inside_the_noise():
    assert CS.claim_fewer_classes_worse(make_rows(flat, noise=12), "cross").verdict == "INCONCLUSIVE"


# ----------------------------------------------------------------------------------------------------
# TLM/SLM overfit more than Hint/FuLA


def _drops(task_drop, align_drop):
    return lambda t, o, k: 85 - (0 if k == 10 else (task_drop if o in CS.TASK_BASED else align_drop))


def test_task_overfit_more_holds():
    v = CS.claim_task_overfit_more(make_rows(_drops(25, 10)), "cross")
    assert v.verdict == "HOLDS" and v.margin == pytest.approx(15, abs=0.5)


def test_task_overfit_more_contradicted():
    assert CS.claim_task_overfit_more(make_rows(_drops(5, 20)), "same").verdict == "CONTRADICTED"


def test_task_overfit_more_inside_the_noise():
    assert CS.claim_task_overfit_more(make_rows(_drops(10, 10), noise=12), "cross").verdict == "INCONCLUSIVE"


# ----------------------------------------------------------------------------------------------------
# FuLA best (cross-task, few classes; same-task, one class)


def _fula_by(d, where=lambda t, k: True):
    return lambda t, o, k: 60 + (d if o == "fula" and where(t, k) else 0)


def test_fula_best_cross_holds():
    assert CS.claim_fula_best_cross(make_rows(_fula_by(6, lambda t, k: k < 10))).verdict == "HOLDS"


def test_fula_best_cross_contradicted_when_one_objective_is_above():
    rows = make_rows(lambda t, o, k: 60 + {"fula": 5, "slm": 9}.get(o, 0))
    v = CS.claim_fula_best_cross(rows)
    assert v.verdict == "CONTRADICTED" and v.claim.b == "slm"


def test_fula_best_cross_inside_the_noise():
    assert CS.claim_fula_best_cross(make_rows(flat, noise=12)).verdict == "INCONCLUSIVE"


def test_fula_best_same_one_class_holds():
    assert CS.claim_fula_best_same_one_class(make_rows(_fula_by(6, lambda t, k: k == 1))).verdict == "HOLDS"


def test_fula_best_same_one_class_contradicted():
    assert CS.claim_fula_best_same_one_class(make_rows(_fula_by(-6))).verdict == "CONTRADICTED"


def test_fula_best_same_one_class_inside_the_noise():
    assert CS.claim_fula_best_same_one_class(make_rows(flat, noise=12)).verdict == "INCONCLUSIVE"


# ----------------------------------------------------------------------------------------------------
# same-task: TLM lags beyond one class


def _tlm_by(d):
    return lambda t, o, k: 70 + (d if o == "tlm" else 0)


def test_tlm_lags_holds():
    v = CS.claim_tlm_lags_same(make_rows(_tlm_by(-8)))
    assert v.verdict == "HOLDS" and "k in [2, 5]" in v.claim.statement


def test_tlm_lags_contradicted():
    assert CS.claim_tlm_lags_same(make_rows(_tlm_by(8))).verdict == "CONTRADICTED"


def test_tlm_lags_inside_the_noise():
    assert CS.claim_tlm_lags_same(make_rows(flat, noise=12)).verdict == "INCONCLUSIVE"


def test_tlm_lags_needs_a_middle_k():
    assert CS.claim_tlm_lags_same(make_rows(_tlm_by(-8), ks=(1, 10))) is None


# ----------------------------------------------------------------------------------------------------
# seeds, plan, run


def test_seeds_enter_the_interval():
    v = CS.claim_task_overfit_more(make_rows(_drops(25, 10), seeds=(0, 1, 2)), "cross")
    assert v.sources == "images+seeds" and v.verdict == "HOLDS"


@pytest.mark.parametrize("name", ["smoke", "quick"])
def test_plan_counts(name):
    P = config.get_profile(name)
    pl = CS.plan(P)
    seeds = CS.seeds_of(P)
    assert len(pl.testbeds) == len(P.archs) * 2 * len(P.class_subset_ks) * len(seeds)
    assert len(pl.jobs) == len(P.objectives) * len(P.stitch_points) and len(pl.dm_jobs) == len(P.stitch_points)
    summary = pl.summary(count_images=False)
    assert len(summary) == len(P.archs) * 2 * len(P.class_subset_ks)
    from fula_core.experiments import clean_eval_spec, stitch_train_spec

    # k = K trains on notebook 01's data (shared stitches), every k is scored on the same test images
    assert pl.train_spec(pl.num_classes) == stitch_train_spec(P) and pl.eval_spec() == clean_eval_spec(P)
    assert pl.train_spec(2).first_classes == 2


def test_plan_needs_all_classes():
    P = dataclasses.replace(config.get_profile("smoke"), class_subset_ks=(1, 2))
    with pytest.raises(ValueError, match="must include k = 10"):
        CS.plan(P)


@pytest.mark.slow
def test_smoke_run_and_claims(tmp_path):
    from fula_core.store import ResultStore

    P = dataclasses.replace(config.get_profile("smoke"), stitch_points=(8,))
    res = CS.run(P, ResultStore(tmp_path), "cpu", progress=False)
    assert len(res.rows) == res.plan.expected_rows()
    verdicts = CS.claims(res, P)
    assert len(verdicts) == 6 and all(v.verdict in claims.VERDICTS for v in verdicts)  # smoke: no middle k


def test_figure9_draws_seed_spread_with_several_seeds():
    import matplotlib

    matplotlib.use("Agg")
    P = dataclasses.replace(config.get_profile("smoke"), class_subset_seeds=(0, 1), class_subset_ks=KS)
    fig = CS.figure9(CS.Results(make_rows(_drops(25, 10), seeds=(0, 1), noise=20), CS.plan(P)))
    bars = [c for ax in fig.axes for c in ax.collections if c.get_gid() == "spread"]
    assert len(bars) == 2 * 3 * 5  # tasks x (two points + their mean) x (four objectives + DM)
