"""One colour per objective and one stitch-point numbering (the paper's 1..9) in every figure."""
import matplotlib
import pandas as pd

matplotlib.use("Agg")

from fula_core import crosslayer as cl, explorer, invariance_figures, plots  # noqa: E402


def test_paper2_dm_takes_hints_colour():
    # paper 2's "DM" is fula_core's trained "hint" objective: it must look like Hint in paper 1's figures
    df = pd.DataFrame([{"objective_name": n, "objective": o, "point": p, "value": 50.0 + p, "data": "real", "panel": "x"}
                       for n, o in {"DM": "hint", "HLM": "hlm", "FuLA": "fula"}.items() for p in (1, 2)])
    fig = invariance_figures.plot_panels(df, panel="panel")
    colours = {line.get_label(): line.get_color() for line in fig.axes[0].lines}
    assert colours == {f"{n} · real data": plots.OBJECTIVE_COLOURS[o] for n, o in (("DM", "hint"), ("HLM", "hlm"),
                                                                                   ("FuLA", "fula"))}


def test_stitch_points_are_numbered_1_to_9():
    assert plots.point_label(4, "layer2.1") == "5 · layer2.1" and plots.point_label(0) == "1"
    assert explorer.point_label is plots.point_label
    rows = [{"arch": "resnet18", "pair": "self", "front_model": "m", "end_model": "m", "objective": "fula",
             "front_point": i, "end_point": j, "metric": "accuracy", "value": 50.0, "sweep": False}
            for i in (0, 8) for j in (0, 8)]
    fig = cl.plot_heatmaps(pd.DataFrame(rows), (0, 8), ("fula",), ("self",))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1", "9"]
    sweep = pd.DataFrame({"front_point": [8, 8], "end_point": [0, 0], "n_terms": [1, 9], "accuracy": [40.0, 60.0],
                          "deepest_point": [0, 8]})
    fig11 = cl.plot_sweep(sweep)
    assert list(fig11.axes[0].lines[0].get_xdata()) == [1, 9] and "[9→1]" in fig11.axes[0].lines[0].get_label()
