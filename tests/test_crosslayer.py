"""Cross-layer stitching (§3.3): job plans, Self-Accuracy, directionality, the FuLA sweep, and one tiny
end-to-end grid on synthetic data with width-4 models."""
import dataclasses

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from fula_core import crosslayer as cl
from fula_core.config import get_profile
from fula_core.stitching import StitchConfig, StitchJob
from fula_core.store import ResultStore
from fula_core.train import TrainConfig


def test_self_accuracy_counts_rows_with_the_maximum_on_the_diagonal():
    m = np.array([[90, 10, 5], [95, 80, 20], [10, 30, 70.0]])
    assert cl.self_accuracy(m) == pytest.approx(2 / 3)  # row 1 peaks at column 0
    assert cl.self_accuracy(np.array([[5, 5], [1, 2.0]])) == 1.0  # a tie on the diagonal counts as found
    assert cl.self_accuracy(np.array([[np.nan, 1], [0, 2.0]])) == 0.5  # a missing diagonal never wins


def test_averaging_both_directions_restores_the_diagonal():
    # directional: deep -> shallow beats the diagonal in the upper rows
    m = np.array([[60, 20, 10], [70, 65, 15], [75, 72, 68.0]])
    avg = cl.symmetrize(m)
    np.testing.assert_allclose(avg, avg.T)
    np.testing.assert_allclose(np.diag(avg), np.diag(m))
    assert cl.self_accuracy(m) == pytest.approx(1 / 3)
    assert cl.self_accuracy(avg) == 1.0
    d = cl.directionality(m, (0, 4, 8))
    assert d == {"pairs": 3, "deep_wins": 3, "mean_diff": pytest.approx(np.mean([50, 65, 57]))}


def test_sweep_jobs_switch_deeper_hints_on_one_by_one():
    ws = cl.sweep_weights(6)
    assert ws == [(1.0, 0.0, 0.0), (1.0, 1.0, 0.0), None]
    assert [cl.n_terms(StitchJob(8, 6, "fula", fula_weights=w)) for w in ws] == [1, 2, 3]
    assert cl.sweep_weights(8) == [None]
    assert cl.sweep_pairs((0, 2, 4, 6, 8)) == [(6, 2), (2, 6), (8, 0), (0, 8)]
    assert cl.sweep_pairs((0, 8)) == [(8, 0), (0, 8)]
    jobs = cl.sweep_jobs([(6, 2), (2, 6)])
    assert len(jobs) == 7 + 3 and len({j.name for j in jobs}) == len(jobs)


def test_plan_shares_the_uniform_fula_stitch_and_counts_jobs():
    P = get_profile("quick")
    grid = cl.grid_jobs(P.cross_layer_points, ("hint", "fula"))
    assert len(grid) == 2 * 25
    plan = cl.plan(P, ("hint", "fula"))
    assert set(plan) == set(cl.PAIR_KINDS)
    # the sweep's uniform jobs are the heatmap's FuLA stitches: 7 + 3 + 9 + 1 sweep jobs, 4 shared
    assert len(plan["self"]) == 50 + 20 - 4 and len(plan["same"]) == 50
    counts = cl.job_counts(P, P.objectives)
    assert counts == {"self": 100 + 16, "same": 100, "cross": 100, "total": 316}
    assert cl.job_counts(P, ("hint",))["self"] == 25 + 20


def test_objective_choice():
    P = get_profile("quick")
    assert cl.heatmap_objectives(P, "all") == P.objectives
    assert cl.heatmap_objectives(P, " fula, hint,fula ") == ("fula", "hint")
    assert set(cl.heatmap_objectives(P, "profile")) <= set(P.objectives)
    with pytest.raises(ValueError, match="unknown objective"):
        cl.heatmap_objectives(P, "fula,nope")


def test_figure_names():
    assert cl.figure_names(get_profile("quick"), "resnet18") == ["fig10_cross_layer"]
    paper = get_profile("paper")
    assert cl.figure_names(paper, "resnet18") == ["fig10_cross_layer", "fig29_cross_layer_resnet18"]
    assert cl.figure_names(paper, "resnet34") == ["fig30_cross_layer_resnet34"]


# --- a tiny real grid --------------------------------------------------------------------------------

TINY = dict(width=4, epochs=1, batch_size=64, lr=0.05)
CONFIGS = {"synthetic_0": TrainConfig(dataset="synthetic", seed=0, **TINY),
           "synthetic_1": TrainConfig(dataset="synthetic", seed=1, **TINY)}


def tiny_profile():
    return dataclasses.replace(get_profile("smoke"), name="test", end_dataset="synthetic", cross_dataset="synthetic",
                               stitch=StitchConfig(epochs=1, batch_size=64, lstsq_samples=32),
                               stitch_train_subset=128, eval_subset=64, cross_layer_points=(5, 7))


def test_tiny_grid_end_to_end(tmp_path, monkeypatch):
    P = tiny_profile()
    objectives = ("hint", "fula")
    plan = cl.plan(P, objectives, pairs=("self", "same"))
    store = ResultStore(tmp_path)
    df = cl.run(store, P, "cpu", plan, configs=CONFIGS, progress=False)
    assert len(df) == 2 * sum(len(j) for j in plan.values())
    assert set(df.pair) == {"self", "same"} and set(df.metric) == {"accuracy", "agreement"}
    for pair in ("self", "same"):
        for obj in objectives:
            m = cl.matrix(df, pair, obj, P.cross_layer_points)
            assert m.shape == (2, 2) and np.isfinite(m).all() and ((0 <= m) & (m <= 100)).all()
    table = cl.self_accuracy_table(df, P.cross_layer_points, objectives, ("self", "same"))
    assert len(table) == 4 and table.self_accuracy.between(0, 1).all()
    sweep = cl.sweep_table(df, cl.sweep_pairs(P.cross_layer_points))
    assert list(sweep.n_terms) == [1, 2, 3, 4, 1, 2] and list(sweep.deepest_point) == [5, 6, 7, 8, 7, 8]
    assert list(sweep.direction[:4]) == ["deep->shallow"] * 4
    verdicts = cl.claims(df, P, objectives)
    assert [v.claim.id for v in verdicts] == ["averaged_self_accuracy_self", "averaged_self_accuracy_all_pairs",
                                              "fula_directional", "sweep_deeper_hints_raise", "sweep_rise_is_smooth",
                                              "sweep_stays_directional"]
    assert all(v.verdict in ("HOLDS", "CONTRADICTED", "INCONCLUSIVE") and v.n == 64 for v in verdicts)
    fig = cl.plot_heatmaps(df, P.cross_layer_points, objectives, ("self", "same"), title="tiny")
    assert len(fig.axes) == 4 + 1  # heatmaps + colour bar
    assert "Self-Acc" in fig.axes[0].get_title()
    fig11 = cl.plot_sweep(sweep, end_accuracy=50.0)
    assert len(fig11.axes[0].lines) == 2 + 1

    # everything is cached: a rerun trains nothing and gives the same rows
    from fula_core import experiments

    monkeypatch.setattr(experiments, "train_stitches", lambda *a, **k: pytest.fail("retrained a cached stitch"))
    again = cl.run(store, P, "cpu", plan, configs=CONFIGS, progress=False)
    assert again.equals(df)


# --- the claims, on synthetic rows with per-image scores -------------------------------------------

N_IMAGES = 1000


def _scores(rate: float, seed: int) -> dict:
    """A stored evaluation whose accuracy is exactly `rate` percent, the correct images drawn at random."""
    rng = np.random.default_rng(seed)
    correct = np.zeros(N_IMAGES, dtype=bool)
    correct[rng.permutation(N_IMAGES)[:round(rate / 100 * N_IMAGES)]] = True
    return {"accuracy": 100 * correct.mean(), "agreement": 100 * correct.mean(), "correct": correct,
            "agree": correct.astype(np.float32) * 100}


def synthetic_rows(grid: dict, sweeps: dict = (), *, pair: str = "self", objective: str = "fula"):
    """Tidy rows as crosslayer.run makes them: grid {(front, end): accuracy}, sweeps {(front, end): [accuracy
    by number of terms]} (the last step is the grid's uniform FuLA stitch)."""
    import pandas as pd

    from fula_core import experiments

    rows, seed = [], 0
    labels = dict(arch="resnet18", pair=pair, front_model="m1", end_model="m0", objective=objective, eval="test")
    for (i, j), acc in grid.items():
        seed += 1
        rows += experiments.eval_rows(_scores(acc, seed), **labels, front_point=i, end_point=j, job=f"{i}-{j}",
                                      n_terms=9 - j if objective == "fula" else None, sweep=False)
    for (i, j), seq in dict(sweeps).items():
        for k, acc in enumerate(seq[:-1], start=1):
            seed += 1
            rows += experiments.eval_rows(_scores(acc, seed), **labels, front_point=i, end_point=j,
                                          job=f"{i}-{j}/{k}", n_terms=k, sweep=True)
        seed += 1
        rows += experiments.eval_rows(_scores(seq[-1], seed), **labels, front_point=i, end_point=j,
                                      job=f"{i}-{j}", n_terms=len(seq), sweep=False)
    return pd.DataFrame(rows)


def grid_rows(m, points=(2, 6), **kw):
    return synthetic_rows({(i, j): m[a][b] for a, i in enumerate(points) for b, j in enumerate(points)}, **kw)


def test_bootstrap_derived_recomputes_the_statistic_on_resampled_images():
    rng = np.random.default_rng(0)
    block = rng.integers(0, 2, size=(2, 500)) * 100.0
    a, b, lo, hi = cl.bootstrap_derived([block], lambda ms: (ms[0][0], ms[0][1]), n_boot=400)
    assert (a, b) == pytest.approx(tuple(block.mean(1)))
    assert lo < a - b < hi and hi - lo < 30


def test_claim_averaging_finds_layers():
    # holds: deep -> shallow beats the diagonal in row 0, the averaged measure restores it
    v = cl.claim_averaging_finds_layers(grid_rows([[60, 20], [90, 70]]), (2, 6), ("fula",))
    assert (v.value_a, v.value_b, v.verdict) == (100.0, 50.0, "HOLDS")
    # contradicted: the directional diagonal wins everywhere, averaging moves row 0's maximum off it
    v = cl.claim_averaging_finds_layers(grid_rows([[40, 35], [85, 90]]), (2, 6), ("fula",))
    assert (v.value_a, v.value_b, v.verdict) == (50.0, 100.0, "CONTRADICTED")
    # noise: every cell has the same accuracy, which cell wins a row is a matter of which images are drawn
    v = cl.claim_averaging_finds_layers(grid_rows([[50, 50], [50, 50]]), (2, 6), ("fula",))
    assert v.verdict == "INCONCLUSIVE" and v.sources == "images" and v.n == N_IMAGES
    assert cl.claim_averaging_every_setting(grid_rows([[60, 20], [90, 70]]), (2, 6), ("fula",), ("self",)).verdict == "HOLDS"


def test_claim_fula_directional():
    assert cl.claim_fula_directional(grid_rows([[70, 40], [80, 70]])).verdict == "HOLDS"
    v = cl.claim_fula_directional(grid_rows([[70, 80], [40, 70]]))
    assert v.verdict == "CONTRADICTED" and (v.value_a, v.value_b) == (40.0, 80.0)
    assert cl.claim_fula_directional(grid_rows([[70, 60], [60, 70]])).verdict == "INCONCLUSIVE"
    with pytest.raises(ValueError, match="no deep->shallow fula stitches"):  # nothing to judge is an error, not a pass
        cl.claim_fula_directional(grid_rows([[70, 60], [60, 70]], objective="hint"))


def sweep_rows(deep, shallow):
    """The sweep of points (2, 6): 6 -> 2 has 7 steps, 2 -> 6 has 3."""
    return synthetic_rows({}, {(6, 2): deep, (2, 6): shallow})


def test_claim_sweep_rises():
    up = [20, 30, 40, 50, 60, 70, 80]
    assert cl.claim_sweep_rises(sweep_rows(up, [30, 35, 40]), (2, 6)).verdict == "HOLDS"
    assert cl.claim_sweep_rises(sweep_rows(up[::-1], [30, 35, 40]), (2, 6)).verdict == "CONTRADICTED"
    assert cl.claim_sweep_rises(sweep_rows([50] * 7, [30, 35, 40]), (2, 6)).verdict == "INCONCLUSIVE"


def test_claim_sweep_smooth():
    v = cl.claim_sweep_smooth(sweep_rows([20, 30, 40, 50, 60, 70, 80], [30, 35, 40]), (2, 6))
    assert v.verdict == "HOLDS" and v.value_b == 0.0
    v = cl.claim_sweep_smooth(sweep_rows([20, 30, 40, 20, 60, 70, 80], [30, 35, 40]), (2, 6))
    assert v.verdict == "CONTRADICTED" and v.value_b == pytest.approx(20)
    # a drop of exactly the tolerance: the data cannot tell smooth from not
    v = cl.claim_sweep_smooth(sweep_rows([20, 30, 40, 50, 48, 70, 80], [30, 35, 40]), (2, 6))
    assert v.verdict == "INCONCLUSIVE" and v.value_b == pytest.approx(cl.SMOOTH_TOLERANCE)


def test_claim_sweep_directional():
    deep = [20, 30, 40, 50, 60, 70, 80]
    assert cl.claim_sweep_directional(sweep_rows(deep, [30, 35, 40]), (2, 6)).verdict == "HOLDS"
    assert cl.claim_sweep_directional(sweep_rows(deep, [30, 35, 90]), (2, 6)).verdict == "CONTRADICTED"
    assert cl.claim_sweep_directional(sweep_rows(deep, [30, 35, 80]), (2, 6)).verdict == "INCONCLUSIVE"


def test_claims_need_per_image_scores():
    df = grid_rows([[60, 20], [90, 70]]).drop(columns="scores")
    with pytest.raises(ValueError, match="per-image"):
        cl.claim_averaging_finds_layers(df, (2, 6), ("fula",))


def test_run_profile_sweeps_only_the_main_architecture(monkeypatch):
    import pandas as pd

    P = dataclasses.replace(get_profile("paper"), cross_layer_points=(0, 8))
    seen = {}
    monkeypatch.setattr(cl, "run", lambda store, P, dev, plan, arch, **k: seen.setdefault(arch, plan) and pd.DataFrame({"arch": [arch]}))
    df = cl.run_profile(None, P, "cpu", ("fula",), check=False)
    assert list(df.arch) == list(P.archs)
    assert len(seen[P.archs[0]]["self"]) == 4 + 8 and all(len(seen[a]["self"]) == 4 for a in P.archs[1:])
