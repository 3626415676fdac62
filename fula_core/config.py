"""The three profiles, in one place: every notebook reads its sizes from here.

  smoke  seconds per run, for CI: the synthetic-free real pipeline on tiny slices of the offline data
  quick  the CPU default: Fashion-MNIST same-task (seeds 0 and 1), digits -> Fashion-MNIST cross-task,
         narrow ResNet18, shortened schedules, an eps suited to Fashion-MNIST
  paper  the papers' setup: CIFAR-10 seeds 0/1 + LS-ImageNet-10, width 64, 200 + 30 epochs, 8/255 PGD-10,
         AutoAttack 'rand', all three architectures

Each field says why it has its value where it departs from the paper.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from .models import ARCH_TRAIN_OVERRIDES, num_stitch_points
from .simclr import SimCLRConfig
from .stitching import StitchConfig
from .train import TrainConfig


@dataclass(frozen=True)
class Profile:
    name: str
    end_dataset: str  # the stitching task: end models and stitch training data
    cross_dataset: str  # the other task: cross-task front models
    archs: tuple[str, ...]  # architectures with stitching plots (the first is the main one)
    seeds: tuple[int, int]  # (end model seed, same-task front seed)
    base: TrainConfig  # template for every base model (dataset/seed/arch filled in per model)
    train_subset: dict[str, int | None]  # per data set: train the base model on this many images (None = all)
    robust_alpha: float  # clean share of Madry AT for robust models (paper: 0.5)
    robust_epochs: int
    robust_overrides: dict  # TrainConfig fields robust models change beyond alpha/epochs (CPU profiles: fewer images, steps)
    stitch: StitchConfig
    stitch_train_subset: int | None  # images the stitches train on (None = the whole training set)
    eval_subset: int | None  # test images for clean accuracy and agreement (None = whole test set)
    robust_eval_subset: int  # test images attacked for robust accuracy
    autoattack_iter: int  # APGD iterations (paper/AutoAttack: 100)
    autoattack_eot: int  # EOT iterations: 20 in the 'rand' version; 1 is exact for deterministic eval-mode models
    # the attack of notebook 01's robust accuracies: "autoattack" (the paper's 'rand' version) or "pgd" (CPU
    # profiles: PGD with at least 10 steps); a field rather than a test of the name, so a shrunk paper keeps it
    robust_attack: str = "pgd"
    stitch_points: tuple[int, ...] = tuple(range(9))  # points of the stitching plots
    # stitch seeds of the paper-1 testbeds (01-03): each seed draws its own data order, least-squares sample and
    # PGD starts (StitchConfig.seed); claims resample them (claims.py). The paper reports single runs.
    stitch_seeds: tuple[int, ...] = (0,)
    adv_stitch_train_subset: int | None = None  # alpha > 0 stitches (§3.1) train on this many images (None = all)
    alphas: tuple[float, ...] = (0.0, 0.5, 1.0)  # stitch-training shares of adversarial inputs (§3.1)
    # notebook 01 (adversarial stitching, §3.1): alpha > 0 stitches train with their own StitchConfig (None = `stitch`:
    # the CPU profiles give them more, smaller Adam steps), and robust accuracy is measured at `adv_eval_eps`
    # (None = the base models' pgd_eps), on `robust_eval_subset` test images
    adv_stitch: StitchConfig | None = None
    adv_eval_eps: float | None = None
    objectives: tuple[str, ...] = ("slm", "tlm", "hint", "fula")  # trained objectives of the paper-1 figures
    shortcut_kinds: tuple[str, ...] = ("pixel", "location", "pixel_location", "aruco", "aruco_location")  # §3.2
    class_subset_ks: tuple[int, ...] = tuple(range(1, 11))  # Fig 9: stitch on the first k classes
    cross_layer_points: tuple[int, ...] = tuple(range(9))  # Fig 10: front x end points of the heatmaps
    cross_layer_objectives: tuple[str, ...] = ("slm", "tlm", "hint", "fula")  # Fig 10: objectives of the heatmaps
    iri_steps: int = 200  # IRI sign-gradient steps (paper 2)
    iri_step_size: float = 1 / 255  # per step on [0, 1] inputs (paper 2); fewer, larger steps on CPU profiles
    iri_samples: int | None = None  # training images inverted per stitch point (None = all)
    iri_points: tuple[int, ...] = tuple(range(9))  # stitch points of the invariance-aware figures
    # notebook 05's information-stitching testbed, per architecture: () = the main one (archs[0]) only; else the
    # main one first, then the others (the authors' configs run it for ResNet-18, VGG-16 and ViT-Tiny/4 alike).
    # Every other architecture gets its own end model (seed seeds[0]) and, per front seed, cross-seed, SimCLR and
    # cross-bias fronts, all trained with the paper recipe and the architecture's ARCH_TRAIN_OVERRIDES, and a
    # figure of its own; the other testbeds and the claims stay the main architecture's
    iri_archs: tuple[str, ...] = ()
    # their stitch points (0-based): arch -> points; an architecture not listed uses all of its points, as the
    # authors do (front_layer_index null). The main architecture uses iri_points
    iri_arch_points: dict = field(default_factory=dict)
    iri_front_seeds: tuple[int, ...] = (1, 2, 3)  # paper 2: 3 front seeds paired with end seed 0
    # notebook 05: stitch seeds repeated for every front seed (data order, least-squares sample, PGD starts; the
    # IRIs and stitch data follow the front seed). Stitch seed 0 = the authors' runs (the stitch seeded by its front's)
    iri_stitch_seeds: tuple[int, ...] = (0,)
    # the self-supervised (cross-supervision) front of paper 2: simclr.SimCLRConfig holds the authors' recipe
    simclr_epochs: int = 200  # pre-training epochs (the authors' ss_epochs); the linear probe runs as many
    simclr_train_subset: int | None = None  # pre-train and probe on this many training images (None = all)
    simclr_overrides: dict = field(default_factory=dict)  # further SimCLRConfig fields a CPU profile changes
    cross_bias_shortcut: str = "pixel"  # the cross-bias front trains with class-coloured patches at random places
    cross_bias_overrides: dict = field(default_factory=dict)  # TrainConfig fields of the cross-bias front (CPU: fewer images)
    # notebook 05: the stitches of both data modes train on the IRI source images (iri_samples of them), so
    # real data and IRIs differ only in x vs x' (paper 2: the whole training set, 30 epochs, lstsq on 500)
    iri_stitch: StitchConfig = StitchConfig(epochs=30, lstsq_samples=500)
    iri_eval_subset: int | None = None  # test images scoring every stitch of notebook 05 (None = the whole test set)
    iri_adv_points: tuple[int, ...] = tuple(range(9))  # stitch points of the adversarial testbed
    iri_adv_alphas: tuple[float, ...] = (0.0, 1.0)  # stitches trained on clean inputs / on PGD examples (alpha 1)
    iri_robust_eval_subset: int = 1000  # test images AutoAttack attacks per stitched model (adversarial testbed)
    iri_shortcut_points: tuple[int, ...] = tuple(range(9))  # stitch points of the shortcut testbed
    iri_autoattack_iter: int = 20  # APGD iterations of paper 2's adversarial testbed (the authors' configs: 20)
    # adversarial training of paper 2's robust models: "replace" (the authors' code) or "loss_mix" (paper 1's
    # Eq. 4, which its own robust models follow); with "loss_mix" both papers share one set of robust models
    paper2_adv_mode: str = "replace"
    # Fig. 9's stitch data for k classes: "per_class" = every stitch-training image of the first k classes
    # (paper 1 / the authors: 5,000 k CIFAR images, so the count grows with k); "fixed_total" = the same number
    # of images for every k, drawn from the first k classes (only the label distribution changes)
    class_subset_sampling: str = "per_class"
    # notebooks 02 (shortcuts) and 03 (class subsets): their own stitch seeds; None = stitch_seeds (notebook 01's,
    # whose marker-free / all-class stitches they share at equal seeds)
    shortcut_seeds: tuple[int, ...] | None = None
    class_subset_seeds: tuple[int, ...] | None = None
    # notebook 07 (your own models): yourmodels.Sizes fields (images, epochs, width, IRI schedule, test images)
    your_models: dict = field(default_factory=lambda: dict(
        base_images=60000, base_epochs=30, width=64, stitch_images=60000, stitch_epochs=10, iri_images=10000,
        iri_steps=200, iri_step_size=1 / 255, test_images=10000))
    # notebook 08 (beyond the papers): Smith et al.'s colour testbed and the stitch-capacity ablation
    beyond_model_overrides: dict = field(default_factory=dict)  # TrainConfig fields of the colour models (CPU: fewer images)
    beyond_points: tuple[int, ...] = (1, 3, 5, 7)  # stitch points of the colour testbed
    beyond_samples: int | None = None  # Correlated training images per stitch and IRI set (None = all)
    beyond_eval_subset: int | None = None  # Correlated and Shape test images (the same garments in both)
    # colour-model replicates: each trains its own receiver and senders (seeds +3 per replicate), so the colour
    # claims' intervals cover the models' training noise, not only the test images'
    beyond_replicates: int = 3
    beyond_stitch: StitchConfig = StitchConfig(epochs=30, lstsq_samples=500)  # both data modes, as notebook 05's
    capacity_points: tuple[int, ...] = (1, 4, 7)  # stitch points of the capacity ablation (notebook 05's pairs)
    capacity_rank: int = 8  # rank of the low-rank stitch family
    # what this profile shortens, for the notebooks to print: (notebook numbers such as "01 02", or "all", text)
    notes: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self):
        if self.robust_attack not in ("pgd", "autoattack"):
            raise ValueError(f"robust_attack must be 'pgd' or 'autoattack', got {self.robust_attack!r}")
        if self.class_subset_sampling not in ("per_class", "fixed_total"):
            raise ValueError(f"class_subset_sampling must be 'per_class' or 'fixed_total', got {self.class_subset_sampling!r}")
        if self.iri_archs and self.iri_archs[0] != self.archs[0]:
            raise ValueError(f"profile {self.name}: iri_archs must start with the main architecture {self.archs[0]!r}, "
                             f"got {self.iri_archs}")
        for arch in self.info_archs:
            n = num_stitch_points(arch)  # also rejects an unknown architecture
            bad = [p for p in self.iri_points_of(arch) if not 0 <= p < n]
            if bad:
                raise ValueError(f"profile {self.name}: {arch} has stitch points 0..{n - 1}, not {bad}")
        for where, _ in self.notes:
            if where != "all" and not all(w.isdigit() and len(w) == 2 for w in where.split()):
                raise ValueError(f"profile {self.name}: a note's notebooks must be 'all' or numbers like '01 05', got {where!r}")

    @property
    def info_archs(self) -> tuple[str, ...]:
        """The architectures of notebook 05's information-stitching testbed, the main one first."""
        return tuple(self.iri_archs) or self.archs[:1]

    def iri_points_of(self, arch: str) -> tuple[int, ...]:
        """The information testbed's stitch points of `arch`: iri_points for the main architecture, else
        iri_arch_points[arch], else every point of the architecture."""
        if arch == self.archs[0]:
            return tuple(self.iri_points)
        return tuple(self.iri_arch_points.get(arch, range(num_stitch_points(arch))))

    def notes_for(self, notebook: str) -> list[str]:
        """The notes that concern notebook `notebook` ("01", or a name starting with its number)."""
        number = notebook[:2]
        return [text for where, text in self.notes if where == "all" or number in where.split()]

    def train_config(self, dataset: str, seed: int, *, robust: bool = False, arch: str | None = None,
                     **overrides) -> TrainConfig:
        """The TrainConfig of one base model of this profile."""
        arch = arch or self.archs[0]
        cfg = dataclasses.replace(self.base, **{"dataset": dataset, "seed": seed, "arch": arch,
                                                "train_subset": self.train_subset.get(dataset),
                                                **ARCH_TRAIN_OVERRIDES.get(arch, {}), **overrides})
        if robust:
            cfg = dataclasses.replace(cfg, adv_alpha=self.robust_alpha, epochs=self.robust_epochs,
                                      **{k: v for k, v in self.robust_overrides.items() if k not in overrides})
        return cfg

    def simclr_config(self, seed: int, arch: str | None = None) -> SimCLRConfig:
        """The SimCLRConfig of the profile's cross-supervision front of `seed` (end task; default: the main
        architecture). An architecture with a learning-rate override (VGG-16, ViT-Tiny: 0.01) pre-trains and
        probes at that rate, as the authors' SimCLR configs of those architectures do (their one `lr` serves both)."""
        arch = arch or self.archs[0]
        lr = ARCH_TRAIN_OVERRIDES.get(arch, {}).get("lr")
        rates = {} if lr is None else {"lr": lr, "probe_lr": lr}
        return SimCLRConfig(dataset=self.end_dataset, arch=arch, width=self.base.width, seed=seed,
                            epochs=self.simclr_epochs, train_subset=self.simclr_train_subset,
                            **{**rates, **self.simclr_overrides})


_FMNIST_EPS = 0.1  # Fashion-MNIST's common L-inf budget (Madry et al. use 0.1 for MNIST-like data)

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", end_dataset="fashion_mnist", cross_dataset="digits", archs=("resnet18",), seeds=(0, 1),
        base=TrainConfig(dataset="", width=4, epochs=1, batch_size=64, lr=0.05, pgd_eps=_FMNIST_EPS,
                         pgd_step=_FMNIST_EPS / 2, pgd_steps=2),
        train_subset={"fashion_mnist": 512, "digits": 512, "cifar10": 512, "ls_imagenet10": 512},
        robust_alpha=0.5, robust_epochs=1, robust_overrides={},
        stitch=StitchConfig(epochs=1, batch_size=64, lstsq_samples=32, pgd_eps=_FMNIST_EPS,
                            pgd_step=_FMNIST_EPS / 2, pgd_steps=2, fula_reduction="sample"),
        stitch_train_subset=256, eval_subset=256, robust_eval_subset=32, adv_stitch_train_subset=256, autoattack_iter=5, autoattack_eot=1,
        stitch_points=(0, 4, 8), alphas=(0.0, 1.0), shortcut_kinds=("pixel", "location"), class_subset_ks=(1, 10),
        cross_layer_points=(0, 8), iri_steps=10, iri_step_size=8 / 255, iri_samples=128, iri_points=(2, 8), iri_front_seeds=(1,), simclr_epochs=1, simclr_train_subset=512,
        iri_stitch=StitchConfig(epochs=1, batch_size=32, lstsq_samples=32, pgd_eps=_FMNIST_EPS, pgd_step=_FMNIST_EPS / 2,
                                pgd_steps=2),
        iri_eval_subset=128, iri_adv_points=(8,), iri_adv_alphas=(0.0, 1.0), iri_robust_eval_subset=32, iri_shortcut_points=(8,),
        iri_autoattack_iter=5, paper2_adv_mode="loss_mix", class_subset_sampling="fixed_total",
        your_models=dict(base_images=128, base_epochs=1, width=4, stitch_images=128, stitch_epochs=1, iri_images=64,
                         iri_steps=3, iri_step_size=8 / 255, test_images=128),
        beyond_model_overrides={"train_subset": 512}, beyond_points=(2, 8), beyond_samples=128, beyond_eval_subset=128, beyond_replicates=1,
        beyond_stitch=StitchConfig(epochs=1, batch_size=32, lstsq_samples=32), capacity_points=(8,), capacity_rank=2,
        notes=(("all", "smoke: structure only; numbers are meaningless"),),
    ),
    "quick": Profile(
        name="quick", end_dataset="fashion_mnist", cross_dataset="digits", archs=("resnet18",), seeds=(0, 1),
        # width 8: ~3x the images/s of width 16 on this CPU. 5 epochs with LR drops at 1/2 and 3/4 (the
        # paper's drops at each third leave a short run mostly at a tiny LR: width 16, 20k images x 4 epochs
        # gave 84.7%; width 8, all 60k x 4 epochs with these drops 89.8% on the full test set; 6 epochs
        # 91.5%). All 60k images for 5 epochs: 345 s and 349 s for the two clean models in parallel in the published
        # run (~1.5x that on a slower machine of the same kind); 30k images gave 88.3%, under the 90% target
        base=TrainConfig(dataset="", width=8, epochs=5, batch_size=128, lr=0.1, lr_milestones=(0.5, 0.75),
                         pgd_eps=_FMNIST_EPS, pgd_step=0.04, pgd_steps=3),
        train_subset={"fashion_mnist": None, "digits": None},
        robust_alpha=0.5, robust_epochs=3,
        # PGD-AT costs ~5x a clean step: 8k images, 3 epochs and 3 steps of 0.04 keep it near 7 CPU minutes
        robust_overrides={"train_subset": 8000, "pgd_steps": 3, "pgd_step": 0.04},
        stitch=StitchConfig(epochs=2, batch_size=128, lstsq_samples=100, pgd_eps=_FMNIST_EPS,
                            pgd_step=0.04, pgd_steps=3, fula_reduction="sample"),
        stitch_train_subset=1600, eval_subset=1000, robust_eval_subset=100, adv_stitch_train_subset=512,
        autoattack_iter=20, autoattack_eot=1,
        # notebook 01: alpha = 1 stitches take 32 Adam steps (512 images x 2 epochs at batch 32; 64 steps on 1000 images
        # until the 60-minute budget asked for the time) at lr 1e-2 against PGD at
        # eps 0.05, and robust accuracy is measured at eps 0.05: with 16 steps at eps 0.1 every stitch of two non-robust
        # models stayed at ~0% robust accuracy, so the headline claim of §3.1 could not be tested (issue 10's probe:
        # TLM/SLM vs Hint/FuLA 12.9 vs 2.0 at 64 steps). Batch 32 keeps the images per stitch (and ~1.5x the CPU time of
        # 16 steps at batch 128: 21.9 vs 14.7 s per stitch, one thread); 2 PGD steps of 0.03 instead of 3 pay for it
        adv_stitch=StitchConfig(epochs=2, batch_size=32, lr=1e-2, lstsq_samples=100, pgd_eps=0.05, pgd_step=0.03,
                                pgd_steps=2, fula_reduction="sample"),
        adv_eval_eps=0.05,
        stitch_points=(0, 4, 8), alphas=(0.0, 1.0),
        # notebooks 02 / 03: two stitch seeds each (claims resample them); for that, Fig 7's two kinds (pattern,
        # location) and k in {1, 5, 10}: 8 new passes of 12 stitches each, as the previous single-seed run's 8 / 6
        shortcut_kinds=("pixel", "location"),
        shortcut_seeds=(0, 1),
        class_subset_ks=(1, 5, 10),
        class_subset_seeds=(0, 1),
        cross_layer_points=(0, 2, 4, 6, 8),
        cross_layer_objectives=("hint", "fula"), iri_steps=32, iri_step_size=4 / 255, iri_samples=192,
        iri_points=(1, 4, 7), iri_front_seeds=(1,),
        iri_stitch_seeds=(0, 1),  # ~5 single-thread minutes per seed: a third does not fit the 60-minute run
        # SimCLR front (the authors' recipe, shortened): 6 pre-training + 6 probe epochs on 8k images, LR drops at
        # 1/2 and 3/4 as the base models. Measured at width 8, one thread, seed 1, on the full test set: linear
        # probe 74.5% for 280-310 CPU s (pre-training 240-265 s, probe 40 s). Alternatives: the authors' drops at
        # each third 73.3% (262 s); batch 64 74.7% (284 s); a 12-epoch probe 75.3% (+40 s); a random-init encoder
        # probes to 38.8%. The previous front (Adam, 5 epochs on 5k images) stitched at 55.5% on real data.
        simclr_epochs=6, simclr_train_subset=8000, simclr_overrides={"lr_milestones": (0.5, 0.75)},
        # on grey Fashion-MNIST a class grey level at a random place is not picked up (probe: 2 epochs on 20k images,
        # 77.9% with markers, 77.8% without); at a class location it is (89.1% with, 74.0% without)
        cross_bias_shortcut="pixel_location", cross_bias_overrides={"train_subset": 20000, "epochs": 3},
        # both data modes: 192 images x 8 epochs at batch 32 = 48 Adam steps per stitch, so lr 1e-2 instead of 1e-3
        # (probe at point 7: with 1e-3 the IRI stitches stay near their real-data least-squares start)
        iri_stitch=StitchConfig(epochs=8, batch_size=32, lr=1e-2, lstsq_samples=100, pgd_eps=_FMNIST_EPS, pgd_step=0.04,
                                pgd_steps=3),
        iri_eval_subset=400, iri_adv_points=(7,), iri_adv_alphas=(0.0,), iri_robust_eval_subset=100, iri_shortcut_points=(4,),
        iri_autoattack_iter=20, paper2_adv_mode="loss_mix", class_subset_sampling="fixed_total",
        # notebook 07: a few CPU minutes (the ResNet's training and the IRIs of its deep points dominate)
        your_models=dict(base_images=2000, base_epochs=3, width=8, stitch_images=1000, stitch_epochs=3, iri_images=300,
                         iri_steps=30, iri_step_size=4 / 255, test_images=2000),
        # notebook 08: the colour models see 2.5k images x 2 epochs (probe, 6k x 2: Shape model 74% on Shape test,
        # Colour-Only model 100% on Colour-Only); stitches as notebook 05's (8 epochs of batch 32, lr 1e-2) on 192 images
        beyond_model_overrides={"train_subset": 2500, "epochs": 2}, beyond_points=(4, 7), beyond_samples=192,
        beyond_eval_subset=400, beyond_replicates=2,
        beyond_stitch=StitchConfig(epochs=8, batch_size=32, lr=1e-2, lstsq_samples=100),
        capacity_points=(7,), capacity_rank=4,
        notes=(("all", "Fashion-MNIST / digits instead of CIFAR-10 / LS-ImageNet-10 (offline CPU data)"),
               ("all", "ResNet18 at width 8, 5 epochs (LR x0.1 at 1/2 and 3/4) instead of width 64, 200 epochs (LR x0.1 at each third)"),
               ("00 01 05", "PGD eps 0.1 (Fashion-MNIST scale) instead of 8/255; adversarial training (and notebook 05's "
                            "adversarial stitching) use 3 steps of 0.04 instead of 10 of 2/255 (evaluation: 10 steps); "
                            "robust models see 8k images for 3 epochs"),
               ("01 02 03", "stitches: 2 epochs on 1.6k images, stitch points 1, 5, 9 of 9, alpha in {0, 1}"),
               ("01", "adversarial (alpha = 1) stitches: 32 Adam steps at lr 1e-2 (512 images x 2 epochs, batch 32) on PGD-2 "
                      "examples at eps 0.05 (step 0.03), instead of 30 epochs on the whole set at lr 1e-3 against PGD-10 at 8/255"),
               ("01", "robust accuracy: PGD-10 at eps 0.05 (half the base models' 0.1, where every stitch of two non-robust "
                      "models is at ~0%) on 100 test images, instead of AutoAttack at 8/255 on the whole test set"),
               ("01 02 03 04", "evaluation: clean on 1000 test images"),
               ("02", "shortcuts: Fig 7's two marker kinds (pixel: class grey level at a random place; location: noise at "
                      "the class place) instead of five, two stitch seeds (0, 1) instead of one run"),
               ("03", "class subsets: k in {1, 5, 10}, two stitch seeds (0, 1); the stitch sees 1.6k images for every k "
                      "(class_subset_sampling='fixed_total'), where the paper's sees every image of the first k classes"),
               ("04", "cross-layer heatmaps (Fig 10): 5 x 5 of the 9 x 9 stitch points, Hint and FuLA only (not SLM, TLM)"),
               ("00", "AutoAttack: 20 APGD iterations, EOT 1 (exact for eval-mode models), on 100 test images"),
               ("05", "SimCLR front: 6 pre-training + 6 linear-probe epochs on 8k images (LR x0.1 at 1/2 and 3/4; linear probe "
                      "74.5% on the test set) instead of 200 + 200 epochs on the full set (LR x0.1 at each third)"),
               ("05", "IRIs: 192 training images per stitch point, 32 sign steps of 4/255 instead of all images, 200 of 1/255"),
               ("05", "invariance-aware stitches: 8 epochs of batch 32 at lr 1e-2 on those 192 images (real and IRIs) at points "
                      "2, 5, 8, scored on 400 test images; adversarial testbed at point 8, clean stitch training only, "
                      "AutoAttack on 100 test images; shortcut testbed at point 5"),
               ("05", "one front seed (1) instead of the authors' three (1, 2, 3): a second costs more base-model time than "
                      "quick affords; instead every stitch repeats over 2 stitch seeds (data order, least-squares sample), "
                      "so intervals cover the stitch-training noise but not the front models'; the robust models are paper 1's "
                      "(paper2_adv_mode='loss_mix')"),
               ("08", "colour models: ResNet18 width 8 on 2.5k images x 2 epochs, 2 replicates (paper: 3); stitches at points 5 and 8 on 192 Correlated "
                      "images (IRIs: 32 sign steps of 4/255), 8 epochs of batch 32 at lr 1e-2, scored on 400 test images"),
               ("08", "capacity ablation: notebook 05's pairs at point 8 only, low-rank stitch of rank 4"),
               ("05", "cross-bias front: class grey level at a class location (Pixel+Loc) instead of a class colour at a random "
                      "place, 3 epochs on 20k images")),
    ),
    "paper": Profile(
        name="paper", end_dataset="cifar10", cross_dataset="ls_imagenet10",
        archs=("resnet18", "resnet18_noskip", "resnet34"), seeds=(0, 1),
        base=TrainConfig(dataset="", width=64, epochs=200),
        train_subset={},
        robust_alpha=0.5, robust_epochs=200, robust_overrides={},
        stitch=StitchConfig(epochs=30, lstsq_samples=100, fula_reduction="sample"),  # paper 1, App. A.2 and Eq. 5
        stitch_train_subset=None, eval_subset=None, robust_eval_subset=1000, autoattack_iter=100,
        # EOT 1, not the 'rand' version's 20: our eval-mode models are deterministic, so the 20 EOT gradients are
        # identical (a probe: 90.7 s against 5.7 s for the same robust accuracy)
        autoattack_eot=1, robust_attack="autoattack", iri_steps=200, iri_samples=None,
        # notebook 05's information testbed on paper 2's three architectures, each at all its points (the authors'
        # configs/information_stitching/low_resolution/{resnet18,vgg16,vit_tiny_patch4_32})
        iri_archs=("resnet18", "vgg16", "vit_tiny"),
        notes=(("01", "AutoAttack 'rand' (100 APGD iterations, EOT 1) on 1000 test images per stitched model, not all 10000"),),
    ),
}


SHRUNK_SUFFIX = "-shrunk"


def shrink(P: Profile) -> Profile:
    """`P` with the same structure at toy sizes: every code path a run of `P` takes, in minutes on a CPU.

    Kept as they are: the data sets, architectures, seeds of the base models, objectives, marker kinds,
    alphas, the evaluation kinds (AutoAttack where `P` has it), the adversarial-training mode, the
    class-subset sampling, and so which figures are drawn and their names. Cut: sizes (width, images,
    epochs, attack and IRI steps) and the repeat counts that only multiply the cost (stitch points, k values,
    front seeds). The result is named "<name>-shrunk", so its cache, figures and executed notebooks live apart
    from `P`'s and a shrunk number can never be read as one of `P`'s. Each cut says why it is safe, i.e. why
    no code path depends on the value cut."""
    tiny = dict(epochs=1, batch_size=32)  # one short pass: the training loop, schedulers and checkpoints all run
    return dataclasses.replace(
        P, name=P.name + SHRUNK_SUFFIX,
        # width 4 and one epoch: every layer and stitch point exists at any width (channels = width x stage
        # multiple); one PGD step runs the same attack loop as ten; eps and step keep the paper's values
        base=dataclasses.replace(P.base, width=4, pgd_steps=1, **tiny),
        # 96 images per data set: all ten classes present (the tiny data writes them round-robin)
        train_subset={P.end_dataset: 96, P.cross_dataset: 96},
        robust_epochs=1,
        # batches of 8: notebook 03's paper sampling ("per_class") keeps only the first k classes' share of the
        # stitch data, 16 of the 32 images at k = 5, and training needs a full batch
        stitch=dataclasses.replace(P.stitch, lstsq_samples=8, pgd_steps=1, epochs=1, batch_size=8),
        adv_stitch=None if P.adv_stitch is None else dataclasses.replace(P.adv_stitch, lstsq_samples=8, pgd_steps=1,
                                                                          epochs=1, batch_size=8),
        # one batch of 32 images per stitch (its training loop, least-squares init and PGD all run); 32 test
        # images (clean) and 8 (attacked) fill every table cell and bootstrap
        stitch_train_subset=32, adv_stitch_train_subset=32, eval_subset=32, robust_eval_subset=8,
        # two APGD iterations run AutoAttack's whole schedule code (its checkpoints scale with n_iter)
        autoattack_iter=2, autoattack_eot=1, iri_autoattack_iter=2,
        # the first and the last point: the per-point code is the same at every point, the ends are its special
        # cases (the stem's and the last block's outputs), and the claims pool a shallow and a deep one; the
        # smoke profile runs a middle point too. The stitch count (the cost) is proportional to the points
        stitch_points=(0, 8), cross_layer_points=(0, 8),
        # alpha 0 (clean) and 0.5 (a pass mixing clean and PGD inputs: the branch only the paper profile takes);
        # alpha 1 runs a subset of 0.5's code (no clean term), and the smoke and quick profiles run it
        alphas=(0.0, 0.5) if 0.5 in P.alphas else P.alphas,
        # k = 5 (the paper's sampling keeps the first k classes' images: ~16 of 32 here; k = 1 would leave ~3,
        # fewer than a batch) and all ten; the smoke profile runs k = 1 (with its fixed-total sampling)
        class_subset_ks=(5, 10),
        iri_steps=2, iri_step_size=8 / 255, iri_samples=32, iri_points=(2, 8), iri_front_seeds=P.iri_front_seeds[:1],
        # the other architectures of the information testbed: their first and last points (the ends of their
        # point lists, as stitch_points keeps for the main one)
        iri_arch_points={a: (0, num_stitch_points(a) - 1) for a in P.info_archs[1:]},
        simclr_epochs=1, simclr_train_subset=64, simclr_overrides={**P.simclr_overrides, "batch_size": 32,
                                                                     "probe_batch_size": 32},
        cross_bias_overrides={**P.cross_bias_overrides, "train_subset": 96},
        iri_stitch=dataclasses.replace(P.iri_stitch, lstsq_samples=16, pgd_steps=1, **tiny),
        iri_eval_subset=64, iri_adv_points=(8,), iri_robust_eval_subset=16, iri_shortcut_points=(8,),
        # notebook 07 (Fashion-MNIST, VGG and ViT): its stitches train in batches of 64 (yourmodels.py)
        your_models=dict(base_images=128, base_epochs=1, width=4, stitch_images=128, stitch_epochs=1, iri_images=64,
                         iri_steps=2, iri_step_size=8 / 255, test_images=64),
        beyond_model_overrides={**P.beyond_model_overrides, "train_subset": 96, "epochs": 1}, beyond_points=(2, 8),
        beyond_samples=32, beyond_eval_subset=64,
        beyond_stitch=dataclasses.replace(P.beyond_stitch, lstsq_samples=16, **tiny),
        capacity_points=(8,), capacity_rank=2,
        # the notes of `P` would describe sizes this profile does not have: one note says what it is
        notes=(("all", f"SHRUNK {P.name}: its structure at toy sizes (config.shrink: width 4, 1 epoch, 96 images per "
                       f"model, 32 per stitch, stitch points 1 and 9, 1-2 attack steps, 2 IRI steps), a proof that every code "
                       f"path runs; the numbers mean nothing"),),
    )


def profile_names() -> list[str]:
    """Every name get_profile accepts: the profiles and their shrunk versions."""
    return [*PROFILES, *(name + SHRUNK_SUFFIX for name in PROFILES)]


def split_shrunk(name: str) -> tuple[str, bool]:
    """"paper-shrunk" -> ("paper", True); any other name -> (name, False)."""
    if name.endswith(SHRUNK_SUFFIX):
        return name[:-len(SHRUNK_SUFFIX)], True
    return name, False


def get_profile(name: str) -> Profile:
    """The named profile, or shrink() of it for "<name>-shrunk"; a clear error for an unknown one."""
    base, shrunk = split_shrunk(name)
    if base not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: choose one of {', '.join(profile_names())}")
    return shrink(PROFILES[base]) if shrunk else PROFILES[base]


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but torch sees no CUDA GPU: use device='cpu' or 'auto'")
    return torch.device(device)
