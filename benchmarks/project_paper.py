"""The `paper` grid's wall time on one and on 8 GPUs, from per-unit costs and the grid's true unit counts,
with the protocol choices that could cut it and what each saves.

Unit counts: from fula_core.units (the testbed modules' own plans, listed without running a notebook):
every stitch training of notebooks 01-05 and 08 (shared stitches once), its split over alpha, the stitched
models attacked with AutoAttack, and the IRI sets in 50,000-image equivalents (a set of test images counts
1/5); `--stitches` / `--iri-sets` override them. Base models, epochs, AutoAttack and IRI settings from
fula_core's `paper` profile (common.PaperGrid.from_profile). Per-unit costs: measured ones from a JSON (`--units`, the `units` object
benchmarks/stitching_throughput.py writes under `projection`, or gpu_check.sh's), else derived from counted
FLOPs (common.forward_flops) at an assumed effective rate (`--tflops`, default 200 TFLOP/s: about a fifth of
an H100's dense bf16 peak, what small 32x32 convolutions reach; an assumption, replace it by a measurement).

    .venv/bin/python benchmarks/project_paper.py [--units gpu_check.json] [--gpus 8] [--json out.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import PaperGrid, forward_flops, project_paper_grid  # noqa: E402



def unit_counts(profile: str = "paper") -> dict:
    """The grid's counts from fula_core.units: stitches (01-04 passes and 05/08's), their shares per alpha,
    stitched models under AutoAttack, IRI sets (50k-image equivalents: test-image sets count 1/5)."""
    from fula_core import beyond, iri_testbeds, units

    g = units.enumerate_units(profile)
    P = g.profile
    per_alpha: dict[float, float] = {}
    for u in g.of_kind("stitch_group"):
        for j in u.action.jobs:
            per_alpha[j.alpha] = per_alpha.get(j.alpha, 0) + 1
    attacked = sum(len(jobs) for u in g.of_kind("eval_group") for s, jobs in u.action.items if s.attack == "autoattack")
    pl = iri_testbeds.plan(P)
    for testbed, (_, n) in {**iri_testbeds.stitch_passes(pl),
                            **beyond.stitch_passes(beyond.plan(P))}.items():  # paper 2: alpha 0 but the adversarial testbed's
        if testbed == "adversarial":
            for a in pl.adv_alphas:
                share = len(pl.adv_objectives(a)) / sum(len(pl.adv_objectives(b)) for b in pl.adv_alphas)
                per_alpha[a] = per_alpha.get(a, 0) + n * share
            attacked += n  # every stitch of the adversarial testbed is scored under AutoAttack
        else:
            per_alpha[0.0] = per_alpha.get(0.0, 0) + n
    stitches = round(sum(per_alpha.values()))
    iri = sum(0.2 if getattr(u.action.source, "split", "train") == "test" else 1.0 for u in g.of_kind("iri_set"))
    return {"stitches": stitches, "alpha_shares": tuple((a, n / stitches) for a, n in sorted(per_alpha.items())),
            "autoattack_models": attacked, "iri_sets": round(iri), "iri_sets_listed": len(g.of_kind("iri_set"))}


def flop_units(tflops: float, grid: PaperGrid, pgd_steps: int = 10, jobs_per_call: int = 36) -> dict:
    """Per-unit costs (s) from counted FLOPs: F = one ResNet18 forward (width 64, 3x32x32); a backward ~ 2F.

    base clean image 3F; PGD-AT image (clean share 0.5) 3F + 0.5 * steps * 3F; a clean stitch job-image:
    the shared front and end forwards (2F) over the jobs of a call plus the stitched g_{>j} forward and
    backward (on average half the network: 1.5F); alpha = 1 adds PGD on the stitched model (steps x 3F) and
    its own front/end forwards (2F); AutoAttack: iter x EOT x 2 losses x 3F per image (upper bound: every
    point goes through both); an IRI step 3F."""
    f = forward_flops("resnet18", 64, 3, 32) / (tflops * 1e12)
    return {"base_clean_per_image": 3 * f, "base_at_per_image": 3 * f + 0.5 * pgd_steps * 3 * f,
            "stitch_per_job_image": {0.0: 2 * f / jobs_per_call + 1.5 * f,
                                     1.0: pgd_steps * 3 * f + 2 * f + 1.5 * f},
            "autoattack_per_1000": 1000 * grid.autoattack_iter * grid.autoattack_eot * 2 * 3 * f,
            "iri_per_1000_200": 1000 * 200 * 3 * f,
            "note": f"FLOP-derived at an assumed {tflops:g} TFLOP/s effective"}


def load_units(path: str) -> dict:
    with open(path) as fh:
        obj = json.load(fh)
    for key in ("units", "projection"):  # accept the bare units, a projection, or a whole benchmark JSON
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if "engine" in obj and isinstance(obj["engine"], dict) and "units" in obj["engine"]:
        obj = obj["engine"]["units"]
    units = dict(obj)
    units["stitch_per_job_image"] = {float(k): v for k, v in units["stitch_per_job_image"].items()}
    return units


def _drop_half(grid: PaperGrid) -> PaperGrid:
    half = dict(grid.stitch_alpha_shares).get(0.5, 0.0)
    return dataclasses.replace(grid, stitch_runs=round(grid.stitch_runs * (1 - half)),
                               stitch_alpha_shares=tuple((a, s / (1 - half)) for a, s in grid.stitch_alpha_shares
                                                         if a != 0.5))


def _adversarial_resnet18_only(grid: PaperGrid) -> PaperGrid:
    per_arch = 1 / len(grid.archs)
    return dataclasses.replace(grid, stitch_alpha_shares=tuple((a, s if a == 0 else s * per_arch)
                                                               for a, s in grid.stitch_alpha_shares),
                               autoattack_models=round(grid.autoattack_models * per_arch))


# Protocol choices that cut the grid: name -> the grid with that choice made
CHOICES = {
    "drop the alpha = 0.5 row": _drop_half,
    "adversarial rows for ResNet18 only (appendix architectures clean)": _adversarial_resnet18_only,
    "stitch epochs 30 -> 10": lambda g: dataclasses.replace(g, stitch_epochs=10),
    "AutoAttack on 500 test images (not 1000)": lambda g: dataclasses.replace(g, autoattack_images=500),
    "AutoAttack EOT 20 -> 1 (deterministic eval-mode models: same attack)": lambda g: dataclasses.replace(g, autoattack_eot=1),
    "IRIs at 3 of 9 points": lambda g: dataclasses.replace(g, iri_sets=g.iri_sets // 3),
}


def choices(grid: PaperGrid) -> dict[str, PaperGrid]:
    """Each protocol choice on its own (the saving is against the full grid)."""
    return {name: make(grid) for name, make in CHOICES.items()}


def all_choices(grid: PaperGrid) -> PaperGrid:
    """Every protocol choice at once."""
    for make in CHOICES.values():
        grid = make(grid)
    return grid


def project(units: dict, stitches: int | None = None, iri_sets: int | None = None, gpus: int = 8) -> dict:
    counts = unit_counts()
    stitches = counts["stitches"] if stitches is None else stitches
    iri_sets = counts["iri_sets"] if iri_sets is None else iri_sets
    grid = dataclasses.replace(PaperGrid.from_profile(), stitch_runs=stitches, iri_sets=iri_sets,
                               autoattack_models=counts["autoattack_models"],
                               stitch_alpha_shares=counts["alpha_shares"])
    full = project_paper_grid(units, grid, "full paper grid")
    out = {"counts": {"stitches": stitches, "iri_sets": iri_sets, "autoattack_models": counts["autoattack_models"],
                      "alpha_shares": {str(a): s for a, s in counts["alpha_shares"]},
                      "source": "fula_core.units (the modules' plans); IRI sets in 50k-image equivalents"},
           "units": {**units, "stitch_per_job_image": {str(k): v for k, v in units["stitch_per_job_image"].items()}},
           "rows_h": {k: v / 3600 for k, v in full["rows_s"].items()},
           "total_h_1gpu": full["total_h"], "gpus": gpus,
           "total_h_ngpu": full["total_h"] / gpus,  # the grid is thousands of independent units: near-linear
           "choices": {}}
    for name, g in choices(grid).items():
        t = project_paper_grid(units, g, name)["total_h"]
        out["choices"][name] = {"total_h_1gpu": t, "saves_h_1gpu": full["total_h"] - t}
    t = project_paper_grid(units, all_choices(grid), "every choice")["total_h"]
    out["all_choices"] = {"total_h_1gpu": t, "total_h_ngpu": t / gpus}
    return out


def print_projection(p: dict) -> None:
    print(f"== `paper` grid projection ({p['counts']['stitches']:,} stitches, {p['counts']['iri_sets']} IRI sets; "
          f"{p['counts']['source']}) ==")
    print(f"   per-unit costs: {p['units'].get('note', 'measured')}")
    for k, v in p["rows_h"].items():
        print(f"   {k:<28s} {v:10.1f} h")
    print(f"   TOTAL on 1 GPU {p['total_h_1gpu']:10.1f} h   on {p['gpus']} GPUs {p['total_h_ngpu']:8.1f} h "
          f"(targets: <= 24 h on one H100, <= 4 h on 8)")
    print("   protocol choices (each alone):")
    for k, v in p["choices"].items():
        print(f"     {k:<70s} saves {v['saves_h_1gpu']:8.1f} h -> {v['total_h_1gpu']:8.1f} h")
    a = p["all_choices"]
    print(f"   every choice at once: {a['total_h_1gpu']:.1f} h on 1 GPU, {a['total_h_ngpu']:.1f} h on {p['gpus']}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", help="JSON with measured per-unit costs (else FLOP-derived)")
    ap.add_argument("--tflops", type=float, default=200.0, help="effective TFLOP/s for FLOP-derived costs")
    ap.add_argument("--stitches", type=int, help="override the stitch count of fula_core.units")
    ap.add_argument("--iri-sets", type=int, help="override the IRI set count (50k-image equivalents)")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    units = load_units(a.units) if a.units else flop_units(a.tflops, PaperGrid.from_profile())
    p = project(units, a.stitches, a.iri_sets, a.gpus)
    print_projection(p)
    if a.json:
        os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
        with open(a.json, "w") as fh:
            json.dump(p, fh, indent=1)
    return p


if __name__ == "__main__":
    main()
