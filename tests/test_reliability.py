"""Issue 11's trial as unit tests: the cache verifies what it loads, errors name their file and their fix,
and the runner's bookkeeping (paths, parameters, logs, failures) cannot silently go wrong."""
from __future__ import annotations

import errno
import gzip
import json
import math
import os
import pathlib
import shutil
import signal
import stat
import subprocess
import sys

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch

from fula_core import data, models, paths, pipeline, stitching, store
from fula_core.data import CorruptDataError
from fula_core.stitching import StitchConfig, StitchJob
from fula_core.store import CorruptCheckpointError, CorruptJSONError, ResultStore

REPO = pathlib.Path(__file__).resolve().parent.parent


# --- the store checks what it loads -----------------------------------------------------------------------

def test_swapped_cache_files_are_refused_with_their_name(tmp_path):
    s = ResultStore(tmp_path)
    a, b = {"model": "a", "seed": 0}, {"model": "b", "seed": 1}
    s.save("eval", a, {"accuracy": 0.9})
    s.save("eval", b, {"accuracy": 0.1})
    pa, pb = s.path("eval", store.config_key(a)), s.path("eval", store.config_key(b))
    tmp = tmp_path / "t"
    shutil.move(pa, tmp), shutil.move(pb, pa), shutil.move(tmp, pb)
    with pytest.raises(CorruptCheckpointError, match="swapped") as err:
        s.load("eval", a)
    assert str(pa) in str(err.value) and "Delete it and rerun" in str(err.value)


def test_a_cache_file_of_another_kind_is_refused(tmp_path):
    """A model's file where an evaluation belongs: today's KeyError 'num_classes' becomes a clear error."""
    s = ResultStore(tmp_path)
    s.save("model", {"id": 1}, {"state": {"w": torch.zeros(2)}})
    target = s.path("base_eval", store.config_key({"id": 1}))
    target.parent.mkdir(parents=True)
    shutil.copy(s.path("model", store.config_key({"id": 1})), target)
    with pytest.raises(CorruptCheckpointError, match="'model' item .* 'base_eval' item") as err:
        s.load("base_eval", {"id": 1})
    assert str(target) in str(err.value)


def test_a_cache_from_an_older_store_version_says_to_delete_or_move_it(tmp_path):
    s = ResultStore(tmp_path)
    path = s.path("eval", store.config_key({"x": 1}))
    store.atomic_save({"fula_store": 1, "payload": {"accuracy": 1.0}}, path)
    with pytest.raises(CorruptCheckpointError, match="older version of fula") as err:
        s.load("eval", {"x": 1})
    assert "delete or move the cache folder" in str(err.value) and str(path) in str(err.value)


def test_a_swapped_partial_checkpoint_starts_over_instead_of_resuming(tmp_path):
    s = ResultStore(tmp_path)
    s.checkpointer("stitch", {"a": 1}).save({"epoch": 3})
    mine = s.checkpointer("stitch", {"b": 2})
    shutil.copy(s.checkpointer("stitch", {"a": 1}).path, mine.path)
    with pytest.warns(UserWarning, match="starting over"):
        assert mine.load() is None


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_mode_of_a_plain_write(tmp_path, umask):
    old = os.umask(umask)
    try:
        plain = tmp_path / "plain"
        plain.write_text("x")
        store.atomic_write_text(tmp_path / "atomic", "x")
        ResultStore(tmp_path).save("eval", {"k": 1}, {"v": 1})
    finally:
        os.umask(old)
    expected = stat.S_IMODE(plain.stat().st_mode)
    assert expected == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "atomic").stat().st_mode) == expected
    for f in (tmp_path / "eval").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == expected, f


def test_a_full_disk_says_no_space_left_and_where(tmp_path):
    def write(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    target = tmp_path / "cache" / "model" / "k.pt"
    with pytest.raises(OSError, match="no space left") as err:
        store._atomic_write(target, write, "wb")
    assert err.value.errno == errno.ENOSPC and str(target.parent) in str(err.value)
    assert "FULA_CACHE_DIR" in str(err.value)
    assert list(target.parent.iterdir()) == [], "the temp file was left behind"


# --- bookkeeping files ---------------------------------------------------------------------------------------

def test_a_corrupt_manifest_is_named_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("FULA_OUTPUT_DIR", str(tmp_path))
    manifest = paths.figures_dir("smoke") / "MANIFEST.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text('{"fig01": ')
    with pytest.raises(CorruptJSONError) as err:
        paths.save_table(pd.DataFrame({"a": [1]}), "fig_x", profile="smoke", notebook="nb")
    assert str(manifest) in str(err.value) and "delete it and rerun" in str(err.value)


def test_a_corrupt_timings_file_is_ignored_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("FULA_OUTPUT_DIR", str(tmp_path))
    timings = paths.executed_dir("smoke") / "timings.json"
    timings.parent.mkdir(parents=True)
    timings.write_text("not json")
    selected = [pathlib.Path(f"{n}_x.ipynb") for n in ("00", "01", "05")]
    with pytest.warns(UserWarning, match="timings.json"):
        assert [p.name[:2] for p in pipeline.longest_first(selected, "smoke")] == ["01", "05", "00"]
    with pytest.warns(UserWarning):
        pipeline._record_timing("smoke", "00_x.ipynb", 3.0)
    assert json.loads(timings.read_text()) == {"00_x.ipynb": 3.0}


# --- the runner: paths, checkout, parameters, logs, failures ------------------------------------------------

def test_relative_paths_become_absolute_from_where_the_run_started(tmp_path, monkeypatch):
    monkeypatch.setenv("FULA_CACHE_DIR", "rel/cache")
    monkeypatch.setenv("FULA_DATA_DIR", "../data")
    monkeypatch.setenv("FULA_OUTPUT_DIR", str(tmp_path / "abs"))
    monkeypatch.setenv("PYTHONPATH", f"/somewhere{os.pathsep}{REPO}")
    monkeypatch.delenv("FULA_REPO", raising=False)
    pipeline.prepare_environment(invoked_from=str(tmp_path / "start"))
    assert os.environ["FULA_CACHE_DIR"] == str(tmp_path / "start" / "rel" / "cache")
    assert os.environ["FULA_DATA_DIR"] == str(tmp_path / "start" / ".." / "data")
    assert os.environ["FULA_OUTPUT_DIR"] == str(tmp_path / "abs")
    assert os.environ["FULA_REPO"] == str(REPO)
    assert os.environ["PYTHONPATH"].split(os.pathsep) == [str(REPO), "/somewhere"]
    assert paths.cache_dir("smoke") == tmp_path / "start" / "rel" / "cache" / "smoke"
    assert paths.results_dir("smoke") == tmp_path / "abs" / "results" / "smoke"


def test_fula_core_of_another_checkout_fails_loudly(tmp_path):
    env = {**os.environ, "FULA_REPO": str(tmp_path), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", "import fula_core"], env=env, capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode != 0
    assert "another checkout" in done.stderr and str(REPO) in done.stderr and str(tmp_path) in done.stderr
    env["FULA_REPO"] = str(REPO)
    assert subprocess.run([sys.executable, "-c", "import fula_core"], env=env, cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("name,option", [("profile", "--profile"), ("device", "--device")])
def test_param_for_a_runner_owned_name_is_rejected_with_the_option(name, option):
    with pytest.raises(SystemExit, match=f"use {option}"):
        pipeline.parse_param(f"{name}=paper")
    with pytest.raises(SystemExit, match=f"use {option}"):
        pipeline.run("smoke", ["00"], {name: "paper"})


@pytest.fixture
def typed_notebook(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell('profile = "quick"\ndevice = "auto"\nepochs = 3\nlr = 0.1\nname = "x"\n'
                                     'points = (0, 4)\nflag = False\nanything = None')
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "42_typed.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.mark.parametrize("text,fragment", [("epochs=abc", "epochs as int"), ("epochs=2.5", "epochs as int"),
                                           ("epochs=True", "epochs as int"), ("lr=fast", "lr as float"),
                                           ("name=3", "name as str"), ("points=4", "points as tuple"),
                                           ("flag=1", "flag as bool")])
def test_param_of_the_wrong_type_names_the_parameter(typed_notebook, text, fragment):
    with pytest.raises(SystemExit, match=fragment) as err:
        pipeline._check_parameters([typed_notebook], dict([pipeline.parse_param(text)]))
    assert "42_typed.ipynb" in str(err.value)


@pytest.mark.parametrize("text", ["epochs=5", "lr=1", "lr=0.5", "name=abc", "points=[1, 2]", "flag=True",
                                  "anything=[1]", "anything=None"])
def test_param_of_a_fitting_type_passes(typed_notebook, text):
    pipeline._check_parameters([typed_notebook], dict([pipeline.parse_param(text)]))


def test_each_run_logs_into_a_folder_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("FULA_OUTPUT_DIR", str(tmp_path))
    folder = pipeline.run_log_dir("smoke")
    assert folder.parent == tmp_path / "executed" / "smoke" / "logs"
    assert folder.name.endswith(f"-{os.getpid()}")


LONG = "x" * 400


def test_a_failed_worker_shows_its_whole_exception():
    log = ("training...\nTraceback (most recent call last):\n  File \"a.py\", line 1, in <module>\n"
           f"fula_core.store.CorruptCheckpointError: /cache/smoke/model/abc.pt holds {LONG}\n"
           "Delete it and rerun\n")
    shown = pipeline.failure_excerpt(log)
    assert shown.startswith("fula_core.store.CorruptCheckpointError: /cache/smoke/model/abc.pt") and LONG in shown
    assert shown.endswith("Delete it and rerun")
    notebook_log = ("[fula] 03_x.ipynb ...\n[fula] FAILED: 03_x.ipynb, cell 4: ValueError: " + LONG +
                    "\n[fula] the executed notebook with the traceback is /out/03_x.ipynb\n" + "noise\n" * 10)
    shown = pipeline.failure_excerpt(notebook_log)
    assert shown.startswith("[fula] FAILED: 03_x.ipynb, cell 4: ValueError") and "/out/03_x.ipynb" in shown


def test_rerun_to_resume_only_when_a_rerun_can_help():
    assert "rerun to resume" in pipeline._failure_advice(-signal.SIGKILL)
    assert "rerun to resume" in pipeline._failure_advice(128 + signal.SIGTERM)
    assert "rerun to resume" not in pipeline._failure_advice(1)
    assert "fix the error above" in pipeline._failure_advice(1)


def test_a_failing_worker_stops_the_pool_with_its_exception(tmp_path, capsys):
    failing = [sys.executable, "-c", f"raise ValueError('/data/x.gz is broken: {LONG}')"]
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(SystemExit, match="fix the error above") as err:
        pipeline._run_pool({"a": sleeper, "b": failing}, 2, 1, tmp_path, "train")
    assert "rerun to resume" not in str(err.value)
    assert f"ValueError: /data/x.gz is broken: {LONG}" in capsys.readouterr().err


# --- data files ------------------------------------------------------------------------------------------------

def _write_fmnist(folder: pathlib.Path, images: bytes) -> None:
    folder.mkdir(parents=True)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(images)
    labels = bytes([0, 0, 8, 1]) + (2).to_bytes(4, "big") + bytes([0, 1])
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_fashion_mnist_gz_is_named_with_the_fix(tmp_path, damage):
    raw = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (2, 28, 28)) + bytes(2 * 28 * 28)
    packed = gzip.compress(raw)
    content = packed[: len(packed) // 2] if damage == "truncated" else b"this is not gzip at all" * 10
    folder = tmp_path / "FashionMNIST" / "raw"
    _write_fmnist(folder, content)
    with pytest.raises(CorruptDataError) as err:
        data.load("fashion_mnist", "test", root=tmp_path)
    message = str(err.value)
    assert str(folder / "t10k-images-idx3-ubyte.gz") in message
    assert "Delete" in message and "fetch it again" in message


# --- validation at the boundary, with the parameter's name -------------------------------------------------------

def test_stitch_points_accept_numpy_integers_and_refuse_bools():
    job = StitchJob(np.int64(3), np.int32(5), "fula")
    assert job.front_point == 3 and type(job.front_point) is int and type(job.end_point) is int
    assert job == StitchJob(3, 5, "fula") and job.name == StitchJob(3, 5, "fula").name
    with pytest.raises(TypeError, match="front_point"):
        StitchJob(True, 0, "fula")
    with pytest.raises(TypeError, match="end_point"):
        StitchJob(0, 2.0, "fula")


@pytest.mark.parametrize("kwargs,fragment", [({"lr": 0.0}, "lr must be > 0"), ({"lr": -1e-3}, "lr must be > 0"),
                                             ({"lr": math.nan}, "lr must be > 0"),
                                             ({"epochs": 2.5}, "epochs must be an integer"),
                                             ({"epochs": True}, "epochs must be an integer"),
                                             ({"lr_milestones": (0.5, 1.0)}, "lr_milestones"),
                                             ({"lr_milestones": (0.0,)}, "lr_milestones")])
def test_stitch_config_names_its_bad_field(kwargs, fragment):
    with pytest.raises((ValueError, TypeError), match=fragment):
        StitchConfig(**kwargs)


def test_nan_fula_weights_are_refused():
    with pytest.raises(ValueError, match="fula_weights must be finite"):
        StitchJob(7, 7, "fula", fula_weights=(math.nan, 1.0))
    with pytest.raises(ValueError, match="fula_weights must be finite"):
        stitching.fula_loss([torch.ones(1, 1, 1, 1)], [torch.ones(1, 1, 1, 1)], [math.inf])


def test_model_width_must_be_an_integer():
    with pytest.raises(TypeError, match="width must be an integer"):
        models.build("resnet18", 10, 1, width=4.5)
    with pytest.raises(TypeError, match="num_classes must be an integer"):
        models.build("resnet18", True, 1, width=4)
    assert models.build("resnet18", np.int64(3), 1, width=np.int64(4)).width == 4


def _tiny_set(channels: int, labels) -> data.ImageSet:
    n = len(labels)
    return data.ImageSet(images=torch.zeros(n, channels, 8, 8, dtype=torch.uint8),
                         labels=torch.tensor(labels), classes=tuple(str(i) for i in range(10)), name="tiny/train")


def test_train_stitches_names_labels_outside_the_end_models_classes():
    front, end = models.build("resnet18", 10, 1, 4), models.build("resnet18", 3, 1, 4)
    with pytest.raises(ValueError, match="label 7, outside the end model's 3 classes"):
        stitching.train_stitches(front, end, [StitchJob(4, 4, "tlm")], _tiny_set(1, [0, 7]), progress=False)


@pytest.mark.parametrize("part", ["front", "end"])
def test_train_stitches_names_the_model_with_the_wrong_channel_count(part):
    one, three = models.build("resnet18", 10, 1, 4), models.build("resnet18", 10, 3, 4)
    front, end = (three, one) if part == "front" else (one, three)
    with pytest.raises(ValueError, match=f"the {part} model takes 3 channels"):
        stitching.train_stitches(front, end, [StitchJob(4, 4, "fula")], _tiny_set(1, [0, 1]), progress=False)


def test_a_full_disk_reported_by_torch_as_runtime_error_says_no_space_left(tmp_path, monkeypatch):
    """torch.save reports a failed write as RuntimeError('... file write failed'); with the disk full it is
    the same advice."""
    def write(f):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(store.shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(OSError, match="no space left") as err:
        store._atomic_write(tmp_path / "k.pt", write, "wb")
    assert "file write failed" in str(err.value)
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="file write failed"):  # with room on the disk: the error itself
        store._atomic_write(tmp_path / "k.pt", write, "wb")
