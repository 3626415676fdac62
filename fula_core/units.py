"""The expensive units of a profile, listed from the notebooks' own plans without running a notebook.

A unit is one piece of work whose result lands in the cache (store.py) under a key known in advance:

  base_model     one zoo model (zoo.all_zoo_configs, and notebook 08's colour models)
  simclr_front   one self-supervised front of paper 2 (zoo.paper2_configs)
  stitch_group   one training pass of notebooks 01-04: the jobs between one front and one end model with one
                 stitch config on one training set, i.e. one multi-job `train_stitches` call (the testbed
                 modules' `stitch_groups`, the very objects their run() trains); needs its two models
  eval_group     the evaluations of a pass's stitches under a list of eval specs (`Stitcher.evaluate`);
                 needs the stitch groups that train them
  iri_set        the IRIs of one front at one stitch point for one source set (iri_testbeds.iri_requests,
                 beyond's colour and capacity requests); needs its front
  paper2_pass    one training pass of notebooks 05 / 08 (every objective of one point, data mode and alpha),
                 counted from the modules' plans; they run inside their notebook's `section` unit (below),
                 which needs the notebook's IRI sets and models

Every unit has a stable id (its kind and the hash of its store key), its dependencies, a relative cost (for
the progress line's estimate) and the share of a GPU it asks for. A stitch that two notebooks share (equal
store keys: e.g. notebook 02's marker-free pass and notebook 01's clean grid) belongs to the first pass that
lists it; the other pass keeps only its own jobs, or disappears when it has none.

What is not a unit: base-model evaluations (Table 1's AutoAttack), the front/end baselines of the plots, the
explorer (06) and your-models (07) notebooks; they run in their notebooks, after the units.

    python -m fula_core.units --profile paper      # counts per kind, without touching any data
"""
from __future__ import annotations

import argparse
import dataclasses
from collections import Counter
from dataclasses import dataclass, field

from .config import Profile, get_profile
from .data import DEFAULT_TRAIN_IMAGES
from .store import ResultStore, config_key

KINDS = ("base_model", "simclr_front", "stitch_group", "eval_group", "iri_set", "paper2_pass", "section")
FULL_SET = DEFAULT_TRAIN_IMAGES  # images of a whole training set in cost estimates (as zoo._cost counts)


@dataclass(frozen=True)
class Unit:
    kind: str
    uid: str  # "<kind>:<hash of the store key>": stable across runs and machines
    label: str
    deps: tuple[str, ...] = ()
    action: object = None  # a picklable callable action(profile, store, device, progress) that fills the cache
    cost: float = 1.0  # relative (image-passes); only orders work and feeds the time estimate
    gpu: float = 1.0  # share of one GPU it asks for when the run has GPUs
    notebook: str = ""
    within: str | None = None  # for paper2_pass: the section unit that runs it

    def done(self, store: ResultStore) -> bool:
        """Whether the cache holds its result already (False when that cannot be told without loading data)."""
        check = getattr(self.action, "done", None)
        return bool(check(store)) if check is not None else False


# ----------------------------------------------------------------------------------------------------
# Actions: each calls the library function the notebook would call, so that it fills the same cache entries


@dataclass(frozen=True)
class TrainModel:
    cfg: object

    def __call__(self, P: Profile, store: ResultStore, device, progress: bool = True) -> None:
        from .zoo import get_zoo_model

        get_zoo_model(store, self.cfg, device, progress=progress)

    def done(self, store: ResultStore) -> bool:
        from .zoo import store_kind

        return store.has(store_kind(self.cfg), dataclasses.asdict(self.cfg))


@dataclass(frozen=True)
class TrainStitches:
    group: object  # experiments.StitchGroup
    jobs: tuple  # the jobs this unit owns (a shared stitch belongs to the first pass that lists it)

    def __call__(self, P, store, device, progress: bool = True) -> None:
        self.group.stitcher(store, device, progress=progress).outcomes(list(self.jobs))

    def done(self, store) -> bool:
        return all(store.has("stitch", self.group.key(j)) for j in self.jobs)


@dataclass(frozen=True)
class Evaluate:
    """Stitcher.evaluate of a pass's stitches: per eval spec, the jobs this unit scores under it (a score two
    notebooks share belongs to the first that asks for it)."""

    group: object
    items: tuple  # ((spec, jobs), ...)

    def __call__(self, P, store, device, progress: bool = True) -> None:
        st = self.group.stitcher(store, device, progress=progress)
        for spec, jobs in self.items:
            st.evaluate(list(jobs), [spec])

    def done(self, store) -> bool:
        return all(store.has("stitch_eval", self.group.eval_key(j, s)) for s, jobs in self.items for j in jobs)

    @property
    def specs(self) -> tuple:
        return tuple(s for s, _ in self.items)

    @property
    def scores(self) -> int:
        return sum(len(jobs) for _, jobs in self.items)

    @property
    def jobs(self) -> tuple:
        return tuple(dict.fromkeys(j for _, jobs in self.items for j in jobs))


@dataclass(frozen=True)
class MakeIRIs:
    """One IRI set through invariance.iri_set with the schedule the notebooks' IRIBank uses."""

    front_cfg: object
    point: int
    source: object  # iri_testbeds.Source, or "colour" (notebook 08's Correlated training images)
    samples: int | None

    def __call__(self, P, store, device, progress: bool = True) -> None:
        from . import beyond, invariance, iri_testbeds
        from .zoo import get_zoo_model

        if self.source == "colour":
            data = beyond.colour_data(beyond.plan(P), device)["train"]
        else:
            data = self.source.load(P, device)
        model = get_zoo_model(store, self.front_cfg, device, progress=progress)
        invariance.iri_set(store, self.front_cfg, model, self.point, data, steps=P.iri_steps,
                           step_size=P.iri_step_size, samples=self.samples, seed=iri_testbeds.IRI_SEED,
                           progress=progress)


@dataclass(frozen=True)
class RunSection:
    """A notebook's own run() for the parts that are not units of their own (paper 2's stitch passes)."""

    notebook: str

    def __call__(self, P, store, device, progress: bool = True) -> None:
        from . import beyond, iri_testbeds

        if self.notebook == "05":
            iri_testbeds.run(P, store, device, progress=progress)
        elif self.notebook == "08":
            beyond.run(P, store, device, progress=progress)
        else:
            raise ValueError(f"no section runner for notebook {self.notebook!r}")


# ----------------------------------------------------------------------------------------------------
# Enumeration


def _uid(kind: str, key) -> str:
    return f"{kind}:{config_key(key)}"


def _images(subset: int | None) -> int:
    return subset or FULL_SET


def _stitch_cost(group, jobs) -> float:
    """Image-passes of a training pass: images x epochs x jobs, a PGD job counting 1 + steps."""
    per_job = sum(1 + (group.cfg.pgd_steps if j.alpha > 0 else 0) for j in jobs)
    return _images(group.train.subset) * group.cfg.epochs * per_job


def _stitch_gpu(n_jobs: int) -> float:
    """GPU share of a pass: a whole GPU for a big multi-job pass, a quarter or a half for small ones (they
    cannot fill a GPU: several run side by side)."""
    return 1.0 if n_jobs >= 16 else 0.5 if n_jobs > 4 else 0.25


@dataclass
class UnitGraph:
    profile: Profile
    units: dict[str, Unit] = field(default_factory=dict)
    users: dict[str, set] = field(default_factory=dict)  # uid -> notebooks that read its results

    def add(self, unit: Unit) -> Unit:
        self.units.setdefault(unit.uid, unit)
        self.use(unit.uid, unit.notebook)
        return self.units[unit.uid]

    def use(self, uid: str, notebook: str) -> None:
        self.users.setdefault(uid, set()).add(notebook)

    def counts(self) -> dict[str, int]:
        c = Counter(u.kind for u in self.units.values())
        return {k: c[k] for k in KINDS if c[k]}

    def jobs(self, kind: str = "stitch_group") -> int:
        """Stitches trained by all units of `kind` (stitch_group) or scored (eval_group: jobs x specs)."""
        a = [u.action for u in self.units.values() if u.kind == kind]
        if kind == "eval_group":
            return sum(x.scores for x in a)
        return sum(len(x.jobs) for x in a)

    def of_kind(self, kind: str) -> list[Unit]:
        return [u for u in self.units.values() if u.kind == kind]

    def runnable(self, notebooks=None) -> list[Unit]:
        """The units with an action of their own, in an order where every dependency comes first; with
        `notebooks` (numbers such as "03") only those the notebooks' own units need."""
        order, seen = [], set()

        def visit(uid):
            if uid in seen:
                return
            seen.add(uid)
            for d in self.units[uid].deps:
                visit(d)
            if self.units[uid].action is not None and self.units[uid].kind != "paper2_pass":
                order.append(self.units[uid])
        for uid in self.units:
            if notebooks is None or self.users.get(uid, set()) & set(notebooks):
                visit(uid)
        return order


def _model_units(P: Profile, g: UnitGraph) -> dict[str, str]:
    """Every model unit; returns config_key(cfg) -> uid for the dependencies of the others."""
    from . import beyond, zoo

    configs = list(zoo.all_zoo_configs(P).items())
    configs += [(f"08 {name}", cfg) for name, cfg in beyond.plan(P).models.items()]
    by_cfg = {}
    for name, cfg in configs:
        kind = "base_model" if zoo.store_kind(cfg) == "model" else "simclr_front"
        key = {"kind": zoo.store_kind(cfg), "config": dataclasses.asdict(cfg)}
        u = g.add(Unit(kind, _uid(kind, key), name, (), TrainModel(cfg), zoo._cost(cfg), 1.0, "00"))
        by_cfg[config_key(cfg)] = u.uid
    return by_cfg


def _model(models: dict[str, str], cfg) -> str:
    k = config_key(cfg)
    if k not in models:
        raise KeyError(f"a testbed uses a model that is not in the zoo: {cfg}")
    return models[k]


def _paper1_groups(P: Profile) -> list[tuple[str, object]]:
    """(notebook, StitchGroup) of notebooks 01-04 in notebook order, from the modules' own stitch_groups."""
    from . import adversarial, class_subsets, crosslayer, shortcut_stitching

    out = [("01", g) for g in adversarial.stitch_groups(adversarial.plan(P))]
    out += [("02", g) for g in shortcut_stitching.stitch_groups(shortcut_stitching.plan(P))]
    out += [("03", g) for g in class_subsets.stitch_groups(class_subsets.plan(P))]
    out += [("04", g) for g in crosslayer.stitch_groups(P, crosslayer.heatmap_objectives(P))]
    return out


def _stitch_units(P: Profile, g: UnitGraph, models: dict[str, str]) -> None:
    owner: dict[str, str] = {}  # stitch key hash -> uid of the pass that trains it
    seen_evals: dict[str, str] = {}  # eval key -> uid of the unit that scores it
    hashes: dict = {}

    def h(obj) -> str:  # configs repeat across thousands of keys: hash each once
        k = (type(obj).__name__, obj)
        if k not in hashes:
            hashes[k] = config_key(obj)
        return hashes[k]

    for nb, group in _paper1_groups(P):
        # a stitch's identity: its store key's parts (front, end, config, data; the job), hashed separately
        prefix = config_key([h(group.front_cfg), h(group.end_cfg), h(group.cfg), h(group.train),
                             config_key(group.key(group.jobs[0])["version"])])
        keys = {j: f"{prefix}/{h(j)}" for j in group.jobs}
        own = tuple(j for j in group.jobs if keys[j] not in owner)
        for j in group.jobs:
            if keys[j] in owner:  # trained by an earlier pass, which this notebook reads too
                g.use(owner[keys[j]], nb)
        if own:
            uid = _uid("stitch_group", [keys[j] for j in own])
            label = group.describe() + (f" ({len(own)} not trained elsewhere)" if len(own) < len(group.jobs) else "")
            g.add(Unit("stitch_group", uid, label, (_model(models, group.front_cfg), _model(models, group.end_cfg)),
                       TrainStitches(group, own), _stitch_cost(group, own), _stitch_gpu(len(own)), nb))
            for j in own:
                owner[keys[j]] = uid
        for jobs, specs in group.evals:
            items, ekeys = [], []
            for spec in specs:
                todo = tuple(j for j in jobs if f"{keys[j]}/{h(spec)}" not in seen_evals)
                for j in jobs:
                    if f"{keys[j]}/{h(spec)}" in seen_evals:
                        g.use(seen_evals[f"{keys[j]}/{h(spec)}"], nb)
                if todo:
                    items.append((spec, todo))
                    ekeys += [f"{keys[j]}/{h(spec)}" for j in todo]
            if not items:
                continue
            uid = _uid("eval_group", ekeys)
            seen_evals.update(dict.fromkeys(ekeys, uid))
            action = Evaluate(group, tuple(items))
            attacked = any(s.attack for s in action.specs)
            deps = tuple(dict.fromkeys(owner[keys[j]] for j in action.jobs))
            cost = sum(len(todo) * _images(s.data.subset) * (1 + (s.pgd_steps or s.autoattack_iter if s.attack else 0))
                       for s, todo in items) / 3
            g.add(Unit("eval_group", uid, f"{group.describe()}, scored on "
                       + ", ".join(s.name for s in action.specs), deps, action, cost, 0.5 if attacked else 0.25, nb))


def _iri_units(P: Profile, g: UnitGraph, models: dict[str, str]) -> dict[str, list[str]]:
    """IRI set units of notebooks 05 and 08; returns notebook -> its IRI unit ids."""
    from . import beyond, iri_testbeds

    out: dict[str, list[str]] = {"05": [], "08": []}
    sched = {"steps": P.iri_steps, "step_size": P.iri_step_size, "seed": iri_testbeds.IRI_SEED}

    def add(nb, cfg, point, source, samples, label):
        key = {"front": cfg, "point": point, "source": source, "samples": samples, **sched}
        cost = _images(samples if samples else P.beyond_samples if source == "colour" else P.stitch_train_subset)
        u = g.add(Unit("iri_set", _uid("iri_set", key), label, (_model(models, cfg),),
                       MakeIRIs(cfg, point, source, samples), cost * P.iri_steps * 3, 0.5, nb))
        out[nb].append(u.uid)

    for r in iri_testbeds.iri_requests(P, iri_testbeds.plan(P)):
        add("05", r.front_cfg, r.point, r.source, P.iri_samples, f"05 {r.testbed}: {getattr(r.front_cfg, 'label', '')} "
            f"point {r.point} on {r.source}")
    bp = beyond.plan(P)
    for cfg, point in beyond.colour_iri_requests(bp):
        add("08", cfg, point, "colour", None, f"08 colour: {getattr(cfg, 'label', '')} point {point}")
    for r in beyond.capacity_iri_requests(bp):
        add("08", r.front_cfg, r.point, r.source, P.iri_samples, f"08 capacity: point {r.point} on {r.source}")
    return out


def _paper2_units(P: Profile, g: UnitGraph, models: dict[str, str], iris: dict[str, list[str]]) -> None:
    """Notebooks 05 and 08: their stitch passes (counted) inside one section unit each."""
    from . import beyond, iri_testbeds, zoo

    pl, bp = iri_testbeds.plan(P), beyond.plan(P)
    model_deps = {"05": [_model(models, c) for c in zoo.paper2_configs(P).values()] + [_model(models, pl.end_cfg)],
                  "08": [_model(models, c) for c in bp.models.values()]}
    passes = {"05": iri_testbeds.stitch_passes(pl), "08": beyond.stitch_passes(bp)}
    for nb, per_testbed in passes.items():
        section = _uid("section", {"notebook": nb, "profile": P.name})
        n = sum(p for p, _ in per_testbed.values())
        stitches = sum(s for _, s in per_testbed.values())
        g.add(Unit("section", section, f"notebook {nb}: {n} stitch passes, {stitches} stitches ("
                   + ", ".join(f"{k} {p}/{s}" for k, (p, s) in per_testbed.items()) + ")",
                   tuple(dict.fromkeys(model_deps[nb] + iris[nb])), RunSection(nb),
                   stitches * P.iri_stitch.epochs * _images(P.iri_samples), 1.0, nb))
        for testbed, (count, n_stitches) in per_testbed.items():
            for i in range(count):
                g.add(Unit("paper2_pass", _uid("paper2_pass", {"nb": nb, "testbed": testbed, "i": i, "profile": P.name}),
                           f"{nb} {testbed} pass {i}", (section,), None, n_stitches / count, 0.0, nb, within=section))


def enumerate_units(profile: Profile | str) -> UnitGraph:
    """The unit graph of a profile, from the testbed modules' plans (no data is read, no model built)."""
    P = get_profile(profile) if isinstance(profile, str) else profile
    g = UnitGraph(P)
    models = _model_units(P, g)
    _stitch_units(P, g, models)
    iris = _iri_units(P, g, models)
    _paper2_units(P, g, models, iris)
    return g


def summary(g: UnitGraph) -> str:
    c = g.counts()
    lines = [f"units of profile {g.profile.name}:"]
    detail = {"stitch_group": f"{g.jobs('stitch_group'):,} stitches trained",
              "eval_group": f"{g.jobs('eval_group'):,} stitch x eval-spec scores",
              "paper2_pass": f"{sum(u.cost for u in g.of_kind('paper2_pass')):,.0f} stitches (notebooks 05, 08)",
              "section": "; ".join(u.label for u in g.of_kind("section"))}
    attacked = [u for u in g.of_kind("eval_group") if any(s.attack for s in u.action.specs)]
    if attacked:
        n = sum(len(jobs) for u in attacked for s, jobs in u.action.items if s.attack)
        kinds = sorted({s.attack for u in attacked for s in u.action.specs if s.attack})
        detail["eval_group"] += f"; {len(attacked)} groups with attacks ({n:,} stitched models under {', '.join(kinds)})"
    adv = sum(1 for u in g.of_kind("stitch_group") for j in u.action.jobs if j.alpha > 0)
    if adv:
        detail["stitch_group"] += f" ({adv:,} with PGD inside)"
    for k, n in c.items():
        lines.append(f"  {k:<13s} {n:6,d}   {detail.get(k, '')}".rstrip())
    lines.append(f"  {'runnable':<13s} {len(g.runnable()):6,d}   (every unit with an action of its own)")
    lines.append("per notebook (units it owns; a shared stitch or score counts where it is first listed):")
    for nb in sorted({u.notebook for u in g.units.values()}):
        mine = [u for u in g.units.values() if u.notebook == nb]
        c = Counter(u.kind for u in mine)
        stitches = sum(len(u.action.jobs) for u in mine if u.kind == "stitch_group")
        stitches += round(sum(u.cost for u in mine if u.kind == "paper2_pass"))
        parts = [f"{c[k]} {k}" for k in KINDS if c[k]]
        lines.append(f"  {nb}: " + ", ".join(parts) + (f"; {stitches:,} stitches" if stitches else ""))
    return "\n".join(lines)


def main(argv=None) -> UnitGraph:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--list", action="store_true", help="also print every unit: kind, id, label, dependencies")
    a = ap.parse_args(argv)
    g = enumerate_units(a.profile)
    print(summary(g))
    if a.list:
        for u in g.units.values():
            print(f"{u.kind:<13s} {u.uid.split(':')[1]} {u.label}  <- {len(u.deps)} deps")
    return g


if __name__ == "__main__":
    main()
