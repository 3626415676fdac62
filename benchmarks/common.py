"""Shared pieces of the benchmarks: sizes, base models, timing, JSON output and the `paper` grid projection.

Timing rules (the CPU here is shared with other jobs, so single timings are noisy):
  * (a) the reference and (b) fula_core run interleaved inside every repeat, in alternating order
    (a b, b a, a b, ...), so that a load change hits both sides alike; we report medians and the
    ratio of the medians, plus the per-repeat ratios.
  * On CUDA every timed region starts and ends with torch.cuda.synchronize(); nothing inside syncs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from the repository root
    sys.path.insert(0, str(ROOT))

from fula_core import models  # noqa: E402
from fula_core.data import DATASET_INFO, ImageSet, load  # noqa: E402
from fula_core.store import ResultStore  # noqa: E402
from fula_core.train import TrainConfig, get_model  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache"


# ----------------------------------------------------------------------------------------------------
# Devices and timing


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: torch sees no CUDA GPU here")
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Wall time of fn() with the device drained before and after (the only syncs)."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def interleaved(runs: dict[str, Callable[[], object]], repeats: int, device: torch.device,
                log: Callable[[str], None] = print) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Run every callable `repeats` times, rotating the order each repeat; returns times and first outputs."""
    names = list(runs)
    times: dict[str, list[float]] = {n: [] for n in names}
    first: dict[str, object] = {}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            t, out = timed(runs[n], device)
            times[n].append(t)
            first.setdefault(n, out)
            log(f"    repeat {r + 1}/{repeats}  {n:<10s} {t:8.2f} s   (load avg {load_avg():.1f})")
    return times, first


def median(xs) -> float:
    return statistics.median(xs) if xs else float("nan")


def ratio_summary(ref: list[float], eng: list[float]) -> dict:
    """Median times, the ratio of medians and the per-repeat ratios (reference / engine)."""
    per = [a / b for a, b in zip(ref, eng)]
    return {"reference_s": ref, "engine_s": eng, "reference_median_s": median(ref), "engine_median_s": median(eng),
            "speedup": median(ref) / median(eng), "speedup_per_repeat": per,
            "speedup_min": min(per), "speedup_max": max(per)}


def load_avg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def environment(device: torch.device) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "load_avg_start": load_avg(), "platform": platform.platform(),
           "device": str(device)}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device),
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return env


def write_json(path: str | None, payload: dict) -> None:
    if not path:
        return
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(payload, indent=1, default=_jsonable))
    print(f"wrote {p}")


def _jsonable(o):
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, (torch.device, pathlib.Path)):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    return repr(o)


def fmt_time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# ----------------------------------------------------------------------------------------------------
# Sizes and data


@dataclass(frozen=True)
class Size:
    """A benchmark size. `dataset` is a real data set ("fashion_mnist") or "synthetic-cifar"."""

    name: str
    dataset: str
    width: int
    n_images: int
    n_test: int
    epochs: int
    pgd_eps: float
    pgd_step: float
    pgd_steps: int
    base_epochs: int  # epochs of the briefly trained base models (real data only)
    base_subset: int  # their training images


SIZES = {
    # Fashion-MNIST, width-8 ResNet18s trained briefly (cached) so that stitch accuracies mean something;
    # PGD as in the `quick` profile (eps 0.1, 5 steps of eps/4).
    "cpu": Size("cpu", "fashion_mnist", width=8, n_images=1024, n_test=1000, epochs=1,
                pgd_eps=0.1, pgd_step=0.025, pgd_steps=5, base_epochs=2, base_subset=10000),
    # The papers' shapes: CIFAR-shaped synthetic tensors (3x32x32, 10 classes), width 64, 8/255 PGD-10.
    "paper": Size("paper", "synthetic-cifar", width=64, n_images=2560, n_test=1000, epochs=1,
                  pgd_eps=8 / 255, pgd_step=2 / 255, pgd_steps=10, base_epochs=0, base_subset=0),
}


def synthetic_cifar(n: int, seed: int, split: str = "train") -> ImageSet:
    """CIFAR-shaped random uint8 images with random labels: for speed only (named cifar10 so that the
    CIFAR augmentation, 4-pixel crop padding + flips, applies)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    classes = tuple(str(c) for c in range(10))
    return ImageSet(images=images, labels=labels, classes=classes, name=f"cifar10/{split}-synthetic")


def train_test(size: Size, n_images: int, n_test: int) -> tuple[ImageSet, ImageSet]:
    """The (CPU) training images the stitches train on and the test images they are scored on."""
    if size.dataset == "synthetic-cifar":
        return synthetic_cifar(n_images, 0), synthetic_cifar(n_test, 1, "test")
    train = load(size.dataset, "train").take(n_images, seed=123)
    test = load(size.dataset, "test").take(n_test, seed=0)
    return train, test


def base_pair(size: Size, width: int, device: torch.device, progress: bool = False):
    """(front, end): two ResNet18s of the same task, different seeds (front seed 1, end seed 0, as in the zoo).

    Real data: trained briefly once and cached under benchmarks/.cache (fula_core's ResultStore).
    Synthetic data: random weights, BN statistics warmed by a few train-mode forwards (speed only).
    """
    if size.dataset == "synthetic-cifar":
        info = DATASET_INFO["cifar10"]
        nets = []
        x = synthetic_cifar(256, 7).images.float() / 255
        for seed in (1, 0):
            torch.manual_seed(seed)
            net = models.build("resnet18", info["num_classes"], info["in_channels"], width)
            net.train()
            with torch.no_grad():
                for xb in x.split(128):
                    net(xb)
            nets.append(net.eval().to(device))
        return nets[0], nets[1]
    store = ResultStore(CACHE)
    out = []
    for seed in (1, 0):
        cfg = TrainConfig(dataset=size.dataset, width=width, seed=seed, epochs=size.base_epochs,
                          train_subset=size.base_subset, batch_size=128, lr=0.05)
        t = time.perf_counter()
        fresh = not store.has("model", dataclasses.asdict(cfg))
        # trained on the CPU whatever the device: the cache then holds one copy for every device
        net = get_model(store, cfg, "cpu", progress=progress)
        if fresh:
            print(f"  trained base model {cfg.label} in {time.perf_counter() - t:.0f} s (cached in {CACHE})")
        out.append(net.to(device).eval())
    return out[0], out[1]


# ----------------------------------------------------------------------------------------------------
# FLOPs, for scaling CPU-size unit costs to the paper's shapes


def forward_flops(arch: str, width: int, in_channels: int, image: int, num_classes: int = 10) -> float:
    """FLOPs (2 x MACs) of one image's forward pass, counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    net = models.build(arch, num_classes, in_channels, width).eval()
    x = torch.zeros(1, in_channels, image, image)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    return float(counter.get_total_flops())


# ----------------------------------------------------------------------------------------------------
# The `paper` grid: unit counts and the projection


@dataclass(frozen=True)
class PaperGrid:
    """What the full `paper` profile computes, in units whose cost we measure (see benchmarks/README.md).

    Base models: 3 architectures x {cifar10_0, cifar10_1, ls_imagenet10_0} x {clean, robust} = 18 models,
    200 epochs each; CIFAR-10 has 50 000 training images, LS-ImageNet-10 about 13 000 (10 ImageNet classes).
    Stitch trainings: ~1000 of 30 epochs over the 50 000 CIFAR-10 training images, split equally over
    alpha in {0, 0.5, 1} (two thirds with PGD-10 inside) and over the 3 architectures; trained 36 jobs
    (9 points x 4 objectives) of one alpha per call, as the notebooks do.
    AutoAttack 'rand' (100 iterations, EOT 20: fula_core.config paper profile) on 1000 test images of every
    stitched model trained with PGD or evaluated for robustness: we count every stitched model (upper bound).
    IRIs (invariance-aware stitching): all 50 000 training images x 200 steps, at each of the 9 stitch points
    of 2 end models (clean and robust ResNet18): 18 IRI sets.
    """

    base_clean_models_cifar: int = 6  # per arch 2 CIFAR models, 3 archs
    base_clean_models_imagenet: int = 3
    base_robust_models_cifar: int = 6
    base_robust_models_imagenet: int = 3
    base_epochs: int = 200
    cifar_train: int = 50_000
    imagenet10_train: int = 13_000
    stitch_runs: int = 1000
    stitch_alpha_shares: tuple[tuple[float, float], ...] = ((0.0, 1 / 3), (0.5, 1 / 3), (1.0, 1 / 3))
    stitch_epochs: int = 30
    autoattack_models: int = 1000
    autoattack_images: int = 1000
    autoattack_iter: int = 100
    autoattack_eot: int = 20
    iri_sets: int = 18
    iri_images: int = 50_000
    iri_steps: int = 200
    archs: tuple[str, ...] = ("resnet18", "resnet18_noskip", "resnet34")

    @classmethod
    def from_profile(cls) -> "PaperGrid":
        """Take the evaluation and IRI settings from fula_core's `paper` profile where it defines them."""
        try:
            from fula_core.config import get_profile
        except ImportError:
            return cls()
        p = get_profile("paper")
        return cls(base_epochs=p.base.epochs, stitch_epochs=p.stitch.epochs, autoattack_images=p.robust_eval_subset,
                   autoattack_iter=p.autoattack_iter, autoattack_eot=p.autoattack_eot, iri_steps=p.iri_steps,
                   archs=tuple(p.archs))


def arch_factor(archs) -> float:
    """Mean forward cost of the grid's architectures relative to ResNet18 (counted FLOPs)."""
    base = forward_flops("resnet18", 64, 3, 32)
    return sum(forward_flops(a, 64, 3, 32) for a in archs) / len(archs) / base


def project_paper_grid(units: dict, grid: PaperGrid, label: str) -> dict:
    """Projected wall time of the paper grid from per-unit costs (seconds), all for a paper-shaped ResNet18
    (width 64, 3x32x32) on the measuring device:

      base_clean_per_image, base_at_per_image     one training image of base training (clean / PGD-AT)
      stitch_per_job_image[alpha]                 one training image of one stitch job (engine, 36-job call)
      autoattack_per_1000                         AutoAttack 'rand' at grid.autoattack_iter x eot on 1000 images
      iri_per_1000_200                            1000 IRIs x grid.iri_steps sign-gradient steps (deepest point)
    """
    af = arch_factor(grid.archs)
    g = grid
    base_images = g.base_epochs * (
        (g.base_clean_models_cifar + g.base_robust_models_cifar) * g.cifar_train
        + (g.base_clean_models_imagenet + g.base_robust_models_imagenet) * g.imagenet10_train)
    clean_images = g.base_epochs * (g.base_clean_models_cifar * g.cifar_train + g.base_clean_models_imagenet * g.imagenet10_train)
    robust_images = base_images - clean_images
    rows = {
        "base models, clean": af * clean_images * units["base_clean_per_image"],
        "base models, PGD-AT": af * robust_images * units["base_at_per_image"],
    }
    for alpha, share in g.stitch_alpha_shares:
        per = units["stitch_per_job_image"].get(alpha)
        if per is None:  # alpha 0.5 runs both a clean and an adversarial pass per job: cost(0) + cost(1)
            per = units["stitch_per_job_image"][0.0] + units["stitch_per_job_image"][1.0]
        rows[f"stitches, alpha={alpha:g}"] = af * g.stitch_runs * share * g.stitch_epochs * g.cifar_train * per
    rows["AutoAttack evaluation"] = af * g.autoattack_models * g.autoattack_images / 1000 * units["autoattack_per_1000"]
    rows["IRI generation"] = g.iri_sets * g.iri_images / 1000 * units["iri_per_1000_200"] * g.iri_steps / 200
    total = sum(rows.values())
    return {"label": label, "arch_factor": af, "grid": dataclasses.asdict(g), "units": units,
            "rows_s": rows, "total_s": total, "total_h": total / 3600}


def print_projection(proj: dict) -> None:
    print(f"\n== projected `paper` grid wall time: {proj['label']} ==")
    u = proj["units"]
    print("  measured per-unit costs (paper-shaped ResNet18, width 64, 3x32x32):")
    print(f"    base training, clean      {u['base_clean_per_image'] * 1e3:10.4f} ms / image")
    print(f"    base training, PGD-AT     {u['base_at_per_image'] * 1e3:10.4f} ms / image")
    for a, v in sorted(u["stitch_per_job_image"].items()):
        print(f"    stitch job, alpha={a:<4g}    {v * 1e3:10.4f} ms / image / job")
    print(f"    AutoAttack per 1000 images {u['autoattack_per_1000']:9.2f} s  (iter x EOT of the grid)")
    print(f"    IRI per 1000 images x 200 steps {u['iri_per_1000_200']:6.2f} s")
    if u.get("note"):
        print(f"    ({u['note']})")
    print(f"  architecture mix factor (mean FLOPs of {', '.join(proj['grid']['archs'])} / ResNet18): {proj['arch_factor']:.2f}")
    for k, v in proj["rows_s"].items():
        print(f"    {k:<26s} {fmt_time(v):>10s}")
    print(f"  TOTAL {proj['total_h']:,.1f} h = {proj['total_h'] / 24:,.1f} days")


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Temporarily set the intra-op thread count (None: leave it)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def images_per_s(images: float, seconds: float) -> float:
    return images / seconds if seconds > 0 else math.inf


# ----------------------------------------------------------------------------------------------------
# Unit-cost probes for the projection (short measurements of fula_core's own code paths)


class _AsModule(torch.nn.Module):
    """Hide a model from torchattacks' mode switches (it calls .eval()/.train() on what it is given)."""

    def __init__(self, fn, device):
        super().__init__()
        object.__setattr__(self, "_fn", fn)
        self._marker = torch.nn.Parameter(torch.empty(0, device=device), requires_grad=False)

    def forward(self, x):
        return self._fn(x)


def autocast_ctx(device: torch.device, bf16: bool):
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def apgd_cost_per_image_iter(model, x, y, device, n_iter: int, bf16: bool = False) -> float:
    """Seconds per image per APGD iteration (EOT 1) of torchattacks' APGD-CE, which fula_core's AutoAttack
    'rand' runs: attack_single_run attacks every given point (perturb would skip misclassified ones)."""
    import torchattacks

    wrapped = _AsModule(model, device)
    apgd = torchattacks.APGD(wrapped, norm="Linf", eps=8 / 255, steps=n_iter, n_restarts=1, seed=0, loss="ce",
                             eot_iter=1, rho=0.75, verbose=False)
    with autocast_ctx(device, bf16):
        apgd.attack_single_run(x[: max(2, len(x) // 4)], y[: max(2, len(x) // 4)])  # warm-up
        t, _ = timed(lambda: apgd.attack_single_run(x, y), device)
    return t / (len(x) * n_iter)


def iri_cost_per_image_step(model, x, device, steps: int, bf16: bool = False) -> float:
    """Seconds per image per IRI step, averaged over the 9 stitch points: a sign-gradient step on the input
    that pulls f_{<=k}(x') towards a target activation (forward to point k + backward to the input)."""
    from fula_core.models import NUM_STITCH_POINTS

    model.eval()
    total = 0.0
    for k in range(NUM_STITCH_POINTS):
        with torch.no_grad(), autocast_ctx(device, bf16):
            target = model.activations_upto(x.flip(0), k).float()

        def run(n):
            xa = x.clone()
            for _ in range(n):
                xa.requires_grad_(True)
                with autocast_ctx(device, bf16):
                    loss = (model.activations_upto(xa, k).float() - target).pow(2).sum()
                (g,) = torch.autograd.grad(loss, xa)
                xa = (xa.detach() - (1 / 255) * g.sign()).clamp(0, 1)
            return xa

        run(1)  # warm-up
        t, _ = timed(lambda: run(steps), device)
        total += t / (len(x) * steps)
    return total / NUM_STITCH_POINTS


def base_run(side: str, cfg, data: ImageSet, device: torch.device, workers: int | None = None):
    """One base-training run of `cfg` on `data`: side 'fula_core' (train_model) or 'reference'."""
    if side == "fula_core":
        from fula_core.train import train_model

        return train_model(cfg, data, device, progress=False)
    from reference import reference_train_model

    return reference_train_model(cfg, data, device, workers)


def scale_units_to_paper(units: dict, run_shape: dict) -> tuple[dict, str | None]:
    """Per-unit costs measured at a smaller shape -> the paper's ResNet18 (width 64, 3x32x32, PGD-10).

    FLOPs scale every unit (assumes the same FLOP efficiency: optimistic for a small model on a GPU,
    roughly right on a CPU). The PGD part of an adversarial unit (its cost above the clean unit) is also
    scaled by the ratio of attack passes: PGD-10 = 2 x 10 + 3 passes vs 2 x s + 3 for a PGD-s training step.
    """
    paper = forward_flops("resnet18", 64, 3, 32)
    run = forward_flops("resnet18", run_shape["width"], run_shape["in_channels"], run_shape["image"])
    r = paper / run
    s = run_shape["pgd_steps"]
    if r == 1.0 and s == 10:
        return units, None
    pgd = (2 * 10 + 3) / (2 * s + 3)
    out = dict(units)
    out["base_clean_per_image"] = r * units["base_clean_per_image"]
    out["base_at_per_image"] = r * (units["base_clean_per_image"] + (units["base_at_per_image"] - units["base_clean_per_image"]) * pgd)
    st = units["stitch_per_job_image"]
    out["stitch_per_job_image"] = {a: r * (st[0.0] + (v - st[0.0]) * (pgd if a > 0 else 1.0)) for a, v in st.items()}
    out["autoattack_per_1000"] = r * units["autoattack_per_1000"]
    out["iri_per_1000_200"] = r * units["iri_per_1000_200"]
    note = (f"measured at width {run_shape['width']}, {run_shape['in_channels']}x{run_shape['image']}^2, PGD-{s}; "
            f"scaled x{r:.1f} by FLOPs and x{pgd:.2f} on the PGD share to width 64, 3x32^2, PGD-10")
    out["note"] = note
    return out, note


def allow_recompiles() -> None:
    """For --compile: every BasicBlock shares one forward code object, so 8 blocks x (train, eval) x shapes
    exceed dynamo's default recompile limit of 8 and most calls would silently fall back to eager."""
    import torch._dynamo

    cfg = torch._dynamo.config
    for name, value in (("recompile_limit", 64), ("cache_size_limit", 64),
                        ("accumulated_recompile_limit", 1024), ("accumulated_cache_size_limit", 1024)):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), value))
