"""The verdicts of notebooks 00 (Table 1), 06 (explorer) and 07 (your models), and claims.judge_proportions:
for every claim function one case that holds, one contradicted and one inside the noise, on small synthetic
tables (no training)."""
import dataclasses

import numpy as np
import pandas as pd
import pytest

from fula_core import claims, explorer, yourmodels, zoo
from fula_core.config import get_profile

CLAIM = claims.Claim("x", "nb", "fig", "A beats B", "A", "B")


def test_judge_proportions():
    assert claims.judge_proportions(CLAIM, 80.0, 1000, 60.0, 1000).verdict == "HOLDS"
    assert claims.judge_proportions(CLAIM, 60.0, 1000, 80.0, 1000).verdict == "CONTRADICTED"
    v = claims.judge_proportions(CLAIM, 61.0, 1000, 60.0, 1000)
    assert v.verdict == "INCONCLUSIVE" and v.sources == "images (unpaired)" and v.margin == pytest.approx(1.0)
    # against a threshold, and with a tolerance added to A
    assert claims.judge_proportions(CLAIM, 92.0, 10000, 90.0).verdict == "HOLDS"
    assert claims.judge_proportions(CLAIM, 88.0, 10000, 90.0).verdict == "CONTRADICTED"
    v = claims.judge_proportions(CLAIM, 89.0, 500, 90.0, shift=1.0)
    assert v.verdict == "INCONCLUSIVE" and v.value_a == 90.0


def table1(clean=93.0, robust_clean=82.0, robust_pgd=70.0, robust_aa=55.0, clean_aa=0.0):
    """Table 1 of the quick profile's main architecture with the end model's numbers as given."""
    P = get_profile("quick")
    rows = []
    for mid, cfg in zoo.zoo_configs(P).items():
        r = cfg.robust
        rows.append({"model": mid, "dataset": cfg.dataset, "arch": cfg.arch, "width": cfg.width, "robust": r,
                     "accuracy": robust_clean if r else clean, "pgd_accuracy": robust_pgd if r else 0.0,
                     "autoattack_accuracy": robust_aa if r else clean_aa, "eps": cfg.pgd_eps})
    return dataclasses.replace(P, archs=P.archs[:1]), pd.DataFrame(rows)


def verdicts_by_id(P, table):
    return {v.claim.id.split("[")[0]: v.verdict for v in zoo.claims(table, P) if "fashion_mnist_0" in v.claim.id}


def test_table1_claims():
    P, t = table1()
    zoo.check_structure(t, P)
    assert set(verdicts_by_id(P, t).values()) == {"HOLDS"}
    kinds = {v.claim.kind for v in zoo.claims(t, P)}
    assert kinds == {"sanity", "target"}
    # contradicted: a robust twin that is less robust than its clean model and misses every target
    P, t = table1(clean=85.0, robust_clean=92.0, robust_pgd=20.0, robust_aa=40.0, clean_aa=60.0)
    v = verdicts_by_id(P, t)
    assert v == {"robust_more_robust": "CONTRADICTED", "robust_pays_clean": "CONTRADICTED",
                 "autoattack_stronger": "CONTRADICTED", "clean_target": "CONTRADICTED",
                 "robust_clean_target": "HOLDS", "robust_pgd_target": "CONTRADICTED"}
    # inside the noise: the numbers sit on the targets and on each other
    P, t = table1(clean=90.0, robust_clean=90.0, robust_pgd=50.0, robust_aa=50.0, clean_aa=50.0)
    v = verdicts_by_id(P, t)
    assert v["robust_more_robust"] == v["autoattack_stronger"] == v["clean_target"] == "INCONCLUSIVE"
    assert v["robust_pays_clean"] == v["robust_pgd_target"] == "INCONCLUSIVE"
    with pytest.raises(ValueError, match="one row per model"):
        zoo.check_structure(t.iloc[1:], P)


def _correct(rate, n=1000, seed=0):
    x = np.zeros(n)
    x[np.random.default_rng(seed).permutation(n)[:round(rate / 100 * n)]] = 100.0
    return x


def test_explorer_self_stitch_claim():
    def result(stitched, end, seed=1):
        return {"job": "fula[4->4]", "end": "m0", "front_point": 4, "status": "cached",
                "accuracy_scores": _correct(stitched, seed=seed), "end_accuracy_scores": _correct(end, seed=2)}

    assert explorer.claim_self_stitch_keeps_accuracy(result(90, 90, seed=2)).verdict == "HOLDS"  # the same images right
    assert explorer.claim_self_stitch_keeps_accuracy(result(70, 90)).verdict == "CONTRADICTED"
    v = explorer.claim_self_stitch_keeps_accuracy(result(88, 90))  # exactly the tolerance lower
    assert v.verdict == "INCONCLUSIVE" and "point 5" in v.claim.statement  # the paper's 1..9 numbering
    with pytest.raises(ValueError, match="per-image"):
        explorer.claim_self_stitch_keeps_accuracy({**result(90, 90), "accuracy_scores": None})


def your_results(real, iri):
    rows = []
    for n, (r, i) in enumerate(zip(real, iri)):
        for data, value in (("real", r), ("iri", i)):
            rows.append({"pair": "resnet->vgg16", "front_point": f"p{n}", "end_point": f"q{n}", "objective": "fula",
                         "data": data, "agreement": value})
    return pd.DataFrame(rows)


def test_your_models_iri_claim():
    assert yourmodels.claim_iri_agree_less(your_results([80, 85, 90], [40, 50, 45]), "fula").verdict == "HOLDS"
    assert yourmodels.claim_iri_agree_less(your_results([40, 50, 45], [80, 85, 90]), "fula").verdict == "CONTRADICTED"
    v = yourmodels.claim_iri_agree_less(your_results([80, 40, 60], [40, 80, 61]), "fula")
    assert v.verdict == "INCONCLUSIVE" and v.n == 3
    with pytest.raises(ValueError, match="real-data and an IRI"):
        yourmodels.claim_iri_agree_less(your_results([80], [40]).iloc[:1], "fula")


def test_table1_pgd_does_not_depend_on_the_global_generator(monkeypatch):
    """Table 1's PGD column draws its random start from its own generator: the same model gives the same
    adversarial examples whatever the process drew before (the notebook order, a cache hit)."""
    import torch

    from fula_core import attacks, models
    from fula_core.train import TrainConfig

    crafted = []
    real = attacks._ATTACKS["pgd"]
    monkeypatch.setitem(attacks._ATTACKS, "pgd", lambda *a, **kw: crafted.append(real(*a, **kw)) or crafted[-1])
    monkeypatch.setitem(attacks._ATTACKS, "autoattack", lambda model, x, y, **kw: x)  # not under test here
    P = dataclasses.replace(get_profile("smoke"), robust_eval_subset=16)
    cfg = TrainConfig(dataset="synthetic", width=4, pgd_eps=0.1, pgd_step=0.05, pgd_steps=2)
    torch.manual_seed(0)
    model = models.build("resnet18", 4, 3, width=4).eval()
    for seed in (1, 2):
        torch.manual_seed(seed)
        zoo.evaluate_base_model(model, cfg, P, "cpu")
    assert len(crafted) == 2 and torch.equal(crafted[0], crafted[1])
