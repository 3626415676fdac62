"""Is a run deterministic, and how much does the CPU's floating point move it?

Trains one small base model and two stitches on it (the quick profile's kind of work, shrunk) in fresh
processes under different settings, and compares what they produce:

  same settings twice          -> is a run on one machine reproducible (bit for bit)?
  1 thread vs 2 threads        -> does the intra-op thread count change the numbers (reduction order)?
  scalar ATen kernels           -> what a CPU with other vector units computes (ATEN_CPU_CAPABILITY=default
                                  makes torch dispatch to its non-vectorised kernels instead of the AVX2 /
                                  AVX-512 ones this CPU selects, a different summation order)

    .venv/bin/python benchmarks/determinism.py --json benchmarks/results/determinism.json

For each setting: a hash of the trained weights, the base model's and the stitches' test accuracies; for each
pair of settings: bit-identical or not, the largest weight difference and the accuracy differences.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent

WORKER = r"""
import hashlib, json, sys, torch
from fula_core import data, stitching, train
cfg = train.TrainConfig(dataset="fashion_mnist", width=8, epochs=2, batch_size=128, lr=0.1, train_subset=4096,
                        lr_milestones=(0.5, 0.75))
tr, te = data.load("fashion_mnist", "train"), data.load("fashion_mnist", "test").take(2000, seed=1)
model = train.train_model(cfg, tr, progress=False)
cfg2 = train.TrainConfig(**{**cfg.__dict__, "seed": 1})
front = train.train_model(cfg2, tr, progress=False)
jobs = [stitching.StitchJob(4, 4, "hint"), stitching.StitchJob(4, 4, "slm")]
outs = stitching.train_stitches(front, model, jobs, tr.take(1024, seed=2),
                                stitching.StitchConfig(epochs=2, batch_size=128, lstsq_samples=100), progress=False)
end_logits = stitching.predict(model, te)
tensors = [v for v in model.state_dict().values()] + [o.stitch_state["conv.weight"] for o in outs]
flat = torch.cat([t.detach().double().flatten() for t in tensors])
result = {"hash": hashlib.sha256(flat.numpy().tobytes()).hexdigest()[:16],
          "capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
          "base_accuracy": stitching.evaluate(model, te)["accuracy"],
          **{f"{o.job.objective}_accuracy": stitching.evaluate(o.model(front, model), te, end_logits)["accuracy"]
             for o in outs}}
torch.save(flat, sys.argv[1])
print(json.dumps(result))
"""


def run(threads: int, capability: str | None) -> tuple[dict, "object"]:
    import torch

    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "weights.pt"
        proc = subprocess.run([sys.executable, "-c", WORKER, str(out)], env=env, capture_output=True, text=True,
                              cwd=REPO, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"worker failed (threads {threads}, capability {capability}):\n{proc.stderr[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1]), torch.load(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=pathlib.Path, help="write the results here")
    args = parser.parse_args(argv)
    settings = {"1 thread": (1, None), "1 thread (again)": (1, None), "2 threads": (2, None),
                "1 thread, scalar kernels": (1, "default")}
    runs = {}
    for name, (threads, capability) in settings.items():
        runs[name] = run(threads, capability)
        print(f"{name:24s} {json.dumps(runs[name][0])}", flush=True)
    ref_name = "1 thread"
    ref, ref_w = runs[ref_name]
    comparisons = []
    for name, (res, w) in runs.items():
        if name == ref_name:
            continue
        comparisons.append({"setting": name, "against": ref_name, "bit_identical": bool((w == ref_w).all()),
                            "max_weight_difference": float((w - ref_w).abs().max()),
                            **{k: round(res[k] - ref[k], 2) for k in res if k.endswith("accuracy")}})
        print(f"{name:24s} vs {ref_name}: {comparisons[-1]}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": {k: v[0] for k, v in runs.items()}, "comparisons": comparisons,
                                         "hash_of_script": hashlib.sha256(WORKER.encode()).hexdigest()[:12]},
                                        indent=1))


if __name__ == "__main__":
    main()
