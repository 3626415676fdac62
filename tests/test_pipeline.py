"""The headless runner: parallel scheduling, failure reporting, shared files under parallel writers."""
import json
import multiprocessing
import sys

import pytest

from fula_core import pipeline, zoo
from fula_core.config import get_profile
from fula_core.store import ResultStore, atomic_write_text, file_lock


def test_longest_first_uses_last_timings_else_default_order(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "_timings_path", lambda profile: tmp_path / "timings.json")
    nbs = [tmp_path / n for n in ("00_a.ipynb", "01_b.ipynb", "05_c.ipynb")]
    assert [p.name[:2] for p in pipeline.longest_first(nbs, "quick")] == ["01", "05", "00"]
    (tmp_path / "timings.json").write_text(json.dumps({"00_a.ipynb": 50, "01_b.ipynb": 10, "05_c.ipynb": 30}))
    assert [p.name[:2] for p in pipeline.longest_first(nbs, "quick")] == ["00", "05", "01"]


def test_resolve_jobs():
    assert pipeline.resolve_jobs("3", "cpu") == 3
    assert pipeline.resolve_jobs("auto", "cpu") in (1, 2)
    for bad in ("0", "two"):
        with pytest.raises(SystemExit, match="positive number"):
            pipeline.resolve_jobs(bad, "cpu")


def test_pool_runs_everything_and_names_the_first_failure(tmp_path, capsys):
    ok = {f"job{i}": [sys.executable, "-c", f"print('hello {i}')"] for i in range(3)}
    pipeline._run_pool(ok, jobs=2, threads=1, log_dir=tmp_path, what="test")
    assert (tmp_path / "job2.log").read_text().strip() == "hello 2"
    bad = {"fine": [sys.executable, "-c", "pass"],
           "broken": [sys.executable, "-c", "import sys; print('the reason'); sys.exit(3)"]}
    with pytest.raises(SystemExit, match=r"FAILED: test broken \(exit 3\)"):
        pipeline._run_pool(bad, jobs=1, threads=1, log_dir=tmp_path, what="test")
    assert "the reason" in capsys.readouterr().err  # the log's tail is shown


def _bump(path, n):
    for _ in range(n):
        with file_lock(path):
            value = int(path.read_text()) if path.exists() else 0
            atomic_write_text(path, str(value + 1))


def test_file_lock_serialises_read_modify_write_across_processes(tmp_path):
    path = tmp_path / "counter.txt"
    procs = [multiprocessing.get_context("spawn").Process(target=_bump, args=(path, 50)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert int(path.read_text()) == 150


def test_missing_models_lists_untrained_zoo_models_dearest_first(tmp_path):
    profile = get_profile("quick")
    missing = zoo.missing_models(profile, ResultStore(tmp_path))
    assert sorted(missing) == sorted(zoo.all_zoo_configs(profile))
    assert {"digits_1", "fashion_mnist_1 cross-bias", "fashion_mnist_1 simclr"} <= set(missing)  # paper 2 fronts
    assert missing[:2] == ["fashion_mnist_0", "fashion_mnist_1"]  # 30k images x 5 epochs beat 8k x 3 x PGD-3
    with pytest.raises(SystemExit, match="no zoo model 'nope'"):
        zoo._config_for(profile, "nope")


def test_published_notebooks_lose_progress_bars_but_keep_returned_widgets():
    import nbformat

    cell = nbformat.v4.new_code_cell("train()")
    bar = nbformat.v4.new_output("display_data", data={pipeline.WIDGET_VIEW: {"model_id": "a"}, "text/plain": "0%|"})
    text = nbformat.v4.new_output("stream", name="stdout", text="accuracy 90.6\n")
    explorer = nbformat.v4.new_output("execute_result", data={pipeline.WIDGET_VIEW: {"model_id": "b"}, "text/plain": "VBox"},
                                      execution_count=1)
    cell.outputs = [bar, text, explorer]
    nb = nbformat.v4.new_notebook(cells=[cell, nbformat.v4.new_markdown_cell("prose")])
    assert pipeline.drop_progress_bars(nb) == 1
    assert [o.output_type for o in nb.cells[0].outputs] == ["stream", "execute_result"]


def test_paper_zoo_lists_all_table1_models_and_paper2_fronts():
    """Table 1 at `paper` has the 6 models of each of the 3 architectures; paper 2's fronts (seeds 1-3) come on top."""
    profile = get_profile("paper")
    assert len(zoo.table1_configs(profile)) == 18
    extra = zoo.paper2_configs(profile)
    assert {f"cifar10_{s} {kind}" for s in (1, 2, 3) for kind in ("robust (replace AT)", "cross-bias", "simclr")} <= set(extra)
    assert {"ls_imagenet10_1", "ls_imagenet10_2", "ls_imagenet10_3", "cifar10_0 robust (replace AT)"} <= set(extra)
    assert extra["cifar10_2 robust (replace AT)"].adv_mode == "replace"  # paper 2 follows the authors' code
    assert len(zoo.all_zoo_configs(profile)) == 18 + len(extra) - 1  # cifar10_1 is in both


def test_save_table_keeps_number_columns_and_leaves_out_arrays(tmp_path, monkeypatch):
    """A DataFrame's numbers come back as NumPy scalars, which have a `shape` too: the per-image score arrays
    are left out of the CSV, the numbers are not (the shrunk paper run's Table 1 had lost every number)."""
    import numpy as np
    import pandas as pd

    from fula_core import paths

    monkeypatch.setenv("FULA_OUTPUT_DIR", str(tmp_path))
    df = pd.DataFrame({"model": ["a", "b"], "width": [4, 8], "accuracy": [50.0, 60.5], "robust": [True, False],
                       "scores": [np.zeros(3), np.ones(3)]})
    path = paths.save_table(df, "t", profile="smoke", notebook="nb")
    assert pd.read_csv(path).columns.tolist() == ["model", "width", "accuracy", "robust"]
    assert pd.read_csv(path).accuracy.tolist() == [50.0, 60.5]
