"""Every known difference between this project and its references, as one table.

The references, in order of authority (DEVELOPERS.md): paper 1's text where it is explicit for its own
figures (notebooks 00-04), and the authors' code (github.com/athaioan/invariance-aware-stitching, commit
5815d8e) everywhere else, notebook 05 included. What the profiles shorten for a CPU (`Profile.notes`) is not
listed here: those are budget choices of a profile, and every notebook prints its own with `show`.

Each row names the setting, what the reference does, what we do, the parameter that switches it and why.
`docs/differences.md` is generated from this table (`python -m fula_core.fidelity`; a test keeps it in
sync) and the README links to it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Difference:
    setting: str
    reference: str  # "paper 1" (its text) or "authors' code"
    theirs: str
    ours: str
    parameter: str  # where to switch it
    why: str
    notebooks: tuple[str, ...]  # the notebooks it concerns


DIFFERENCES: tuple[Difference, ...] = (
    Difference(
        "least-squares (DM) solve", "authors' code",
        "float32 torch.linalg.pinv of the design matrix [a, 1], default cutoff (drops up to 27 of 65 singular "
        "values at the 32x32 points with K = 500)",
        "the exact solution: float64 normal equations, every singular value kept",
        "StitchConfig.lstsq_solver = 'exact' | 'authors'",
        "the cutoff makes the starting stitch depend on float32 rounding; the exact solution is the least-squares "
        "map paper 1 describes", ("01", "02", "03", "04", "05", "06")),
    Difference(
        "least-squares samples K (paper-1 figures)", "authors' code",
        "500 images", "100 images (paper 1, App. A.2: 'initialized by DM using 100 samples')",
        "StitchConfig.lstsq_samples (Profile.stitch)",
        "paper 1's text is explicit for its own figures; notebook 05 uses the authors' 500 (Profile.iri_stitch)",
        ("01", "02", "03", "04")),
    Difference(
        "relative errors of Hint and FuLA (paper-1 figures)", "authors' code",
        "Frobenius norms over the whole mini-batch tensor, ||A - T||_F / ||T||_F",
        "per-sample ratios averaged over the batch, as Eq. 5 writes E_x[||.||_F / ||.||_F]",
        "StitchConfig.fula_reduction = 'sample' | 'batch' (Profile.stitch)",
        "paper 1's Eq. 5 is explicit for its own figures; notebook 05 follows the code ('batch')",
        ("01", "02", "03", "04")),
    Difference(
        "adversarial training of paper 1's robust models", "authors' code",
        "a random half of each batch replaced by its PGD examples",
        "the 0.5/0.5 loss of paper 1's Eq. 4 on every image: (1 - a) CE(x) + a CE(x_adv)",
        "TrainConfig.adv_mode = 'loss_mix' | 'replace'",
        "paper 1's Eq. 4 is explicit for its own models; paper 2's robust models follow the code at `paper` "
        "(Profile.paper2_adv_mode)", ("00", "01")),
    Difference(
        "AutoAttack EOT iterations", "paper 1 (AutoAttack 'rand')",
        "20 EOT gradient samples per APGD iteration", "1",
        "Profile.autoattack_eot",
        "our eval-mode models are deterministic, so the 20 EOT gradients are identical: a probe measured 90.7 s "
        "against 5.7 s for the same robust accuracy", ("00", "01", "05")),
    Difference(
        "evaluation of stitched models", "authors' code",
        "accuracy on the whole test set", "the whole test set at `paper`; CPU profiles score a fixed subset",
        "Profile.eval_subset, Profile.iri_eval_subset", "budget", ("01", "02", "03", "04", "05")),
    Difference(
        "data augmentation", "authors' code",
        "torchvision per-image transforms on the CPU", "the same crop (zero padding) and flip, batched on the device",
        "data.augment", "speed; the distribution of crops and flips is the same, the random draws are not",
        ("00", "01", "02", "03", "04", "05")),
    Difference(
        "shortcut marker colours on grey images", "authors' code",
        "farthest-point sampling on an RGB grid (10 levels per channel); their grey variant averages the RGB "
        "grid's channels (levels as close as 0 and 19)",
        "farthest-point sampling on 10 grey levels (0, 28, ..., 255), rounded to uint8; on RGB data the authors' "
        "grid and order, rounded to uint8", "shortcuts.class_colours",
        "well-separated grey levels give every class a visible cue on 1-channel data; uint8 images",
        ("02", "05")),
    Difference(
        "shortcut marker draws", "authors' code",
        "random locations and float noise redrawn at every access, evaluation and least-squares samples included",
        "redrawn for every training batch (after crop/flip, as theirs); evaluation sets and the least-squares "
        "sample carry one fixed draw (seeded); noise is uint8", "DataSpec.seed, shortcuts.add_shortcut(seed=)",
        "deterministic, cacheable evaluation; the same distribution of markers", ("02", "05")),
    Difference(
        "ArUco dictionary", "authors' code", "DICT_4X4_100", "DICT_4X4_50 (its first 50 markers are the same)",
        "shortcuts.aruco_patterns", "10 classes use markers 0-9 of either", ("02",)),
    Difference(
        "SimCLR views and probe", "authors' code",
        "torchvision per-image RandomResizedCrop on whole pixels; probe crops with the CIFAR padding",
        "the same crop distribution with continuous boxes, batched on the device; the probe uses the data set's own "
        "crop padding; on 1-channel images only brightness and contrast jitter (saturation, hue and greyscale do "
        "nothing there, as in torchvision)", "simclr.SimCLRConfig", "batched augmentation on the device",
        ("05",)),
    Difference(
        "LS-ImageNet-10 classes and preprocessing", "authors' code",
        "their ten wnids, Resize(32) + CenterCrop(32) of the full images", "the same",
        "fula_core/ls_imagenet10_classes.txt", "(no difference left; listed because it changed)",
        ("00", "01", "02", "03", "04")),
    Difference(
        "CKA minibatches and CKA on IRIs", "authors' code",
        "minibatches of 128; 'CKA on IRIs' inverts the test images", "the same",
        "invariance.cka_per_point(batch_size=128)", "(no difference left; listed because it changed)", ("05",)),
    Difference(
        "train-mode BatchNorm of stitched models", "authors' code",
        "targets with BN momentum 0; the stitched forward updates the front's statistics and g_{>j}'s",
        "the same (each job keeps its own copy of the statistics)",
        "StitchConfig.bn_mode = 'train' | 'eval'", "(no difference left; listed because it changed)",
        ("01", "02", "03", "04", "05", "06")),
)


def rows_for(notebook: str) -> list[Difference]:
    """The differences that concern notebook `notebook` ("05" or a name starting with its number)."""
    return [d for d in DIFFERENCES if notebook[:2] in d.notebooks]


def show(profile, notebook: str) -> None:
    """Print, for one notebook, what the profile shortens and how this project differs from its references."""
    notes = profile.notes_for(notebook)
    if notes:
        print(f"profile {profile.name} shortens:")
        for note in notes:
            print(" -", note)
    rows = [d for d in rows_for(notebook) if not d.why.startswith("(no difference")]
    if rows:
        print("differences from the references (docs/differences.md):")
        for d in rows:
            print(f" - {d.setting}: {d.reference} {d.theirs}; here {d.ours} [{d.parameter}]")


def markdown() -> str:
    """docs/differences.md: the whole table."""
    lines = ["# Differences from the papers and the authors' code", "",
             "Generated by `python -m fula_core.fidelity` from `fula_core/fidelity.py`; every notebook prints the rows "
             "that concern it. What a profile shortens for a CPU is printed by each notebook too (`Profile.notes` in "
             "`fula_core/config.py`).", "",
             "| setting | reference | theirs | ours | parameter | why | notebooks |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for d in DIFFERENCES:
        cells = [d.setting, d.reference, d.theirs, d.ours, f"`{d.parameter}`", d.why, ", ".join(d.notebooks)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import pathlib

    target = pathlib.Path(__file__).resolve().parent.parent / "docs" / "differences.md"
    target.parent.mkdir(exist_ok=True)
    target.write_text(markdown())
    print(f"wrote {target}")
