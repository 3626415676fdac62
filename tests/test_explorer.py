"""The layer explorer: cached lookups never train, a missing stitch trains on request, the views read the
cache (heatmap, curves, one image through the stitch, IRIs), your own networks can be added, and the widget
works without a front end and carries a static HTML snapshot."""
import math

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn as nn

matplotlib.use("Agg")

from fula_core import experiments, invariance, models
from fula_core.crosslayer import eval_spec
from fula_core.explorer import Explorer, activation_cka, format_html, point_label
from fula_core.store import ResultStore

from test_crosslayer import CONFIGS, tiny_profile


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return ResultStore(tmp_path_factory.mktemp("explorer"))


def _no_training(*a, **k):
    raise AssertionError("trained although train_if_missing=False or the stitch was cached")


def test_result_cached_only_unless_asked(store, monkeypatch):
    ex = Explorer(store, tiny_profile(), "cpu", configs=CONFIGS, progress=False)
    assert ex.model_ids == ["synthetic_0", "synthetic_1"]
    r = ex.result("synthetic_1", "synthetic_0", 6, 3, "fula")
    assert r["status"] == "models not trained" and math.isnan(r["accuracy"])
    assert not ex.model_cached("synthetic_0")

    r = ex.result("synthetic_1", "synthetic_0", 6, 3, "fula", train_if_missing=True)
    assert r["status"] == "trained" and ex.model_cached("synthetic_0") and ex.model_cached("synthetic_1")
    assert 0 <= r["accuracy"] <= 100 and 0 <= r["agreement"] <= 100 and 0 <= r["end_accuracy"] <= 100
    assert -1e-6 <= r["cka"] <= 1 + 1e-6
    assert (r["front_layer"], r["end_layer"], r["job"]) == ("layer3.1", "layer2.0", "fula[6->3]a0")

    monkeypatch.setattr(experiments, "train_stitches", _no_training)
    again = Explorer(store, tiny_profile(), "cpu", configs=CONFIGS, progress=False)
    cached = again.result("synthetic_1", "synthetic_0", 6, 3, "fula")
    assert cached["status"] == "cached"
    assert {k: cached[k] for k in ("accuracy", "agreement", "cka")} == {k: r[k] for k in ("accuracy", "agreement", "cka")}
    missing = again.result("synthetic_1", "synthetic_0", 3, 6, "hint")
    assert missing["status"] == "not trained" and math.isnan(missing["accuracy"]) and not math.isnan(missing["cka"])
    with pytest.raises(KeyError, match="unknown model"):
        again.result("nope", "synthetic_0", 1, 1, "fula")
    with pytest.raises(ValueError, match="unknown objective"):
        again.result("synthetic_1", "synthetic_0", 1, 1, "nope")
    with pytest.raises(IndexError, match="out of range"):
        again.result("synthetic_1", "synthetic_0", 9, 1, "fula")
    table = format_html(cached)
    assert "stitched model: clean accuracy" in table and "agreement probability" in table
    assert "7 · layer3.1" in table and "4 · layer2.0" in table  # the paper's numbering, 1..9
    assert "–" in format_html(missing)


def test_point_labels_use_the_papers_numbering():
    assert point_label(0, "conv1") == "1 · conv1" and point_label(4, "layer2.1") == "5 · layer2.1"


def test_cka_of_a_layer_with_itself_is_one():
    torch.manual_seed(0)
    net = models.build("resnet18", 4, width=4).eval()
    x = torch.rand(40, 3, 16, 16)
    assert activation_cka(net, net, x, 3, 3) == pytest.approx(1.0, abs=1e-9)
    assert activation_cka(net, net, x, 0, 8) < 1.0


def test_views_read_the_cache(store, monkeypatch):
    P = tiny_profile()  # cross-layer points (5, 7)
    ex = Explorer(store, P, "cpu", configs=CONFIGS, progress=False)
    for i, j in ((5, 5), (7, 5)):
        ex.result("synthetic_1", "synthetic_0", i, j, "fula", train_if_missing=True)
    monkeypatch.setattr(experiments, "train_stitches", _no_training)
    points, m = ex.heatmap("synthetic_1", "synthetic_0", "fula")
    assert points == [5, 7]
    assert np.isfinite(m[0, 0]) and np.isfinite(m[1, 0]) and np.isnan(m[0, 1]) and np.isnan(m[1, 1])
    assert m[1, 0] == ex.result("synthetic_1", "synthetic_0", 7, 5, "fula")["accuracy"]
    assert np.isnan(ex.heatmap("synthetic_1", "synthetic_0", "hint")[1]).all()

    curves = ex.curves("synthetic_1", "synthetic_0")
    assert set(curves.front_point) == {5} and set(curves.objective) == {"fula"}  # only i -> i stitches
    assert set(curves.metric) == {"accuracy", "agreement"} and not curves.robust.any()

    info = ex.inspect("synthetic_1", "synthetic_0", 5, 5, "fula", index=3)
    assert info["index"] == 3 and info["image"].shape == (3, 16, 16)
    assert sorted(info["errors"]) == [5, 6, 7, 8]  # the stitch point and every later point: FuLA's terms
    assert all(e >= 0 for e in info["errors"].values())
    assert info["stitched"].shape == info["end"].shape
    assert ex.inspect("synthetic_1", "synthetic_0", 5, 7, "fula") is None  # not trained: nothing to show


    last = ex.render("synthetic_1", "synthetic_0", 5, 5, "fula", index=0)
    assert last["result"]["status"] == "cached" and len(last["figures"]) == 2  # overview + image view
    assert last["views"] == ["overview", "one_image"]
    assert all(p[:4] == b"\x89PNG" for p in last["figures"])
    snap = ex.snapshot_html()
    assert snap.count("data:image/png;base64,") == 2 and "stitched model: clean accuracy" in snap
    assert "alt='overview'" in snap and "alt='one_image'" in snap  # each figure names its view


def test_iri_view_when_an_iri_set_is_cached(store, monkeypatch):
    P = tiny_profile()
    ex = Explorer(store, P, "cpu", configs=CONFIGS, progress=False)
    ex.result("synthetic_1", "synthetic_0", 5, 5, "fula", train_if_missing=True)
    assert ex.iri_examples("synthetic_1", "synthetic_0", 5) is None
    front = ex._stitcher("synthetic_1", "synthetic_0").front
    data = eval_spec(P, "synthetic").data.load("cpu")
    invariance.iri_set(store, CONFIGS["synthetic_1"], front, 5, data, steps=2, samples=6, progress=False)
    info = ex.iri_examples("synthetic_1", "synthetic_0", 5, n=3)
    assert info is not None and info["iris"].shape == (3, 3, 16, 16) and len(info["pred_iri"]) == 3
    assert info["source"] is not None and len(info["pred_real"]) == 3
    chosen = data.take(6, seed=0).images[:3].float() / 255
    assert torch.equal(info["source"], chosen)  # the very images that were inverted
    assert ex.iri_examples("synthetic_1", "synthetic_0", 7) is None  # another point: none cached
    assert ex.iri_examples("synthetic_0", "synthetic_0", 5) is None  # another front model
    last = ex.render("synthetic_1", "synthetic_0", 5, 5, "fula")
    assert len(last["figures"]) == 3 and last["views"] == ["overview", "one_image", "iri"]


class _TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1, stride=2), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


def test_your_own_model_can_be_stitched(store):
    torch.manual_seed(0)
    ex = Explorer(store, tiny_profile(), "cpu", configs=CONFIGS, progress=False)
    mine = models.stitchable(_TinyCNN(), ["stem", "block"])
    ex.add_model("my cnn", mine, "synthetic")
    assert ex.points_of("my cnn") == ["stem", "block"] and "my cnn" in ex.model_ids
    r = ex.result("my cnn", "synthetic_0", 1, 4, "fula", train_if_missing=True)
    assert r["status"] == "trained" and r["front_layer"] == "block" and 0 <= r["accuracy"] <= 100
    assert ex.result("my cnn", "synthetic_0", 1, 4, "fula")["status"] == "cached"
    with pytest.raises(IndexError, match="out of range"):
        ex.result("my cnn", "synthetic_0", 2, 4, "fula")
    with pytest.raises(ValueError, match="taken"):
        ex.add_model("my cnn", mine, "synthetic")
    with pytest.raises(TypeError, match="stitchable"):
        ex.add_model("raw", _TinyCNN(), "synthetic")
    with torch.no_grad():  # other weights: another model, its stitches are not the old ones
        mine.model.head[2].bias += 1
    ex2 = Explorer(store, tiny_profile(), "cpu", configs=CONFIGS, progress=False)
    ex2.add_model("my cnn", mine, "synthetic")
    assert ex2.result("my cnn", "synthetic_0", 1, 4, "fula")["status"] == "not trained"


def test_widget_builds_and_trains_on_click(store, monkeypatch):
    pytest.importorskip("ipywidgets")
    ex = Explorer(store, tiny_profile(), "cpu", configs=CONFIGS, progress=False)
    # the selection's stitch must be cached (an earlier test trains it; alone, this test trains it here)
    ex.result("synthetic_1", "synthetic_0", 6, 3, "fula", train_if_missing=True)
    view = ex.view("synthetic_1", "synthetic_0", 6, 3, "fula")
    box, c = view.box, ex.controls
    assert {"front", "end", "front_point", "end_point", "objective", "image", "train", "status", "result",
            "views", "log"} == set(c)
    assert c["front"] in box.children[0].children and c["result"] in box.children
    assert c["front_point"].options[6] == ("7 · layer3.1", 6)
    fp, obj, button, shown = c["front_point"], c["objective"], c["train"], c["result"]
    assert "from the cache" in shown.value and button.disabled
    assert c["views"].value.count("data:image/png;base64,") == 2  # overview + one image through the stitch
    assert button.layout.width == "max-content"  # the label is never cut off
    fp.value = 2
    assert "not trained" in shown.value and not button.disabled
    calls, seen = [], []
    real = experiments.train_stitches
    # the status says training started before any training happens
    monkeypatch.setattr(experiments, "train_stitches",
                        lambda *a, **k: calls.append(1) or seen.append(c["status"].value) or real(*a, **k))
    button.click()
    assert calls == [1] and "Training started" in seen[0]
    assert "trained" in shown.value and button.disabled
    obj.value = "dm"
    assert "not trained" in shown.value

    bundle = view._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    html_ = bundle["text/html"]
    assert "Static snapshot" in html_ and "data:image/png;base64," in html_ and "VBox(" not in html_


def test_every_architecture_of_the_profile_is_listed(tmp_path):
    from fula_core import zoo
    from fula_core.config import get_profile

    P = get_profile("paper")  # three architectures
    ex = Explorer(ResultStore(tmp_path), P, "cpu", progress=False)
    assert ex.model_ids == list(zoo.table1_configs(P))
    assert any(m.endswith(" resnet34") for m in ex.model_ids) and any(m.endswith(" resnet18_noskip") for m in ex.model_ids)
    assert all(len(ex.points_of(m)) == 9 for m in ex.model_ids)
    assert Explorer(ResultStore(tmp_path), P, "cpu", arch="resnet34").model_ids == list(zoo.zoo_configs(P, "resnet34"))
