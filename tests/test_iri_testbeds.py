"""Notebook 05's testbeds: the plan, the tidy rows, and every claim on synthetic rows (holds / contradicted /
inside the noise)."""
import numpy as np
import pandas as pd
import pytest

from fula_core import config
from fula_core import iri_testbeds as T

REPS = ("f1s0", "f1s1", "f1s2")
POINTS = (1, 4, 7)  # deeper half: 4, 7


def _rows(entries, n=200, sd=10.0, reps=REPS, seed=0):
    """Synthetic tidy rows: each (labels, level) for every replicate, per-image scores level + noise whose mean
    is exactly zero (so an 'equal' A and B have a margin of 0 and an interval around it)."""
    rng = np.random.default_rng(seed)
    out = []
    for labels, level in entries:
        for r in reps:
            noise = rng.normal(0, sd, n)
            scores = (level + noise - noise.mean()).astype(np.float32)
            out.append({"metric": "agreement", **labels, "replicate": r, "seed": int(r[1]), "stitch_seed": int(r[3]),
                        "value": float(scores.mean()), "scores": scores})
    return pd.DataFrame(out)


def _verdict(v):
    return v.verdict


CASES = ("holds", "contradicted", "noise")


# --- information testbed -----------------------------------------------------------------------------------

def _info(levels):
    """levels: {(pair, data, objective, point, metric): level}, missing combinations at 50."""
    entries = [(dict(pair=p, data=d, objective_name=o, point=pt, metric=m), levels.get((p, d, o, pt, m), 50.0))
               for p in T.PAIRS for d in ("real", "iri") for o in T.OBJECTIVES for pt in POINTS
               for m in ("agreement", "chance_normalised_agreement")]
    return _rows(entries)


def _fill(level, **where):
    keys = [(p, d, o, pt, m) for p in T.PAIRS for d in ("real", "iri") for o in T.OBJECTIVES for pt in POINTS
            for m in ("agreement", "chance_normalised_agreement")]
    return {k: level for k in keys if all(k[("pair", "data", "objective_name", "point", "metric").index(c)] in
                                          (v if isinstance(v, (list, tuple)) else [v]) for c, v in where.items())}


INFO_CASES = {
    "real_similar": (lambda lv: _fill(lv, data="real", metric="agreement"), (90, 60, T.SIMILAR_REAL),
                     lambda df: T.claim_real_pairs_similar(df)),
    "identical": (lambda lv: _fill(lv, data="iri", pair="identical", metric="agreement"), (99, 80, T.NEAR_100),
                  lambda df: T.claim_identical_near_100(df)),
    "decays": (lambda lv: {**_fill(lv[0], data="iri", pair="cross-seed", point=1),
                           **_fill(lv[1], data="iri", pair="cross-seed", point=7)},
               ((90, 60), (60, 90), (70, 70)), lambda df: T.claim_cross_seed_decays(df, POINTS)),
    "supervision": (lambda lv: {**_fill(lv[0], data="iri", pair="cross-seed"),
                                **_fill(lv[1], data="iri", pair="cross-supervision")},
                    ((80, 40), (40, 80), (60, 60)), lambda df: T.claim_cross_supervision_faster(df, POINTS)),
    "chance": (lambda lv: _fill(lv, data="iri", pair="cross-bias", metric="chance_normalised_agreement"),
               (10, 90, T.TOWARD_CHANCE), lambda df: T.claim_cross_bias_chance(df, POINTS)),
    "below_seed": (lambda lv: {**_fill(lv[0], data="iri", pair="cross-seed", point=7),
                               **_fill(lv[1], data="iri", pair="cross-bias", point=7)},
                   ((80, 20), (20, 80), (50, 50)), lambda df: T.claim_cross_bias_below_cross_seed(df, POINTS)),
    "hlm": (lambda lv: {**_fill(lv[0], data="iri", pair="cross-bias", objective_name="HLM"),
                        **_fill(lv[1], data="real", pair="cross-bias", objective_name="HLM")},
            ((90, 92), (50, 90), (80, 80 + T.HLM_SLACK)), lambda df: T.claim_hlm_stays_high(df, POINTS)),
}


@pytest.mark.parametrize("name", sorted(INFO_CASES))
@pytest.mark.parametrize("case", CASES)
def test_information_claims(name, case):
    levels_of, levels, judge = INFO_CASES[name]
    v = judge(_info(levels_of(levels[CASES.index(case)])))
    assert _verdict(v) == {"holds": "HOLDS", "contradicted": "CONTRADICTED", "noise": "INCONCLUSIVE"}[case], v
    assert v.sources == "images+seeds" and v.claim.notebook == T.NB


def test_claims_ignore_the_objectives_they_do_not_name():
    """The cross-bias chance claim is about SLM/FuLA/DM: HLM staying high must not move it."""
    lv = {**_fill(10, data="iri", pair="cross-bias", metric="chance_normalised_agreement"),
          **_fill(95, data="iri", pair="cross-bias", objective_name="HLM", metric="chance_normalised_agreement")}
    v = T.claim_cross_bias_chance(_info(lv), POINTS)
    assert v.verdict == "HOLDS" and v.value_b == pytest.approx(10, abs=0.01)


# --- adversarial and shortcut testbeds ----------------------------------------------------------------------

def _adv(mixed_gap, matched_gap):
    entries = []
    for fk in ("clean", "robust"):
        for ek in ("clean", "robust"):
            gap = mixed_gap if fk != ek else matched_gap
            for d, lv in (("real", 90), ("iri", 90 - gap)):
                entries.append((dict(front_kind=fk, end_kind=ek, pair=f"{fk} → {ek}", alpha=0.0, data=d,
                                     objective_name="FuLA", point=7), lv))
    return _rows(entries)


@pytest.mark.parametrize("case, gaps", [("holds", (30, 5)), ("contradicted", (5, 30)), ("noise", (15, 15))])
def test_adversarial_claim(case, gaps):
    v = T.claim_adv_mixed_lose_more(_adv(*gaps))
    assert v.verdict == {"holds": "HOLDS", "contradicted": "CONTRADICTED", "noise": "INCONCLUSIVE"}[case]
    assert v.margin == pytest.approx(gaps[0] - gaps[1], abs=0.01)


def _shortcut(task, alignment, data="real"):
    entries = [(dict(marker=m, data=d, objective_name=o, point=4, metric="excess_agreement"),
                (task if o in ("HLM", "SLM") else alignment) if (m == "Pixel" and d == data) else 0.0)
               for m in T.MARKERS for d in ("real", "iri") for o in T.OBJECTIVES]
    return _rows(entries)


@pytest.mark.parametrize("case, levels", [("holds", (20, 0)), ("contradicted", (-10, 0)), ("noise", (0, 0))])
def test_shortcut_task_exploit(case, levels):
    v = T.claim_shortcut_task_exploit(_shortcut(*levels))
    assert v.verdict == {"holds": "HOLDS", "contradicted": "CONTRADICTED", "noise": "INCONCLUSIVE"}[case]


def test_exploiting_needs_a_positive_gain():
    """Task-based excess below FuLA/DM's but both negative: 'more' may hold, 'exploit' must not."""
    df = _shortcut(-2, -20)
    assert T.claim_shortcut_task_more(df).verdict == "HOLDS"
    assert T.claim_shortcut_task_exploit(df).verdict == "CONTRADICTED"


@pytest.mark.parametrize("case, levels", [("holds", (20, 2)), ("contradicted", (2, 20)), ("noise", (8, 8))])
def test_shortcut_task_more(case, levels):
    v = T.claim_shortcut_task_more(_shortcut(*levels))
    assert v.verdict == {"holds": "HOLDS", "contradicted": "CONTRADICTED", "noise": "INCONCLUSIVE"}[case]


@pytest.mark.parametrize("case, level", [("holds", 0.0), ("contradicted", 20.0), ("noise", T.NO_EXPLOIT)])
def test_shortcut_iri_no_exploit(case, level):
    v = T.claim_shortcut_iri_no_exploit(_shortcut(30, level, data="iri"))
    assert v.verdict == {"holds": "HOLDS", "contradicted": "CONTRADICTED", "noise": "INCONCLUSIVE"}[case]


# --- CKA, IRI errors, fronts --------------------------------------------------------------------------------

def _cka(cka, ifula, spread=(0.0,)):
    rows = []
    for s in range(1, 7):
        for p in POINTS:
            d = spread[(s + p) % len(spread)]
            rows.append({"pair": "cross-bias", "seed": s, "point": p, "measure": "CKA on real data", "value": cka + d})
            rows.append({"pair": "cross-bias", "seed": s, "point": p, "measure": "I-FuLA (chance-normalised) / 100",
                         "value": ifula})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("case, args", [("holds", (0.9, 0.2)), ("contradicted", (0.2, 0.9)),
                                        ("noise", (0.5, 0.5, (0.1, -0.1)))])
def test_cka_claim(case, args):
    v = T.claim_cka_misses_bias(_cka(*args), POINTS)
    assert v.verdict == {"holds": "HOLDS", "contradicted": "CONTRADICTED", "noise": "INCONCLUSIVE"}[case]
    assert v.n == 12 and v.claim.kind == "target"  # 6 seeds x 2 deep points


@pytest.mark.parametrize("case, finals", [("holds", [0.2, 0.3, 0.25]), ("contradicted", [0.8, 0.9, 0.7]),
                                          ("noise", [0.4, 0.6, 0.45, 0.55])])
def test_iri_error_claim(case, finals):
    iris = pd.DataFrame({"initial_error": [1.0] * len(finals), "final_error": finals})
    v = T.claim_iri_error_halved(iris)
    assert v.verdict == {"holds": "HOLDS", "contradicted": "CONTRADICTED", "noise": "INCONCLUSIVE"}[case]
    assert v.claim.kind == "sanity"


def _fronts(with_correct, without_correct, n=400):
    rows = []
    for ev, k in (("with markers", with_correct), ("without markers", without_correct)):
        scores = np.zeros(n, np.float32)
        scores[:int(k * n)] = 100  # nested correct sets: the same images stay correct
        rows.append({"pair": "cross-bias", "seed": 1, "model": "m", "eval": ev, "metric": "accuracy",
                     "value": float(scores.mean()), "scores": scores})
    rows.append({"pair": "cross-seed", "seed": 1, "model": "n", "eval": "test", "metric": "accuracy", "value": 0.0,
                 "scores": np.zeros(n, np.float32)})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("case, acc", [("holds", (0.9, 0.5)), ("contradicted", (0.6, 0.6)), ("noise", (0.7, 0.6))])
def test_cross_bias_front_claim(case, acc):
    v = T.claim_cross_bias_relies_on_markers(_fronts(*acc))
    assert v.verdict == {"holds": "HOLDS", "contradicted": "CONTRADICTED", "noise": "INCONCLUSIVE"}[case]


# --- plan and tidy rows ----------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", ["smoke", "quick"])
def test_plan_counts(profile):
    P = config.get_profile(profile)
    pl = T.plan(P)
    reps = len(P.iri_front_seeds) * len(P.iri_stitch_seeds)
    assert len(pl.repeats) == reps and len(pl.info_fronts) == 4 * len(P.iri_front_seeds)
    assert len(pl.adv_pairs) == 4 * len(P.iri_front_seeds)
    rows = pl.expected_rows()
    assert rows["information"] == reps * 4 * 2 * 4 * len(P.iri_points)
    assert rows["shortcut"] == reps * 3 * 2 * 4 * len(P.iri_shortcut_points)
    assert rows["adversarial"] == reps * 4 * 2 * 3 * len(P.iri_adv_points) * len(P.iri_adv_alphas)
    summary = pl.summary()
    assert list(summary.testbed) == ["information", "adversarial", "shortcut"]
    assert summary.set_index("testbed").loc["information", "points"] == ", ".join(str(p + 1) for p in P.iri_points)
    if profile == "quick":
        assert P.iri_stitch_seeds == (0, 1) and rows["information"] == 3 * 4 * 2 * 4 * 2


def test_stitch_seeds_keep_the_authors_seed_and_differ():
    pl = T.plan(config.get_profile("quick"))
    seeds = {pl.stitch_config(s, t).seed for s, t in [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]}
    assert pl.stitch_config(1, 0).seed == 1 and len(seeds) == 5


def test_tidy_keeps_per_image_scores_and_numbers_layers_from_one():
    import torch

    wide = [{"objective": "fula", "point": 3, "data": "iri", "agreement": 80.0, "agreement_scores": torch.tensor([70., 90.]),
             "accuracy": 50.0, "accuracy_scores": torch.tensor([0., 100.]), "error": None, "pair": "x"}]
    long = pd.DataFrame(T.tidy(wide, ("agreement",)))
    assert list(long.metric) == ["agreement"] and long.layer.tolist() == [4]
    assert "accuracy" not in long.columns  # an unrequested measure with scores is dropped, not left as a column
    np.testing.assert_allclose(long.scores[0], [70, 90])


@pytest.mark.slow
def test_run_smoke_end_to_end(tmp_path):
    """The whole notebook on the smoke profile: every row, every claim (numbers meaningless)."""
    import torch

    from fula_core.store import ResultStore

    P = config.get_profile("smoke")
    res = T.run(P, ResultStore(tmp_path), torch.device("cpu"), progress=False)
    verdicts = T.claims(res, P)
    assert len(verdicts) == 14 and len({v.claim.id for v in verdicts}) == 14
    # fula_core.units schedules exactly the IRI sets the run makes (iri_requests mirrors run()'s requests)
    assert len(res.iris) == len(T.iri_requests(P, T.plan(P)))
    assert res.info.scores.map(len).eq(P.iri_eval_subset).all()
