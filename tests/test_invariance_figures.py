"""Notebook-05 support: the IRI bank, both data modes of a pair, AutoAttack agreement, tables and figures."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

from fula_core import data, invariance, models, simclr, train
from fula_core import invariance_figures as figs
from fula_core.stitching import StitchConfig
from fula_core.store import ResultStore

STITCH = StitchConfig(epochs=1, batch_size=32, lstsq_samples=32)


@pytest.fixture(scope="module")
def sets():
    return data.load("synthetic", "train").take(64), data.load("synthetic", "test").take(32)


def _model(seed):
    torch.manual_seed(seed)
    return models.build("resnet18", 4, in_channels=3, width=4).eval()


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# --- IRI bank -------------------------------------------------------------------------------------

def test_iri_bank_inverts_each_front_source_and_point_once(sets, tmp_path, monkeypatch):
    calls = []
    real = invariance.iri_set

    def counting(store, cfg, model, point, data_, **kw):
        calls.append((cfg, point, data_.name))
        return real(store, cfg, model, point, data_, **kw)

    monkeypatch.setattr(invariance, "iri_set", counting)
    bank = figs.IRIBank(ResultStore(tmp_path), steps=2, step_size=8 / 255, samples=16, progress=False)
    model = _model(0)
    first = bank.get("f0", {"front": 0}, model, sets[0], [1, 3], "information")
    again = bank.get("f0", {"front": 0}, model, sets[0], [3], "adversarial")
    assert again[3] is first[3] and len(calls) == 2 and len(bank) == 2
    assert len(first[1]) == 16 and first[1].point == 1
    assert torch.equal(first[1].data.labels, bank.sources(sets[0]).labels)  # the IRIs of exactly the source subset

    with pytest.raises(ValueError, match="both named"):
        bank.get("f0", {"front": 1}, model, sets[0], [1], "information")

    table = bank.table()
    assert list(table.point) == [1, 3]
    assert list(table.testbeds) == ["information", "information, adversarial"]
    assert {"front", "source", "initial_error", "final_error"} <= set(table.columns)


def test_iri_bank_sources_are_all_images_without_samples(sets, tmp_path):
    bank = figs.IRIBank(ResultStore(tmp_path), steps=1, step_size=8 / 255, samples=None)
    assert bank.sources(sets[0]) is sets[0]


# --- both data modes ------------------------------------------------------------------------------

def test_stitch_modes_rows_for_both_modes_alphas_and_labels(sets, tmp_path):
    front, end = _model(0), _model(1)
    bank = figs.IRIBank(ResultStore(tmp_path), steps=2, step_size=8 / 255, samples=32, progress=False)
    iris = bank.get("f", {"front": 0}, front, sets[0], [2], "t")
    seen = []
    rows = figs.stitch_modes(ResultStore(tmp_path), front, end, [2], {"DM": "hint", "SLM": "slm"},
                             bank.sources(sets[0]), iris, sets[1], STITCH, key={"pair": "t"}, alphas=(0.0, 1.0),
                             extra_eval=lambda m, job: seen.append(job.name) or {"extra": 1.0}, progress=False,
                             pair="p", seed=7)
    modes = [(r["alpha"], r["data"], r["objective_name"]) for r in rows]
    assert modes == [(0.0, "real", "DM"), (0.0, "real", "SLM"), (0.0, "iri", "DM"), (0.0, "iri", "SLM"),
                     (1.0, "real", "DM"), (1.0, "real", "SLM"), (1.0, "iri", "DM"), (1.0, "iri", "SLM")]
    assert all(r["pair"] == "p" and r["seed"] == 7 and r["extra"] == 1.0 and r["point"] == 2 for r in rows)
    assert len(seen) == len(rows)
    # cached: a second call trains and evaluates nothing
    again = figs.stitch_modes(ResultStore(tmp_path), front, end, [2], {"DM": "hint", "SLM": "slm"},
                              bank.sources(sets[0]), iris, sets[1], STITCH, key={"pair": "t"}, alphas=(0.0, 1.0),
                              extra_eval=lambda m, job: seen.append(job.name) or {"extra": 1.0}, progress=False,
                              pair="p", seed=7)
    assert len(seen) == len(rows) and [r["agreement"] for r in again] == [r["agreement"] for r in rows]


def test_autoattack_agreement_of_a_model_with_itself_is_100(sets):
    model = _model(0)
    scores = figs.autoattack_agreement(model, model, sets[1], eps=8 / 255, n_iter=2, eot_iter=1)
    assert scores["autoattack_agreement"] == pytest.approx(100.0)
    assert 0.0 <= scores["autoattack_accuracy"] <= 100.0
    assert not model.training


# --- tables ---------------------------------------------------------------------------------------

def test_deeper_half():
    assert figs.deeper_half((1, 4, 7)) == (4, 7)
    assert figs.deeper_half((2, 8)) == (8,)
    assert figs.deeper_half(tuple(range(9))) == (4, 5, 6, 7, 8)
    assert figs.deeper_half((5,)) == (5,)


def test_mean_where_filters_and_refuses_empty_selections():
    df = pd.DataFrame({"pair": ["a", "a", "b"], "point": [1, 2, 2], "v": [1.0, 3.0, 10.0]})
    assert figs.mean_where(df, "v", pair="a") == 2.0
    assert figs.mean_where(df, "v", point=(2,)) == 6.5
    assert figs.mean_where(df, "v") == pytest.approx(14 / 3)
    with pytest.raises(KeyError, match="no rows"):
        figs.mean_where(df, "v", pair="c")


def test_to_long_names_measures_and_skips_missing_columns():
    df = pd.DataFrame({"pair": ["a", "b"], "x": [1.0, 2.0], "y": [3.0, 4.0]})
    long = figs.to_long(df, {"x": "ex", "y": "why", "z": "missing"}, ["pair"])
    assert list(long.measure) == ["ex", "ex", "why", "why"] and list(long.value) == [1.0, 2.0, 3.0, 4.0]
    assert list(long.pair) == ["a", "b", "a", "b"]


def test_front_name():
    cfg = train.TrainConfig(dataset="synthetic", width=4, seed=1, shortcut="pixel")
    assert figs.front_name(cfg) == cfg.label + " +pixel markers"
    scfg = simclr.SimCLRConfig(dataset="synthetic", width=4)
    assert "simclr" in figs.front_name(scfg)


def test_cka_rows_of_a_model_with_itself_are_one(sets, tmp_path):
    model = _model(0)
    bank = figs.IRIBank(ResultStore(tmp_path), steps=1, step_size=8 / 255, samples=16, progress=False)
    iris = bank.get("f", {"front": 0}, model, sets[0], [2, 5], "t")
    rows = figs.cka_rows(model, model, sets[1], iris, [2, 5], pair="identical")
    assert [(r["point"], r["measure"]) for r in rows] == [(2, "CKA on real data"), (2, "CKA on IRIs"),
                                                         (5, "CKA on real data"), (5, "CKA on IRIs")]
    assert all(r["value"] == pytest.approx(1.0) and r["pair"] == "identical" for r in rows)


# --- figures --------------------------------------------------------------------------------------

def _grid():
    rows = []
    for pair in ("identical", "cross-seed"):
        for seed, offset in ((1, 0.0), (2, 10.0)):
            for data_mode in ("real", "iri"):
                for obj in ("HLM", "FuLA"):
                    for point in (1, 4, 7):
                        rows.append({"pair": pair, "seed": seed, "data": data_mode, "objective_name": obj,
                                     "point": point, "agreement": 50.0 + point + offset})
    return pd.DataFrame(rows)


def test_plot_panels_draws_the_seed_mean_with_a_band():
    fig = figs.plot_panels(_grid(), panel="pair", y="agreement", panel_order=["cross-seed", "identical", "absent"],
                           chance=10.0, ylabel="agreement")
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["cross-seed", "identical"]
    lines = [line for line in axes[0].get_lines() if line.get_label() == "HLM · IRIs"]
    assert len(lines) == 1 and lines[0].get_linestyle() == "--"
    assert list(lines[0].get_ydata()) == [56.0, 59.0, 62.0]  # mean over the two seeds
    assert len(axes[0].collections) == 4  # a min-max band per objective and data mode
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["HLM · real data", "HLM · IRIs", "FuLA · real data", "FuLA · IRIs", "chance"]


def test_plot_panels_rows_without_style_and_nan_tolerant():
    df = _grid()
    df.loc[0, "agreement"] = float("nan")
    fig = figs.plot_panels(df, panel="pair", rows="data", hue="objective_name", style=None, y="agreement")
    assert len(fig.axes) == 4
    with pytest.raises(ValueError, match="empty"):
        figs.plot_panels(df.iloc[:0], panel="pair", y="agreement")


def test_iri_figures(sets, tmp_path):
    model = _model(0)
    bank = figs.IRIBank(ResultStore(tmp_path), steps=1, step_size=8 / 255, samples=8, progress=False)
    iris = bank.get("f", {"front": 0}, model, sets[0], [1, 4], "t")
    marked = data.ImageSet(sets[0].images, sets[0].labels, sets[0].classes, sets[0].name + "+pixel")
    bank.get("g", {"front": 1}, model, marked, [1], "t")
    fig = figs.plot_iri_errors(bank.table())
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["f", "g (pixel markers in x)"]
    fig = figs.plot_iri_examples(bank.sources(sets[0]), iris, n=3)
    assert len(fig.axes) == 3 * 3


def test_show_closes_the_figure_so_it_is_drawn_once():
    fig = figs.plot_panels(_grid(), panel="pair", y="agreement")
    figs.show(fig)
    assert not plt.fignum_exists(fig.number)


def test_plot_panels_spreads_series_at_a_single_point():
    df = _grid()
    df = df[df.point == 4]
    fig = figs.plot_panels(df, panel="pair", y="agreement")
    xs = sorted(float(line.get_xdata()[0]) for line in fig.axes[0].get_lines() if line.get_label() != "chance")
    assert len(set(xs)) == 4 and min(xs) > 4.5 and max(xs) < 5.5  # 0-based point 4 is the paper's layer 5
    assert len(fig.axes[0].collections) == 4  # a min-max bar per series
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["5"]


def test_figures_number_stitch_points_as_the_paper():
    fig = figs.plot_panels(_grid(), panel="pair", y="agreement")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["2", "5", "8"]  # points 1, 4, 7
    assert fig.axes[0].get_xlabel() == "stitch point (1-9)"
