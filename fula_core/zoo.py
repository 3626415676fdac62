"""The model zoo of a profile (the paper's Table 1) and its evaluation.

Model ids follow the paper: "<dataset>_<seed>" for clean models, "<dataset>_<seed> robust" for Madry-AT
ones. Same-task stitching pairs end <end>_0 with front <end>_1; cross-task pairs end <end>_0 with front
<cross>_0. Table 1 lists these six models for every architecture of the profile (18 at `paper`).

Paper 2's testbeds (notebook 05) need more fronts, one per front seed s of the profile (the authors: 1, 2,
3), all of the main architecture: "<end>_s" (cross-seed; the clean front of the adversarial testbed),
"<end>_s robust", "<cross>_s" (the shortcut testbed's front), "<end>_s cross-bias" (trained with class
markers) and "<end>_s simclr" (self-supervised). Where the profile runs the information testbed on other
architectures too (Profile.iri_archs: VGG-16 and ViT-Tiny at `paper`), each of them adds its end model
"<end>_<seeds[0]> <arch>" and, per front seed, "<end>_s <arch>", "<end>_s cross-bias <arch>" and
"<end>_s simclr <arch>". They are part of the zoo too, so `run_all.sh` trains every model before any
notebook starts.

    python -m fula_core.zoo --profile quick      # trains (or loads) the zoo and prints Table 1
"""
from __future__ import annotations

import argparse
import time

import torch

from . import attacks
from .config import Profile, get_profile, resolve_device
from .data import load, train_images
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


def table1_configs(profile: Profile) -> dict[str, TrainConfig]:
    """zoo_configs over every architecture of the profile (the rows of Table 1); ids of other architectures
    than the first end in ' <arch>'."""
    return {mid + ("" if arch == profile.archs[0] else f" {arch}"): cfg
            for arch in profile.archs for mid, cfg in zoo_configs(profile, arch).items()}


def paper2_configs(profile: Profile) -> dict[str, object]:
    """Model id -> config (TrainConfig, or SimCLRConfig for the self-supervised fronts) of every front that
    paper 2's testbeds use, one set per front seed (see the module docstring)."""
    end, cross = profile.end_dataset, profile.cross_dataset
    configs: dict[str, object] = {}
    for s in (profile.seeds[0], *profile.iri_front_seeds):  # the robust end model and the robust fronts
        configs[paper2_robust_id(profile, s)] = paper2_robust_config(profile, s)
    for s in profile.iri_front_seeds:
        configs[f"{end}_{s}"] = profile.train_config(end, s)
        configs[f"{cross}_{s}"] = profile.train_config(cross, s)
        configs[f"{end}_{s} cross-bias"] = profile.train_config(end, s, shortcut=profile.cross_bias_shortcut,
                                                                **profile.cross_bias_overrides)
        configs[f"{end}_{s} simclr"] = profile.simclr_config(s)
    for arch in profile.info_archs[1:]:  # the information testbed's other architectures
        configs.update(info_arch_configs(profile, arch))
    return configs


def info_arch_configs(profile: Profile, arch: str) -> dict[str, object]:
    """The end model and the information testbed's fronts of one further architecture (ids end in ' <arch>'):
    the same recipes as the main architecture's, with the architecture's ARCH_TRAIN_OVERRIDES."""
    end = profile.end_dataset
    configs: dict[str, object] = {f"{end}_{profile.seeds[0]} {arch}": profile.train_config(end, profile.seeds[0], arch=arch)}
    for s in profile.iri_front_seeds:
        configs[f"{end}_{s} {arch}"] = profile.train_config(end, s, arch=arch)
        configs[f"{end}_{s} cross-bias {arch}"] = profile.train_config(end, s, arch=arch, shortcut=profile.cross_bias_shortcut,
                                                                       **profile.cross_bias_overrides)
        configs[f"{end}_{s} simclr {arch}"] = profile.simclr_config(s, arch)
    return configs


def paper2_robust_config(profile: Profile, seed: int) -> TrainConfig:
    """A robust model of paper 2's adversarial testbed, adversarially trained as `profile.paper2_adv_mode` says."""
    return profile.train_config(profile.end_dataset, seed, robust=True, adv_mode=profile.paper2_adv_mode)


def paper2_robust_id(profile: Profile, seed: int) -> str:
    """Its zoo id: paper 1's "<end>_<seed> robust" when both papers share the model, else a suffix says how
    it was trained."""
    same = profile.paper2_adv_mode == profile.base.adv_mode
    return f"{profile.end_dataset}_{seed} robust" + ("" if same else f" ({profile.paper2_adv_mode} AT)")


def all_zoo_configs(profile: Profile) -> dict[str, object]:
    """Every model any notebook of the profile trains: Table 1 (all architectures) and paper 2's fronts."""
    return {**table1_configs(profile), **paper2_configs(profile)}


def store_kind(cfg) -> str:
    """The store kind a zoo config's trained model lives under."""
    return "model" if isinstance(cfg, TrainConfig) else "simclr_model"


def get_zoo_model(store: ResultStore, cfg, device, *, data_dir=None, progress: bool = True):
    """The trained model of a zoo config (supervised or SimCLR), from the store or trained now."""
    if isinstance(cfg, TrainConfig):
        return get_model(store, cfg, device, data_dir=data_dir, progress=progress)
    from .simclr import get_simclr_model

    return get_simclr_model(store, cfg, device, data_dir=data_dir, progress=progress)


def _cost(cfg) -> float:
    """Relative training cost: images x epochs x (1 + PGD steps for robust models); a whole training set
    counts as its size (data.train_images). SimCLR: a pre-training epoch as two views (2 forwards and backwards
    per image), a probe epoch as a third of a training step (a forward of the frozen encoder; only the head learns)."""
    images = cfg.train_subset or train_images(cfg.dataset)
    if isinstance(cfg, TrainConfig):
        return images * cfg.epochs * (1 + cfg.robust * cfg.pgd_steps)
    probe_epochs = cfg.epochs if cfg.probe_epochs is None else cfg.probe_epochs
    return images * (2 * cfg.epochs + probe_epochs / 3)


def missing_models(profile: Profile, store: ResultStore) -> list[str]:
    """Ids of the zoo models (all architectures, paper 2's fronts) not yet in the store, dearest first."""
    import dataclasses

    configs = all_zoo_configs(profile)
    todo = [mid for mid, cfg in configs.items() if not store.has(store_kind(cfg), dataclasses.asdict(cfg))]
    return sorted(todo, key=lambda mid: -_cost(configs[mid]))


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
    # PGD's random start from its own generator: drawn from torch's global one, it depended on what the process
    # had drawn before (two runs of the same commit on one machine gave 48% and 45% for one robust model)
    pgd = dict(eps=cfg.pgd_eps, step_size=cfg.pgd_step, steps=max(cfg.pgd_steps, 10),
               generator=torch.Generator(device=x.device).manual_seed(0))
    return {
        "accuracy": evaluate(model, test)["accuracy"],
        "pgd_accuracy": attacks.robust_accuracy(model, x, y, attack="pgd", **pgd),
        "autoattack_accuracy": attacks.robust_accuracy(model, x, y, attack="autoattack", eps=cfg.pgd_eps,
                                                       n_iter=profile.autoattack_iter, eot_iter=profile.autoattack_eot),
        "eps": cfg.pgd_eps,
    }


def zoo_table(profile: Profile, store: ResultStore, device, *, arch: str | None = None, data_dir=None,
              progress: bool = True):
    """Table 1: one row per base model of `arch` (default: every architecture of the profile), with a cached
    evaluation keyed like everything else."""
    import pandas as pd

    rows = []
    configs = zoo_configs(profile, arch) if arch else table1_configs(profile)
    for model_id, cfg in configs.items():
        started = time.time()
        model = get_model(store, cfg, device, data_dir=data_dir, progress=progress)
        eval_key = {"model": cfg, "clean_on": "whole test set", "robust_eval_subset": profile.robust_eval_subset,
                    "autoattack": (profile.autoattack_iter, profile.autoattack_eot), "pgd_start": "generator seed 0"}
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
        for mid in args.only or list(all_zoo_configs(profile)):
            cfg = _config_for(profile, mid)
            t = time.time()
            model = get_zoo_model(store, cfg, device)
            print(mid, f"trained/loaded in {time.time() - t:.0f}s", flush=True)
            if not args.train_only and isinstance(cfg, TrainConfig):
                print(evaluate_base_model(model, cfg, profile, device), flush=True)
        return
    print(zoo_table(profile, store, device).to_string(index=False))


if __name__ == "__main__":
    main()


# ----------------------------------------------------------------------------------------------------
# Notebook 00's verdicts: Table 1 keeps accuracies as percentages, so the intervals are the binomial image
# bootstrap of claims.judge_proportions (clean accuracy on the whole test set, robust accuracy on the
# profile's robust-evaluation subset). A model has one seed here: base-model seeds are not resampled.

NOTEBOOK = "00_base_models"
CLEAN_TARGET = 90.0  # % clean test accuracy of the Fashion-MNIST end model (the project's goal for quick)
ROBUST_CLEAN_TARGET, ROBUST_PGD_TARGET = 75.0, 50.0  # % of its Madry-AT twin: clean, and PGD at the profile's eps


def _test_sizes(table, profile: Profile) -> dict[str, tuple[int, int]]:
    """Model -> (images behind its clean accuracy, images behind its robust accuracies)."""
    sizes = {ds: len(load(ds, "test")) for ds in set(table.dataset)}
    return {m: (sizes[ds], min(sizes[ds], profile.robust_eval_subset)) for m, ds in zip(table.model, table.dataset)}


def _claim(cid: str, statement: str, a: str, b: str, kind: str):
    from .claims import Claim

    return Claim(cid, NOTEBOOK, "Table 1", statement, a, b, kind)


def claims(table, profile: Profile) -> list:
    """Notebook 00's verdicts from `zoo_table`: per clean/robust twin pair, the sanity claims that the robust
    model is more robust (AutoAttack) and pays in clean accuracy, and that AutoAttack is at least as strong as
    PGD on it; the project's targets for the Fashion-MNIST end model and its robust twin."""
    from .claims import judge_proportions

    n = _test_sizes(table, profile)
    row = table.set_index("model")
    out = []
    for m in table.model[~table.robust]:
        r = m + " robust"
        if r not in row.index:
            continue
        out.append(judge_proportions(
            _claim(f"robust_more_robust[{m}]", f"{r} resists AutoAttack better than {m}", f"{r} AutoAttack (%)",
                   f"{m} AutoAttack (%)", "sanity"),
            row.loc[r, "autoattack_accuracy"], n[r][1], row.loc[m, "autoattack_accuracy"], n[m][1]))
        out.append(judge_proportions(
            _claim(f"robust_pays_clean[{m}]", f"{r} pays for its robustness in clean accuracy", f"{m} clean (%)",
                   f"{r} clean (%)", "sanity"),
            row.loc[m, "accuracy"], n[m][0], row.loc[r, "accuracy"], n[r][0]))
        out.append(judge_proportions(
            _claim(f"autoattack_stronger[{r}]", f"{r}: AutoAttack finds more adversarial examples than PGD",
                   "PGD accuracy (%)", "AutoAttack accuracy (%)", "sanity"),
            row.loc[r, "pgd_accuracy"], n[r][1], row.loc[r, "autoattack_accuracy"], n[r][1]))
    end_id = f"{profile.end_dataset}_{profile.seeds[0]}"
    if profile.end_dataset == "fashion_mnist" and end_id in row.index:
        out.append(judge_proportions(_claim(f"clean_target[{end_id}]", f"{end_id}: clean accuracy above "
                                            f"{CLEAN_TARGET:g}%", "clean accuracy (%)", "target (%)", "target"),
                                     row.loc[end_id, "accuracy"], n[end_id][0], CLEAN_TARGET))
        r = end_id + " robust"
        if r in row.index:
            out.append(judge_proportions(_claim(f"robust_clean_target[{end_id}]", f"{r}: clean accuracy above "
                                                f"{ROBUST_CLEAN_TARGET:g}%", "clean accuracy (%)", "target (%)", "target"),
                                         row.loc[r, "accuracy"], n[r][0], ROBUST_CLEAN_TARGET))
            out.append(judge_proportions(_claim(f"robust_pgd_target[{end_id}]", f"{r}: PGD accuracy above "
                                                f"{ROBUST_PGD_TARGET:g}% at eps {row.loc[r, 'eps']:g}",
                                                "PGD accuracy (%)", "target (%)", "target"),
                                         row.loc[r, "pgd_accuracy"], n[r][1], ROBUST_PGD_TARGET))
    return out


def check_structure(table, profile: Profile) -> None:
    """One Table 1 row per model of every architecture of the profile; raises a clear error otherwise."""
    expected = set(table1_configs(profile))
    if set(table.model) != expected or len(table) != len(expected):
        raise ValueError(f"Table 1 should have one row per model {sorted(expected)}, has {list(table.model)}")
