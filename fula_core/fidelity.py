"""Every known difference between this project and its references, as one table.

The references, in order of authority (DEVELOPERS.md): paper 1's text where it is explicit for its own
figures (notebooks 00-04), and the authors' code (github.com/athaioan/invariance-aware-stitching, commit
5815d8e) everywhere else, notebook 05 included. Notebook 08's colour testbed follows Smith, Mannering and
Marcu's code instead (github.com/DHLSmith/stitching, commit 18518d8: ReferenceCode/colour_mnist.py and
stitch_utils.py, the ResNet-18 notebooks exp2e / exp2m that train the models and stitch into the Digit
receiver on Correlated data), compared at the `paper` profile. What the profiles shorten for a CPU
(`Profile.notes`) is not listed here: those are budget choices of a profile, and every notebook prints its
own with `show`.

Each row names the setting, what the reference does, what we do, the parameter that switches it and why.
`docs/differences.md` is generated from this table (`python -m fula_core.fidelity`; a test keeps it in
sync) and the README links to it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Difference:
    setting: str
    reference: str  # "paper 1" (its text), "authors' code" or "Smith et al.'s code" (notebook 08)
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
        "notebook 05 on VGG-16 and ViT-Tiny/4", "authors' code",
        "every testbed for both (configs/{information,adversarial,backdoor}_stitching, cka and sanity_stitching "
        "under low_resolution/{vgg16,vit_tiny_patch4_32}), one figure per architecture",
        "the information testbed for both (its four pairs and fronts per architecture, all 6 and 13 points, the "
        "same stitch training and seeds), one figure each; the adversarial, shortcut and CKA testbeds, the claims "
        "and the fronts table stay ResNet-18's",
        "Profile.iri_archs, Profile.iri_arch_points",
        "issue 12 asked for the information testbed; paper 2's text states its findings for ResNet-18 only. The "
        "other testbeds per architecture are left to do", ("05",)),
    Difference(
        "VGG-16 head", "authors' code",
        "torchvision's ImageNet head: the 1x1 map of a 32x32 input pooled to 7x7 (25,088 inputs), two hidden "
        "layers of 4096, dropout 0.5",
        "1x1 pooling and two hidden layers of 8 x width (512 at `paper`), dropout 0.5, as CIFAR VGGs",
        "models.vgg16",
        "the stitch points lie in `features`, so stitching does not see the head; the pooled 7x7 copy of a 1x1 "
        "map adds 100M weights and no information. The head is also the SimCLR front's probe (their "
        "get_classifier), trained the same way", ("05",)),
    Difference(
        "train-mode BatchNorm of stitched models", "authors' code",
        "targets with BN momentum 0; the stitched forward updates the front's statistics and g_{>j}'s",
        "the same (each job keeps its own copy of the statistics)",
        "StitchConfig.bn_mode = 'train' | 'eval'", "(no difference left; listed because it changed)",
        ("01", "02", "03", "04", "05", "06")),

    # notebook 08: Smith, Mannering and Marcu's colour testbed (their code, compared at the `paper` profile)
    Difference(
        "colour testbed: base images and foreground", "Smith et al.'s code",
        "MNIST digits binarised: every non-zero pixel becomes pure white over the background",
        "Fashion-MNIST garments; the grey level is the white's opacity, pixel = g white + (1 - g) colour",
        "none (fixed)",
        "MNIST is not on this offline machine (scikit-learn's digits are 8x8); binarising a garment would erase "
        "its texture, the shape cue the Shape model needs", ("08",)),
    Difference(
        "colour testbed: class colours and jitter", "Smith et al.'s code",
        "saturated colours such as (255, 0, 0), (225, 225, 0), (128, 0, 255), (128, 128, 128); each image's "
        "colour moved per channel by N(0, 1) clipped to [-1, 1] times 0.1 x 255 (at most 25.5), then clamped to "
        "[0, 255] and truncated to uint8",
        "ten mid-range colours (colour.CLASS_COLOURS); a uniform integer shift in [-16, 16] per channel, rounded",
        "none (fixed): colour.CLASS_COLOURS and colour.JITTER enter the generated images (bump COLOUR_VERSION "
        "when changing them)",
        "away from 0 and 255 the jitter moves every channel both ways (theirs loses half of it on saturated "
        "channels); the testbed needs ten well-separated flat colours, not these ones", ("08",)),
    Difference(
        "colour testbed: colours of the Shape set", "Smith et al.'s code",
        "their 'unbiased' rho = 0.1, stratified per class: 10% of each class in its own colour, the rest cut into "
        "nine near-equal shares, one per other colour",
        "each image's colour drawn uniformly and independently of its class", "none (fixed)",
        "both make colour independent of the class; the iid draw differs from their near-exact class x colour "
        "counts only by sampling noise", ("08",)),
    Difference(
        "colour testbed: model architecture", "Smith et al.'s code",
        "torchvision ResNet-18 (7x7 stride-2 stem and 3x3 max-pool: 28x28 inputs reach layer1 at 7x7 and layer4 "
        "at 1x1), width 64, torchvision's initialisation; they repeat the study with VGG19 on inputs resized to "
        "32x32",
        "the project's CIFAR ResNet18 (3x3 stride-1 stem, no max-pool: layer1 at 28x28, layer4 at 4x4) at the "
        "profile's width (64 at `paper`), PyTorch's default initialisation; no VGG19. Both map inputs to [-1, 1]",
        "none (fixed)",
        "the stitch points, IRIs and objectives are built on the project's ResNets, shared with notebooks 00-07",
        ("08",)),
    Difference(
        "colour testbed: training of the colour models", "Smith et al.'s code",
        "SGD lr 0.1, momentum 0.9 (not Nesterov), weight decay 1e-4, constant LR, batch 128, 4 epochs on the "
        "whole set (deliberately weak models), no augmentation",
        "the profile's base recipe: at `paper` 200 epochs, Nesterov, LR x0.1 at 1/3 and 2/3, random crop (zero "
        "padding 2, so black borders) and horizontal flip",
        "Profile.beyond_model_overrides: {'epochs': 4, 'nesterov': False, 'lr_milestones': (), 'augment': False} "
        "is their recipe",
        "the colour models share every other base model's recipe; theirs is one override away", ("08",)),
    Difference(
        "colour testbed: senders and the reference of 'similar'", "Smith et al.'s code",
        "the Digit (Shape) receiver stitched into itself is the reference; senders trained on Correlated, Colour "
        "(digits, colour as label), Colour-Only, BW and Mix data; the untrained sender (torchvision init) comes from "
        "a separate run into a receiver of another run",
        "a second Shape model of another seed is the reference; senders Colour-Only, Correlated and an untrained "
        "network (the project's init, seed Profile.seeds[1] + 1), all into one Shape receiver",
        "none (fixed)",
        "a self-stitch is solved exactly by the identity, so it says little about two different models "
        "(notebook 05's identical pair covers it); these four senders carry the finding the notebook tests",
        ("08",)),
    Difference(
        "colour testbed: stitch points", "Smith et al.'s code",
        "six: after the max-pool, after each of the four stages, and after the global average pool (a 1x1 map)",
        "Profile.beyond_points: (1, 3, 5, 7) at `paper`, the first block of stages 1-4",
        "Profile.beyond_points ((0, 2, 4, 6, 8) are the stem and the four stage ends; the pooled point has no "
        "counterpart)",
        "four points spread over the depth; each point costs an IRI set per sender", ("08",)),
    Difference(
        "colour testbed: the stitch layer", "Smith et al.'s code",
        "BatchNorm, 1x1 convolution with bias, BatchNorm, all trainable, the convolution at PyTorch's random "
        "initialisation",
        "one 1x1 convolution with bias started from the least-squares (DM) solution on 500 Correlated training "
        "images",
        "none (fixed) for the layer; StitchConfig.lstsq_samples (Profile.beyond_stitch) for the least-squares K",
        "the papers' stitch, shared by every objective compared; in eval mode their BN-conv-BN is one affine map "
        "too, so the two differ in start and training path, not in what they can compute", ("08",)),
    Difference(
        "colour testbed: stitch training", "Smith et al.'s code",
        "cross-entropy to the labels (our HLM) on the whole Correlated training set; SGD lr 1e-4, momentum 0.9, "
        "weight decay 0.01, constant LR, batch 128, 10 epochs, no augmentation",
        "HLM, SLM, FuLA and DM (hint) on real data and on IRIs; Adam lr 1e-3, weight decay 1e-4, LR x0.1 at 1/3 "
        "and 2/3, batch 128, 30 epochs, crop and flip (`paper`)",
        "Profile.beyond_stitch (epochs, lr, weight_decay, lr_milestones=(), augment=False); the optimiser "
        "(Adam) is fixed",
        "paper 2's stitch recipe (notebook 05's), so that every objective is trained alike", ("08",)),
    Difference(
        "colour testbed: BatchNorm of the frozen models while a stitch trains", "Smith et al.'s code",
        "the whole stitched model in train mode; sender and receiver modules are shared by all stitches and never "
        "restored, so running statistics pass from one stitch to the next",
        "train mode on real data with each job's own copy of the statistics; eval mode on IRIs",
        "StitchConfig.bn_mode (Profile.beyond_stitch), beyond.IRI_BN_MODE",
        "independent, cacheable stitches; in their loop 10 epochs at momentum 0.1 renew every statistic the "
        "evaluation reads, so the carry-over should not move their numbers", ("08",)),
    Difference(
        "colour testbed: what is measured", "Smith et al.'s code",
        "the stitched model's accuracy on the whole Correlated test set (and its gap to the receiver's), plus the "
        "numerical rank of the representations",
        "accuracy and agreement with the receiver on Correlated and on Shape test images (the same garments), "
        "per image for the claims; no rank", "none (fixed)",
        "agreement, and the Shape test where colour no longer names the class, tell a stitch that computes the "
        "receiver's function from one that only fits the labels; rank is outside this project", ("08",)),
    Difference(
        "colour testbed: repeats", "Smith et al.'s code",
        "five training runs (seeds 57-61), each training every model afresh; plots show mean and spread",
        "one model per role (Profile.seeds) and one stitch seed; intervals from a paired bootstrap over test "
        "images",
        "Profile.seeds (which models); none for more runs", "budget", ("08",)),
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
