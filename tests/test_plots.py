import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from fula_core import experiments, models, plots  # noqa: E402
from fula_core.data import ImageSet  # noqa: E402
from fula_core.experiments import DataSpec, EvalSpec  # noqa: E402
from fula_core.store import ResultStore  # noqa: E402
from fula_core.train import TrainConfig  # noqa: E402

POINTS = (0, 4, 8)
OBJECTIVES = ("slm", "tlm", "hint", "fula")


def fake_rows(points=POINTS, objectives=OBJECTIVES, evals=("test", "test/pgd"), **extra):
    rows = []
    for obj in objectives:
        for p in points:
            for e in evals:
                for metric in ("accuracy", "agreement"):
                    rows.append({"objective": obj, "front_point": p, "end_point": p, "alpha": extra.get("alpha", 0.0),
                                 "job": f"{obj}[{p}->{p}]", "eval": e, "metric": metric,
                                 "value": 50.0 + p + (0 if e == "test" else -30), "error": "", **extra})
    return rows


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def objective_lines(ax):
    return [l for l in ax.get_lines() if l.get_gid() not in ("baseline", "chance")]


def test_stitching_plot_lines_points_and_baselines():
    fig, ax = plt.subplots()
    lines = plots.stitching_plot(ax, fake_rows(), baselines={"front": 90.0, "end": 95.0})
    assert [l.get_label() for l in lines] == ["SLM", "TLM", "Hint", "FuLA"]
    for line in lines:
        xs, ys = line.get_data()
        assert list(xs) == [0, 1, 5, 9, 10]  # front baseline, points 0/4/8 at layers 1/5/9, end baseline
        assert ys[0] == 90.0 and ys[-1] == 95.0
    assert len([l for l in ax.get_lines() if l.get_gid() == "baseline"]) == 2
    assert [t.get_text() for t in ax.get_xticklabels()] == ["front", "1", "5", "9", "end"]


def test_stitching_plot_without_baselines_and_subset_of_objectives():
    fig, ax = plt.subplots()
    lines = plots.stitching_plot(ax, pd.DataFrame(fake_rows()), eval_name="test/pgd", objectives=("fula", "dm", "hint"))
    assert [l.get_label() for l in lines] == ["FuLA", "Hint"]  # dm is not in the rows: skipped
    assert all(list(l.get_xdata()) == [1, 5, 9] for l in lines)
    assert np.allclose(lines[0].get_ydata(), [20, 24, 28])


def test_stitching_plot_spread_over_seeds():
    rows = [dict(r, seed=s, value=r["value"] + 2 * s) for s in (0, 1, 2) for r in fake_rows()]
    fig, ax = plt.subplots()
    lines = plots.stitching_plot(ax, rows, spread=True)
    assert np.allclose(lines[0].get_ydata(), [52, 56, 60])  # SLM: the mean over seeds
    bars = [c for c in ax.collections if c.get_gid() == "spread"]
    assert len(bars) == 4  # one set of bars per objective
    (segment, *_) = bars[0].get_segments()
    assert np.allclose(segment[:, 1], [50, 54])  # SLM at point 0: the seeds give 50, 52, 54
    fig2, ax2 = plt.subplots()
    plots.stitching_plot(ax2, fake_rows(), spread=True)  # a single seed: no bars
    assert not [c for c in ax2.collections if c.get_gid() == "spread"]


def test_stitching_plot_handles_nan_and_empty():
    rows = fake_rows()
    for r in rows:
        if r["objective"] == "tlm" and r["front_point"] == 4:
            r["value"] = float("nan")  # a failed job
    fig, ax = plt.subplots()
    lines = plots.stitching_plot(ax, rows, baselines={"front": float("nan"), "end": 80.0})
    tlm = [l for l in lines if l.get_label() == "TLM"][0]
    assert len(tlm.get_xdata()) == 4 and math.isnan(tlm.get_ydata()[1])  # no front end point (NaN baseline)
    fig.canvas.draw()  # renders without error
    assert plots.stitching_plot(ax, [], baselines=None) == []


def test_stitching_grid_layout():
    rows = []
    pairs = [plots.pair_label(f, e) for f, e in plots.ROBUSTNESS_COMBOS]
    for alpha in (0.0, 1.0):
        for pair in pairs:
            rows += fake_rows(alpha=alpha, pair=pair)
    base = pd.DataFrame([{"pair": p, "role": role, "eval": e, "metric": "accuracy", "value": v}
                         for p in pairs for role, v in (("front", 90.0), ("end", 92.0)) for e in ("test", "test/pgd")])
    fig, axes = plots.stitching_grid(rows, base, row_key="alpha", col_key="pair", col_values=pairs,
                                     eval_styles={"test": "-", "test/pgd": "--"}, objectives=OBJECTIVES,
                                     row_label=lambda a: f"α={a:g}")
    assert axes.shape == (2, 4)
    for ax in axes.flat:
        lines = objective_lines(ax)
        assert len(lines) == 8  # 4 objectives x (clean, robust)
        assert {l.get_linestyle() for l in lines} == {"-", "--"}
        assert all(l.get_xdata()[0] == 0 and l.get_xdata()[-1] == 10 for l in lines)
    assert axes[0, 2].get_title() == "non-robust → robust"  # (c) as in the paper's Fig. 5c
    assert len(fig.legends) == 1


def test_stitching_grid_callable_styles_and_missing_panel():
    rows = fake_rows(evals=("test", "test/pixel"), task="cross", kind="pixel")
    rows += fake_rows(evals=("test", "test/location"), task="cross", kind="location")
    base = pd.DataFrame([{"task": "cross", "role": "front", "eval": "test", "metric": "accuracy", "value": 70.0}])
    fig, axes = plots.stitching_grid(rows, base, row_key="task", col_key="kind", row_values=["cross", "same"],
                                     col_values=["pixel", "location"],
                                     eval_styles=lambda kind: {"test": "-", f"test/{kind}": "--"})
    assert axes.shape == (2, 2)
    assert len(objective_lines(axes[0, 0])) == 8 and len(objective_lines(axes[0, 1])) == 8
    assert objective_lines(axes[1, 0]) == []  # no rows for "same": an empty panel, no crash
    clean = [l for l in objective_lines(axes[0, 0]) if l.get_linestyle() == "-"][0]
    assert clean.get_xdata()[0] == 0 and clean.get_xdata()[-1] == 9  # front baseline only


def test_class_subset_grid():
    rows = []
    for task in ("cross", "same"):
        for k in (1, 2, 10):
            rows += fake_rows(evals=("test",), objectives=OBJECTIVES + ("dm",), task=task, k=k)
    rows[0]["value"] = float("nan")
    fig, axes = plots.class_subset_grid(rows, row_values=["cross", "same"], objectives=OBJECTIVES + ("dm",), chance=10)
    assert axes.shape == (2, 4)  # 3 points + mean
    for ax in axes.flat:
        lines = objective_lines(ax)
        assert len(lines) == 5 and all(list(l.get_xdata()) == [1, 2, 10] for l in lines)
    assert axes[0, 3].get_title() == "mean over layers"


def test_similarity_figure():
    pairs = [plots.pair_label(f, e) for f, e in plots.ROBUSTNESS_COMBOS]
    cka = pd.DataFrame([{"pair": p, "front_point": k, "value": 0.5} for p in pairs for k in POINTS])
    func = pd.DataFrame(sum((fake_rows(objectives=("fula",), pair=p) for p in pairs), []))
    fig = plots.similarity_figure(cka, func, pair_order=pairs, functional_styles={"test": "-", "test/pgd": "--"})
    a, b = fig.axes[:2]
    assert len(a.get_lines()) == 4 and len(b.get_lines()) == 8
    assert list(a.get_lines()[0].get_xdata()) == [1, 5, 9]


def test_marker_examples():
    images = torch.zeros(20, 1, 8, 8, dtype=torch.uint8)
    labels = torch.arange(20) % 4
    data = ImageSet(images, labels, ("a", "b", "c", "d"), "synthetic/test")
    fig = plots.marker_examples({"clean": data, "pixel": data.with_images(images + 255)})
    assert len(fig.axes) == 8
    assert all(len(ax.get_images()) == 1 for ax in fig.axes)
    assert fig.axes[0].get_title() == "a" and fig.axes[4].get_ylabel() == "pixel"


def test_robustness_pairs_and_selection_helpers():
    cfgs = {"e_0": "E", "e_0 robust": "ER", "f_1": "F", "f_1 robust": "FR"}
    pairs = plots.robustness_pairs(cfgs, "f_1", "e_0")
    assert [(f, e) for _, f, e in pairs] == [("F", "E"), ("FR", "E"), ("F", "ER"), ("FR", "ER")]
    df = pd.DataFrame(fake_rows(pair="p"))
    wide = plots.curves(df, eval_name="test", pair="p")
    assert list(wide.columns) == sorted(OBJECTIVES) and list(wide.index) == list(POINTS)
    assert plots.group_mean(df, ("slm", "tlm"), eval_name="test/pgd") == pytest.approx(20 + 4)
    assert plots.share_at_least(wide["fula"], wide["hint"]) == (3, 3)
    assert plots.fmt_curve(wide["fula"]) == "1:50.0 5:54.0 9:58.0"
    assert plots.select(df, objective=["slm"], eval="test").shape[0] == 6
    with pytest.raises(KeyError):
        plots.select(df, nope=1)


def test_baseline_table(tmp_path):
    store = ResultStore(tmp_path)
    cfg_f = TrainConfig(dataset="synthetic", width=4, seed=1)
    cfg_e = TrainConfig(dataset="synthetic", width=4, seed=0)
    torch.manual_seed(0)
    front, end = (models.build("resnet18", 4, in_channels=3, width=4).eval() for _ in range(2))

    def specs_of(dataset):
        return [EvalSpec(DataSpec(dataset, "test", subset=16)),
                EvalSpec(DataSpec(dataset, "test", subset=8), attack="pgd", eps=0.1, pgd_step=0.05, pgd_steps=1)]

    base = experiments.baseline_table(store, {("cross", "a"): ((front, cfg_f), (end, cfg_e))}, specs_of, "cpu",
                                key_names=("task", "pair"))
    assert len(base) == 4 and set(base.role) == {"front", "end"} and set(base["eval"]) == {"test", "test/pgd"}
    assert set(base.metric) == {"accuracy"} and (base.task == "cross").all() and (base.dataset == "synthetic").all()
    with pytest.raises(ValueError):
        experiments.baseline_table(store, {"a": ((front, cfg_f), (end, cfg_e))}, specs_of, "cpu", key_names=("task", "pair"))


def test_one_colour_per_objective_in_both_papers_figures():
    from fula_core import invariance_figures as figs

    for key, label in plots.OBJECTIVE_LABELS.items():
        assert figs.OBJECTIVE_COLOURS[label] == plots.OBJECTIVE_COLOURS[key]
    assert len(set(plots.OBJECTIVE_COLOURS.values())) == len(plots.OBJECTIVE_COLOURS)  # no two objectives share one


def test_overlapping_curves_stay_distinguishable():
    """Two objectives with identical numbers: different markers, and drawn side by side (a few points apart
    on screen) while their data stay at the stitch points."""
    import matplotlib.pyplot as plt

    rows = [{"objective": o, "front_point": p, "eval": "test", "metric": "accuracy", "value": 50.0}
            for o in ("hint", "fula") for p in (0, 4, 8)]
    fig, ax = plt.subplots()
    hint, fula = plots.stitching_plot(ax, rows, objectives=["hint", "fula"])
    fig.canvas.draw()
    assert list(hint.get_xdata()) == list(fula.get_xdata()) == [1, 5, 9]
    assert hint.get_marker() != fula.get_marker()
    on_screen = [line.get_transform().transform(line.get_xydata())[:, 0] for line in (hint, fula)]
    assert (abs(on_screen[0] - on_screen[1]) > 1).all()  # pixels apart
    plt.close(fig)
