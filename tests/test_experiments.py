import numpy as np
import pytest
import torch

from fula_core import experiments
from fula_core.experiments import DataSpec, EvalSpec, Stitcher
from fula_core.stitching import StitchConfig, StitchJob
from fula_core.store import ResultStore
from fula_core.train import TrainConfig

FRONT = TrainConfig(dataset="synthetic", width=4, epochs=1, batch_size=64, lr=0.05, seed=1)
END = TrainConfig(dataset="synthetic", width=4, epochs=1, batch_size=64, lr=0.05, seed=0)
CFG = StitchConfig(epochs=1, batch_size=64, lstsq_samples=32, pgd_eps=0.1, pgd_step=0.05, pgd_steps=1)


def test_stitcher_caches_jobs_and_evaluations(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    train = DataSpec("synthetic", "train", subset=128)
    specs = [EvalSpec(DataSpec("synthetic", "test", subset=64)),
             EvalSpec(DataSpec("synthetic", "test", subset=64), attack="pgd", eps=0.1, pgd_step=0.05, pgd_steps=2)]
    jobs = [StitchJob(2, 2, "fula"), StitchJob(4, 4, "tlm", alpha=1.0), StitchJob(1, 1, "dm")]
    st = Stitcher(store, FRONT, END, CFG, train, "cpu", progress=False)
    rows = st.evaluate(jobs, specs)
    assert len(rows) == len(jobs) * len(specs) * 2
    assert {r["eval"] for r in rows} == {"test", "test/pgd"}
    clean = {r["job"]: r["value"] for r in rows if r["eval"] == "test" and r["metric"] == "accuracy"}
    attacked = {r["job"]: r["value"] for r in rows if r["eval"] == "test/pgd" and r["metric"] == "accuracy"}
    assert all(attacked[j] <= clean[j] + 1e-9 for j in clean)

    def no_training(*a, **k):
        raise AssertionError("a cached job was retrained")

    monkeypatch.setattr(experiments, "train_stitches", no_training)
    st2 = Stitcher(store, FRONT, END, CFG, train, "cpu", progress=False)
    again = st2.evaluate(jobs, specs)  # all from the cache, models included
    assert [{k: v for k, v in r.items() if k != "scores"} for r in again] == [
        {k: v for k, v in r.items() if k != "scores"} for r in rows]
    assert all(np.array_equal(a["scores"], b["scores"]) for a, b in zip(again, rows))
    assert all(abs(r["scores"].mean() - r["value"]) < 1e-3 for r in rows)  # the per-image scores average to the value
    monkeypatch.undo()
    # a new job trains only itself
    calls = []
    real = experiments.train_stitches
    monkeypatch.setattr(experiments, "train_stitches", lambda f, e, j, *a, **k: calls.append(j) or real(f, e, j, *a, **k))
    st2.evaluate(jobs + [StitchJob(3, 3, "hint")], specs[:1])
    assert [[j.name for j in c] for c in calls] == [["hint[3->3]a0"]]


def test_data_spec_transforms():
    d = DataSpec("synthetic", "train", subset=100, first_classes=2, shortcut="pixel").load()
    assert len(d) == 100 and int(d.labels.max()) <= 1
    with pytest.raises(ValueError):
        DataSpec("nope").load()


def test_baseline_rows_agreement_is_keyed_by_the_model_it_agrees_with(tmp_path):
    from fula_core.models import build

    store = ResultStore(tmp_path)
    torch.manual_seed(0)
    a, b = build("resnet18", 10, 3, width=4).eval(), build("resnet18", 10, 3, width=4).eval()
    spec = [EvalSpec(DataSpec("synthetic", "test", subset=64))]
    alone = experiments.baseline_rows(store, a, "model a", "end", spec, "cpu")
    assert {r["metric"]: r["value"] for r in alone}["agreement"] == 100.0  # with itself, by definition
    vs_b = experiments.baseline_rows(store, a, "model a", "end", spec, "cpu", agree_with=b, agree_with_cfg="model b")
    acc = {r["metric"]: r["value"] for r in vs_b}
    assert acc["accuracy"] == {r["metric"]: r["value"] for r in alone}["accuracy"]
    assert acc["agreement"] < 100.0  # two random nets: not the cached self-agreement
    with pytest.raises(ValueError, match="together"):
        experiments.baseline_rows(store, a, "model a", "end", spec, "cpu", agree_with=b)
