"""The layer explorer: cached lookups never train, a missing stitch trains on request, the widget works
without a front end."""
import math

import pytest
import torch

from fula_core import experiments, explorer as ex_mod, models
from fula_core.explorer import Explorer, activation_cka, format_html
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
    with pytest.raises(IndexError):
        again.result("synthetic_1", "synthetic_0", 9, 1, "fula")
    assert "stitched clean accuracy" in format_html(cached) and "–" in format_html(missing)


def test_cka_of_a_layer_with_itself_is_one():
    torch.manual_seed(0)
    net = models.build("resnet18", 4, width=4).eval()
    x = torch.rand(40, 3, 16, 16)
    assert activation_cka(net, net, x, 3, 3) == pytest.approx(1.0, abs=1e-9)
    assert activation_cka(net, net, x, 0, 8) < 1.0


def test_widget_builds_and_trains_on_click(store, monkeypatch):
    pytest.importorskip("ipywidgets")
    ex = Explorer(store, tiny_profile(), "cpu", configs=CONFIGS, progress=False)
    box = ex.widget("synthetic_1", "synthetic_0", 6, 3, "fula")
    c = ex.controls
    assert set(c) == {"front", "end", "front_point", "end_point", "objective", "train", "result", "log"}
    assert c["front"] in box.children[0].children and c["result"] in box.children
    fp, obj, button, shown = c["front_point"], c["objective"], c["train"], c["result"]
    assert "from the cache" in shown.value and button.disabled  # trained by the test above
    fp.value = 2
    assert "not trained" in shown.value and not button.disabled
    calls = []
    real = experiments.train_stitches
    monkeypatch.setattr(experiments, "train_stitches", lambda *a, **k: calls.append(1) or real(*a, **k))
    button.click()
    assert calls == [1] and "trained" in shown.value and button.disabled
    obj.value = "dm"
    assert "not trained" in shown.value
