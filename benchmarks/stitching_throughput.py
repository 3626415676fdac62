"""Stitching throughput: (a) the per-run reference vs (b) fula_core's multi-job engine, same workload.

Workload: one front/end pair (two ResNet18s of the same task), same-layer stitches at the stitch points
(all 9 by default) x the 4 trained objectives (tlm, slm, hint, fula), E epochs over N training images,
for each alpha (share of PGD inputs) asked for.

  (a) reference.reference_stitching: one run per stitched model (deep-copied front/end, DataLoader with
      per-sample torchvision transforms, fp32, a fresh front and end forward per batch and job).
  (b) fula_core.stitching.train_stitches: all jobs of one alpha in one call (device-resident data,
      batched augmentation, one shared front/end forward per batch for the clean jobs, bf16 autocast on
      CUDA); on CUDA the models are channels_last (and optionally torch.compile'd per residual unit).

Same seeds, data, least-squares init, losses and number of optimiser steps. Images/s counts stitched-model
training images: jobs x epochs x N / wall time. The final test accuracies of every job are compared
between (a) and (b) (they differ only by the augmentation draws / data order and arithmetic).

    .venv/bin/python benchmarks/stitching_throughput.py                 # CPU size, a few minutes
    .venv/bin/python benchmarks/stitching_throughput.py --sizes paper   # on a GPU: CIFAR shapes, width 64
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import time

import torch

import common
from common import SIZES, fmt_time, images_per_s, interleaved, ratio_summary

from fula_core.stitching import StitchConfig, StitchJob, evaluate, train_stitches  # noqa: E402
from reference import default_workers, reference_stitching  # noqa: E402

OBJECTIVES = ("tlm", "slm", "hint", "fula")


def parse_points(text: str) -> tuple[int, ...]:
    if text == "all":
        return tuple(range(9))
    return tuple(int(p) for p in text.split(","))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", choices=sorted(SIZES), default=None,
                   help="cpu: Fashion-MNIST, width 8, briefly trained models (default on CPU); "
                        "paper: CIFAR-shaped synthetic data, width 64, PGD-10 (default on CUDA)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--epochs", type=int, help="stitch training epochs E (default: the size's, 1)")
    p.add_argument("--n-images", type=int, help="training images N (default: cpu 384, paper 2560)")
    p.add_argument("--adv-n-images", type=int,
                   help="training images for alpha > 0 (default: cpu 256, paper 1280: time budget)")
    p.add_argument("--n-test", type=int, help="test images for the accuracy comparison (cpu 500, paper 1000)")
    p.add_argument("--width", type=int, help="ResNet18 width (default: cpu 8, paper 64)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--alphas", default="0,1", help="comma-separated shares of PGD inputs (default 0,1)")
    p.add_argument("--points", default="all", help="stitch points for alpha = 0 (default all 9)")
    p.add_argument("--adv-points", default=None,
                   help="stitch points for alpha > 0 (default: cpu 0,4,8 to fit the time budget; paper all)")
    p.add_argument("--objectives", default=",".join(OBJECTIVES))
    p.add_argument("--pgd-steps", type=int, help="PGD steps for alpha > 0 (default: cpu 5, paper 10)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved (a)/(b) repeats; medians are reported")
    p.add_argument("--threads", default="auto",
                   help="CPU threads for torch (auto: 1 when the machine is busy, else torch's default)")
    p.add_argument("--ref-workers", type=int, default=None, help="DataLoader workers of (a) (cpu 0, cuda 4)")
    p.add_argument("--compile", action="store_true", help="(b): torch.compile every residual unit (CUDA option)")
    p.add_argument("--no-accuracy", action="store_true", help="skip the accuracy comparison")
    p.add_argument("--no-noise-floor", action="store_true",
                   help="skip the extra (b) run with another data seed that measures the run-to-run noise")
    p.add_argument("--project", action="store_true",
                   help="also project the `paper` grid wall time (default on CUDA; on CPU it is a rough, "
                        "FLOP-scaled CPU projection)")
    p.add_argument("--no-project", action="store_true")
    p.add_argument("--json", default=None, help="write every figure to this JSON file")
    return p.parse_args(argv)


def choose_threads(arg: str, device: torch.device) -> tuple[int, str]:
    if arg != "auto":
        torch.set_num_threads(int(arg))
        return int(arg), "set by --threads"
    if device.type == "cpu":
        cores = os.cpu_count() or 1
        load = common.load_avg()
        if load > 0.75 * cores:
            torch.set_num_threads(1)
            return 1, (f"load average {load:.1f} on {cores} cores: with more runnable threads than cores OpenMP "
                       f"spinning makes multi-threaded runs ~10x slower; pass --threads {cores} on an idle machine")
    return torch.get_num_threads(), "torch default"


def prepare_models(front, end, device, compile_units: bool):
    """(a) gets plain fp32 NCHW models; (b) gets channels_last copies on CUDA (optionally compiled)."""
    ref = (front, end)
    eng_front, eng_end = copy.deepcopy(front), copy.deepcopy(end)
    if device.type == "cuda":
        eng_front = eng_front.to(memory_format=torch.channels_last)
        eng_end = eng_end.to(memory_format=torch.channels_last)
    if compile_units:
        common.allow_recompiles()
        for net in (eng_front, eng_end):
            for unit in net.units:
                unit.compile()
    return ref, (eng_front, eng_end)


def jobs_for(alpha: float, points, objectives) -> list[StitchJob]:
    return [StitchJob(k, k, obj, alpha) for k in points for obj in objectives]


def accuracies(stitched_models, test) -> list[float]:
    return [evaluate(m, test)["accuracy"] for m in stitched_models]


def compare_accuracies(jobs, ref_acc: list[float], eng_acc: list[float]) -> dict:
    diffs = [abs(a - b) for a, b in zip(ref_acc, eng_acc)]
    return {"jobs": [j.name for j in jobs], "reference_accuracy": ref_acc, "fula_core_accuracy": eng_acc,
            "max_abs_diff": max(diffs), "mean_abs_diff": sum(diffs) / len(diffs),
            "mean_reference": sum(ref_acc) / len(ref_acc), "mean_fula_core": sum(eng_acc) / len(eng_acc),
            "worst_job": jobs[diffs.index(max(diffs))].name}


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = common.resolve_device(args.device)
    size = SIZES[args.sizes or ("paper" if device.type == "cuda" else "cpu")]
    threads, why = choose_threads(args.threads, device)
    epochs = args.epochs or size.epochs
    n_images = args.n_images or (384 if size.name == "cpu" else size.n_images)
    adv_n_images = args.adv_n_images or min(256 if size.name == "cpu" else 1280, n_images)
    n_test = args.n_test or (500 if size.name == "cpu" else size.n_test)
    width = args.width or size.width
    pgd_steps = args.pgd_steps or size.pgd_steps
    alphas = [float(a) for a in args.alphas.split(",")]
    objectives = tuple(args.objectives.split(","))
    points = parse_points(args.points)
    adv_points = parse_points(args.adv_points or ("0,4,8" if size.name == "cpu" else "all"))
    workers = default_workers(device) if args.ref_workers is None else args.ref_workers
    project = (device.type == "cuda" or args.project) and not args.no_project
    if args.compile and device.type != "cuda":
        print("note: --compile on the CPU needs a C++ toolchain and compiles for minutes; meant for CUDA")

    started = time.perf_counter()
    print(f"== stitching throughput: size {size.name} ({size.dataset}, ResNet18 width {width}), N={n_images}, "
          f"E={epochs}, batch {args.batch_size}, device {device}, {threads} thread(s) [{why}] ==")
    train, test = common.train_test(size, max(n_images, adv_n_images), n_test)
    front, end = common.base_pair(size, width, device)
    (ref_front, ref_end), eng_models = prepare_models(front, end, device, args.compile)
    test_dev = test.to(device)
    results = {"benchmark": "stitching_throughput", "size": dataclasses.asdict(size),
               "settings": {"epochs": epochs, "n_images": n_images, "n_test": n_test, "width": width,
                            "adv_n_images": adv_n_images, "batch_size": args.batch_size, "pgd_steps": pgd_steps, "repeats": args.repeats,
                            "threads": threads, "threads_reason": why, "ref_workers": workers,
                            "compile": args.compile, "points": points, "adv_points": adv_points,
                            "objectives": objectives},
               "environment": common.environment(device), "alphas": {}}
    if any(a > 0 for a in alphas) and (tuple(adv_points) != tuple(range(9)) or adv_n_images != n_images):
        print(f"note: alpha > 0 uses stitch points {','.join(map(str, adv_points))} and N={adv_n_images} "
              f"(time budget); --adv-points all --adv-n-images {n_images} runs the full alpha > 0 workload")
    if size.dataset != "synthetic-cifar":
        for name, net in (("front", front), ("end", end)):
            print(f"  {name} model test accuracy: {evaluate(net, test_dev)['accuracy']:.1f}%")

    for alpha in alphas:
        jobs = jobs_for(alpha, points if alpha == 0 else adv_points, objectives)
        n = n_images if alpha == 0 else adv_n_images
        data = train.take(n, seed=0) if len(train) > n else train
        data_dev = data.to(device)
        cfg = StitchConfig(epochs=epochs, batch_size=args.batch_size, lstsq_samples=100, pgd_eps=size.pgd_eps,
                           pgd_step=size.pgd_step, pgd_steps=pgd_steps, seed=0)
        print(f"\n-- alpha={alpha:g}: {len(jobs)} jobs (points {','.join(map(str, sorted({j.front_point for j in jobs})))}"
              f" x {','.join(objectives)}), {epochs} epoch(s) x {n} images"
              + (f", PGD-{pgd_steps} eps {size.pgd_eps:.4g}" if alpha > 0 else ""))
        # warm-up (kernel selection, allocator, compile): two jobs, one batch, not timed
        pts = sorted({j.front_point for j in jobs})
        warm_jobs = jobs_for(alpha, sorted({pts[0], pts[-1]}), ("fula",))
        warm_cfg = dataclasses.replace(cfg, epochs=1)
        warm_data = train.take(args.batch_size, seed=1)
        reference_stitching(ref_front, ref_end, warm_jobs[:1], warm_data, warm_cfg, device, workers)
        train_stitches(*eng_models, warm_jobs, warm_data.to(device), warm_cfg, progress=False)

        runs = {"reference": lambda: reference_stitching(ref_front, ref_end, jobs, data, cfg, device, workers),
                "fula_core": lambda: train_stitches(*eng_models, jobs, data_dev, cfg, progress=False)}
        times, first = interleaved(runs, args.repeats, device)
        summary = ratio_summary(times["reference"], times["fula_core"])
        images = len(jobs) * epochs * n
        summary.update(jobs=len(jobs), n_images=n, images=images,
                       reference_images_per_s=images_per_s(images, summary["reference_median_s"]),
                       fula_core_images_per_s=images_per_s(images, summary["engine_median_s"]),
                       reference_s_per_job_image=summary["reference_median_s"] / images,
                       fula_core_s_per_job_image=summary["engine_median_s"] / images)
        print(f"  (a) reference  median {summary['reference_median_s']:8.2f} s  "
              f"{summary['reference_images_per_s']:9.1f} img/s")
        print(f"  (b) fula_core  median {summary['engine_median_s']:8.2f} s  "
              f"{summary['fula_core_images_per_s']:9.1f} img/s")
        print(f"  speed-up (a)/(b): {summary['speedup']:.2f}x  (per repeat {summary['speedup_min']:.2f}-"
              f"{summary['speedup_max']:.2f}x)")
        if not args.no_accuracy:
            eng_acc = accuracies([o.model(*eng_models) for o in first["fula_core"]], test_dev)
            acc = compare_accuracies(jobs, accuracies([m for m, _ in first["reference"]], test_dev), eng_acc)
            print(f"  final test accuracy on {n_test} images: mean (a) {acc['mean_reference']:.2f}%, "
                  f"(b) {acc['mean_fula_core']:.2f}%; max |a-b| {acc['max_abs_diff']:.2f} points "
                  f"({acc['worst_job']}), mean |a-b| {acc['mean_abs_diff']:.2f}")
            if not args.no_noise_floor:
                # run-to-run noise: (b) again with another data order / augmentation / PGD seed, same init images
                other = train_stitches(*eng_models, jobs, data_dev, dataclasses.replace(cfg, seed=1),
                                       init_data=data_dev.take(cfg.lstsq_samples, seed=cfg.seed), progress=False)
                floor = compare_accuracies(jobs, accuracies([o.model(*eng_models) for o in other], test_dev), eng_acc)
                acc["noise_floor_max_abs_diff"] = floor["max_abs_diff"]
                acc["noise_floor_mean_abs_diff"] = floor["mean_abs_diff"]
                acc["within_noise"] = acc["max_abs_diff"] <= max(1.0, floor["max_abs_diff"])
                print(f"  noise floor, (b) vs (b) with data seed 1: max |b-b'| {floor['max_abs_diff']:.2f} points, "
                      f"mean {floor['mean_abs_diff']:.2f}  => (a) vs (b) "
                      f"{'within' if acc['within_noise'] else 'OUTSIDE'} noise (max(1 point, noise floor))")
            summary["accuracy"] = acc
        results["alphas"][f"{alpha:g}"] = summary

    if len(results["alphas"]) > 1:
        ref_total = sum(s["reference_median_s"] for s in results["alphas"].values())
        eng_total = sum(s["engine_median_s"] for s in results["alphas"].values())
        images = sum(s["images"] for s in results["alphas"].values())
        results["whole_workload"] = {"reference_s": ref_total, "fula_core_s": eng_total,
                                     "speedup": ref_total / eng_total, "images": images,
                                     "reference_images_per_s": images / ref_total,
                                     "fula_core_images_per_s": images / eng_total}
        print(f"\n-- whole workload (sum of medians over alphas {args.alphas}): (a) {ref_total:.1f} s, "
              f"(b) {eng_total:.1f} s, speed-up {ref_total / eng_total:.2f}x; "
              f"{images / ref_total:.1f} vs {images / eng_total:.1f} img/s")

    if project:
        if not {0.0, 1.0} <= set(float(a) for a in results["alphas"]):
            print("\n(projection skipped: it needs measured stitch costs for alpha 0 and alpha 1)")
        else:
            results["projection"] = run_projection(results, size, width, pgd_steps, device, train, eng_models[1], workers)
    results["wall_s"] = time.perf_counter() - started
    print(f"\nbenchmark wall time {fmt_time(results['wall_s'])}")
    common.write_json(args.json, results)
    return results


def run_projection(results, size, width, pgd_steps, device, train, end_model, workers) -> dict:
    """Measure the remaining unit costs (base training, AutoAttack, IRIs) and project the paper grid for
    (b) fula_core and for (a) the per-run reference (its stitch and base-training units)."""
    from fula_core.train import TrainConfig

    print("\n-- measuring unit costs for the projection (base training, APGD, IRI steps) ...")
    n_probe = 4 * 128 if size.name == "cpu" else 20 * 128
    if len(train) >= n_probe:
        probe_data = train.take(n_probe, seed=2)
    elif size.dataset == "synthetic-cifar":
        probe_data = common.synthetic_cifar(n_probe, 5)
    else:
        probe_data = train
    n_run = len(probe_data) - len(probe_data) % 128
    base = {}
    for label, alpha in (("clean", 0.0), ("at", 0.5)):
        cfg = TrainConfig(dataset=probe_data.base_name, width=width, epochs=1, batch_size=128, lr=0.05, adv_alpha=alpha,
                          pgd_eps=size.pgd_eps, pgd_step=size.pgd_step, pgd_steps=pgd_steps)
        warm = probe_data.take(128, seed=3)
        for side in ("fula_core", "reference"):
            common.base_run(side, cfg, warm, device, workers)
            t, _ = common.timed(lambda: common.base_run(side, cfg, probe_data, device, workers), device)
            base[(side, label)] = t / n_run
    x = probe_data.images[:128 if size.name == "cpu" else 500].to(device).float() / 255
    y = probe_data.labels[: len(x)].to(device)
    net = end_model.eval()
    apgd_iter = 2 if size.name == "cpu" else 10
    per_iter = common.apgd_cost_per_image_iter(net, x, y, device, apgd_iter)
    per_iri = common.iri_cost_per_image_step(net, x, device, 2 if size.name == "cpu" else 10)
    grid = common.PaperGrid.from_profile()
    aa_per_1000 = 1000 * per_iter * grid.autoattack_iter * grid.autoattack_eot * 2  # CE + DLR stage, upper bound
    iri_per_1000 = 1000 * per_iri * 200
    shape = {"width": width, "in_channels": probe_data.images.shape[1], "image": probe_data.images.shape[-1],
             "pgd_steps": pgd_steps}
    alphas = results["alphas"]
    out = {}
    for side, key in (("fula_core", "fula_core_s_per_job_image"), ("reference", "reference_s_per_job_image")):
        units = {"base_clean_per_image": base[(side, "clean")], "base_at_per_image": base[(side, "at")],
                 "stitch_per_job_image": {0.0: alphas["0"][key], 1.0: alphas["1"][key]},
                 "autoattack_per_1000": aa_per_1000, "iri_per_1000_200": iri_per_1000}
        scaled, note = common.scale_units_to_paper(units, shape)
        where = "one " + (torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (this machine)")
        label = (f"{'(b) fula_core' if side == 'fula_core' else '(a) per-run reference'} on {where}"
                 + (" -- CPU projection" if device.type == "cpu" else "")
                 + (", units FLOP-scaled from the benchmark size" if note else ""))
        proj = common.project_paper_grid(scaled, grid, label)
        proj["measured_units"] = {k: (v if not isinstance(v, dict) else {str(a): c for a, c in v.items()})
                                  for k, v in units.items()}
        proj["units"] = {k: (v if not isinstance(v, dict) else {str(a): c for a, c in v.items()})
                         for k, v in scaled.items()}
        common.print_projection({**proj, "units": scaled})
        out[side] = proj
    print(f"\n  projected paper grid: (a) reference {out['reference']['total_h']:.0f} h vs (b) fula_core "
          f"{out['fula_core']['total_h']:.0f} h  (AutoAttack and IRI units are the same for both)")
    return out


if __name__ == "__main__":
    main()
