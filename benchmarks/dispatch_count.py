"""Framework overhead of the stitching engine, counted and timed per job and batch, against the previous
engine (benchmarks/baseline_engine.py) -- issue 14's GPU-launch proxy, measurable on any machine.

* aten operations per job and batch: every operator call that reaches the dispatcher (forward, backward,
  optimiser, BN bookkeeping) inside the trainer's per-batch step, counted with a TorchDispatchMode. It is
  deterministic and machine-independent, and on a GPU each one is (at least) a kernel launch, so it tracks
  the launch-bound part of GPU time. Targets: clean <= 150, alpha = 1 with PGD-10 <= 800 (4 jobs per point).
* "engine" runs with EngineConfig(batch_pgd=True, batch_clean=True), as on a GPU (both are off by default on
  the CPU); "engine_unbatched_clean" with batch_pgd=True only: the engine before batch_clean, every clean job
  with its own stitched forward/backward through g_{>j}.
* host time per job and batch on a tiny model (ResNet18 width 2 on 8x8 images: the arithmetic costs ~0,
  so the time is Python and dispatch overhead), as CPU time of this single-threaded process. Target: >= 3x lower
  than the previous engine.

Workloads (ResNet18, the notebooks' job mixes): "clean" = 36 jobs (9 points x tlm, slm, hint, fula),
alpha 0; "alpha1" = 4 jobs at one point (tlm, slm, hint, fula), alpha 1, PGD-10.

    .venv/bin/python benchmarks/dispatch_count.py --repeats 5 --json benchmarks/results/dispatch_count.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import baseline_engine  # noqa: E402
from fula_core import models, stitching  # noqa: E402
from fula_core.data import ImageSet  # noqa: E402
from fula_core.stitching import StitchConfig, StitchJob  # noqa: E402

OBJECTIVES = ("tlm", "slm", "hint", "fula")
TARGETS = {"clean": 150, "alpha1": 800}


class OpCounter(TorchDispatchMode):
    """Counts every aten operator call (all dispatch keys below autograd: what a device would run)."""

    def __init__(self):
        super().__init__()
        self.n = 0
        self.by_op: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        name = str(func.overloadpacket)
        self.by_op[name] = self.by_op.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def workload(name: str) -> list[StitchJob]:
    if name == "clean":
        return [StitchJob(p, p, o) for p in range(9) for o in OBJECTIVES]
    if name == "alpha1":
        return [StitchJob(4, 4, o, alpha=1.0) for o in OBJECTIVES]
    raise ValueError(name)


def tiny_data(n: int, image: int, classes: int = 10, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    return ImageSet(images=torch.randint(0, 256, (n, 3, image, image), generator=g, dtype=torch.uint8),
                    labels=torch.randint(0, classes, (n,), generator=g), classes=tuple(map(str, range(classes))),
                    name="cifar10/train-synthetic")


def pair(width: int, image: int):
    torch.manual_seed(1)
    front = models.build("resnet18", 10, width=width, image_size=image).eval()
    torch.manual_seed(0)
    end = models.build("resnet18", 10, width=width, image_size=image).eval()
    return front, end


def measure(module, jobs, front, end, data, cfg, count: bool, **options) -> dict:
    """Run one epoch and measure every call of the engine's per-batch step after the first (warm-up)."""
    real = module._train_batch
    calls: list[tuple[float, int]] = []

    def wrapped(*args, **kw):
        if count:
            with OpCounter() as c:
                real(*args, **kw)
            calls.append((0.0, c.n))
        else:
            t = time.process_time()  # CPU time of this (single-threaded) process: other load on the machine does not count
            real(*args, **kw)
            calls.append((time.process_time() - t, 0))

    module._train_batch = wrapped
    try:
        module.train_stitches(copy.deepcopy(front), copy.deepcopy(end), jobs, data, cfg, progress=False, **options)
    finally:
        module._train_batch = real
    steady = calls[1:]
    per = len(jobs)
    return {"ops_per_job_batch": statistics.median(n for _, n in steady) / per if count else None,
            "host_s_per_job_batch": statistics.median(t for t, _ in steady) / per if not count else None}


def run(batches: int = 4, width: int = 2, image: int = 8, batch_size: int = 16, repeats: int = 3,
        workloads=("clean", "alpha1")) -> dict:
    torch.set_num_threads(1)
    front, end = pair(width, image)
    data = tiny_data(batches * batch_size, image)
    out = {"setup": {"model": f"resnet18 width {width}", "image": image, "batch_size": batch_size,
                     "batches": batches, "threads": 1, "torch": torch.__version__, "machine": platform.machine(),
                     "what": "ops: aten calls per job and batch in the trainer's per-batch step (median over "
                             "batches after the first); host time: same, on a tiny model (overhead only), as CPU time of the "
                             "single-threaded process (time.process_time), so other load on the machine does not count"},
           "targets": {"ops_per_job_batch": TARGETS, "host_time_ratio_min": 3.0}, "workloads": {}}
    for wl in workloads:
        jobs = workload(wl)
        cfg = StitchConfig(epochs=1, batch_size=batch_size, lstsq_samples=batch_size, pgd_eps=8 / 255,
                           pgd_step=2 / 255, pgd_steps=10, augment=True)
        row = {"jobs": len(jobs)}
        # the engine as it runs on a GPU: batched PGD and batched clean jobs on (its CUDA defaults; off by default
        # on the CPU); and without batched clean jobs, the engine before them
        variants = (("previous", baseline_engine, {}),
                    ("engine_unbatched_clean", stitching,
                     {"engine": stitching.EngineConfig(batch_pgd=True, batch_clean=False)}),
                    ("engine", stitching, {"engine": stitching.EngineConfig(batch_pgd=True, batch_clean=True)}))
        for label, engine, opts in variants:
            row[f"{label}_ops"] = measure(engine, jobs, front, end, data, cfg, count=True, **opts)["ops_per_job_batch"]
        times = {label: [] for label, _, _ in variants}
        for r in range(repeats):  # interleaved, alternating order, so machine load hits all
            for label, engine, opts in (variants if r % 2 == 0 else variants[::-1]):
                times[label].append(measure(engine, jobs, front, end, data, cfg, count=False,
                                            **opts)["host_s_per_job_batch"])
        for label in times:
            row[f"{label}_host_ms"] = 1e3 * statistics.median(times[label])
        row["ops_ratio"] = row["previous_ops"] / row["engine_ops"]
        row["host_time_ratio"] = row["previous_host_ms"] / row["engine_host_ms"]
        row["host_time_ratio_unbatched_clean"] = row["previous_host_ms"] / row["engine_unbatched_clean_host_ms"]
        row["ops_target"] = TARGETS[wl]
        row["ops_target_met"] = row["engine_ops"] <= TARGETS[wl]
        row["host_target_met"] = row["host_time_ratio"] >= 3.0
        out["workloads"][wl] = row
    return out


def print_table(res: dict) -> None:
    print("prev: the engine before issue 14; unb.: batched PGD, clean jobs one by one; now: batched PGD and clean jobs")
    print(f"{'workload':<8} {'jobs':>4} | {'ops/job-batch prev':>18} {'unb.':>7} {'now':>7} {'target':>6} {'ratio':>6} | "
          f"{'host ms/job-batch prev':>22} {'unb.':>7} {'now':>7} {'ratio':>6} {'target':>6}")
    for wl, r in res["workloads"].items():
        print(f"{wl:<8} {r['jobs']:>4} | {r['previous_ops']:>18.0f} {r['engine_unbatched_clean_ops']:>7.0f} "
              f"{r['engine_ops']:>7.0f} {r['ops_target']:>6} {r['ops_ratio']:>5.2f}x | "
              f"{r['previous_host_ms']:>22.3f} {r['engine_unbatched_clean_host_ms']:>7.3f} {r['engine_host_ms']:>7.3f} "
              f"{r['host_time_ratio']:>5.2f}x {res['targets']['host_time_ratio_min']:>5.1f}x")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workloads", default="clean,alpha1")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    res = run(batches=a.batches, repeats=a.repeats, workloads=tuple(a.workloads.split(",")))
    print_table(res)
    if a.json:
        os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
