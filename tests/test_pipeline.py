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
    assert sorted(missing) == sorted(zoo.zoo_configs(profile))
    assert missing[:2] == ["fashion_mnist_0", "fashion_mnist_1"]  # 60k images x 6 epochs beat 10k x 4 x PGD-3
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
