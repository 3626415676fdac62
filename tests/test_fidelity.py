"""The table of differences from the papers and the authors' code, and what each notebook prints of it."""
import pathlib

from fula_core import config, fidelity

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_docs_page_is_generated_from_the_table():
    """docs/differences.md is `python -m fula_core.fidelity`'s output: edit fula_core/fidelity.py and rerun it."""
    assert (REPO / "docs" / "differences.md").read_text() == fidelity.markdown()


def test_every_difference_is_complete_and_names_its_notebooks():
    notebooks = {p.name[:2] for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    for d in fidelity.DIFFERENCES:
        assert d.setting and d.theirs and d.ours and d.parameter and d.why, d
        assert d.notebooks and set(d.notebooks) <= notebooks, d


def test_each_notebook_prints_only_its_own_rows(capsys):
    quick = config.get_profile("quick")
    fidelity.show(quick, "03")
    out = capsys.readouterr().out
    assert "class subsets" in out and "cross-layer heatmaps" not in out  # 03's note, not 04's
    assert "AutoAttack EOT" not in out  # a row of 00/01/05 only
    fidelity.show(quick, "04")
    out = capsys.readouterr().out
    assert "cross-layer heatmaps" in out and "relative errors of Hint and FuLA" in out
    assert len(quick.notes_for("05")) < len(quick.notes)


def test_every_notebook_calls_show_instead_of_printing_all_notes():
    for nb in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"):
        text = nb.read_text()
        assert "fidelity.show(P, \\\"" + nb.name[:2] in text, nb.name
        assert "for note in P.notes" not in text, nb.name
