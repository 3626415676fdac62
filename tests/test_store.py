import pickle

import pytest
import torch

from fula_core import store
from fula_core.store import CorruptCheckpointError, ResultStore, config_key


def test_config_key_is_stable_and_sensitive():
    a = {"lr": 0.1, "arch": "resnet18", "points": (1, 2)}
    assert config_key(a) == config_key({"points": [1, 2], "arch": "resnet18", "lr": 0.1})
    assert config_key(a) != config_key({**a, "lr": 0.1000001})
    assert config_key(a) != config_key({**a, "seed": 0})
    with pytest.raises(TypeError, match="cannot hash"):
        config_key({"f": object()})


def test_finished_items_are_never_recomputed(tmp_path):
    s, calls = ResultStore(tmp_path), []

    def compute(ckpt):
        calls.append(1)
        return {"w": torch.arange(3)}

    first = s.get_or_compute("model", {"seed": 0}, compute)
    again = ResultStore(tmp_path).get_or_compute("model", {"seed": 0}, compute)
    assert len(calls) == 1 and torch.equal(first["w"], again["w"])
    s.get_or_compute("model", {"seed": 1}, compute)
    assert len(calls) == 2


def test_kill_during_write_leaves_no_file(tmp_path, monkeypatch):
    s = ResultStore(tmp_path)
    real_save = torch.save

    def dying_save(obj, f):
        real_save(obj, f)
        f.write(b"half")
        raise KeyboardInterrupt  # killed mid-write, before the rename

    monkeypatch.setattr(store.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        s.save("stitch", {"k": 1}, {"x": torch.ones(2)})
    monkeypatch.undo()
    assert not s.has("stitch", {"k": 1})
    assert list((tmp_path / "stitch").iterdir()) == []  # not even the temp file
    assert s.get_or_compute("stitch", {"k": 1}, lambda c: {"x": torch.zeros(2)})["x"].sum() == 0


def test_partial_checkpoint_resumes_and_is_removed_when_done(tmp_path):
    s = ResultStore(tmp_path)

    def compute(ckpt):
        state = ckpt.load() or {"epoch": 0}
        ckpt.save({"epoch": state["epoch"] + 1})
        if state["epoch"] == 0:
            raise RuntimeError("killed")
        return {"epochs_seen": state["epoch"] + 1}

    with pytest.raises(RuntimeError):
        s.get_or_compute("m", {"a": 1}, compute)
    assert s.get_or_compute("m", {"a": 1}, compute) == {"epochs_seen": 2}
    assert not s.path("m", config_key({"a": 1}), partial=True).exists()


def test_corrupt_and_foreign_checkpoints_give_clear_errors(tmp_path):
    s = ResultStore(tmp_path)
    s.save("model", {"a": 1}, {"x": 1})
    path = s.path("model", config_key({"a": 1}))
    path.write_bytes(path.read_bytes()[:40])  # truncated
    with pytest.raises(CorruptCheckpointError, match="Delete it and rerun"):
        s.load("model", {"a": 1})
    torch.save({"state_dict": {}}, path)  # a plain torch file from elsewhere
    with pytest.raises(CorruptCheckpointError, match="not written by this version"):
        s.load("model", {"a": 1})
    with open(path, "wb") as f:  # a pickle that would run code: refused by weights_only
        pickle.dump({"fula_store": 1, "payload": Exception("x")}, f)
    with pytest.raises(CorruptCheckpointError):
        s.load("model", {"a": 1})
