"""Notebook 01's library: the plan's job counts, the Fig. 6 helpers, and every claim on synthetic rows
(one that holds, one contradicted, one inside the noise)."""
import numpy as np
import pandas as pd
import pytest
import torch

from fula_core import adversarial as A
from fula_core import config, models, stitching
from fula_core.data import ImageSet
from fula_core.experiments import DataSpec, EvalSpec, Stitcher, eval_rows
from fula_core.stitching import StitchConfig, StitchJob
from fula_core.store import ResultStore
from fula_core.train import TrainConfig

CLEAN, ROBUST = "test", "test/pgd"
POINTS = (0, 4, 8)
SEEDS = (0, 1, 2)
N = 400


def _scores(p: float, rng) -> dict:
    correct = rng.random(N) < p
    return {"accuracy": 100 * correct.mean(), "agreement": 50.0, "correct": correct, "agree": np.full(N, 50.0, np.float32)}


def stitch_rows(levels, *, task="same", seed_rng=0, objectives=("slm", "tlm", "hint", "fula")):
    """Rows of every pair x objective x alpha (0, 1) x point x seed x eval; accuracy p from `levels`, a
    function (pair, objective, alpha, point, eval) -> probability correct (default 0.5)."""
    rng = np.random.default_rng(seed_rng)
    rows = []
    for pair in A.PAIRS:
        for obj in objectives:
            for alpha in (0.0, 1.0):
                for k in POINTS:
                    for s in SEEDS:
                        for ev in (CLEAN, ROBUST):
                            p = levels(pair, obj, alpha, k, ev)
                            rows += eval_rows(_scores(p, rng), arch="resnet18", task=task, pair=pair, seed=s,
                                              objective=obj, alpha=alpha, front_point=k, end_point=k, eval=ev,
                                              job=f"{obj}[{k}]a{alpha}", error="")
    return pd.DataFrame(rows)


def baseline_rows(p_front, p_end, *, task="same", seed_rng=1, evals=(CLEAN, ROBUST)):
    rng = np.random.default_rng(seed_rng)
    rows = []
    for pair in A.PAIRS:
        for role, p in (("front", p_front), ("end", p_end)):
            for ev in evals:
                for r in eval_rows(_scores(p, rng), role=role, eval=ev):
                    if r["metric"] == "accuracy":
                        rows.append({"arch": "resnet18", "task": task, "pair": pair, "dataset": "fashion_mnist", **r})
    return pd.DataFrame(rows)


def verdicts_of(fn, high, low, same):
    """The claim's verdict on three tables: A high and B low, the reverse, and A = B in distribution."""
    return fn(high), fn(low), fn(same)


def test_plan_counts_smoke_and_quick():
    for name in ("smoke", "quick"):
        P = config.get_profile(name)
        pl = A.plan(P)
        s = pl.summary()
        grid = len(P.alphas) * len(P.objectives) * len(P.stitch_points)
        assert len(s) == 8 * len(P.archs)
        main = s[s.arch == P.archs[0]].set_index(["task", "pair"])["trained jobs"]
        assert main[("cross", A.NR_NR)] == grid and main[("same", A.R_R)] == grid + len(P.stitch_points)
        assert s["of which adversarial"].max() == (len(P.alphas) - 1) * len(P.objectives) * len(P.stitch_points) + len(P.stitch_points)
        assert (s["DM (closed form)"] > 0).sum() == 5  # cross NR->NR (Fig. 3) and the four same-task pairs (Fig. 6)
        assert pl.seeds == tuple(P.stitch_seeds) and pl.robust.eps == (P.adv_eval_eps or P.base.pgd_eps)
        assert pl.adv_cfg == (P.adv_stitch or P.stitch)
        assert pl.clean_cfg == P.stitch  # alpha = 0 stitches keep the keys notebooks 02 and 03 reuse
        assert "robust" in pl.describe()


def test_last_hint_weights():
    assert A.last_hint_weights(8) == (1.0,) and A.last_hint_weights(5) == (0.0, 0.0, 0.0, 1.0)
    assert A.objective_name(StitchJob(5, 5, "fula", 1.0, A.last_hint_weights(5))) == "fula_last"
    assert A.objective_name(StitchJob(5, 5, "fula", 1.0)) == "fula"


def test_stitched_activation_matches_forward():
    torch.manual_seed(0)
    front = models.build("resnet18", 4, in_channels=3, width=4).eval()
    end = models.build("resnet18", 4, in_channels=3, width=4).eval()
    x = torch.rand(6, 3, 16, 16)
    data = ImageSet((x * 255).to(torch.uint8), torch.arange(6) % 4, tuple("abcd"), "synthetic/train")
    job = StitchJob(3, 3, "dm")
    (outcome,) = stitching.train_stitches(front, end, [job], data, StitchConfig(epochs=0, batch_size=4, lstsq_samples=6), progress=False)
    h = outcome.model(front, end)
    a3 = A.stitched_activation(h, x, 3)
    assert torch.allclose(a3, h.stitch(front.activations_upto(x, 3)))
    a8 = A.stitched_activation(h, x, 8)
    assert torch.allclose(end.head(a8), h(x), atol=1e-5)  # the penultimate activation feeds the logits
    assert torch.allclose(A.end_activation(end, x, 3), end.activations_upto(x, 3))
    with pytest.raises(IndexError):
        A.stitched_activation(h, x, 2)


def test_adversarial_cka_cached(tmp_path):
    store = ResultStore(tmp_path)
    cfg = TrainConfig(dataset="synthetic", width=4, epochs=1, batch_size=64, lr=0.05, seed=0)
    st = Stitcher(store, cfg, cfg, StitchConfig(epochs=0, batch_size=32, lstsq_samples=32), DataSpec("synthetic", "train", subset=64),
                  "cpu", progress=False)
    clean = EvalSpec(DataSpec("synthetic", "test", subset=32))
    attacked = EvalSpec(DataSpec("synthetic", "test", subset=32), attack="pgd", eps=0.1, pgd_step=0.05, pgd_steps=2)
    # self-stitching at the penultimate layer with the least-squares stitch is (nearly) the identity
    assert A.adversarial_cka(st, StitchJob(8, 8, "dm"), clean) == pytest.approx(1.0, abs=1e-3)
    value = A.adversarial_cka(st, StitchJob(4, 4, "dm"), attacked)
    assert 0.0 <= value <= 1.0 + 1e-9
    assert A.adversarial_cka(st, StitchJob(4, 4, "dm"), attacked) == value  # from the cache
    assert len(list((tmp_path / "adversarial_cka").glob("*.pt"))) == 2


# ----------------------------------------------------------------------------------------------------
# Claims: holds / contradicted / inside the noise


def _levels(rule):
    def levels(pair, obj, alpha, k, ev):
        v = rule(pair, obj, alpha, k, ev)
        return 0.5 if v is None else v
    return levels


def _check(verdicts, sources="images+seeds"):
    hi, lo, same = verdicts
    assert (hi.verdict, lo.verdict, same.verdict) == ("HOLDS", "CONTRADICTED", "INCONCLUSIVE"), (hi, lo, same)
    assert hi.sources == sources


def _tb_rule(tb, ab):
    """Robust accuracy at alpha 1 between non-robust models: tb for SLM/TLM, ab for Hint/FuLA."""
    def rule(pair, obj, alpha, k, ev):
        if pair == A.NR_NR and alpha == 1.0 and ev == ROBUST:
            return tb if obj in A.TASK_BASED else ab
    return _levels(rule)


def test_claim_task_beats_alignment_robust():
    def fn(rows):
        return A.claim_task_beats_alignment_robust(rows, "same", 1.0, ROBUST)
    _check(verdicts_of(fn, stitch_rows(_tb_rule(0.2, 0.02)), stitch_rows(_tb_rule(0.02, 0.2)),
                       stitch_rows(_tb_rule(0.1, 0.1))))


def test_claim_fabricated_robustness():
    rows = stitch_rows(_tb_rule(0.2, 0.02))
    hi = A.claim_fabricated_robustness(rows, baseline_rows(0.01, 0.03), "same", 1.0, ROBUST)
    lo = A.claim_fabricated_robustness(rows, baseline_rows(0.01, 0.5), "same", 1.0, ROBUST)
    same = A.claim_fabricated_robustness(rows, baseline_rows(0.2, 0.05), "same", 1.0, ROBUST)
    _check((hi, lo, same))
    assert same.claim.b == "robust acc. front baseline"  # the better of the two baselines is the bar
    # a cross-task front is scored on its own task (other images): only the end baseline qualifies
    base = baseline_rows(0.9, 0.03, task="cross")
    base["scores"] = [np.zeros(10, np.float32) if r == "front" else x for r, x in zip(base.role, base.scores)]
    base["dataset"] = ["digits" if r == "front" else d for r, d in zip(base.role, base.dataset)]
    v = A.claim_fabricated_robustness(stitch_rows(_tb_rule(0.2, 0.02), task="cross"), base, "cross", 1.0, ROBUST)
    assert v.verdict == "HOLDS" and v.claim.b == "robust acc. end baseline"


def test_claim_clean_cost():
    def rule(tb, ab):
        return _levels(lambda pair, obj, alpha, k, ev: (tb if obj in A.TASK_BASED else ab)
                       if (pair == A.NR_NR and alpha == 1.0 and ev == CLEAN) else None)

    def fn(rows):
        return A.claim_clean_cost(rows, "same", 1.0, CLEAN)
    _check(verdicts_of(fn, stitch_rows(rule(0.7, 0.85)), stitch_rows(rule(0.85, 0.7)), stitch_rows(rule(0.8, 0.8))))


def test_claim_alignment_needs_robust_model():
    def rule(nr, other):
        return _levels(lambda pair, obj, alpha, k, ev: (nr if pair == A.NR_NR else other)
                       if (alpha == 1.0 and ev == ROBUST) else None)

    def fn(rows):
        return A.claim_alignment_needs_robust_model(rows, "cross", A.NR_R, 1.0, ROBUST)
    _check(verdicts_of(fn, stitch_rows(rule(0.02, 0.4), task="cross"), stitch_rows(rule(0.4, 0.02), task="cross"),
                       stitch_rows(rule(0.1, 0.1), task="cross")))
    assert fn(stitch_rows(rule(0.02, 0.4), task="cross")).claim.id == "adv_ab_robust_cross_nr_r"


def test_claim_interpolates():
    rows = stitch_rows(_levels(lambda pair, obj, alpha, k, ev: 0.8 if ev == CLEAN else None))
    hi = A.claim_interpolates(rows, baseline_rows(0.85, 0.9), "same", CLEAN)
    lo = A.claim_interpolates(rows, baseline_rows(0.6, 0.7), "same", CLEAN)
    same = A.claim_interpolates(rows, baseline_rows(0.5, 0.8), "same", CLEAN)
    _check((hi, lo, same))
    assert hi.claim.kind == "sanity"


def test_claim_fula_beats_hint():
    def rule(fula, hint):
        return _levels(lambda pair, obj, alpha, k, ev: {"fula": fula, "hint": hint}.get(obj) if ev == CLEAN else None)

    def fn(rows):
        return A.claim_fula_beats_hint(rows, CLEAN)
    _check(verdicts_of(fn, stitch_rows(rule(0.85, 0.8)), stitch_rows(rule(0.8, 0.85)), stitch_rows(rule(0.8, 0.8))))


def test_claim_hint_beats_fula_deepest():
    def rule(hint, fula):
        return _levels(lambda pair, obj, alpha, k, ev: {"fula": fula, "hint": hint}.get(obj)
                       if (pair == A.NR_R and alpha == 1.0 and k == 8 and ev == CLEAN) else None)

    def fn(rows):
        return A.claim_hint_beats_fula_deepest(rows, 1.0, 8, CLEAN)
    _check(verdicts_of(fn, stitch_rows(rule(0.8, 0.6)), stitch_rows(rule(0.6, 0.8)), stitch_rows(rule(0.7, 0.7))))


def test_claim_last_hint_decays():
    def rule(nr_r_deep, other_deep):
        def levels(pair, obj, alpha, k, ev):
            if k != 8:
                return 0.8
            return nr_r_deep if pair == A.NR_R else other_deep
        return levels

    def fn(rows):
        return A.claim_last_hint_decays(rows, CLEAN)
    tables = [stitch_rows(rule(a, b), objectives=("fula_last",)) for a, b in ((0.3, 0.7), (0.7, 0.3), (0.5, 0.5))]
    _check(verdicts_of(fn, *tables))


def test_claim_cka_least_similar():
    def cka(nr_r, others, noise=0.0):
        rng = np.random.default_rng(0)
        return pd.DataFrame([{"arch": "resnet18", "task": "same", "pair": p, "seed": s, "front_point": 8,
                              "value": (nr_r if p == A.NR_R else others) + noise * rng.standard_normal()}
                             for p in A.PAIRS for s in range(5)])
    hi, lo = A.claim_cka_least_similar(cka(0.3, 0.8)), A.claim_cka_least_similar(cka(0.9, 0.8))
    same = A.claim_cka_least_similar(cka(0.7, 0.7, noise=0.05))
    assert (hi.verdict, lo.verdict, same.verdict) == ("HOLDS", "CONTRADICTED", "INCONCLUSIVE")


def test_claim_hint_beats_dm():
    def rule(hint, dm):
        return _levels(lambda pair, obj, alpha, k, ev: {"hint": hint, "dm": dm}.get(obj) if ev == CLEAN else None)

    def fn(rows):
        return A.claim_hint_beats_dm(rows, "cross", CLEAN)
    tables = [stitch_rows(rule(a, b), task="cross", objectives=("hint", "dm")) for a, b in ((0.8, 0.6), (0.6, 0.8), (0.7, 0.7))]
    _check(verdicts_of(fn, *tables))
