import dataclasses

import pytest
import torch

from fula_core import data, invariance, metrics, models, shortcuts, stitching, train
from fula_core.stitching import StitchConfig, StitchJob
from fula_core.store import Checkpointer, ResultStore

TINY = train.TrainConfig(dataset="synthetic", arch="resnet18", width=4, epochs=2, batch_size=64, lr=0.05)
FAST = dict(steps=40, step_size=4 / 255)  # the paper's method on a shortened schedule: fewer, larger steps
STITCH = StitchConfig(epochs=2, batch_size=32, lstsq_samples=64)


@pytest.fixture(scope="module")
def sets():
    return data.load("synthetic", "train"), data.load("synthetic", "test")


@pytest.fixture(scope="module")
def model(sets):
    return train.train_model(TINY, sets[0], progress=False)


@pytest.fixture(scope="module")
def iris(model, sets):
    """IRIs of the trained model at points 2 and 5 for 128 training images."""
    source = sets[0].take(128)
    return {p: invariance.generate_iris(model, p, source, batch_size=64, progress=False, **FAST) for p in (2, 5)}


def _other_model(seed=3):
    torch.manual_seed(seed)
    return models.build("resnet18", 4, width=4).eval()


# --- IRI generation ---------------------------------------------------------------------------------

def test_iris_halve_the_error_from_noise_and_keep_labels(model, sets, iris):
    source = sets[0].take(128)
    for point, result in iris.items():
        s = result.summary()
        assert s["final_error"] <= 0.5 * s["initial_error"], s
        assert result.images.dtype == torch.uint8 and result.images.shape == source.images.shape
        assert torch.equal(result.data.labels, source.labels) and result.data.classes == source.classes
        assert result.loss_curve.shape == (2, FAST["steps"] + 1)
        # the reported errors are those of the stored uint8 images
        x = result.images.float() / 255
        with torch.no_grad():
            a, t = model.activations_upto(x, point), model.activations_upto(source.images.float() / 255, point)
        want = (a - t).flatten(1).norm(dim=1) / t.flatten(1).norm(dim=1)
        assert torch.allclose(result.final_error, want, rtol=1e-4, atol=1e-6)
        # same representation, different pixels: they started from noise, not near x
        assert (result.images.float() - source.images.float()).abs().mean() > 20


def test_paper_schedule_halves_the_error(model, sets):
    result = invariance.generate_iris(model, 2, sets[0].take(16), progress=False)  # 200 steps of 1/255
    s = result.summary()
    assert s["final_error"] <= 0.5 * s["initial_error"], s
    assert abs(s["unquantised_error"] - s["final_error"]) < 0.05  # rounding to uint8 barely moves the error


def test_iris_of_a_plain_tensor(model, sets):
    images = sets[0].images[:8]
    result = invariance.generate_iris(model, 0, images, steps=3, batch_size=8, progress=False)
    assert isinstance(result.data, torch.Tensor) and result.data.dtype == torch.uint8
    assert result.data.shape == images.shape


def test_killed_iri_generation_resumes_to_the_same_result(model, sets, tmp_path, monkeypatch):
    source = sets[0].take(48)
    kw = dict(steps=8, step_size=4 / 255, batch_size=16, seed=5, progress=False)
    straight = invariance.generate_iris(model, 3, source, **kw)

    ckpt = Checkpointer(tmp_path / "iri.partial.pt")
    saves = {"n": 0}
    real_save = ckpt.save

    def save_then_die(state):
        real_save(state)
        saves["n"] += 1
        if saves["n"] == 2:
            raise KeyboardInterrupt  # killed after the second of three batches was saved

    monkeypatch.setattr(ckpt, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        invariance.generate_iris(model, 3, source, checkpoint=ckpt, **kw)
    again = Checkpointer(ckpt.path)
    resumed_saves = []
    real_again = again.save
    monkeypatch.setattr(again, "save", lambda state: (resumed_saves.append(1), real_again(state)))
    resumed = invariance.generate_iris(model, 3, source, checkpoint=again, **kw)
    assert len(resumed_saves) == 1  # only the missing batch was computed
    assert torch.equal(resumed.images, straight.images)
    assert torch.allclose(resumed.final_error, straight.final_error)
    assert torch.allclose(resumed.loss_curve, straight.loss_curve)
    with pytest.raises(ValueError, match="another run"):
        invariance.generate_iris(model, 4, source, checkpoint=Checkpointer(ckpt.path), **kw)


def test_iri_set_is_cached_by_config(model, sets, tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    kw = dict(steps=4, step_size=4 / 255, samples=32, seed=1, batch_size=32, progress=False)
    first = invariance.iri_set(store, TINY, model, 2, sets[0], **kw)
    assert len(first) == 32 and first.point == 2 and "iri" in first.data.name

    def no_recompute(*args, **kwargs):
        raise AssertionError("a cached IRI set was recomputed")

    monkeypatch.setattr(invariance, "generate_iris", no_recompute)
    second = invariance.iri_set(store, TINY, model, 2, sets[0], **kw)
    assert torch.equal(first.images, second.images) and torch.equal(first.data.labels, second.data.labels)
    assert second.summary() == pytest.approx(first.summary())
    with pytest.raises(AssertionError, match="recomputed"):  # another point is another key
        invariance.iri_set(store, TINY, model, 3, sets[0], **kw)


def test_bad_inversion_inputs_are_rejected(model, sets):
    images = sets[0].images[:4]
    with pytest.raises(TypeError, match="uint8"):
        invariance.generate_iris(model, 2, images.float() / 255, progress=False)
    with pytest.raises(ValueError, match="channels"):
        invariance.generate_iris(model, 2, images[:, :1], progress=False)
    with pytest.raises(IndexError, match="out of range"):
        invariance.generate_iris(model, 9, images, progress=False)
    with pytest.raises(ValueError, match="step_size"):
        invariance.generate_iris(model, 2, images, step_size=0.0, progress=False)
    with pytest.raises(TypeError, match="ImageSet"):
        invariance.iri_set(ResultStore("unused"), TINY, model, 2, images)


# --- stitching on IRIs ------------------------------------------------------------------------------

def test_identical_pair_stays_identity_on_iris(model, sets, iris):
    """Stitching a model to itself on its own IRIs: the identity is optimal for every objective."""
    jobs = [StitchJob(5, 5, "hint"), StitchJob(5, 5, "dm"), StitchJob(5, 5, "fula")]
    outcomes = stitching.train_stitches(model, model, jobs, iris[5].data, invariance.iri_stitch_config(STITCH),
                                        init_data=sets[0], progress=False)
    with torch.no_grad():
        acts = model.activations_upto(sets[0].images[:256].float() / 255, 5)
    live = acts.flatten(2).amax(dim=(0, 2)) > 0  # dead (all-zero) channels have no defined map
    assert live.sum() >= 2
    for outcome in outcomes:
        w = outcome.stitch_state["conv.weight"][:, :, 0, 0][live][:, live]
        assert torch.allclose(w, torch.eye(int(live.sum())), atol=0.05), outcome.job.name
        assert outcome.front_bn is None and outcome.end_bn is None  # BatchNorm in eval mode

    rows = invariance.invariance_aware_stitching(model, model, [2, 5], ["hint", "slm"], sets[0], iris, sets[1],
                                                 STITCH, progress=False)
    assert [(r["point"], r["objective"]) for r in rows] == [(2, "hint"), (2, "slm"), (5, "hint"), (5, "slm")]
    for r in rows:
        assert r["data"] == "iri" and r["error"] is None
        assert r["agreement"] > 99, r
        assert r["chance_normalised_agreement"] == pytest.approx(metrics.chance_normalised_agreement(r["agreement"], 4))


def test_iri_runs_train_on_iris_with_eval_bn_and_real_init(model, sets, iris, tmp_path, monkeypatch):
    calls = []
    real_train = invariance.train_stitches

    def recording(front, end, jobs, train_data, cfg, **kw):
        calls.append((train_data, cfg, kw["init_data"]))
        return real_train(front, end, jobs, train_data, cfg, **kw)

    monkeypatch.setattr(invariance, "train_stitches", recording)
    other = _other_model()
    cfg = dataclasses.replace(STITCH, epochs=1, bn_mode="train", augment=True)
    store = ResultStore(tmp_path)
    rows = invariance.invariance_aware_stitching(other, model, [5], ["fula"], sets[0], iris, sets[1], cfg,
                                                 store=store, key="other->model", progress=False)
    train_data, used_cfg, init_data = calls[-1]
    assert train_data is iris[5].data and init_data is sets[0]
    assert used_cfg.bn_mode == "eval" and not used_cfg.augment and used_cfg.epochs == 1

    real_rows = invariance.invariance_aware_stitching(other, model, [5], ["fula"], sets[0], None, sets[1], cfg,
                                                      progress=False)
    assert calls[-1][0] is sets[0] and calls[-1][1] == cfg  # real data: the config as given
    assert real_rows[0]["data"] == "real" and set(real_rows[0]) == set(rows[0])

    # evaluating stitched models leaves the frozen models in the mode they came in (eval)
    assert not any(m.training for m in model.modules()) and not any(m.training for m in other.modules())

    n_calls = len(calls)
    cached = invariance.invariance_aware_stitching(other, model, [5], ["fula"], sets[0], iris, sets[1], cfg,
                                                   store=store, key="other->model", progress=False)
    assert len(calls) == n_calls  # from the store, nothing trained
    assert [{k: v for k, v in r.items() if not k.endswith("_scores")} for r in cached] == \
        [{k: v for k, v in r.items() if not k.endswith("_scores")} for r in rows]
    for r, c in zip(rows, cached):  # per-image scores (tensors) for the claims' paired bootstraps
        assert torch.equal(r["agreement_scores"], c["agreement_scores"]) and len(r["agreement_scores"]) == len(sets[1])
        assert r["agreement"] == pytest.approx(float(r["agreement_scores"].double().mean()), abs=1e-4)

    with pytest.raises(KeyError, match="no IRI set for stitch point"):
        invariance.invariance_aware_stitching(other, model, [6], ["fula"], sets[0], iris, sets[1], cfg, progress=False)
    with pytest.raises(ValueError, match="IRIs of stitch point 2"):
        invariance.invariance_aware_stitching(other, model, [5], ["fula"], sets[0], {5: iris[2]}, sets[1], cfg,
                                              progress=False)
    with pytest.raises(ValueError, match="key"):
        invariance.invariance_aware_stitching(other, model, [5], ["fula"], sets[0], iris, sets[1], cfg, store=store)


def test_real_data_points_train_in_one_call_with_rows_cached_per_point(model, sets, tmp_path, monkeypatch):
    calls = []
    real_train = invariance.train_stitches

    def recording(front, end, jobs, train_data, cfg, **kw):
        calls.append([j.name for j in jobs])
        return real_train(front, end, jobs, train_data, cfg, **kw)

    monkeypatch.setattr(invariance, "train_stitches", recording)
    other, train_set = _other_model(), sets[0].take(96)
    cfg = dataclasses.replace(STITCH, epochs=1, bn_mode="train")
    run = lambda points, **kw: invariance.invariance_aware_stitching(  # noqa: E731
        other, model, points, ["hint", "slm"], train_set, None, sets[1], cfg, progress=False, **kw)
    # one point per call, uncached: the reference
    alone = run([2]) + run([5])
    assert len(calls) == 2

    # the points of one real-data run train in one call, with results identical to a call per point
    store = ResultStore(tmp_path)
    together = run([2, 5], store=store, key="other->model")
    assert calls[-1] == ["hint[2->2]a0", "slm[2->2]a0", "hint[5->5]a0", "slm[5->5]a0"]
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_scores")} for r in rows]  # noqa: E731
    assert strip(together) == strip(alone)
    assert all(torch.equal(a["agreement_scores"], b["agreement_scores"]) for a, b in zip(together, alone))

    # cached per point: a run over points 5 and 6 trains only point 6, and loads 5 as it was
    calls.clear()
    more = run([5, 6], store=store, key="other->model")
    assert calls == [["hint[6->6]a0", "slm[6->6]a0"]]
    assert strip(more[:2]) == strip(together[2:])
    assert not list((tmp_path / "stitch_rows").glob("*.partial.pt"))  # no checkpoint left behind


# --- excess agreement and CKA -----------------------------------------------------------------------

def test_excess_agreement_is_zero_when_markers_carry_no_class(model, sets):
    other = _other_model()
    scores = invariance.excess_agreement_eval(other, model, sets[1], "random", seed=2)
    assert scores["agreement_correct"] < 99  # two different models: a non-trivial agreement...
    assert scores["excess_agreement"] == 0.0  # ...that shifting a class-free marker cannot change

    # a fresh StitchedModel (in training mode) as the stitched model: the frozen models stay in eval mode
    stitch = stitching.Stitch(16, 16, (4, 4))
    stitched = stitching.StitchedModel(other, model, stitch, StitchJob(5, 5, "dm"))
    invariance.excess_agreement_eval(stitched, model, sets[1], "random", seed=2)
    assert not any(m.training for m in model.modules()) and not any(m.training for m in other.modules())


def test_excess_agreement_matches_hand_computation(model, sets):
    other = _other_model()
    scores = invariance.excess_agreement_eval(other, model, sets[1], "pixel", seed=2)
    agree = []
    for shift in (0, 1):
        marked = shortcuts.add_shortcut(sets[1], "pixel", seed=2, shift=shift)
        agree.append(metrics.agreement_probability(stitching.predict(other, marked), stitching.predict(model, marked)))
    assert scores["agreement_correct"] == pytest.approx(agree[0])
    assert scores["agreement_shifted"] == pytest.approx(agree[1])
    assert scores["excess_agreement"] == pytest.approx(agree[0] - agree[1])
    assert scores["agreement_correct"] != scores["agreement_shifted"]  # the pixel marker does change the images


def test_cka_per_point(model, sets, iris):
    test = sets[1]
    same = invariance.cka_per_point(model, model, test, range(9), batch_size=64)
    assert list(same) == list(range(9)) and all(v == pytest.approx(1.0) for v in same.values())

    other = _other_model()
    cross = invariance.cka_per_point(model, other, test, [2, 5], batch_size=64)
    ref = metrics.MinibatchCKA()  # by hand at point 5
    with torch.no_grad():
        for xb in test.images.split(64):
            x = xb.float() / 255
            ref.update(model.activations_upto(x, 5), other.activations_upto(x, 5))
    assert cross[5] == pytest.approx(ref.value(), rel=1e-6) and cross[5] < 0.999

    on_iris = invariance.cka_per_point(model, other, iris, [2, 5], batch_size=64)
    assert set(on_iris) == {2, 5} and all(-1 <= v <= 1 for v in on_iris.values())
    with pytest.raises(ValueError, match="at least 4"):
        invariance.cka_per_point(model, other, test, [2], batch_size=2)
    with pytest.raises(KeyError, match="no images for stitch point"):
        invariance.cka_per_point(model, other, iris, [3])
