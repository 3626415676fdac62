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


def test_rises_smoothly():
    assert cl.rises_smoothly([20, 30, 29, 50])
    assert not cl.rises_smoothly([20, 60, 30, 70])  # a drop larger than the tolerance
    assert not cl.rises_smoothly([50, 40])
    assert not cl.rises_smoothly([50])


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
    assert set(cl.sweep_sequences(sweep)) == {(7, 5), (5, 7)}
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


def test_claim_helpers():
    import pandas as pd

    table = pd.DataFrame([
        {"pair": "self", "objective": "fula", "self_accuracy": 0.4, "self_accuracy_averaged": 1.0, "layer_pairs": 10,
         "deep_to_shallow_wins": 8, "deep_minus_shallow": 12.0},
        {"pair": "same", "objective": "fula", "self_accuracy": 0.6, "self_accuracy_averaged": 0.4, "layer_pairs": 10,
         "deep_to_shallow_wins": 4, "deep_minus_shallow": -2.0}])
    assert cl.averaging_helps(table)[0] and not cl.averaging_helps(table, ("self", "same"))[0]
    holds, detail = cl.is_directional(table)
    assert holds and "12 of 20" in detail and "+5.0" in detail
    assert not cl.is_directional(table, "hint")[0]  # nothing to judge is not a pass
    sweep = pd.DataFrame({"front_point": [6, 6, 6, 2, 2], "end_point": [2, 2, 2, 6, 6], "n_terms": [1, 2, 3, 1, 2],
                          "accuracy": [20.0, 40.0, 60.0, 15.0, 18.0]})
    assert cl.sweep_rises(sweep)[0] and cl.sweep_directional(sweep)[0]
    sweep.loc[1, "accuracy"] = 70.0  # a jump up and a drop of 10 points: not smooth
    assert not cl.sweep_rises(sweep)[0]
    sweep.loc[4, "accuracy"] = 65.0
    assert not cl.sweep_directional(sweep)[0]


def test_run_profile_sweeps_only_the_main_architecture(monkeypatch):
    import pandas as pd

    P = dataclasses.replace(get_profile("paper"), cross_layer_points=(0, 8))
    seen = {}
    monkeypatch.setattr(cl, "run", lambda store, P, dev, plan, arch, **k: seen.setdefault(arch, plan) and pd.DataFrame({"arch": [arch]}))
    df = cl.run_profile(None, P, "cpu", ("fula",))
    assert list(df.arch) == list(P.archs)
    assert len(seen[P.archs[0]]["self"]) == 4 + 8 and all(len(seen[a]["self"]) == 4 for a in P.archs[1:])
