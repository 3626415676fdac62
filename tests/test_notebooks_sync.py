"""The smoke copies that nbval checks must be the notebooks of notebooks/, executed at the smoke profile."""
import pathlib

import nbformat
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _code(path, drop_injected=True):
    nb = nbformat.read(path, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"
            and not (drop_injected and "injected-parameters" in c.metadata.get("tags", []))]


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ has no numbered notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_smoke_copy_in_sync(path):
    copy = REPO / "tests" / "smoke_notebooks" / path.name
    assert copy.exists(), f"{copy} missing: run ./run_all.sh --profile smoke --publish"
    assert _code(copy) == _code(path), (f"{copy.name} differs from notebooks/{path.name}: "
                                        f"run ./run_all.sh --profile smoke --only {path.name[:2]} --publish")
    injected = [c for c in nbformat.read(copy, as_version=4).cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and 'profile = "smoke"' in injected[0].source, "the smoke copy was not executed at profile smoke"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_shape(path):
    """One parameters cell of typed literals, and a closing Checks section."""
    nb = nbformat.read(path, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    for line in params[0].source.splitlines():
        if line.strip() and not line.strip().startswith("#"):
            assert ":" in line.split("=")[0] and "=" in line, f"parameters must be typed literals: {line!r}"
    assert any(c.cell_type == "markdown" and c.source.startswith("## Checks") for c in nb.cells), "no '## Checks' section"
