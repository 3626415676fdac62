"""Published notebooks read well on the repository page and in JupyterLab: no machine paths in outputs,
execution counts 1..n, the kernelspec JupyterLab keeps (so opening a notebook does not mark it modified), and
the explorer's output carries a static HTML snapshot.

The guards run on the committed notebooks/ (quick outputs) and tests/smoke_notebooks/ (smoke copies); the
unit tests below them check that `pipeline.publish` produces all of it from an executed notebook."""
import pathlib

import nbformat
import pytest

from fula_core import pipeline

REPO = pathlib.Path(__file__).resolve().parent.parent
PUBLISHED = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")) + \
    sorted((REPO / "tests" / "smoke_notebooks").glob("[0-9][0-9]_*.ipynb"))
SNAPSHOT = "data:image/png;base64,"


def _id(path):
    return f"{path.parent.name}/{path.name}"


@pytest.mark.parametrize("path", PUBLISHED, ids=_id)
def test_no_machine_paths_in_outputs(path):
    leaks = pipeline.leaked_paths(nbformat.read(path, as_version=4))
    assert not leaks, f"{_id(path)} shows machine paths (republish after the fix): {leaks[:3]}"


@pytest.mark.parametrize("path", PUBLISHED, ids=_id)
def test_execution_counts_are_consecutive(path):
    nb = nbformat.read(path, as_version=4)
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code" and c.execution_count is not None]
    assert counts == list(range(1, len(counts) + 1)), f"{_id(path)}: execution counts {counts}"


@pytest.mark.parametrize("path", PUBLISHED, ids=_id)
def test_kernelspec_is_the_one_jupyterlab_keeps(path):
    assert nbformat.read(path, as_version=4).metadata.get("kernelspec") == pipeline.KERNELSPEC


def test_kernelspec_constant_matches_the_installed_kernel():
    """What JupyterLab compares on open: the display name of the environment's python3 kernelspec."""
    kernelspec = pytest.importorskip("jupyter_client.kernelspec")
    spec = kernelspec.KernelSpecManager().get_kernel_spec(pipeline.KERNELSPEC["name"])
    assert (spec.display_name, spec.language) == (pipeline.KERNELSPEC["display_name"], pipeline.KERNELSPEC["language"])


@pytest.mark.parametrize("path", [p for p in PUBLISHED if p.name.startswith("06_")], ids=_id)
def test_explorer_output_has_a_static_snapshot(path):
    outputs = [o for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code" for o in c.outputs]
    snapshots = [o for o in outputs if SNAPSHOT in o.get("data", {}).get("text/html", "")]
    assert snapshots, f"{_id(path)}: the explorer's output has no static HTML snapshot (republish it)"
    assert all(pipeline.WIDGET_VIEW not in o.get("data", {}) for o in snapshots)
    assert "VBox(" not in str(outputs)


# ----------------------------------------------------------------------------------------------------
# what publish does to an executed notebook


def _executed_notebook():
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"display_name": "Python 3", "language": "python",
                                                          "name": "python3"}, "papermill": {"x": 1}})
    cells = [nbformat.v4.new_code_cell("profile = 'quick'", execution_count=1),
             nbformat.v4.new_code_cell("profile = 'smoke'", execution_count=2,
                                       metadata={"tags": ["injected-parameters"]}),
             nbformat.v4.new_code_cell("paths.save_table(...)", execution_count=3, outputs=[
                 nbformat.v4.new_output("execute_result", {"text/plain": "'results/quick/x.csv'"}, execution_count=3)]),
             nbformat.v4.new_code_cell("view", execution_count=4, outputs=[nbformat.v4.new_output(
                 "execute_result", {"text/plain": "VBox(children=(...))", pipeline.WIDGET_VIEW: {"model_id": "m"},
                                    "text/html": f"<img src='{SNAPSHOT}AAAA'/>"}, execution_count=4)])]
    nb.cells = cells
    return nb


@pytest.mark.parametrize("profile", ["quick", "smoke"])
def test_publish_writes_what_the_guards_ask(tmp_path, monkeypatch, profile):
    (tmp_path / "notebooks").mkdir()
    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "notebooks" / "06_explorer.ipynb")
    executed = tmp_path / "out" / "executed" / profile
    executed.mkdir(parents=True)
    nbformat.write(_executed_notebook(), executed / "06_explorer.ipynb")
    monkeypatch.setenv("FULA_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setattr(pipeline, "NOTEBOOKS", tmp_path / "notebooks")
    monkeypatch.setattr(pipeline, "SMOKE_COPIES", tmp_path / "smoke")
    (target,) = pipeline.publish(profile, ["06"])
    assert target.parent == (tmp_path / ("notebooks" if profile == "quick" else "smoke"))
    nb = nbformat.read(target, as_version=4)
    assert nb.metadata["kernelspec"] == pipeline.KERNELSPEC and "papermill" not in nb.metadata
    counts = [c.execution_count for c in nb.cells]
    assert counts == list(range(1, len(counts) + 1)) and len(counts) == (3 if profile == "quick" else 4)
    assert [o.execution_count for c in nb.cells for o in c.outputs] == counts[-2:]
    view = nb.cells[-1].outputs[0].data
    assert SNAPSHOT in view["text/html"] and pipeline.WIDGET_VIEW not in view and "VBox" not in view["text/plain"]
    assert pipeline.leaked_paths(nb) == []


def test_leaked_paths_finds_machine_folders():
    nb = _executed_notebook()
    assert pipeline.leaked_paths(nb) == []
    nb.cells[2].outputs[0].data["text/plain"] = "PosixPath('/tmp/fresh/results/quick/x.csv')"
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="saved to /work/main/figures\nok")]
    assert pipeline.leaked_paths(nb) == ["saved to /work/main/figures", "PosixPath('/tmp/fresh/results/quick/x.csv')"]


def test_saved_paths_display_relative_to_the_output_root(tmp_path, monkeypatch):
    """Where notebook 04's leak came from: a cell ending with paths.save_table(...) shows its return value."""
    import pandas as pd

    from fula_core import paths

    monkeypatch.setenv("FULA_OUTPUT_DIR", str(tmp_path))
    p = paths.save_table(pd.DataFrame({"a": [1]}), "x", profile="quick", notebook="04")
    assert p.exists() and p == tmp_path / "figures" / "quick" / "x.csv"
    assert repr(p) == "'figures/quick/x.csv'" and str(tmp_path) not in repr(p)


def test_readme_counts_come_from_the_committed_claims_csv():
    """The README's summary line is claims.summary of figures/quick/claims.csv, written by the quick run."""
    from fula_core import claims

    path = REPO / "figures" / "quick" / "claims.csv"
    assert path.exists(), "figures/quick/claims.csv is committed with the quick run's outputs (./run_all.sh --publish)"
    line = claims.summary(path)
    assert line in (REPO / "README.md").read_text(), (
        f"README.md must carry the summary of {path.relative_to(REPO)}: {line!r}")
