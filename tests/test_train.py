import dataclasses

import pytest
import torch

from fula_core import attacks, config, data, stitching, train
from fula_core.store import ResultStore

TINY = train.TrainConfig(dataset="synthetic", arch="resnet18", width=4, epochs=3, batch_size=64, lr=0.05)


@pytest.fixture(scope="module")
def sets():
    return data.load("synthetic", "train"), data.load("synthetic", "test")


def test_clean_training_learns(sets):
    model = train.train_model(TINY, sets[0], progress=False)
    acc = stitching.evaluate(model, sets[1])["accuracy"]
    assert acc > 80, acc  # 4 classes: chance is 25


@pytest.mark.parametrize("adv_mode", train.ADV_MODES)
def test_adversarial_training_is_more_robust(sets, adv_mode):
    """Both ways of mixing PGD examples in (paper 1's Eq. 4 loss mix, the authors' batch replacement) buy
    robustness over clean training."""
    eps = dict(pgd_eps=0.15, pgd_step=0.05, pgd_steps=3)
    clean = train.train_model(dataclasses.replace(TINY, **eps), sets[0], progress=False)
    robust = train.train_model(dataclasses.replace(TINY, adv_alpha=0.5, adv_mode=adv_mode, **eps), sets[0], progress=False)
    x, y = sets[1].images.float() / 255, sets[1].labels
    rob = [attacks.robust_accuracy(m, x, y, attack="pgd", eps=0.15, step_size=0.05, steps=5) for m in (clean, robust)]
    assert rob[1] > rob[0], rob


def test_replace_mode_attacks_a_share_of_the_batch(sets, monkeypatch):
    """adv_mode="replace": PGD runs on round(alpha * batch) images of each batch, not on all of them."""
    seen = []
    real = attacks.pgd_linf

    def spy(model, x, y, **kw):
        seen.append(len(x))
        return real(model, x, y, **kw)

    monkeypatch.setattr(attacks, "pgd_linf", spy)
    cfg = dataclasses.replace(TINY, epochs=1, adv_alpha=0.25, adv_mode="replace", pgd_steps=1)
    train.train_model(cfg, sets[0], progress=False)
    assert seen and set(seen) == {16}  # a quarter of each 64-image batch
    with pytest.raises(ValueError, match="adv_mode"):
        train.TrainConfig(dataset="synthetic", adv_mode="half")


def test_get_model_caches_and_resumes(sets, tmp_path):
    s = ResultStore(tmp_path)
    a = train.get_model(s, TINY, data=sets[0], progress=False)
    b = train.get_model(s, TINY, data=None, progress=False)  # from the cache: no data needed... and no training
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k
    assert len(list((tmp_path / "model").glob("*.pt"))) == 1


def test_profiles():
    for name in config.PROFILES:
        p = config.get_profile(name)
        cfg = p.train_config(p.end_dataset, p.seeds[0], robust=True)
        assert cfg.adv_alpha == p.robust_alpha and cfg.dataset == p.end_dataset
    with pytest.raises(ValueError, match="unknown profile 'fast'.*smoke"):
        config.get_profile("fast")
    assert config.resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            config.resolve_device("cuda")
