"""fula_core: models, stitching objectives, attacks and a results store for the FuLA papers.

    from fula_core import models, stitching
    front, end = models.build("resnet18", 10), models.build("resnet18", 10)
    jobs = [stitching.StitchJob(k, k, "fula") for k in range(9)]
    outcomes = stitching.train_stitches(front, end, jobs, train_data)

Any other network: models.stitchable(net, ["layer1", "layer2", ...]) (module names as stitch points).
"""
from . import attacks, config, data, invariance, metrics, models, simclr, stitchable, stitching, store, toy, train  # noqa: F401

__all__ = ["attacks", "config", "data", "invariance", "metrics", "models", "simclr", "stitchable", "stitching", "store",
           "toy", "train"]
