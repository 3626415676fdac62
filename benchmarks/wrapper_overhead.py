"""The generic wrapper's cost: `models.stitchable` against the same network run natively.

Two comparisons, each timed as the median of interleaved repeats (single thread, CPU):

1. torchvision's ResNet-18 (3x32x32): the plain `net(x)` against the wrapped forward, and the native tail
   (layer3, layer4, pooling, fc written out by hand) against the wrapper's `forward_from(a, "layer2")`,
   without and with a backward pass (a stitch's training step goes through forward_from).
2. The project's own CIFAR ResNet-18, whose hand-written `activations` / `activations_from` are what the
   trainer uses, against the same network wrapped by module name (`units.0`, ...): the sub-graphs cut by
   torch.fx against the hand-written slices.

    python benchmarks/wrapper_overhead.py [--repeats 30] [--json benchmarks/results/wrapper_overhead.json]

Ratios are wrapped / native: 1.00 = no overhead (the target is <= 1.10).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from fula_core import models  # noqa: E402


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def compare(native, wrapped, repeats: int) -> dict:
    """Median seconds of each, measured alternately so that machine load hits both alike."""
    native(), wrapped()  # warm-up (the wrapper builds its sub-graph on first use)
    a, b = [], []
    for _ in range(repeats):
        a += timed(native, 1)
        b += timed(wrapped, 1)
    n, w = statistics.median(a), statistics.median(b)
    return {"native_s": round(n, 6), "wrapped_s": round(w, 6), "ratio": round(w / n, 3)}


def torchvision_cases(batch: int, repeats: int) -> dict:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    wrapped = models.stitchable(net, ["layer1", "layer2", "layer3", "layer4"]).eval()
    x = torch.rand(batch, 3, 32, 32)
    with torch.no_grad():
        a = wrapped.activations_upto(x, "layer2")

    def native_tail(a):
        return net.fc(torch.flatten(net.avgpool(net.layer4(net.layer3(a))), 1))

    a_grad = a.clone().requires_grad_(True)
    cases = {}
    with torch.no_grad():
        cases["forward"] = compare(lambda: net(x), lambda: wrapped(x), repeats)
        cases["forward_from(layer2)"] = compare(lambda: native_tail(a), lambda: wrapped.forward_from(a, "layer2"), repeats)
    cases["forward_from(layer2) + backward"] = compare(lambda: native_tail(a_grad).sum().backward(),
                                                       lambda: wrapped.forward_from(a_grad, "layer2").sum().backward(),
                                                       repeats)
    return cases


def project_resnet_cases(batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    native = models.build("resnet18", 10, 3, width=16).eval()
    names = [f"units.{u}" for u in native._point_unit]
    wrapped = models.stitchable(native, names).eval()
    x = torch.rand(batch, 3, 32, 32)
    with torch.no_grad():
        a = native.activations_upto(x, 4)
    cases = {}
    with torch.no_grad():
        cases["activations (all 9 points + logits)"] = compare(lambda: native.activations(x, with_logits=True),
                                                               lambda: wrapped.activations(x, with_logits=True), repeats)
        cases["activations_from(4) (FuLA targets)"] = compare(lambda: native.activations_from(a, 4, with_logits=True),
                                                              lambda: wrapped.activations_from(a, 4, with_logits=True),
                                                              repeats)
        cases["forward_from(4)"] = compare(lambda: native.forward_from(a, 4), lambda: wrapped.forward_from(a, 4), repeats)
    return cases


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=str(pathlib.Path(__file__).parent / "results" / "wrapper_overhead.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"torchvision resnet18 (3x32x32)": torchvision_cases(args.batch, args.repeats),
               "project resnet18 width 16 (3x32x32)": project_resnet_cases(args.batch, args.repeats)}
    for group, cases in results.items():
        print(group)
        for name, r in cases.items():
            print(f"  {name:40s} native {r['native_s'] * 1e3:8.2f} ms   wrapped {r['wrapped_s'] * 1e3:8.2f} ms   "
                  f"ratio {r['ratio']:.3f}")
    record = {"results": results, "batch": args.batch, "repeats": args.repeats, "threads": args.threads,
              "torch": torch.__version__, "machine": platform.machine(), "device": "cpu"}
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
