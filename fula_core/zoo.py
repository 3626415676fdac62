"""The model zoo of a profile (the paper's Table 1) and its evaluation.

Model ids follow the paper: "<dataset>_<seed>" for clean models, "<dataset>_<seed> robust" for Madry-AT
ones. Same-task stitching pairs end <end>_0 with front <end>_1; cross-task pairs end <end>_0 with front
<cross>_0.

    python -m fula_core.zoo --profile quick      # trains (or loads) the zoo and prints Table 1
"""
from __future__ import annotations

import argparse
import time

from . import attacks
from .config import Profile, get_profile, resolve_device
from .data import load
from .paths import cache_dir
from .stitching import evaluate
from .store import ResultStore
from .train import TrainConfig, get_model


def zoo_configs(profile: Profile, arch: str | None = None) -> dict[str, TrainConfig]:
    """Model id -> TrainConfig for every base model the profile's stitching testbeds use."""
    end, cross = profile.end_dataset, profile.cross_dataset
    s_end, s_front = profile.seeds
    ids = {f"{end}_{s_end}": (end, s_end), f"{end}_{s_front}": (end, s_front), f"{cross}_{s_end}": (cross, s_end)}
    configs = {}
    for robust in (False, True):
        for model_id, (dataset, seed) in ids.items():
            configs[model_id + (" robust" if robust else "")] = profile.train_config(dataset, seed, robust=robust, arch=arch)
    return configs


def all_zoo_configs(profile: Profile) -> dict[str, TrainConfig]:
    """zoo_configs over every architecture of the profile; ids of other architectures than the first end in
    ' <arch>'."""
    return {mid + ("" if arch == profile.archs[0] else f" {arch}"): cfg
            for arch in profile.archs for mid, cfg in zoo_configs(profile, arch).items()}


def missing_models(profile: Profile, store: ResultStore) -> list[str]:
    """Ids of the zoo models (all architectures) not yet in the store, most expensive first."""
    import dataclasses

    configs = all_zoo_configs(profile)
    todo = [mid for mid, cfg in configs.items() if not store.has("model", dataclasses.asdict(cfg))]
    # cost ~ images x epochs x (1 + PGD steps for robust models); a whole training set counts as 60k images
    sizes = {mid: (configs[mid].train_subset or 60000) * configs[mid].epochs * (1 + configs[mid].robust * configs[mid].pgd_steps)
             for mid in todo}
    return sorted(todo, key=lambda mid: -sizes[mid])


def _config_for(profile: Profile, model_id: str) -> TrainConfig:
    """The TrainConfig of a zoo id (see all_zoo_configs); a clear error for an unknown one."""
    configs = all_zoo_configs(profile)
    if model_id not in configs:
        raise SystemExit(f"no zoo model {model_id!r} in profile {profile.name}: have {', '.join(configs)}")
    return configs[model_id]


def evaluate_base_model(model, cfg: TrainConfig, profile: Profile, device, data_dir=None) -> dict:
    """Clean accuracy on the model's whole test set (as Table 1; cheap even on a CPU), PGD and AutoAttack
    robust accuracy on the profile's robust-evaluation subset."""
    test = load(cfg.dataset, "test", root=data_dir, device=device)
    attacked = test.take(profile.robust_eval_subset, seed=1)
    x, y = attacked.images.float() / 255, attacked.labels
    pgd = dict(eps=cfg.pgd_eps, step_size=cfg.pgd_step, steps=max(cfg.pgd_steps, 10))
    return {
        "accuracy": evaluate(model, test)["accuracy"],
        "pgd_accuracy": attacks.robust_accuracy(model, x, y, attack="pgd", **pgd),
        "autoattack_accuracy": attacks.robust_accuracy(model, x, y, attack="autoattack", eps=cfg.pgd_eps,
                                                       n_iter=profile.autoattack_iter, eot_iter=profile.autoattack_eot),
        "eps": cfg.pgd_eps,
    }


def build_zoo(profile: Profile, store: ResultStore, device, *, arch: str | None = None, data_dir=None,
              progress: bool = True) -> dict:
    """Train or load every model of the zoo; returns model id -> model."""
    return {mid: get_model(store, cfg, device, data_dir=data_dir, progress=progress)
            for mid, cfg in zoo_configs(profile, arch).items()}


def zoo_table(profile: Profile, store: ResultStore, device, *, arch: str | None = None, data_dir=None,
              progress: bool = True):
    """Table 1: one row per base model (cached evaluation, keyed like everything else)."""
    import pandas as pd

    rows = []
    for model_id, cfg in zoo_configs(profile, arch).items():
        started = time.time()
        model = get_model(store, cfg, device, data_dir=data_dir, progress=progress)
        eval_key = {"model": cfg, "clean_on": "whole test set", "robust_eval_subset": profile.robust_eval_subset,
                    "autoattack": (profile.autoattack_iter, profile.autoattack_eot)}
        scores = store.get_or_compute("base_eval", eval_key,
                                      lambda _: evaluate_base_model(model, cfg, profile, device, data_dir))
        rows.append({"model": model_id, "dataset": cfg.dataset, "arch": cfg.arch, "width": cfg.width,
                     "robust": cfg.robust, **scores, "seconds": round(time.time() - started, 1)})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--cache", default=None, help="cache root (default: the repository's cache/ or $FULA_CACHE_DIR)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", nargs="*", help="model ids to train/evaluate (default: all)")
    parser.add_argument("--train-only", action="store_true", help="train (or load) the models, skip their evaluation")
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    device = resolve_device(args.device)
    store = ResultStore(f"{args.cache}/{profile.name}" if args.cache else cache_dir(profile.name))
    if args.only or args.train_only:
        for mid in args.only or list(zoo_configs(profile)):
            cfg = _config_for(profile, mid)
            t = time.time()
            model = get_model(store, cfg, device)
            print(mid, f"trained/loaded in {time.time() - t:.0f}s", flush=True)
            if not args.train_only:
                print(evaluate_base_model(model, cfg, profile, device), flush=True)
        return
    print(zoo_table(profile, store, device).to_string(index=False))


if __name__ == "__main__":
    main()
