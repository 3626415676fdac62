"""Notebook 08's library side: the plan per profile, per-image scores that match the pooled metrics, and
claims that turn rows into the verdicts their statements say."""
import pytest
import torch

from fula_core import beyond, config, metrics
from fula_core.claims import Verdict


@pytest.mark.parametrize("name", ["smoke", "quick", "paper"])
def test_plan(name):
    pl = beyond.plan(config.get_profile(name))
    assert set(pl.senders) == set(beyond.SENDERS)
    assert pl.senders["untrained"].epochs == 0 and pl.receiver.epochs > 0
    assert pl.senders["second Shape"].seed != pl.receiver.seed and pl.senders["second Shape"].dataset == pl.receiver.dataset
    assert [f for _, f, _ in pl.families] == ["identity", "low_rank", "affine", "mlp"]
    assert len({cfg.dataset for cfg in pl.models.values()}) == 3
    # replicates: each its own receiver and senders, every model from its own seed (untrained ones included)
    P = config.get_profile(name)
    assert len(pl.replicates) == P.beyond_replicates == {"smoke": 1, "quick": 2, "paper": 3}[name]
    assert len(pl.models) == 5 * len(pl.replicates)
    seeds = [(cfg.dataset, cfg.seed) for cfg in pl.models.values() if cfg.epochs > 0]
    assert len(set(seeds)) == len(seeds)
    assert len({cfg.seed for cfg in pl.models.values()}) == 3 * len(pl.replicates)
    assert pl.models["Shape receiver"] == pl.receiver  # the first replicate keeps the names (and cache keys) it had
    assert len(beyond.colour_iri_requests(pl)) == 4 * len(pl.replicates) * len(pl.points)


def test_per_image_agreement_matches_the_metric():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 10, generator=g), torch.randn(50, 10, generator=g)
    assert beyond.per_image_agreement(a, b).mean().item() == pytest.approx(metrics.agreement_probability(a, b), abs=1e-4)
    assert torch.allclose(beyond.per_image_agreement(a, a), torch.full((50,), 100.0))


def _rows(scores: dict, n=200, points=(1, 2), seed=0):
    """Fake colour rows: scores[(sender, objective, data)] = (accuracy, agreement) given to every image."""
    rows = []
    for (sender, obj, data), (acc, agree) in scores.items():
        for p in points:
            noise = torch.rand(n, generator=torch.Generator().manual_seed(p)) * 0.01
            rows.append({"sender": sender, "objective_name": obj, "data": data, "point": p, "seed": seed, "error": None,
                         "img_correct_correlated": torch.full((n,), acc) + noise,
                         "img_agreement_correlated": torch.full((n,), agree) + noise,
                         "img_agreement_shape": torch.full((n,), agree) + noise})
    return rows


def test_colour_claims_follow_the_rows():
    scores = {}
    for obj in beyond.OBJECTIVES:
        for sender in beyond.SENDERS:
            # standard stitching: everyone at ~99; IRIs: only the second Shape model stays high
            scores[sender, obj, "real"] = (99.0, 99.0)
            scores[sender, obj, "iri"] = (99.0, 95.0 if sender == "second Shape" else 40.0)
    verdicts = {v.claim.id: v for v in beyond.colour_claims(_rows(scores))}
    assert all(isinstance(v, Verdict) for v in verdicts.values())
    assert verdicts["smith_colour_only_stitches"].verdict == "HOLDS"  # equal accuracy, within 2 pp
    assert verdicts["iri_fula_separates_colour_only"].verdict == "HOLDS"
    assert verdicts["iri_fula_separates_colour_only"].margin == pytest.approx(55.0, abs=0.1)
    assert verdicts["iri_fula_widens_colour_gap"].verdict == "HOLDS"
    assert verdicts["smith_misleads_on_shape"].verdict == "INCONCLUSIVE"  # identical agreement on Shape test
    # a colour-only stitch 10 pp below the second Shape model: Smith et al.'s claim is contradicted
    scores["Colour-Only", "HLM", "real"] = (89.0, 89.0)
    verdicts = {v.claim.id: v for v in beyond.colour_claims(_rows(scores))}
    assert verdicts["smith_colour_only_stitches"].verdict == "CONTRADICTED"
    assert verdicts["smith_misleads_on_shape"].verdict == "HOLDS"


def test_capacity_claims_follow_the_rows():
    families = ("identity", "rank 4", "affine", "MLP")
    rows = []
    for fam in families:
        for pair in beyond.PAIRS:
            for obj in ("HLM", "FuLA"):
                for data in ("real", "iri"):
                    agree = 90.0 if pair != "cross-bias" else (50.0 if obj == "FuLA" else {"rank 4": 60.0, "MLP": 90.0}.get(fam, 70.0))
                    rows.append({"pair": pair, "family": fam, "objective_name": obj, "data": data, "point": 4, "seed": 1,
                                 "error": None, "img_agreement_test": torch.full((100,), agree) + torch.rand(100) * 0.01})
    verdicts = {v.claim.id: v for v in beyond.capacity_claims(rows, families)}
    assert all(verdicts[f"capacity_fula_verdict_{f.replace(' ', '')}"].verdict == "HOLDS" for f in families)
    assert verdicts["capacity_hlm_fabricates_real"].verdict == "HOLDS"
    assert verdicts["capacity_hlm_fabricates_real"].margin == pytest.approx(30.0, abs=0.1)


def test_colour_claims_resample_the_model_replicates():
    """Two replicates that disagree (the gap widens on IRIs in one, narrows in the other) leave the gap claim
    inconclusive, though each replicate alone is decisive over its images."""
    def scores(iri_gap):
        out = {}
        for obj in beyond.OBJECTIVES:
            for sender in beyond.SENDERS:
                out[sender, obj, "real"] = (99.0, 90.0 if sender == "second Shape" else 70.0)  # real gap: 20
                out[sender, obj, "iri"] = (99.0, 90.0 if sender == "second Shape" else 90.0 - iri_gap)
        return out

    wide, narrow = _rows(scores(40.0), seed=0), _rows(scores(5.0), seed=1)
    alone = {v.claim.id: v.verdict for v in beyond.colour_claims(wide)}
    assert alone["iri_fula_widens_colour_gap"] == "HOLDS"
    assert {v.claim.id: v.verdict for v in beyond.colour_claims(narrow)}["iri_fula_widens_colour_gap"] == "CONTRADICTED"
    both = {v.claim.id: v for v in beyond.colour_claims(wide + narrow)}
    assert both["iri_fula_widens_colour_gap"].verdict == "INCONCLUSIVE"
