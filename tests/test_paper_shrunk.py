"""The paper profile, proven on a CPU: every notebook (00-08) runs at `--profile paper --shrink` (config.shrink:
the paper's architectures, data sets, testbeds, AutoAttack and figures at toy sizes) on tiny CIFAR-10 and
LS-ImageNet-10 files in their real formats, through the real pipeline, and writes every figure and table a
paper run would write (figure_list.expected_outputs). Before anyone spends GPU days on `paper`, each of its
code paths has run here."""
from __future__ import annotations

import json
import os
import pathlib
import resource
import subprocess
import sys
import time

import pytest

from fula_core import config, figure_list
from fula_core.tiny_data import write_paper_data

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_shrink_keeps_the_structure_and_cuts_only_sizes():
    P, S = config.get_profile("paper"), config.get_profile("paper-shrunk")
    assert S.name == "paper-shrunk" and S != P  # its own cache, figures and executed folders
    for field in ("end_dataset", "cross_dataset", "archs", "seeds", "objectives", "shortcut_kinds",
                  "robust_attack", "paper2_adv_mode", "class_subset_sampling", "cross_bias_shortcut",
                  "cross_layer_objectives", "iri_adv_alphas", "robust_alpha", "info_archs"):
        assert getattr(S, field) == getattr(P, field), field
    assert S.robust_attack == "autoattack"
    assert figure_list.expected_outputs(S) == figure_list.expected_outputs(P)
    assert set(S.alphas) <= set(P.alphas) and 0 < S.alphas[-1] < 1  # the mixed clean + PGD pass
    assert set(S.stitch_points) <= set(P.stitch_points) and set(S.iri_points) <= set(P.iri_points)
    assert S.base.width < P.base.width and S.base.epochs == 1 and S.autoattack_iter < P.autoattack_iter
    assert S.notes_for("03")[0].startswith("SHRUNK paper")
    with pytest.raises(ValueError, match="paper-shrunk"):
        config.get_profile("paper-small")


def test_expected_outputs_of_paper_include_every_appendix_architecture():
    names = figure_list.expected_figures(config.get_profile("paper"))
    assert len(names) == 40  # 38, and notebook 05's information figure of VGG-16 and of ViT-Tiny
    assert {"fig_info_stitching_vgg16", "fig_info_stitching_vit_tiny"} <= set(names)
    for number in range(3, 31):  # Figs 3-30 of paper 1 (Figs 1-2 are diagrams)
        assert any(n.startswith(f"fig{number:02d}_") for n in names), number
    smoke = figure_list.expected_figures(config.get_profile("smoke"))  # one architecture: no Figs 13-30
    assert not any(n.startswith(("fig13", "fig19", "fig25", "fig28")) for n in smoke) and "fig10_cross_layer" in smoke


@pytest.mark.slow
def test_every_notebook_runs_at_paper_shrunk(tmp_path):
    data_dir = write_paper_data(tmp_path / "data")
    out = tmp_path / "out"
    env = {**os.environ, "FULA_OUTPUT_DIR": str(out), "FULA_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    env.pop("FULA_CACHE_DIR", None)  # its own cache, under its output root
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    proc = subprocess.run([sys.executable, "-m", "fula_core.pipeline", "--profile", "paper", "--shrink",
                           "--jobs", "1"], env=env, cwd=REPO, capture_output=True, text=True, timeout=3600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"paper-shrunk: {cpu:.0f} CPU s, {time.time() - started:.0f} s wall")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert not (out / "figures" / "paper").exists()  # nothing under the real paper's name
    manifest = json.loads((out / "figures" / "paper-shrunk" / "MANIFEST.json").read_text())
    expected = figure_list.expected_outputs(config.get_profile("paper-shrunk"))
    missing = sorted(set(expected) - set(manifest))
    assert not missing, f"a paper run would write these, the shrunk run did not: {missing}"
    for name, notebook in expected.items():
        assert manifest[name]["notebook"].startswith(notebook[:2]), (name, manifest[name])
    for name in figure_list.expected_figures(config.get_profile("paper-shrunk")):
        assert all((out / "figures" / "paper-shrunk" / f"{name}.{ext}").exists() for ext in ("png", "pdf")), name
    executed = sorted(p.name[:2] for p in (out / "executed" / "paper-shrunk").glob("[0-9][0-9]_*.ipynb"))
    assert executed == [f"{i:02d}" for i in range(9)]


def test_shrink_reaches_every_worker_and_folder(monkeypatch, tmp_path):
    """--shrink selects '<profile>-shrunk' everywhere: the notebooks' `profile` parameter, the parallel workers'
    command lines, and the cache / figures / executed folders."""
    from fula_core import paths, pipeline

    assert pipeline._profile_args("paper-shrunk") == ["--profile", "paper", "--shrink"]
    assert pipeline._profile_args("quick") == ["--profile", "quick"]
    monkeypatch.setenv("FULA_OUTPUT_DIR", str(tmp_path))
    assert paths.figures_dir(config.get_profile("paper-shrunk").name) == tmp_path / "figures" / "paper-shrunk"
    seen = {}
    monkeypatch.setattr(pipeline, "prepare_environment", lambda: None)  # main's process-wide settings: not here
    monkeypatch.setattr(pipeline.signal, "signal", lambda *a: None)
    monkeypatch.setattr(pipeline, "run", lambda profile, *a, **k: seen.setdefault("profile", profile))
    pipeline.main(["--profile", "paper", "--shrink", "--only", "00", "--jobs", "1"])
    assert seen["profile"] == "paper-shrunk"
