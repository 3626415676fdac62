"""Notebook 02's testbed: plan counts, every claim on synthetic rows (holds / contradicted / inside the noise),
and one tiny run at the smoke profile."""
import dataclasses

import numpy as np
import pandas as pd
import pytest

from fula_core import claims, config
from fula_core import shortcut_stitching as S
from fula_core.experiments import eval_rows

N = 400  # test images of the synthetic rows
RANK = np.random.default_rng(0).permutation(N)  # image difficulty: a unit at accuracy p gets the easiest p N right


def _correct(p: float, noise: int, rng) -> np.ndarray:
    c = RANK < round(p / 100 * N)
    if noise:
        flip = rng.choice(N, noise, replace=False)
        c[flip] = ~c[flip]
    return c


def make_rows(gain=None, loss=None, *, base=None, kinds=("pixel", "location"), points=(0, 8), seeds=(0,),
              noise: int = 0) -> pd.DataFrame:
    """Synthetic notebook-02 rows. gain[(task, objective)]: marked minus clean accuracy (points); loss[(task,
    objective)]: clean accuracy lost to the markers; base[task]: the marker-free clean accuracy. `noise`: images
    flipped at random in every unit (independently per evaluation)."""
    gain, loss = gain or {}, loss or {}
    base = base or {"cross": 70.0, "same": 85.0}
    rng = np.random.default_rng(1)
    rows = []
    for task in S.TASKS:
        for kind in (S.NO_MARKERS, *kinds):
            for obj in ("slm", "tlm", "hint", "fula"):
                for pt in points:
                    for seed in seeds:
                        clean = base[task] - (0 if kind == S.NO_MARKERS else loss.get((task, obj), 0.0))
                        evals = {"test": clean}
                        if kind != S.NO_MARKERS:
                            evals[S.eval_name(kind)] = clean + gain.get((task, obj), 0.0)
                        for ev, p in evals.items():
                            c = _correct(p, noise, rng)
                            sc = {"accuracy": 100 * c.mean(), "agreement": 100 * c.mean(), "correct": c,
                                  "agree": 100 * c.astype(np.float32)}
                            rows += eval_rows(sc, arch="resnet18", task=task, kind=kind, seed=seed, objective=obj,
                                              front_point=pt, end_point=pt, alpha=0.0, job=f"{obj}{pt}", eval=ev, error="")
    return pd.DataFrame(rows)


def both(task_value, align_value, tasks=S.TASKS):
    return {(t, o): (task_value if o in S.TASK_BASED else align_value) for t in tasks for o in ("slm", "tlm", "hint", "fula")}


# ----------------------------------------------------------------------------------------------------
# marker exploitation: the gain itself must be positive


def test_task_exploits_holds_with_a_positive_larger_gain():
    v = S.claim_task_exploits(make_rows(gain=both(10, 1)), "cross")
    assert v.verdict == "HOLDS" and v.ci_low > 0


def test_task_exploits_cannot_hold_on_negative_gains():
    """The quick run's pattern: every gain negative, task-based ones less so. 'More than Hint/FuLA' alone
    would hold; the statement (they exploit the markers) is contradicted."""
    rows = make_rows(gain=both(-1.0, -3.0))
    v = S.claim_task_exploits(rows, "same")
    assert v.verdict == "CONTRADICTED" and v.claim.b == "0" and v.margin < 0


def test_task_exploits_inside_the_noise():
    v = S.claim_task_exploits(make_rows(gain=both(0.5, 0.0), noise=12), "cross")
    assert v.verdict == "INCONCLUSIVE"


def test_marker_gain_pairs_the_same_images():
    rows = make_rows(gain=both(4, 2))
    g, seeds = S.marker_gain(rows, S.TASK_BASED, task="cross")
    assert g.shape == (1, N) and list(seeds) == [0] and g.mean() == pytest.approx(4, abs=0.3)
    assert set(np.unique(g)) <= {0.0, 100.0}  # nested correct sets: each image moves one way only


# ----------------------------------------------------------------------------------------------------
# clean accuracy lost to the markers


def test_task_loses_clean_holds():
    assert S.claim_task_loses_clean(make_rows(loss=both(8, 0)), "cross").verdict == "HOLDS"


def test_task_loses_clean_contradicted_when_it_gains():
    assert S.claim_task_loses_clean(make_rows(loss=both(-4, 0)), "same").verdict == "CONTRADICTED"


def test_task_loses_clean_inside_the_noise():
    assert S.claim_task_loses_clean(make_rows(loss=both(0.5, 0), noise=12), "cross").verdict == "INCONCLUSIVE"


def test_alignment_keeps_clean_holds():
    v = S.claim_alignment_keeps_clean(make_rows(loss=both(10, 0.5)), "cross")
    assert v.verdict == "HOLDS" and v.value_a == S.KEEP_TOLERANCE and v.value_b == pytest.approx(0.5, abs=0.3)


def test_alignment_keeps_clean_contradicted():
    assert S.claim_alignment_keeps_clean(make_rows(loss=both(0, 15)), "same").verdict == "CONTRADICTED"


def test_alignment_keeps_clean_inside_the_noise():
    v = S.claim_alignment_keeps_clean(make_rows(loss=both(0, S.KEEP_TOLERANCE), noise=12), "cross")
    assert v.verdict == "INCONCLUSIVE"


# ----------------------------------------------------------------------------------------------------
# FuLA against Hint


def _fula_hint(fula, hint):
    return {(t, o): {"fula": fula, "hint": hint}.get(o, 0.0) for t in S.TASKS for o in ("slm", "tlm", "hint", "fula")}


def test_fula_beats_hint_holds():
    assert S.claim_fula_beats_hint(make_rows(loss=_fula_hint(0, 6))).verdict == "HOLDS"


def test_fula_beats_hint_contradicted():
    assert S.claim_fula_beats_hint(make_rows(loss=_fula_hint(6, 0))).verdict == "CONTRADICTED"


def test_fula_beats_hint_inside_the_noise():
    assert S.claim_fula_beats_hint(make_rows(loss=_fula_hint(0, 0), noise=12)).verdict == "INCONCLUSIVE"


# ----------------------------------------------------------------------------------------------------
# location markers, cross- against same-task


def _location(cross, same):
    return {(t, o): (cross if t == "cross" else same) for t in S.TASKS for o in ("slm", "tlm", "hint", "fula")}


def test_location_cross_vs_same_holds():
    assert S.claim_location_cross_vs_same(make_rows(gain=_location(8, 0)), 8).verdict == "HOLDS"


def test_location_cross_vs_same_contradicted_on_a_negative_gain():
    """Cross-task gains less negative than same-task: 'more' alone holds, the gain itself is contradicted."""
    assert S.claim_location_cross_vs_same(make_rows(gain=_location(-1, -3)), 8).verdict == "CONTRADICTED"


def test_location_cross_vs_same_inside_the_noise():
    assert S.claim_location_cross_vs_same(make_rows(gain=_location(0.5, 0), noise=12), 8).verdict == "INCONCLUSIVE"


# ----------------------------------------------------------------------------------------------------
# seeds, plan, run


def test_seeds_enter_the_interval():
    rows = make_rows(gain=both(10, 1), seeds=(0, 1, 2))
    v = S.claim_task_exploits(rows, "cross")
    assert v.sources == "images+seeds" and v.verdict == "HOLDS"


def test_a_missing_stitch_is_a_clear_error():
    rows = make_rows(gain=both(10, 1), seeds=(0, 1))
    rows = rows[~((rows.seed == 1) & (rows.objective == "slm") & (rows.front_point == 8))]
    with pytest.raises(ValueError, match="different numbers of units"):
        S.claim_task_exploits(rows, "cross")


@pytest.mark.parametrize("name", ["smoke", "quick"])
def test_plan_counts(name):
    P = config.get_profile(name)
    pl = S.plan(P)
    seeds = S.seeds_of(P)
    passes = len(P.archs) * 2 * (1 + len(P.shortcut_kinds)) * len(seeds)
    assert len(pl.testbeds) == passes and len(pl.jobs) == len(P.objectives) * len(P.stitch_points)
    summary = pl.summary()
    assert len(summary) == len(P.archs) * 2 * (1 + len(P.shortcut_kinds))
    shared = ", ".join(str(s) for s in seeds if s in P.stitch_seeds)
    assert list(summary["seeds shared with 01"]) == [shared if k == S.NO_MARKERS else "" for k in summary.markers]
    # the marker-free stitches at seed 0 are notebook 01's: equal train specs and stitch configs
    from fula_core.experiments import stitch_train_spec

    assert pl.train_spec(S.NO_MARKERS) == stitch_train_spec(P) and pl.stitch_config(0) == P.stitch
    assert pl.stitch_config(2) == dataclasses.replace(P.stitch, seed=2)


def test_marked_test_set_keeps_the_clean_order():
    """Gains pair per image: the marked test subset holds the clean subset's images and labels in order."""
    P = config.get_profile("smoke")
    pl = S.plan(P)
    clean, marked = (s.data.load() for s in pl.eval_specs("pixel"))
    assert np.array_equal(clean.labels.numpy(), marked.labels.numpy())
    assert np.array_equal(clean.images.numpy(), marked.clean_images.numpy())


@pytest.mark.slow
def test_smoke_run_and_claims(tmp_path):
    from fula_core.store import ResultStore

    P = dataclasses.replace(config.get_profile("smoke"), shortcut_kinds=("location",), stitch_points=(8,),
                            objectives=("tlm", "hint", "fula", "slm"))
    store = ResultStore(tmp_path)
    res = S.run(P, store, "cpu", progress=False)
    assert len(res.rows) == res.plan.expected_rows() and res.rows.scores.map(len).eq(P.eval_subset).all()
    verdicts = S.claims(res, P)
    assert len(verdicts) == 8 and all(v.verdict in claims.VERDICTS for v in verdicts)
    assert len(S.accuracy_table(res))


def test_figure8_draws_seed_spread_with_several_seeds():
    import matplotlib

    matplotlib.use("Agg")
    P = dataclasses.replace(config.get_profile("smoke"), shortcut_seeds=(0, 1))
    rows = make_rows(gain=both(5, 0), seeds=(0, 1), noise=20)
    base = pd.DataFrame(columns=["arch", "task", "role", "eval", "metric", "value"])
    fig = S.figure8(S.Results(rows, base, S.plan(P)))
    bars = [c for ax in fig.axes for c in ax.collections if c.get_gid() == "spread"]
    # every panel: 4 objectives on clean data, plus 4 on marked data in the marked columns
    assert len(bars) == 2 * (4 + 2 * 8)
