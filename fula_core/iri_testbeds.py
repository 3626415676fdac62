"""Invariance-aware stitching testbeds (paper 2, spec: ``invariance_aware.md``; notebook 05).

One end model g (the end task's model of seed P.seeds[0]) and, for every front seed s of P.iri_front_seeds,
the fronts of four testbeds. Every stitch trains in two data modes on the same source images: real data x,
or the IRIs x' of the front at the stitch point (invariance.py); it is always scored on the real test set.

  information   identical (g with itself), cross-seed (same recipe, seed s), cross-supervision (SimCLR
                front) and cross-bias (front trained with P.cross_bias_shortcut markers; its stitch data and
                test images carry markers of that kind) into g, objectives HLM, SLM, FuLA and DM, at P.iri_points
  adversarial   clean and robust fronts of seed s into the clean and the robust end, SLM, FuLA, DM at
                P.iri_adv_points, scored by agreement on clean test images and on AutoAttack examples
  shortcut      the cross-task front of seed s into g, stitch data with Pixel, Pixel+Loc or Rand markers,
                scored by excess agreement (correct minus class-shifted markers) at P.iri_shortcut_points
  CKA           minibatch linear CKA between f_{<=l} and g_{<=l} on real test images and on their IRIs,
                beside the chance-normalised agreement of FuLA trained on IRIs (I-FuLA)

The information testbed also runs on the profile's further architectures (Profile.iri_archs; at `paper`
VGG-16 and ViT-Tiny/4, as the authors' configs/information_stitching/low_resolution/{vgg16,
vit_tiny_patch4_32} do): the same four pairs, objectives, data modes, seeds and stitch training, with that
architecture's end model and fronts (zoo.info_arch_configs) at its own points (Profile.iri_points_of), one
figure each (`fig_info_stitching_<arch>`). Their rows are `Results.info_archs` (with an `arch` column); the
claims stay the main architecture's, as paper 2's text makes none for the others.

Repeats: every stitch repeats over the front seeds and, for each, over the stitch seeds P.iri_stitch_seeds
(data order, least-squares sample, PGD starts; the source subset, markers and IRIs follow the front seed
and are shared by its stitch seeds). Stitch seed 0 uses the front seed itself as the stitch's seed, as
the authors' runs do; stitch seed t > 0 uses 1000 t + front seed. Rows carry `seed` (front seed),
`stitch_seed` and `replicate` (both): claims resample replicates, then test images.

"DM" is fula_core's `hint` objective: the revision's DM is the batch relative error at the stitch point
trained by gradient from the least-squares start (fula_core's `dm` is paper 1's closed form, fitted on
real images, so it could not see IRIs). Stitch points are 0-based in code and rows (`point`), and the
paper's 1..9 in tables and figures (`layer` = point + 1).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from . import claims as C
from .config import Profile
from .invariance_figures import deeper_half
from .plots import plot_x
from .stitching import StitchConfig

IRI_TESTBEDS_VERSION = 1
NB = "05_invariance_aware"

OBJECTIVES = {"HLM": "hlm", "SLM": "slm", "FuLA": "fula", "DM": "hint"}  # display name -> fula_core objective
ADV_OBJECTIVES = {name: OBJECTIVES[name] for name in ("SLM", "FuLA", "DM")}
ALIGNMENT = ("SLM", "FuLA", "DM")  # the objectives that query g on x' (HLM keeps the label of x)
MARKERS = {"Pixel": "pixel", "Pixel+Loc": "pixel_location", "Rand": "random"}
PAIRS = ("identical", "cross-seed", "cross-supervision", "cross-bias")
IRI_SEED = 0  # seed of the inverted source subset and of the starting noise
IRI_BN_MODE = "eval"  # frozen models' BatchNorm in IRI runs (the authors: eval; real-data runs: train)
SHORTCUT_TEST_SEED = 1  # marker locations / noise of the shortcut test images
# measures kept per stitch row, each with its per-image scores
INFO_MEASURES = ("accuracy", "agreement", "chance_normalised_agreement")
ADV_MEASURES = ("agreement", "autoattack_agreement", "autoattack_accuracy")
SHORTCUT_MEASURES = ("agreement", "agreement_correct", "agreement_shifted", "excess_agreement")
FIGURES = ("fig_iri_inversion_error", "fig_iri_examples", "fig_info_stitching", "fig_info_adversarial",
           "fig_info_shortcut", "fig_cka_vs_ifula", "fig_toy_compatibility")


def info_figure_name(arch: str) -> str:
    """The information figure of a further architecture (the main one's is fig_info_stitching)."""
    return f"fig_info_stitching_{arch}"


def arch_figure_names(P: Profile) -> list[str]:
    """The per-architecture information figures a run of P draws (none where it has one architecture)."""
    return [info_figure_name(a) for a in P.info_archs[1:]]


def point_label(arch: str) -> str:
    """The x-axis label of an architecture's figure: its stitch points, numbered from 1."""
    from .models import num_stitch_points

    return f"stitch point (1-{num_stitch_points(arch)})"


def info_testbed(arch: str) -> str:
    """The testbed name of a further architecture's information stitches (plans, units, IRI table)."""
    return f"information ({arch})"

# thresholds of the claims, fixed before any run
SIMILAR_REAL = 75.0  # "looks similar" on real data: agreement (%) at least this
NEAR_100 = 95.0  # "stays ~100%": agreement (%) at least this
TOWARD_CHANCE = 50.0  # "falls toward chance": chance-normalised agreement at most this
HLM_SLACK = 10.0  # HLM on IRIs "stays high": within this many points of its real-data agreement
NO_EXPLOIT = 5.0  # "does not exploit the markers": excess agreement (pp) at most this
BIAS_RELIANCE = 10.0  # the cross-bias front loses at least this many points of accuracy without its markers


# ----------------------------------------------------------------------------------------------------
# What runs


def stitch_seed_of(front_seed: int, stitch_seed: int) -> int:
    """The StitchConfig seed of one repeat: the front seed itself for stitch seed 0 (the authors' runs),
    1000 * stitch_seed + front_seed otherwise."""
    return front_seed if stitch_seed == 0 else 1000 * stitch_seed + front_seed


def replicate(front_seed: int, stitch_seed: int) -> str:
    return f"f{front_seed}s{stitch_seed}"


@dataclass(frozen=True)
class ArchInfo:
    """The information testbed of one further architecture: its end model, stitch points and fronts."""

    arch: str
    end_cfg: object
    points: tuple[int, ...]
    fronts: dict = field(default_factory=dict)  # (pair, front seed) -> front config, as Plan.info_fronts


@dataclass(frozen=True)
class Plan:
    """The fronts, ends, points and repeats of the four testbeds (no training)."""

    front_seeds: tuple[int, ...]
    stitch_seeds: tuple[int, ...]
    points: tuple[int, ...]
    adv_points: tuple[int, ...]
    adv_alphas: tuple[float, ...]
    shortcut_points: tuple[int, ...]
    end_cfg: object
    info_fronts: dict = field(default_factory=dict)  # (pair, front seed) -> front config
    adv_pairs: dict = field(default_factory=dict)  # (front kind, end kind, front seed) -> (front cfg, end cfg)
    shortcut_fronts: dict = field(default_factory=dict)  # front seed -> cross-task front config
    stitch: StitchConfig = StitchConfig()
    arch_info: dict = field(default_factory=dict)  # further architecture -> ArchInfo (information testbed only)

    def stitch_config(self, front_seed: int, stitch_seed: int) -> StitchConfig:
        return dataclasses.replace(self.stitch, seed=stitch_seed_of(front_seed, stitch_seed))

    @property
    def repeats(self) -> list[tuple[int, int]]:
        return [(s, t) for s in self.front_seeds for t in self.stitch_seeds]

    def adv_objectives(self, alpha: float) -> list[str]:
        # fula_core's closed-form dm has no adversarial variant (DM here is `hint`, which has)
        return [n for n, o in ADV_OBJECTIVES.items() if not (alpha > 0 and o == "dm")]

    def expected_rows(self) -> dict[str, int]:
        """Stitch rows per testbed (one per stitch: repeat x pair x data mode x objective x point)."""
        r = len(self.repeats)
        return {"information": r // len(self.front_seeds) * len(self.info_fronts) * 2 * len(OBJECTIVES) * len(self.points),
                "adversarial": r // len(self.front_seeds) * len(self.adv_pairs) * 2 * len(self.adv_points)
                * sum(len(self.adv_objectives(a)) for a in self.adv_alphas),
                "shortcut": r * len(MARKERS) * 2 * len(OBJECTIVES) * len(self.shortcut_points),
                **{info_testbed(arch): len(self.stitch_seeds) * len(a.fronts) * 2 * len(OBJECTIVES) * len(a.points)
                   for arch, a in self.arch_info.items()}}

    def summary(self) -> pd.DataFrame:
        rows = self.expected_rows()
        pairs = {"information": len(PAIRS), "adversarial": 4, "shortcut": len(MARKERS),
                 **{info_testbed(arch): len(PAIRS) for arch in self.arch_info}}
        points = {"information": self.points, "adversarial": self.adv_points, "shortcut": self.shortcut_points,
                  **{info_testbed(arch): a.points for arch, a in self.arch_info.items()}}
        return pd.DataFrame([{"testbed": t, "pairs": pairs[t], "front seeds": len(self.front_seeds),
                              "stitch seeds": len(self.stitch_seeds), "points": ", ".join(str(plot_x(p)) for p in points[t]),
                              "stitches": n, "with AutoAttack": n if t == "adversarial" else 0}
                             for t, n in rows.items()])


def plan(P: Profile) -> Plan:
    """The testbeds of profile P (its zoo configs; nothing is trained here)."""
    from . import zoo

    z = zoo.paper2_configs(P)
    end_cfg = P.train_config(P.end_dataset, P.seeds[0])
    info, adv, short = {}, {}, {}
    robust_end = zoo.paper2_robust_config(P, P.seeds[0])
    for s in P.iri_front_seeds:
        info["identical", s] = end_cfg
        info["cross-seed", s] = z[f"{P.end_dataset}_{s}"]
        info["cross-supervision", s] = z[f"{P.end_dataset}_{s} simclr"]
        info["cross-bias", s] = z[f"{P.end_dataset}_{s} cross-bias"]
        for fk, fc in (("clean", z[f"{P.end_dataset}_{s}"]), ("robust", zoo.paper2_robust_config(P, s))):
            for ek, ec in (("clean", end_cfg), ("robust", robust_end)):
                adv[fk, ek, s] = (fc, ec)
        short[s] = z[f"{P.cross_dataset}_{s}"]
    arch_info = {}
    for arch in P.info_archs[1:]:  # the same four pairs per further architecture, from its own zoo models
        za = zoo.info_arch_configs(P, arch)
        end_a = za[f"{P.end_dataset}_{P.seeds[0]} {arch}"]
        fronts = {}
        for s in P.iri_front_seeds:
            fronts["identical", s] = end_a
            fronts["cross-seed", s] = za[f"{P.end_dataset}_{s} {arch}"]
            fronts["cross-supervision", s] = za[f"{P.end_dataset}_{s} simclr {arch}"]
            fronts["cross-bias", s] = za[f"{P.end_dataset}_{s} cross-bias {arch}"]
        arch_info[arch] = ArchInfo(arch, end_a, P.iri_points_of(arch), fronts)
    return Plan(tuple(P.iri_front_seeds), tuple(P.iri_stitch_seeds), tuple(P.iri_points), tuple(P.iri_adv_points),
                tuple(P.iri_adv_alphas), tuple(P.iri_shortcut_points), end_cfg, info, adv, short, P.iri_stitch, arch_info)


@dataclass(frozen=True)
class Source:
    """Images of the testbeds, named without loading them: the end task's stitch-training subset drawn with
    front seed `seed` (with `shortcut` markers pasted per image), or the scored test images (with the
    cross-bias markers of front seed `seed`). IRI sets invert a Source; run() loads its data through here."""

    split: str  # "train" or "test"
    seed: int = 0
    shortcut: str | None = None

    def load(self, P: Profile, device="cpu", data_dir=None):
        from . import shortcuts
        from .experiments import DataSpec, stitch_train_spec

        if self.split == "train":
            return stitch_train_spec(P, shortcut=self.shortcut, seed=self.seed).load(device, data_dir)
        test = DataSpec(P.end_dataset, "test", subset=P.iri_eval_subset).load(device, data_dir)
        if self.shortcut is None:
            return test
        return shortcuts.add_shortcut(test, self.shortcut, seed=self.seed + 1, layout_seed=self.seed)


def info_sources(P: Profile, pair: str, s: int) -> tuple[Source, Source]:
    """(stitch data, scored test images) of an information pair: the cross-bias pair's carry its markers."""
    if pair == "cross-bias":
        return Source("train", s, P.cross_bias_shortcut), Source("test", s, P.cross_bias_shortcut)
    return Source("train", s), Source("test")


@dataclass(frozen=True)
class IRIRequest:
    """One IRI set a testbed asks for: the front (its config), the inverted images, the stitch point."""

    front_cfg: object
    source: Source
    point: int
    testbed: str


def iri_requests(P: Profile, pl: Plan) -> list[IRIRequest]:
    """Every IRI set of run(), in the order it asks for them, each once (the same front, images and point
    serve every testbed that asks: IRIBank shares them)."""
    asks = []
    for (pair, s), cfg in pl.info_fronts.items():
        train, test = info_sources(P, pair, s)
        asks += [IRIRequest(cfg, train, p, "information") for p in pl.points]
        asks += [IRIRequest(cfg, test, p, "CKA (test images)") for p in pl.points]
    for (_, _, s), (fc, _) in pl.adv_pairs.items():
        asks += [IRIRequest(fc, Source("train", s), p, "adversarial") for p in pl.adv_points]
    for s, fc in pl.shortcut_fronts.items():
        asks += [IRIRequest(fc, Source("train", s, kind), p, "shortcut") for kind in MARKERS.values()
                 for p in pl.shortcut_points]
    for arch, a in pl.arch_info.items():
        for (pair, s), cfg in a.fronts.items():
            asks += [IRIRequest(cfg, info_sources(P, pair, s)[0], p, info_testbed(arch)) for p in a.points]
    from .store import config_key

    seen, out = set(), []
    for a in asks:
        k = (config_key(a.front_cfg), a.source, a.point)
        if k not in seen:
            seen.add(k)
            out.append(a)
    return out


def stitch_passes(pl: Plan) -> dict[str, tuple[int, int]]:
    """Per testbed (training passes, stitches): a pass is one `train_stitches` call, as run() makes them
    through invariance_figures.stitch_modes: per pair, seed and alpha, one call for the real-data stitches
    of every point and one per point for the IRI stitches (each point has its own IRIs)."""
    r = len(pl.stitch_seeds)
    calls = lambda points: 1 + len(points)  # noqa: E731
    passes = {"information": len(pl.info_fronts) * r * calls(pl.points),
              "adversarial": len(pl.adv_pairs) * r * len(pl.adv_alphas) * calls(pl.adv_points),
              "shortcut": len(pl.shortcut_fronts) * len(MARKERS) * r * calls(pl.shortcut_points),
              **{info_testbed(arch): len(a.fronts) * r * calls(a.points) for arch, a in pl.arch_info.items()}}
    return {t: (n, pl.expected_rows()[t]) for t, n in passes.items()}


@dataclass
class Results:
    """Tidy tables of one run. Stitch tables are long: one row per stitch x measure, with `value` (the mean)
    and `scores` (per test image, percent); `layer` is the paper's 1..9."""

    fronts: pd.DataFrame  # pair, seed, model, eval ("with markers" / "without markers"), metric, value, scores
    iris: pd.DataFrame  # one row per IRI set: front, source, point, layer, testbeds, errors
    info: pd.DataFrame
    adv: pd.DataFrame
    shortcut: pd.DataFrame
    cka: pd.DataFrame  # pair, seed, point, layer, measure, value (CKA on real data / on IRIs)
    toy: pd.DataFrame
    examples: tuple = ()  # (source images, {point: IRIs}) of the cross-seed front of the first seed
    num_classes: int = 10
    info_archs: pd.DataFrame = field(default_factory=pd.DataFrame)  # the further architectures' info rows (`arch`)

    def info_of(self, arch: str, metric: str = "agreement") -> pd.DataFrame:
        """One measure of a further architecture's information stitches, for its figure."""
        d = self.info_archs
        return d[(d.arch == arch) & (d.metric == metric)].drop(columns=["scores"])

    def measure(self, testbed: str, metric: str) -> pd.DataFrame:
        """One measure of a stitch table (`value` its mean), for figures and pivots."""
        df = getattr(self, testbed)
        return df[df.metric == metric].drop(columns=["scores"])

    def adversarial_panels(self) -> pd.DataFrame:
        """The adversarial figure's rows: agreement on clean and on AutoAttack test inputs, one panel row each
        (and per stitch-training share alpha)."""
        names = {"agreement": "clean", "autoattack_agreement": "AutoAttack"}
        d = self.adv[self.adv.metric.isin(list(names))].drop(columns=["scores"])
        return d.assign(row=[f"{names[m]} test inputs, alpha {a:g}" for m, a in zip(d.metric, d.alpha)])

    def shortcut_panels(self) -> pd.DataFrame:
        """The shortcut figure's rows: excess agreement, and plain agreement for Rand (its excess is zero by
        construction: its noise patches carry no class)."""
        d = self.shortcut.drop(columns=["scores"])
        keep = (d.metric == "excess_agreement") & (d.marker != "Rand") | (d.metric == "agreement_correct") & (d.marker == "Rand")
        return d[keep]

    def cka_vs_ifula(self) -> pd.DataFrame:
        """CKA on real data and on IRIs beside I-FuLA (chance-normalised, / 100: one 0-1 scale)."""
        ifula = self.info[(self.info.data == "iri") & (self.info.objective_name == "FuLA")
                          & (self.info.metric == "chance_normalised_agreement")]
        ifula = ifula.assign(measure="I-FuLA (chance-normalised) / 100", value=ifula.value / 100)
        cols = ["pair", "seed", "stitch_seed", "point", "layer", "measure", "value"]
        return pd.concat([self.cka.assign(stitch_seed=np.nan)[cols], ifula[cols]], ignore_index=True)


def tidy(rows: Sequence[dict], measures: Sequence[str]) -> list[dict]:
    """Wide stitch rows (invariance.invariance_aware_stitching) -> one row per measure with its per-image
    `scores` (numpy float32) and the paper's layer number."""
    out = []
    for r in rows:
        scored = {k[:-len("_scores")] for k in r if k.endswith("_scores")}
        base = {k: v for k, v in r.items() if not k.endswith("_scores") and k not in measures and k not in scored}
        for m in measures:
            scores = r.get(f"{m}_scores")
            out.append({**base, "layer": plot_x(r["point"]), "metric": m, "value": r[m],
                        "scores": None if scores is None else np.asarray(scores, dtype=np.float32)})
    return out


def run(P: Profile, store, device, plan_: Plan | None = None, *, data_dir=None, progress: bool = True) -> Results:
    """Train what is missing (cached: IRI sets, stitch rows) and evaluate every testbed of `plan_`."""
    from . import invariance, toy, zoo
    from . import invariance_figures as figs
    from .stitching import predict

    pl = plan_ if plan_ is not None else plan(P)
    model = lambda cfg: zoo.get_zoo_model(store, cfg, device, data_dir=data_dir, progress=progress)  # noqa: E731
    # the stitch data of a front seed: the profile's standard stitch training subset, drawn with that seed
    train_of = lambda s, shortcut=None: Source("train", s, shortcut).load(P, device, data_dir)  # noqa: E731
    test = Source("test").load(P, device, data_dir)
    end = model(pl.end_cfg)
    bank = figs.IRIBank(store, steps=P.iri_steps, step_size=P.iri_step_size, samples=P.iri_samples, seed=IRI_SEED,
                        progress=progress)
    name = figs.front_name
    models = {}

    def get(cfg):
        key = str(cfg)
        if key not in models:
            models[key] = end if cfg == pl.end_cfg else model(cfg)
        return models[key]

    # the stitch data of each front seed; the cross-bias pair is scored on the same test images with markers
    train_real = {s: train_of(s) for s in pl.front_seeds}
    marked_test = {s: Source("test", s, P.cross_bias_shortcut).load(P, device, data_dir) for s in pl.front_seeds}

    def info_data(pair, s):
        if pair == "cross-bias":
            return train_of(s, P.cross_bias_shortcut), marked_test[s]
        return train_real[s], test

    # fronts: what each learned (the cross-bias front with and without its markers), per test image
    fronts = []
    for (pair, s), cfg in pl.info_fronts.items():
        scored_on = {"with markers": marked_test[s], "without markers": test} if pair == "cross-bias" else {"test": test}
        for ev, data in scored_on.items():
            correct = (predict(get(cfg), data).argmax(1) == data.labels).float().mul(100).cpu().numpy()
            fronts.append({"pair": pair, "seed": s, "model": name(cfg), "eval": ev, "metric": "accuracy",
                           "value": float(correct.mean()), "scores": correct})

    info_rows, cka_rows, examples = [], [], ()
    for (pair, s), cfg in pl.info_fronts.items():
        train, scored_on = info_data(pair, s)
        iris = bank.get(name(cfg), cfg, get(cfg), train, pl.points, "information")
        for t in pl.stitch_seeds:
            info_rows += figs.stitch_modes(
                store, get(cfg), end, pl.points, OBJECTIVES, bank.sources(train), iris, scored_on,
                pl.stitch_config(s, t), bn_mode=IRI_BN_MODE, progress=progress,
                key={"testbed": "information", "front": cfg, "end": pl.end_cfg},
                pair=pair, seed=s, stitch_seed=t, replicate=replicate(s, t))
        cka_iris = bank.get(name(cfg), cfg, get(cfg), scored_on, pl.points, "CKA (test images)")
        cka_rows += figs.cka_rows(get(cfg), end, scored_on, cka_iris, pl.points, pair=pair, seed=s)
        if pair == "cross-seed" and not examples:
            examples = (bank.sources(train), iris)

    aa_test = test.take(P.iri_robust_eval_subset, seed=1)
    aa = {"eps": P.base.pgd_eps, "n_iter": P.iri_autoattack_iter, "eot_iter": P.autoattack_eot}
    adv_rows = []
    for (fk, ek, s), (fc, ec) in pl.adv_pairs.items():
        iris = bank.get(name(fc), fc, get(fc), train_real[s], pl.adv_points, "adversarial")
        adv_end = get(ec)
        score_aa = lambda stitched, job, adv_end=adv_end: figs.autoattack_agreement(stitched, adv_end, aa_test, **aa)  # noqa: E731
        for t in pl.stitch_seeds:
            adv_rows += figs.stitch_modes(
                store, get(fc), adv_end, pl.adv_points, ADV_OBJECTIVES, bank.sources(train_real[s]), iris, test,
                pl.stitch_config(s, t), alphas=pl.adv_alphas, extra_eval=score_aa, bn_mode=IRI_BN_MODE, progress=progress,
                key={"testbed": "adversarial", "front": fc, "end": ec, "autoattack": {**aa, "data": [aa_test.name, len(aa_test)]}},
                pair=f"{fk} front → {ek} end", front_kind=fk, end_kind=ek, seed=s, stitch_seed=t, replicate=replicate(s, t))

    short_rows = []
    for s, fc in pl.shortcut_fronts.items():
        for marker, kind in MARKERS.items():
            data = train_of(s, kind)
            iris = bank.get(name(fc), fc, get(fc), data, pl.shortcut_points, "shortcut")
            score_markers = lambda stitched, job, kind=kind, s=s: invariance.excess_agreement_eval(  # noqa: E731
                stitched, end, test, kind, seed=SHORTCUT_TEST_SEED, layout_seed=s)  # the layout the stitch trained with
            for t in pl.stitch_seeds:
                short_rows += figs.stitch_modes(
                    store, get(fc), end, pl.shortcut_points, OBJECTIVES, bank.sources(data), iris, test,
                    pl.stitch_config(s, t), extra_eval=score_markers, bn_mode=IRI_BN_MODE, progress=progress,
                    key={"testbed": "shortcut", "front": fc, "end": pl.end_cfg, "marker": kind, "test_seed": SHORTCUT_TEST_SEED},
                    marker=marker, seed=s, stitch_seed=t, replicate=replicate(s, t))

    arch_rows = []  # the information testbed of the further architectures: their own end model and fronts
    for arch, a in pl.arch_info.items():
        arch_end = get(a.end_cfg)
        for (pair, s), cfg in a.fronts.items():
            train, scored_on = info_data(pair, s)
            iris = bank.get(name(cfg), cfg, get(cfg), train, a.points, info_testbed(arch))
            for t in pl.stitch_seeds:
                arch_rows += figs.stitch_modes(
                    store, get(cfg), arch_end, a.points, OBJECTIVES, bank.sources(train), iris, scored_on,
                    pl.stitch_config(s, t), bn_mode=IRI_BN_MODE, progress=progress,
                    key={"testbed": "information", "front": cfg, "end": a.end_cfg},
                    arch=arch, pair=pair, seed=s, stitch_seed=t, replicate=replicate(s, t))

    iri_table = bank.table()
    iri_table.insert(iri_table.columns.get_loc("point") + 1, "layer", iri_table.point.map(plot_x))
    cka = pd.DataFrame(cka_rows)
    cka["layer"] = cka.point.map(plot_x)
    res = Results(pd.DataFrame(fronts), iri_table, pd.DataFrame(tidy(info_rows, INFO_MEASURES)),
                  pd.DataFrame(tidy(adv_rows, ADV_MEASURES)), pd.DataFrame(tidy(short_rows, SHORTCUT_MEASURES)),
                  cka, toy_table(toy.fit_toy()), examples, test.num_classes,
                  pd.DataFrame(tidy(arch_rows, INFO_MEASURES)))
    check_structure(res, pl, n_iri_sets=len(bank))
    return res


def toy_table(fits) -> pd.DataFrame:
    """The 1-D toy's affine fits: domain, slope, intercept and RMSE."""
    return pd.DataFrame([{"fit on": f"[{f.domain[0]:g}, {f.domain[1]:g}]", "a": f.a, "b": f.b, "RMSE": f.rmse}
                         for f in fits.values()])


def check_structure(res: Results, pl: Plan, *, n_iri_sets: int | None = None) -> None:
    """Every stitch has every measure, every pair and point has CKA, every IRI set an error row: else a
    clear error (a silently missing row would change a claim's average)."""
    expected = pl.expected_rows()
    problems = []
    for testbed, measures in (("information", INFO_MEASURES), ("adversarial", ADV_MEASURES), ("shortcut", SHORTCUT_MEASURES)):
        df = {"information": res.info, "adversarial": res.adv, "shortcut": res.shortcut}[testbed]
        n = expected[testbed] * len(measures)
        if len(df) != n:
            problems.append(f"{testbed}: {len(df)} rows, expected {n} ({expected[testbed]} stitches x {len(measures)} measures)")
        elif df.scores.isna().any():
            problems.append(f"{testbed}: rows without per-image scores (a stale cache? INVARIANCE_VERSION)")
    for arch in pl.arch_info:
        n = expected[info_testbed(arch)] * len(INFO_MEASURES)
        got = int((res.info_archs.arch == arch).sum()) if len(res.info_archs) else 0
        if got != n:
            problems.append(f"{info_testbed(arch)}: {got} rows, expected {n}")
    n_cka = 2 * len(pl.info_fronts) * len(pl.points)
    if len(res.cka) != n_cka:
        problems.append(f"CKA: {len(res.cka)} rows, expected {n_cka}")
    if n_iri_sets is not None and (len(res.iris) != n_iri_sets or res.iris.final_error.isna().any()):
        problems.append(f"IRI table: {len(res.iris)} rows for {n_iri_sets} sets, or a missing error")
    if problems:
        raise RuntimeError("notebook 05's results are incomplete: " + "; ".join(problems))


def stopped(res: Results) -> list[str]:
    """Jobs whose training stopped on a non-finite loss (their scores are NaN; claims leave them out)."""
    out = []
    for df in (res.info, res.adv, res.shortcut, res.info_archs):
        if df.empty:
            continue
        bad = df[df.error.notna() & (df.error.astype(str) != "") & (df.error.astype(str) != "None")]
        out += sorted(set(bad.job))
    return out


# ----------------------------------------------------------------------------------------------------
# Claims: A > B is what each asserts; intervals resample replicates (front x stitch seed), then images


def _claim(id_, figure, statement, a, b, kind="paper") -> C.Claim:
    return C.Claim(id_, NB, figure, statement, a, b, kind)


def _per_replicate(rows: pd.DataFrame, **filters) -> tuple[np.ndarray, np.ndarray]:
    """Mean per-image scores of the selected rows, one unit per replicate: ([replicates, images], ids)."""
    x, reps = C.units(rows, seed_column="replicate", **filters)
    reps = np.zeros(len(x), dtype=int) if reps is None else reps
    ids = np.array(sorted(set(reps), key=str))
    return np.stack([x[reps == r].mean(0) for r in ids]), ids


def _aligned(*parts) -> tuple[list[np.ndarray], np.ndarray]:
    """Per-replicate arrays restricted to the replicates all of them have, in one order."""
    common = sorted(set.intersection(*(set(ids) for _, ids in parts)), key=str)
    if not common:
        raise ValueError("the two quantities of a claim share no replicate (front seed x stitch seed)")
    out = [np.stack([x[list(ids).index(r)] for r in common]) for x, ids in parts]
    return out, np.array(common)


def _judge(claim, a, b) -> C.Verdict:
    """Judge per-replicate arrays (or a number for b) with replicates as the clusters."""
    if np.isscalar(b):
        return C.judge(claim, a[0], b, seeds_a=a[1])
    (xa, xb), ids = _aligned(a, b)
    return C.judge(claim, xa, xb, seeds_a=ids, seeds_b=ids)


def _minus(a, b):
    (xa, xb), ids = _aligned(a, b)
    return xa - xb, ids


def _threshold(value: float, like):
    return np.full_like(like[0], value), like[1]


def claim_real_pairs_similar(info: pd.DataFrame) -> C.Verdict:
    """Paper 2 (information figure): with real data every objective makes all four pairs look similar (~80-99%).
    A: real-data agreement of all pairs, objectives and points; B: SIMILAR_REAL. Sources: images, replicates."""
    a = _per_replicate(info, data="real", metric="agreement")
    return _judge(_claim("p2_info_real_similar", "fig_info_stitching", "Real data: all information pairs look similar",
                         "real-data agreement (%)", f"{SIMILAR_REAL:g}"), a, SIMILAR_REAL)


def claim_identical_near_100(info: pd.DataFrame) -> C.Verdict:
    """Paper 2: with IRIs the identical pair stays ~100%. A: IRI agreement of the identical pair (all objectives
    and points); B: NEAR_100. Sources: images, replicates."""
    a = _per_replicate(info, data="iri", pair="identical", metric="agreement")
    return _judge(_claim("p2_iri_identical_100", "fig_info_stitching", "IRIs: the identical pair stays near 100%",
                         "identical IRI agreement (%)", f"{NEAR_100:g}"), a, NEAR_100)


def claim_cross_seed_decays(info: pd.DataFrame, points: Sequence[int]) -> C.Verdict:
    """Paper 2: with IRIs cross-seed agreement decays with depth. A: cross-seed IRI agreement (SLM, FuLA, DM)
    at the first point; B: at the last. Sources: images, replicates."""
    first, last = min(points), max(points)
    a = _per_replicate(info, data="iri", pair="cross-seed", objective_name=list(ALIGNMENT), point=first, metric="agreement")
    b = _per_replicate(info, data="iri", pair="cross-seed", objective_name=list(ALIGNMENT), point=last, metric="agreement")
    return _judge(_claim("p2_iri_cross_seed_decays", "fig_info_stitching",
                         f"IRIs: cross-seed agreement decays with depth (layer {plot_x(first)} -> {plot_x(last)})",
                         f"layer {plot_x(first)}", f"layer {plot_x(last)}"), a, b)


def claim_cross_supervision_faster(info: pd.DataFrame, points: Sequence[int]) -> C.Verdict:
    """Paper 2: with IRIs cross-supervision decays faster than cross-seed. A: cross-seed IRI agreement (SLM, FuLA,
    DM) in the deeper half of `points`; B: cross-supervision's. Sources: images, replicates."""
    deep = list(deeper_half(points))
    f = dict(data="iri", objective_name=list(ALIGNMENT), point=deep, metric="agreement")
    return _judge(_claim("p2_iri_cross_supervision_lower", "fig_info_stitching",
                         "IRIs: cross-supervision falls below cross-seed (deeper half)", "cross-seed", "cross-supervision"),
                  _per_replicate(info, pair="cross-seed", **f), _per_replicate(info, pair="cross-supervision", **f))


def claim_cross_bias_chance(info: pd.DataFrame, points: Sequence[int]) -> C.Verdict:
    """Paper 2: with IRIs cross-bias falls to chance from the middle of the network for SLM, FuLA and DM.
    A: TOWARD_CHANCE; B: cross-bias chance-normalised IRI agreement of SLM/FuLA/DM in the deeper half.
    Sources: images, replicates."""
    b = _per_replicate(info, data="iri", pair="cross-bias", objective_name=list(ALIGNMENT),
                       point=list(deeper_half(points)), metric="chance_normalised_agreement")
    return _judge(_claim("p2_iri_cross_bias_chance", "fig_info_stitching",
                         "IRIs: cross-bias falls toward chance (SLM/FuLA/DM, deeper half)",
                         f"{TOWARD_CHANCE:g}", "chance-normalised agreement"), _threshold(TOWARD_CHANCE, b), b)


def claim_cross_bias_below_cross_seed(info: pd.DataFrame, points: Sequence[int]) -> C.Verdict:
    """Paper 2: with IRIs cross-bias ends below cross-seed. A: cross-seed IRI agreement (SLM, FuLA, DM) at the
    last point; B: cross-bias's (the same test images, with markers). Sources: images, replicates."""
    f = dict(data="iri", objective_name=list(ALIGNMENT), point=max(points), metric="agreement")
    return _judge(_claim("p2_iri_cross_bias_below_seed", "fig_info_stitching",
                         f"IRIs: cross-bias ends below cross-seed (layer {plot_x(max(points))})", "cross-seed", "cross-bias"),
                  _per_replicate(info, pair="cross-seed", **f), _per_replicate(info, pair="cross-bias", **f))


def claim_hlm_stays_high(info: pd.DataFrame, points: Sequence[int]) -> C.Verdict:
    """Paper 2: HLM on IRIs stays high (it never queries g on x'). A: cross-bias HLM IRI agreement in the deeper
    half, plus HLM_SLACK; B: its real-data agreement. Sources: images, replicates."""
    f = dict(pair="cross-bias", objective_name="HLM", point=list(deeper_half(points)), metric="agreement")
    iri, real = _per_replicate(info, data="iri", **f), _per_replicate(info, data="real", **f)
    return _judge(_claim("p2_iri_hlm_stays_high", "fig_info_stitching",
                         f"IRIs: cross-bias HLM stays within {HLM_SLACK:g} pp of real data (deeper half)",
                         f"IRI agreement + {HLM_SLACK:g}", "real-data agreement"), (iri[0] + HLM_SLACK, iri[1]), real)


def claim_adv_mixed_lose_more(adv: pd.DataFrame) -> C.Verdict:
    """Paper 2 (adversarial figure): robust vs non-robust pairs look much less similar under IRIs than under real
    data. A: real minus IRI clean-test agreement of the mixed pairs (one model robust); B: of the matched pairs
    (alpha 0, pooled over objectives and points). Sources: images, replicates."""
    rows = adv[adv.alpha == 0]
    mixed = rows[rows.front_kind != rows.end_kind]
    matched = rows[rows.front_kind == rows.end_kind]
    a = _minus(_per_replicate(mixed, data="real", metric="agreement"), _per_replicate(mixed, data="iri", metric="agreement"))
    b = _minus(_per_replicate(matched, data="real", metric="agreement"), _per_replicate(matched, data="iri", metric="agreement"))
    return _judge(_claim("p2_adv_mixed_lose_more", "fig_info_adversarial",
                         "Robust vs non-robust pairs lose more agreement under IRIs than matched pairs",
                         "mixed: real - IRI", "matched: real - IRI"), a, b)


def claim_shortcut_task_exploit(shortcut: pd.DataFrame) -> C.Verdict:
    """Paper 2 (shortcut figure): task-based objectives (HLM, SLM) exploit the markers. A: their excess agreement
    with Pixel markers on real data; B: 0. Sources: images, replicates."""
    a = _per_replicate(shortcut, marker="Pixel", data="real", objective_name=["HLM", "SLM"], metric="excess_agreement")
    return _judge(_claim("p2_shortcut_task_exploit", "fig_info_shortcut",
                         "Pixel markers, real data: HLM and SLM exploit the markers (excess agreement > 0)",
                         "HLM/SLM excess (pp)", "0"), a, 0.0)


def claim_shortcut_task_more(shortcut: pd.DataFrame) -> C.Verdict:
    """Paper 2: task-based objectives exploit the markers more than FuLA and DM. A: HLM/SLM excess agreement
    (Pixel, real data); B: FuLA/DM's. Sources: images, replicates."""
    f = dict(marker="Pixel", data="real", metric="excess_agreement")
    return _judge(_claim("p2_shortcut_task_more", "fig_info_shortcut",
                         "Pixel markers, real data: HLM/SLM show more excess agreement than FuLA/DM",
                         "HLM/SLM excess (pp)", "FuLA/DM excess (pp)"),
                  _per_replicate(shortcut, objective_name=["HLM", "SLM"], **f),
                  _per_replicate(shortcut, objective_name=["FuLA", "DM"], **f))


def claim_shortcut_iri_no_exploit(shortcut: pd.DataFrame) -> C.Verdict:
    """Paper 2: FuLA and DM do not exploit the markers with IRIs. A: NO_EXPLOIT; B: their excess agreement
    (Pixel markers, IRIs). Sources: images, replicates."""
    b = _per_replicate(shortcut, marker="Pixel", data="iri", objective_name=["FuLA", "DM"], metric="excess_agreement")
    return _judge(_claim("p2_shortcut_iri_no_exploit", "fig_info_shortcut",
                         f"Pixel markers, IRIs: FuLA and DM do not exploit the markers (excess <= {NO_EXPLOIT:g} pp)",
                         f"{NO_EXPLOIT:g}", "FuLA/DM IRI excess (pp)"), _threshold(NO_EXPLOIT, b), b)


def claim_cka_misses_bias(res_cka_vs_ifula: pd.DataFrame, points: Sequence[int]) -> C.Verdict:
    """Project reading of the CKA testbed (the spec states no finding): real-data CKA rates the cross-bias pair
    more similar than I-FuLA does. A: 100 x CKA on real data; B: I-FuLA chance-normalised agreement, both of the
    cross-bias pair in the deeper half, paired by (front seed, point) (I-FuLA averaged over stitch seeds).
    Sources: bootstrap over those paired values (judge_values)."""
    deep = list(deeper_half(points))
    d = res_cka_vs_ifula[(res_cka_vs_ifula.pair == "cross-bias") & res_cka_vs_ifula.point.isin(deep)]
    cka = d[d.measure == "CKA on real data"].groupby(["seed", "point"]).value.mean() * 100
    ifula = d[d.measure.str.startswith("I-FuLA")].groupby(["seed", "point"]).value.mean() * 100
    both = pd.concat([cka.rename("cka"), ifula.rename("ifula")], axis=1).dropna()
    return C.judge_values(_claim("t_cka_misses_bias", "fig_cka_vs_ifula",
                                 "Real-data CKA rates the cross-bias pair more similar than I-FuLA (deeper half)",
                                 "100 x CKA (real)", "I-FuLA (chance-normalised)", kind="target"),
                          both.cka.to_numpy(), both.ifula.to_numpy())


def claim_iri_error_halved(iris: pd.DataFrame) -> C.Verdict:
    """Sanity: every IRI set at least halves the relative error of its noise start. A: half the starting error;
    B: the final (uint8) error, x 100, paired per IRI set. Sources: bootstrap over the sets (judge_values)."""
    return C.judge_values(_claim("s_iri_error_halved", "fig_iri_inversion_error",
                                 "IRI inversion at least halves the relative error of the noise start",
                                 "50 x initial error", "100 x final error", kind="sanity"),
                          50 * iris.initial_error.to_numpy(), 100 * iris.final_error.to_numpy())


def claim_cross_bias_relies_on_markers(fronts: pd.DataFrame) -> C.Verdict:
    """Sanity (precondition of the cross-bias pair): its front relies on its markers. A: its test accuracy with
    markers; B: without markers + BIAS_RELIANCE, on the same test images. Sources: images, front seeds."""
    bias = fronts[fronts.pair == "cross-bias"]
    a, sa = C.units(bias, eval="with markers", metric="accuracy")
    b, sb = C.units(bias, eval="without markers", metric="accuracy")
    return C.judge(_claim("s_cross_bias_relies_on_markers", "fronts_invariance_aware",
                          f"The cross-bias front loses >= {BIAS_RELIANCE:g} pp of accuracy without its markers",
                          "accuracy with markers", f"without markers + {BIAS_RELIANCE:g}", kind="sanity"),
                   a, b + BIAS_RELIANCE, seeds_a=sa, seeds_b=sb)


def claims(res: Results, P: Profile) -> list[C.Verdict]:
    """Every claim of notebook 05: paper claims first, then the project target and the sanity checks."""
    pts = P.iri_points
    return [claim_real_pairs_similar(res.info), claim_identical_near_100(res.info),
            claim_cross_seed_decays(res.info, pts), claim_cross_supervision_faster(res.info, pts),
            claim_cross_bias_chance(res.info, pts), claim_cross_bias_below_cross_seed(res.info, pts),
            claim_hlm_stays_high(res.info, pts), claim_adv_mixed_lose_more(res.adv),
            claim_shortcut_task_exploit(res.shortcut), claim_shortcut_task_more(res.shortcut),
            claim_shortcut_iri_no_exploit(res.shortcut), claim_cka_misses_bias(res.cka_vs_ifula(), pts),
            claim_iri_error_halved(res.iris), claim_cross_bias_relies_on_markers(res.fronts)]
