"""fula_core.units: the unit graph of a profile equals what the testbed modules' plans say, and listing it
reads no data and builds no model."""
from __future__ import annotations

import pytest

from fula_core import (adversarial, beyond, class_subsets, config, crosslayer, iri_testbeds, shortcut_stitching,
                       units, zoo)
from fula_core.store import config_key


def _plan_counts(P) -> dict[str, tuple[int, int]]:
    """Per notebook of 01-04, (stitches, stitch x eval-spec scores) counted from its plan's own fields, as its
    run() / check() expect them (before stitches shared between notebooks are merged)."""
    a = adversarial.plan(P)
    n01 = sum(len(t.jobs) + len(t.dm_jobs) for t in a.testbeds) * len(a.seeds)
    e01 = sum(2 * len(t.jobs) + len(t.dm_jobs) for t in a.testbeds) * len(a.seeds)  # DM: clean only
    s = shortcut_stitching.plan(P)
    c = class_subsets.plan(P)
    objectives = crosslayer.heatmap_objectives(P)
    n04 = sum(crosslayer.job_counts(P, objectives, sweep_on="self" if arch == P.archs[0] else None)["total"]
              for arch in P.archs)
    return {"01": (n01, e01), "02": (len(s.jobs) * len(s.testbeds), s.expected_rows() // 2),
            "03": ((len(c.jobs) + len(c.dm_jobs)) * len(c.testbeds), c.expected_rows() // 2), "04": (n04, n04)}


def _distinct(P):
    """Distinct stitch store keys and eval store keys over every pass of 01-04 (the full keys, hashed)."""
    stitches, evals = set(), set()
    per_nb = {}
    for nb, g in units._paper1_groups(P):
        n, e = per_nb.get(nb, (0, 0))
        per_nb[nb] = (n + len(g.jobs), e + sum(len(j) * len(s) for j, s in g.evals))
        stitches |= {config_key(g.key(j)) for j in g.jobs}
        evals |= {config_key(g.eval_key(j, s)) for jobs, specs in g.evals for j in jobs for s in specs}
    return stitches, evals, per_nb


@pytest.mark.parametrize("name", ["smoke", "quick"])
def test_units_are_the_plans(name):
    P = config.get_profile(name)
    g = units.enumerate_units(P)
    stitches, evals, per_nb = _distinct(P)
    assert per_nb == _plan_counts(P)  # each module's passes hold exactly its plan's jobs and evaluations
    assert g.jobs("stitch_group") == len(stitches)  # every stitch trained once, by one unit
    assert g.jobs("eval_group") == len(evals)
    assert len(stitches) < sum(n for n, _ in per_nb.values())  # 02's marker-free passes are 01's stitches
    # models: the zoo plus notebook 08's colour models, SimCLR fronts apart
    n_models = len({config_key(c) for c in [*zoo.all_zoo_configs(P).values(), *beyond.plan(P).models.values()]})
    assert len(g.of_kind("base_model")) + len(g.of_kind("simclr_front")) == n_models
    assert len(g.of_kind("simclr_front")) == len(P.iri_front_seeds)
    # IRI sets: notebook 05's requests (each once), 08's colour sets; 08's capacity sets are 05's
    pl = iri_testbeds.plan(P)
    n05 = len(iri_testbeds.iri_requests(P, pl))
    assert len(g.of_kind("iri_set")) == n05 + len(beyond.colour_iri_requests(beyond.plan(P)))
    passes = {**iri_testbeds.stitch_passes(pl), **beyond.stitch_passes(beyond.plan(P))}
    assert len(g.of_kind("paper2_pass")) == sum(p for p, _ in passes.values())
    _check_graph(g)


def _check_graph(g):
    order = g.runnable()
    position = {u.uid: i for i, u in enumerate(order)}
    for u in g.units.values():
        assert all(d in g.units for d in u.deps), u.label
        if u.kind == "stitch_group":
            assert {g.units[d].kind for d in u.deps} <= {"base_model", "simclr_front"} and len(u.deps) in (1, 2)
        if u.kind == "eval_group":
            assert u.deps and all(g.units[d].kind == "stitch_group" for d in u.deps)
        if u.kind == "iri_set":
            assert len(u.deps) == 1 and g.units[u.deps[0]].kind in ("base_model", "simclr_front")
        if u.uid in position:  # every dependency is scheduled before its unit
            assert all(position[d] < position[u.uid] for d in u.deps if d in position), u.label
    assert {u.kind for u in order} == {"base_model", "simclr_front", "stitch_group", "eval_group", "iri_set", "section"}


def test_a_notebooks_units_include_what_other_notebooks_train_for_it():
    """--only 03: the units of notebook 03 and those of 01 that train and score its all-class stitches."""
    P = config.get_profile("smoke")
    g = units.enumerate_units(P)
    chosen = g.runnable(["03"])
    trained = {config_key(u.action.group.key(j)) for u in chosen if u.kind == "stitch_group" for j in u.action.jobs}
    scored = {config_key(u.action.group.eval_key(j, s)) for u in chosen if u.kind == "eval_group"
              for s, jobs in u.action.items for j in jobs}
    for group in class_subsets.stitch_groups(class_subsets.plan(P)):
        assert {config_key(group.key(j)) for j in group.jobs} <= trained
        assert {config_key(group.eval_key(j, s)) for jobs, specs in group.evals for j in jobs for s in specs} <= scored
    assert {u.notebook for u in chosen} == {"00", "01", "03"}
    assert not any(u.kind in ("iri_set", "section") for u in chosen)


def test_unit_ids_are_stable():
    a, b = units.enumerate_units("smoke"), units.enumerate_units("smoke")
    assert list(a.units) == list(b.units)


def test_paper_enumerates_without_touching_data(monkeypatch):
    """The paper grid is listed from configs alone: loading a data set, a model or a cache file fails here."""
    import torch

    from fula_core import data, simclr, train

    def refuse(*a, **k):
        raise AssertionError("enumerating units must not load data, models or cached results")
    monkeypatch.setattr(data, "load", refuse)
    monkeypatch.setattr(train, "get_model", refuse)
    monkeypatch.setattr(simclr, "get_simclr_model", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    P = config.get_profile("paper")
    g = units.enumerate_units(P)
    stitches, evals, per_nb = _distinct(P)
    assert per_nb == _plan_counts(P)
    assert g.jobs("stitch_group") == len(stitches) and g.jobs("eval_group") == len(evals)
    # Table 1 (3 architectures x 6 models) is part of it, and every architecture has its passes
    assert set(zoo.table1_configs(P)) <= {u.label for u in g.of_kind("base_model")}
    assert {dict(u.action.group.labels)["arch"] for u in g.of_kind("stitch_group")} == set(P.archs)
    _check_graph(g)
