"""Which figures and tables a run of a profile writes (figures/<profile>/MANIFEST.json), stated once.

The notebooks name most outputs literally; the ones that depend on the profile (the appendix figures of the
other architectures: Figs 13-30, and notebook 05's information figure per further architecture, only at
profiles with several) come from the same functions the notebooks
call, so this list cannot drift from what they draw for those. `expected_outputs(P)` is what a complete run
of P must leave in its manifest; the shrunk paper run (tests/test_paper_shrunk.py) checks it.
"""
from __future__ import annotations

from .config import Profile

# Outputs every profile writes, per notebook: (name, kind), kind "figure" (.png + .pdf) or "table" (.csv)
FIXED = {
    "00_base_models": [("table1_base_models", "table")],
    "01_adversarial": [("fig04_fig05_adversarial_stitching", "table"), ("fig04_fig05_baselines", "table"),
                       ("fig06_penultimate_cka", "table"), ("fig04_cross_task_adversarial", "figure"),
                       ("fig05_same_task_adversarial", "figure"), ("fig03_dm_vs_hint", "figure"),
                       ("fig06_penultimate_similarity", "figure")],
    "02_shortcuts": [("fig07_shortcut_examples", "figure"), ("fig12_shortcut_configurations", "figure"),
                     ("fig08_shortcuts", "table"), ("fig08_baselines", "table"), ("fig08_shortcuts", "figure")],
    "03_class_subsets": [("fig09_class_subsets", "table"), ("fig09_class_subsets", "figure")],
    "04_cross_layer": [("cross_layer_stitching", "table"), ("cross_layer_self_accuracy", "table"),
                       ("fig11_fula_weight_sweep", "figure"), ("fula_weight_sweep", "table")],
    "05_invariance_aware": [("fronts_invariance_aware", "table"), ("table_iri_inversion_error", "table"),
                            ("fig_iri_inversion_error", "figure"), ("fig_iri_examples", "figure"),
                            ("fig_info_stitching", "figure"), ("fig_info_adversarial", "figure"),
                            ("fig_info_shortcut", "figure"), ("fig_cka_vs_ifula", "figure"),
                            ("fig_toy_compatibility", "figure")],
    "08_beyond": [("fig_beyond_colour_examples", "figure"), ("table_beyond_models", "table"),
                  ("fig_beyond_colour", "figure"), ("fig_beyond_capacity", "figure")],
}


def expected_outputs(P: Profile) -> dict[str, str]:
    """name -> notebook of every figure and table a complete run of `P` records in its MANIFEST.json (a table
    and a figure of one name, e.g. fig08_shortcuts, share one manifest entry). Notebooks 06 and 07 save none."""
    from . import adversarial, class_subsets, crosslayer, iri_testbeds, shortcut_stitching

    out = {name: nb for nb, items in FIXED.items() for name, _ in items}
    out.update({name: "01_adversarial" for *_, name in adversarial.appendix_figures(P)})  # Figs 13-18
    out.update({name: "02_shortcuts" for *_, name in shortcut_stitching.appendix_figure_names(P)})  # Figs 19-24
    out.update({name: "03_class_subsets" for _, name in class_subsets.appendix_figure_names(P)})  # Figs 25-27
    for arch in P.archs:  # Fig 10 (main architecture) and Figs 28-30
        out.update({name: "04_cross_layer" for name in crosslayer.figure_names(P, arch)})
    # notebook 05's information figure of each further architecture (Profile.iri_archs: VGG-16, ViT-Tiny at paper)
    out.update({name: "05_invariance_aware" for name in iri_testbeds.arch_figure_names(P)})
    return out


def expected_figures(P: Profile) -> list[str]:
    """The names of the figures (.png + .pdf) a complete run of `P` draws, sorted."""
    tables_only = {name for items in FIXED.values() for name, kind in items if kind == "table"} - \
                  {name for items in FIXED.values() for name, kind in items if kind == "figure"}
    return sorted(name for name in expected_outputs(P) if name not in tables_only)
