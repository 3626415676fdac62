"""fula_core: models, stitching objectives, attacks and a results store for the FuLA papers.

    from fula_core import models, stitching
    front, end = models.build("resnet18", 10), models.build("resnet18", 10)
    jobs = [stitching.StitchJob(k, k, "fula") for k in range(9)]
    outcomes = stitching.train_stitches(front, end, jobs, train_data)

Any other network: models.stitchable(net, ["layer1", "layer2", ...]) (module names as stitch points).
"""
import os as _os
import pathlib as _pathlib


def _check_repository() -> None:
    """./run_all.sh sets FULA_REPO to its checkout: its workers and notebook kernels must import that
    checkout's fula_core. A Python environment installed from another checkout (a shared FULA_VENV, a copied
    .venv) would otherwise run the other code and write into the other checkout's cache and figures."""
    expected = _os.environ.get("FULA_REPO")
    here = _pathlib.Path(__file__).resolve().parent.parent
    if expected and _pathlib.Path(expected).resolve() != here:
        raise ImportError(
            f"imported fula_core from {here}, but this run belongs to the checkout {expected} (FULA_REPO): the "
            f"Python environment imports another checkout's code. Put {expected} first on PYTHONPATH (./run_all.sh "
            f"does), or reinstall the environment from this checkout: pip install -e {expected}")


_check_repository()

from . import attacks, colour, config, data, invariance, metrics, models, simclr, stitchable, stitching, store, toy, train  # noqa: E402,F401

__all__ = ["attacks", "colour", "config", "data", "invariance", "metrics", "models", "simclr", "stitchable", "stitching", "store",
           "toy", "train"]
