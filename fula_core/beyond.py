"""Notebook 08, beyond the papers: Smith et al.'s colour testbed under invariance-aware stitching, and how
much capacity a stitch may have.

1. Colour testbed (Smith, Mannering and Marcu, ICML 2025, "Functional Alignment Can Mislead"). A Shape
   receiver (trained on Colour-Fashion-MNIST whose background colour is independent of the class) gets
   stitched, on Correlated data (colour = class colour), from four senders: a second Shape model (another
   seed: the reference of "similar"), a Colour-Only model (it never saw a garment), a Correlated model and an
   untrained network. Smith et al. find that standard stitching rates the colour-only and untrained senders
   as compatible as a real shape model. Paper 2 argues that training the stitch on IRIs exposes such pairs.
   Every sender is stitched with HLM, SLM, FuLA and DM (fula_core "hint", as in notebook 05) on real data and
   on IRIs, and scored by accuracy and agreement with the receiver on Correlated test images and on Shape
   test images (the same garments, colours independent of the class). The receiver and its senders are
   trained `Profile.beyond_replicates` times from their own seeds: the claims' intervals resample these model
   replicates as well as the test images (colour models trained from the same seed differ between machines).
2. Capacity ablation. Notebook 05's information pairs (identical, cross-seed, cross-bias) are stitched with
   HLM and FuLA, real data and IRIs, with each stitch family of `stitching.FAMILIES`: identity (no
   alignment), a low-rank affine map, the papers' affine map and a small MLP.

`plan(profile)` says what runs, `run(...)` returns tidy rows (with per-image scores), `claims(rows)` the
verdicts (fula_core.claims), `plot_colour` / `plot_capacity` the figures.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from . import claims as claims_lib
from . import colour, metrics, zoo
from .config import Profile
from .data import ImageSet, load
from .experiments import DataSpec
from .invariance_figures import IRIBank, front_name, plot_panels, stitch_modes
from .plots import plot_x
from .stitching import StitchConfig, predict
from .store import ResultStore
from .train import TrainConfig, get_model

BEYOND_VERSION = 1  # part of the row cache keys: bump when a change here alters the rows

NOTEBOOK = "08_beyond"
OBJECTIVES = {"HLM": "hlm", "SLM": "slm", "FuLA": "fula", "DM": "hint"}  # display name -> fula_core objective
CAPACITY_OBJECTIVES = {"HLM": "hlm", "FuLA": "fula"}
SENDERS = ("second Shape", "Colour-Only", "Correlated", "untrained")
PAIRS = ("identical", "cross-seed", "cross-bias")
IRI_SEED = 0  # source subset and starting noise of the IRIs (notebook 05's)
IRI_BN_MODE = "eval"  # the frozen models' BatchNorm in IRI runs (the authors': eval)
SIMILAR_WITHIN = 2.0  # pp: "as similar as the second Shape model" means an accuracy at most this much lower


@dataclass(frozen=True)
class Replicate:
    """One set of colour models, each trained from its own seed: the Shape receiver and the four senders."""

    receiver: TrainConfig
    senders: dict  # display name -> TrainConfig

    @property
    def models(self) -> dict:
        """Its models by display name, the receiver first."""
        return {"Shape receiver": self.receiver, **self.senders}


@dataclass(frozen=True)
class Plan:
    """What notebook 08 runs at a profile."""

    profile: Profile
    replicates: tuple[Replicate, ...]
    points: tuple[int, ...]
    stitch: StitchConfig
    samples: int | None
    eval_subset: int | None
    capacity_points: tuple[int, ...]
    families: tuple[tuple[str, str, int | None], ...]  # (display name, StitchConfig.family, rank)

    @property
    def receiver(self) -> TrainConfig:
        return self.replicates[0].receiver

    @property
    def senders(self) -> dict:
        return self.replicates[0].senders

    @property
    def models(self) -> dict:
        """Every colour model: display name (model_name) -> config."""
        return {model_name(name, r): cfg for r, rep in enumerate(self.replicates) for name, cfg in rep.models.items()}


def model_name(name: str, replicate: int) -> str:
    """A colour model's display name: the first replicate's models keep their plain names."""
    return name if replicate == 0 else f"{name} (replicate {replicate + 1})"


def plan(profile: Profile) -> Plan:
    """The models and sizes of notebook 08 at `profile` (its beyond_* and capacity_* fields)."""
    p, kinds = profile, colour.KINDS
    cfg = lambda kind, seed, **kw: p.train_config(kinds[kind], seed, **{**p.beyond_model_overrides, **kw})  # noqa: E731
    replicates = []
    for r in range(p.beyond_replicates):
        # three seeds per replicate: the first replicate's are the profile's seeds (0, 1) and 2
        s0, s1 = (s + 3 * r for s in p.seeds)
        replicates.append(Replicate(cfg("shape", s0), {
            "second Shape": cfg("shape", s1),
            "Colour-Only": cfg("colour_only", s0),
            "Correlated": cfg("correlated", s0),
            # the architecture at its seed's initialisation: epochs=0 (its cache key says so)
            "untrained": cfg("shape", s1 + 1, epochs=0),
        }))
    families = (("identity", "identity", None), (f"rank {p.capacity_rank}", "low_rank", p.capacity_rank),
                ("affine", "affine", None), ("MLP", "mlp", None))
    return Plan(p, tuple(replicates), tuple(p.beyond_points), p.beyond_stitch, p.beyond_samples,
                p.beyond_eval_subset, tuple(p.capacity_points), families)


# ----------------------------------------------------------------------------------------------------
# Scores per test image (for the claims' paired bootstrap)


def per_image_agreement(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """metrics.agreement_probability per image, in percent: sum_c p(c) q(c) / max(|p|^2, |q|^2) (CPU float32:
    cached rows hold tensors, which the store loads with weights_only)."""
    p, q = logits.double().softmax(1), reference.double().softmax(1)
    ratio = (p * q).sum(1) / torch.maximum((p * p).sum(1), (q * q).sum(1))
    return (100 * ratio).float().cpu()


def per_image_scores(tests: dict[str, tuple[ImageSet, torch.Tensor]]):
    """An extra_eval for stitch_modes: on each named test set (images, the end model's logits on them) the
    accuracy and agreement, plus the per-image arrays img_correct_<name> (0 / 100) and img_agreement_<name>."""
    def extra(stitched, job) -> dict:
        out = {}
        for name, (data, reference) in tests.items():
            logits = predict(stitched, data)
            correct = (100.0 * (logits.argmax(1) == data.labels)).float().cpu()
            agree = per_image_agreement(logits, reference)
            out |= {f"accuracy_{name}": float(correct.mean()), f"agreement_{name}": float(agree.mean()),
                    f"img_correct_{name}": correct, f"img_agreement_{name}": agree}
        return out
    return extra


# ----------------------------------------------------------------------------------------------------
# Running both sections


def colour_data(pl: Plan, device) -> dict[str, ImageSet]:
    """Correlated training images (stitch data and IRI sources) and the Correlated / Shape test images: both
    test sets take the same indices, so they hold the same garments and differ only in the colours."""
    train = load(colour.KINDS["correlated"], "train", device=device)
    out = {"train": train.take(pl.samples, seed=IRI_SEED) if pl.samples else train}
    for kind in ("correlated", "shape"):
        test = load(colour.KINDS[kind], "test", device=device)
        out[kind] = test.take(pl.eval_subset, seed=0) if pl.eval_subset else test
    return out


def model_rows(pl: Plan, models: dict, data: dict) -> list[dict]:
    """What each colour model does on its own: accuracy on Correlated, Shape and Colour-Only test images."""
    only = load(colour.KINDS["colour_only"], "test", device=data["shape"].images.device)
    only = only.take(pl.eval_subset, seed=0) if pl.eval_subset else only
    rows = []
    for r, rep in enumerate(pl.replicates):
        for name, cfg in rep.models.items():
            m = models[model_name(name, r)]
            row = {"replicate": r + 1, "model": name, "config": front_name(cfg)}
            for kind, d in (("Correlated", data["correlated"]), ("Shape", data["shape"]), ("Colour-Only", only)):
                row[f"accuracy on {kind}"] = metrics.accuracy(predict(m, d), d.labels)
            rows.append(row)
    return rows


def run_colour(pl: Plan, store: ResultStore, device, bank: IRIBank, *, progress: bool = True):
    """Section 1: (models table rows, stitch rows) of every sender into the Shape receiver of its replicate
    (rows: `seed` = the replicate, the unit the claims resample)."""
    models = {name: get_model(store, cfg, device, progress=progress) for name, cfg in pl.models.items()}
    data = colour_data(pl, device)
    stitch_rows = []
    for r, rep in enumerate(pl.replicates):
        receiver = models[model_name("Shape receiver", r)]
        tests = {kind: (data[kind], predict(receiver, data[kind])) for kind in ("correlated", "shape")}
        extra = per_image_scores(tests)
        for name, cfg in rep.senders.items():
            sender = models[model_name(name, r)]
            iris = bank.get(front_name(cfg), cfg, sender, data["train"], pl.points, "colour")
            key = {"testbed": "beyond colour", "sender": cfg, "receiver": rep.receiver, "version": BEYOND_VERSION,
                   "tests": [[d.name, len(d)] for d, _ in tests.values()]}
            stitch_rows += stitch_modes(store, sender, receiver, pl.points, OBJECTIVES, bank.sources(data["train"]),
                                        iris, data["correlated"], pl.stitch, key=key, extra_eval=extra,
                                        bn_mode=IRI_BN_MODE, progress=progress, sender=name, seed=r)
    return model_rows(pl, models, data), stitch_rows


def capacity_configs(profile: Profile, seed: int) -> dict[str, tuple[object, str | None]]:
    """Notebook 05's information pairs of one front seed: {pair: (front config, shortcut of its data)}."""
    p = profile
    configs = zoo.paper2_configs(p)
    return {"identical": (p.train_config(p.end_dataset, p.seeds[0]), None),
            "cross-seed": (configs[f"{p.end_dataset}_{seed}"], None),
            "cross-bias": (configs[f"{p.end_dataset}_{seed} cross-bias"], p.cross_bias_shortcut)}


def colour_iri_requests(pl: Plan) -> list[tuple[object, int]]:
    """(sender config, point) of every IRI set of section 1 (each inverts the Correlated training images)."""
    return [(cfg, point) for rep in pl.replicates for cfg in rep.senders.values() for point in pl.points]


def capacity_iri_requests(pl: Plan) -> list:
    """The IRI sets of section 2 as notebook 05's iri_testbeds.IRIRequest (the same sets: reused from the cache)."""
    from .iri_testbeds import IRIRequest, Source

    return [IRIRequest(cfg, Source("train", seed, shortcut), point, "capacity")
            for seed in pl.profile.iri_front_seeds for cfg, shortcut in capacity_configs(pl.profile, seed).values()
            for point in pl.capacity_points]


def stitch_passes(pl: Plan) -> dict[str, tuple[int, int]]:
    """Per section (training passes, stitches): a pass is one `train_stitches` call (run_colour / run_capacity
    through stitch_modes): per pair, one for the real-data stitches of every point and one per point on IRIs."""
    colour_pairs = len(pl.replicates) * len(SENDERS)
    capacity_pairs = len(pl.profile.iri_front_seeds) * len(PAIRS) * len(pl.families)
    return {"colour": (colour_pairs * (1 + len(pl.points)), colour_pairs * 2 * len(pl.points) * len(OBJECTIVES)),
            "capacity": (capacity_pairs * (1 + len(pl.capacity_points)),
                         capacity_pairs * 2 * len(pl.capacity_points) * len(CAPACITY_OBJECTIVES))}


def capacity_pairs(profile: Profile, store: ResultStore, device, seed: int, *, progress: bool = True):
    """Notebook 05's information pairs for one front seed: {pair: (front cfg, front, stitch data, test data)},
    and the end model; the same data notebook 05 uses, so its IRI sets are reused from the cache."""
    p = profile
    spec = lambda split, subset, shortcut=None: DataSpec(p.end_dataset, split, subset=subset, shortcut=shortcut,
                                                         seed=seed).load(device)
    configs = capacity_configs(p, seed)
    end_cfg = configs["identical"][0]
    end = get_model(store, end_cfg, device, progress=progress)
    train, test = spec("train", p.stitch_train_subset), spec("test", p.iri_eval_subset)
    cb_cfg = configs["cross-bias"][0]
    cs_cfg = configs["cross-seed"][0]
    pairs = {
        "identical": (end_cfg, end, train, test),
        "cross-seed": (cs_cfg, zoo.get_zoo_model(store, cs_cfg, device, progress=progress), train, test),
        # scored on test images with the same kind of markers (notebook 05's CROSS_BIAS_TEST_MARKERS)
        "cross-bias": (cb_cfg, zoo.get_zoo_model(store, cb_cfg, device, progress=progress),
                       spec("train", p.stitch_train_subset, p.cross_bias_shortcut),
                       spec("test", p.iri_eval_subset, p.cross_bias_shortcut)),
    }
    return end_cfg, end, pairs


def run_capacity(pl: Plan, store: ResultStore, device, bank: IRIBank, *, progress: bool = True) -> list[dict]:
    """Section 2: every information pair x stitch family, HLM and FuLA, real data and IRIs."""
    p = pl.profile
    rows = []
    for seed in p.iri_front_seeds:
        end_cfg, end, pairs = capacity_pairs(p, store, device, seed, progress=progress)
        for pair, (cfg, front, train, test) in pairs.items():
            iris = bank.get(front_name(cfg), cfg, front, train, pl.capacity_points, "information")
            extra = per_image_scores({"test": (test, predict(end, test))})
            for label, family, rank in pl.families:
                stitch = dataclasses.replace(p.iri_stitch, seed=seed, family=family, rank=rank)
                key = {"testbed": "beyond capacity", "front": cfg, "end": end_cfg, "version": BEYOND_VERSION,
                       "test": [test.name, len(test)]}
                rows += stitch_modes(store, front, end, pl.capacity_points, CAPACITY_OBJECTIVES, bank.sources(train),
                                     iris, test, stitch, key=key, extra_eval=extra, bn_mode=IRI_BN_MODE,
                                     progress=progress, pair=pair, family=label, seed=seed)
    return rows


def run(profile: Profile, store: ResultStore, device, *, progress: bool = True) -> dict:
    """Both sections: {"models": rows, "colour": rows, "capacity": rows, "iris": the IRI table}."""
    import pandas as pd

    pl = plan(profile)
    bank = lambda samples: IRIBank(store, steps=profile.iri_steps, step_size=profile.iri_step_size, samples=samples,
                                   seed=IRI_SEED, progress=progress)
    # the colour stitches' data is already the beyond_samples subset: its IRIs invert every image of it; the
    # capacity section inverts what notebook 05 inverts (iri_samples of the same data), so it reuses 05's sets
    colour_bank, capacity_bank = bank(None), bank(profile.iri_samples)
    models, colour_rows = run_colour(pl, store, device, colour_bank, progress=progress)
    capacity_rows = run_capacity(pl, store, device, capacity_bank, progress=progress)
    return {"models": models, "colour": colour_rows, "capacity": capacity_rows,
            "iris": pd.concat([colour_bank.table(), capacity_bank.table()], ignore_index=True)}


# ----------------------------------------------------------------------------------------------------
# Claims


def _units(rows: list[dict], column: str, **where) -> tuple[np.ndarray, list[int]]:
    """Per-image scores [units, images] of the rows matching `where`, and each unit's seed."""
    chosen = [r for r in rows if all(r.get(k) == v for k, v in where.items()) and not r.get("error")]
    if not chosen:
        raise KeyError(f"no rows with {where}")
    return np.stack([np.asarray(r[column], dtype=float) for r in chosen]), [r["seed"] for r in chosen]


def _judge(claim, rows, column, a_where, b_where, shift_a: float = 0.0):
    a, sa = _units(rows, column, **a_where)
    b, sb = _units(rows, column, **b_where)
    return claims_lib.judge(claim, a + shift_a, b, seeds_a=sa, seeds_b=sb)


def _claim(cid, statement, a, b, figure, kind="paper"):
    return claims_lib.Claim(cid, NOTEBOOK, figure, statement, a, b, kind)


def colour_claims(rows: list[dict]) -> list[claims_lib.Verdict]:
    """Section 1: Smith et al.'s finding under standard stitching, and paper 2's separation under IRIs.
    Per-image scores pooled over the stitch points; intervals from the paired bootstrap over test images."""
    fig, out = "fig_beyond_colour", []
    hlm_real = dict(objective_name="HLM", data="real")
    for sender in ("Colour-Only", "untrained"):
        tag = sender.lower().replace("-", "_")
        out.append(_judge(_claim(
            f"smith_{tag}_stitches",
            f"Smith et al.: standard stitching (HLM, real Correlated data) makes the {sender} sender as accurate as a second "
            f"Shape model (within {SIMILAR_WITHIN:g} pp, Correlated test)",
            f"{sender} + {SIMILAR_WITHIN:g} pp (HLM, real)", "second Shape (HLM, real)", fig),
            rows, "img_correct_correlated", {**hlm_real, "sender": sender}, {**hlm_real, "sender": "second Shape"},
            shift_a=SIMILAR_WITHIN))
    out.append(_judge(_claim(
        "smith_misleads_on_shape",
        "Smith et al.: the Colour-Only stitch that fits the Correlated data does not compute the receiver's function: "
        "on Shape test data it agrees with the receiver less than the second Shape stitch (HLM, real)",
        "second Shape agreement on Shape test", "Colour-Only agreement on Shape test", fig, kind="sanity"),
        rows, "img_agreement_shape", {**hlm_real, "sender": "second Shape"}, {**hlm_real, "sender": "Colour-Only"}))
    for obj in ("SLM", "FuLA", "DM"):
        iri = dict(objective_name=obj, data="iri")
        for sender in ("Colour-Only", "untrained"):
            tag = sender.lower().replace("-", "_")
            out.append(_judge(_claim(
                f"iri_{obj.lower()}_separates_{tag}",
                f"Paper 2: invariance-aware {obj} (IRIs) rates the {sender} sender less similar to the Shape receiver than "
                f"the second Shape model (agreement, Correlated test)",
                f"second Shape ({obj}, IRIs)", f"{sender} ({obj}, IRIs)", fig),
                rows, "img_agreement_correlated", {**iri, "sender": "second Shape"}, {**iri, "sender": sender}))
    # the gap itself: IRIs widen the distance between the real shape model and the colour-only one (FuLA)
    gap = {}
    for mode in ("real", "iri"):
        a, sa = _units(rows, "img_agreement_correlated", objective_name="FuLA", data=mode, sender="second Shape")
        b, _ = _units(rows, "img_agreement_correlated", objective_name="FuLA", data=mode, sender="Colour-Only")
        gap[mode] = (a - b, sa)
    out.append(claims_lib.judge(_claim(
        "iri_fula_widens_colour_gap",
        "Paper 2: with FuLA the agreement gap between the second Shape and the Colour-Only sender is larger on IRIs "
        "than on real data", "gap on IRIs", "gap on real data", fig),
        gap["iri"][0], gap["real"][0], seeds_a=gap["iri"][1], seeds_b=gap["real"][1]))
    return out


def capacity_claims(rows: list[dict], families: tuple[str, ...]) -> list[claims_lib.Verdict]:
    """Section 2: does FuLA's verdict (cross-seed more similar than cross-bias, on IRIs) hold for every family,
    and does capacity (low-rank -> MLP) raise HLM's agreement on the cross-bias pair more than FuLA's?"""
    fig, out = "fig_beyond_capacity", []
    for fam in families:
        iri = dict(objective_name="FuLA", data="iri", family=fam)
        out.append(_judge(_claim(
            f"capacity_fula_verdict_{fam.replace(' ', '')}",
            f"FuLA on IRIs with a {fam} stitch rates the cross-seed pair more similar than the cross-bias pair",
            "cross-seed (FuLA, IRIs)", "cross-bias (FuLA, IRIs)", fig, kind="target"),
            rows, "img_agreement_test", {**iri, "pair": "cross-seed"}, {**iri, "pair": "cross-bias"}))
    low, high = families[1], families[-1]
    for mode in ("real", "iri"):
        gains = {}
        for obj in ("HLM", "FuLA"):
            where = dict(objective_name=obj, data=mode, pair="cross-bias")
            a, sa = _units(rows, "img_agreement_test", family=high, **where)
            b, _ = _units(rows, "img_agreement_test", family=low, **where)
            gains[obj] = (a - b, sa)
        out.append(claims_lib.judge(_claim(
            f"capacity_hlm_fabricates_{mode}",
            f"More capacity ({low} -> {high}) raises HLM's agreement for the cross-bias pair more than FuLA's "
            f"({'real data' if mode == 'real' else 'IRIs'})", f"HLM gain ({mode})", f"FuLA gain ({mode})", fig,
            kind="target"),
            gains["HLM"][0], gains["FuLA"][0], seeds_a=gains["HLM"][1], seeds_b=gains["FuLA"][1]))
    return out


def claims(rows: dict, pl: Plan | None = None) -> list[claims_lib.Verdict]:
    """Every verdict of notebook 08 from run()'s rows."""
    families = tuple(label for label, _, _ in pl.families) if pl is not None else \
        tuple(dict.fromkeys(r["family"] for r in rows["capacity"]))
    return colour_claims(rows["colour"]) + capacity_claims(rows["capacity"], families)


# ----------------------------------------------------------------------------------------------------
# Tables and figures


def table(rows: list[dict]):
    """The rows as a DataFrame without the per-image arrays."""
    import pandas as pd

    return pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("img_")} for r in rows])


def plot_colour(rows: list[dict], chance: float = 10.0):
    """Agreement with the Shape receiver against the stitch point: one panel per sender, Correlated test
    (top) and Shape test (bottom); colour = objective, solid real data, dashed IRIs."""
    from .invariance_figures import to_long

    df = table(rows).assign(point=lambda d: d.point.map(plot_x))  # the paper's 1..9
    long = to_long(df, {"agreement_correlated": "Correlated test", "agreement_shape": "Shape test"},
                   ["sender", "objective_name", "objective", "data", "point"])
    return plot_panels(long, panel="sender", rows="measure", panel_order=list(SENDERS),
                       row_order=["Correlated test", "Shape test"], ylabel="agreement with receiver (%)",
                       chance=chance, ylim=(0, 103))


def plot_capacity(rows: list[dict], families: tuple[str, ...], chance: float = 10.0):
    """Agreement with the end model against the stitch point: one panel per pair (columns) and stitch family
    (rows); HLM and FuLA, solid real data, dashed IRIs."""
    df = table(rows).assign(point=lambda d: d.point.map(plot_x))  # the paper's 1..9
    return plot_panels(df, panel="pair", rows="family", y="agreement", panel_order=list(PAIRS), row_order=list(families),
                       ylabel="agreement (%)", chance=chance, ylim=(0, 103))


def check_structure(rows: dict, pl: Plan) -> None:
    """Every colour row (replicates x senders x data x objectives x points) and capacity row (pairs x front seeds x
    families x data x objectives x points) exists; raises a clear error otherwise. Stitches that stopped on a
    non-finite loss are rows too (NaN scores, which the claims drop): they are listed, not hidden."""
    n_colour = len(pl.replicates) * len(SENDERS) * 2 * len(OBJECTIVES) * len(pl.points)
    n_capacity = (len(PAIRS) * len(pl.profile.iri_front_seeds) * len(pl.families) * 2 * len(CAPACITY_OBJECTIVES)
                  * len(pl.capacity_points))
    for part, n in (("colour", n_colour), ("capacity", n_capacity)):
        if len(table(rows[part])) != n:
            raise ValueError(f"beyond {part}: expected {n} rows, got {len(table(rows[part]))}")
    stopped = [r["job"] for part in ("colour", "capacity") for r in rows[part] if r["error"]]
    print(f"{n_colour} colour and {n_capacity} capacity rows; {len(stopped)} stitches stopped on a non-finite loss"
          + (f": {stopped[:5]}" if stopped else ""))
