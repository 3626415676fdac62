"""Base-model training throughput: (a) the reference loop vs (b) fula_core.train.train_model.

Both train a ResNet18 from the same seed on the same images for the same number of SGD steps, clean and
with Madry PGD-AT (loss (1 - a) CE(clean) + a CE(PGD), a = 0.5, the paper's robust recipe):

  (a) reference.reference_train_model: DataLoader + per-sample torchvision transforms, fp32, NCHW,
      loss.item() every step.
  (b) fula_core.train.train_model: device-resident data with batched augmentation; on CUDA channels_last
      and bf16 autocast (as fula_core does it; its PGD runs outside autocast, in fp32).

Images/s = epochs x N / wall time (training images; an AT image costs the PGD steps plus two passes).

    .venv/bin/python benchmarks/base_training.py                  # CPU size: width 16, Fashion-MNIST
    .venv/bin/python benchmarks/base_training.py --sizes paper    # on a GPU: width 64, CIFAR shapes
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from unittest import mock


import common
from common import SIZES, fmt_time, images_per_s, interleaved, ratio_summary
from stitching_throughput import choose_threads

from fula_core import train as fula_train  # noqa: E402
from fula_core.train import TrainConfig  # noqa: E402
from reference import default_workers  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", choices=sorted(SIZES), default=None,
                   help="cpu: Fashion-MNIST width 16, PGD-5 (default on CPU); paper: CIFAR shapes, width 64, "
                        "PGD-10 (default on CUDA)")
    p.add_argument("--device", default="auto")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--n-images", type=int, help="clean training images (default: cpu 512, paper 20480)")
    p.add_argument("--n-images-at", type=int, help="PGD-AT training images (default: cpu 256, paper 5120)")
    p.add_argument("--width", type=int, help="ResNet18 width (default: cpu 16, paper 64)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--modes", default="clean,at", help="clean, at or both (default)")
    p.add_argument("--pgd-steps", type=int, help="PGD steps of AT (default: cpu 5, paper 10)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", default="auto")
    p.add_argument("--ref-workers", type=int, default=None)
    p.add_argument("--compile", action="store_true",
                   help="(b): torch.compile the model inside train_model (experiment: fula_core has no such option)")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


@contextlib.contextmanager
def compiled_build(enabled: bool):
    """Make fula_core.train build compiled models (nn.Module.compile in place) for the --compile experiment."""
    if not enabled:
        yield
        return
    common.allow_recompiles()
    original = fula_train.build

    def build(*a, **k):
        net = original(*a, **k)
        net.compile()
        return net

    with mock.patch.object(fula_train, "build", build):
        yield


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = common.resolve_device(args.device)
    size = SIZES[args.sizes or ("paper" if device.type == "cuda" else "cpu")]
    threads, why = choose_threads(args.threads, device)
    width = args.width or (16 if size.name == "cpu" else 64)
    n_clean = args.n_images or (512 if size.name == "cpu" else 20480)
    n_at = args.n_images_at or (256 if size.name == "cpu" else 5120)
    pgd_steps = args.pgd_steps or size.pgd_steps
    workers = default_workers(device) if args.ref_workers is None else args.ref_workers
    started = time.perf_counter()
    print(f"== base training throughput: size {size.name} ({size.dataset}), ResNet18 width {width}, "
          f"batch {args.batch_size}, {args.epochs} epoch(s), device {device}, {threads} thread(s) [{why}] ==")
    full, _ = common.train_test(size, max(n_clean, n_at), 1)
    results = {"benchmark": "base_training", "size": dataclasses.asdict(size),
               "settings": {"width": width, "n_images": n_clean, "n_images_at": n_at, "epochs": args.epochs,
                            "batch_size": args.batch_size, "pgd_steps": pgd_steps, "repeats": args.repeats,
                            "threads": threads, "threads_reason": why, "ref_workers": workers,
                            "compile": args.compile},
               "environment": common.environment(device), "modes": {}}
    for mode in args.modes.split(","):
        n = n_clean if mode == "clean" else n_at
        data = full.take(n, seed=4) if len(full) > n else full
        cfg = TrainConfig(dataset=data.base_name, width=width, epochs=args.epochs, batch_size=args.batch_size,
                          lr=0.05, adv_alpha=0.5 if mode == "at" else 0.0, pgd_eps=size.pgd_eps,
                          pgd_step=size.pgd_step, pgd_steps=pgd_steps)
        data_dev = data.to(device)
        print(f"\n-- {mode}: {n} images x {args.epochs} epoch(s)"
              + (f", PGD-{pgd_steps} eps {size.pgd_eps:.4g}, clean share 0.5" if mode == "at" else ""))
        warm = dataclasses.replace(cfg, epochs=1)
        warm_data = data.take(2 * args.batch_size, seed=5)
        with compiled_build(args.compile):
            fula_train.train_model(warm, warm_data.to(device), device, progress=False)
        common.base_run("reference", warm, warm_data, device, workers)

        def engine():
            with compiled_build(args.compile):
                return fula_train.train_model(cfg, data_dev, device, progress=False)

        runs = {"reference": lambda: common.base_run("reference", cfg, data, device, workers), "fula_core": engine}
        times, _ = interleaved(runs, args.repeats, device)
        s = ratio_summary(times["reference"], times["fula_core"])
        images = args.epochs * (n - n % args.batch_size)
        s.update(images=images, reference_images_per_s=images_per_s(images, s["reference_median_s"]),
                 fula_core_images_per_s=images_per_s(images, s["engine_median_s"]),
                 reference_s_per_image=s["reference_median_s"] / images,
                 fula_core_s_per_image=s["engine_median_s"] / images)
        print(f"  (a) reference  median {s['reference_median_s']:8.2f} s  {s['reference_images_per_s']:9.1f} img/s")
        print(f"  (b) fula_core  median {s['engine_median_s']:8.2f} s  {s['fula_core_images_per_s']:9.1f} img/s")
        print(f"  speed-up (a)/(b): {s['speedup']:.2f}x  (per repeat {s['speedup_min']:.2f}-{s['speedup_max']:.2f}x)")
        if width == 64:
            epoch_s = 50_000 * s["fula_core_s_per_image"]
            print(f"  => one CIFAR-10 epoch (50k images) with fula_core: {fmt_time(epoch_s)}; 200 epochs: "
                  f"{fmt_time(200 * epoch_s)}")
        results["modes"][mode] = s
    results["wall_s"] = time.perf_counter() - started
    print(f"\nbenchmark wall time {fmt_time(results['wall_s'])}")
    common.write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
