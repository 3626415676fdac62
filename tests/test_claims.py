"""Verdicts with intervals: one claim that holds, one contradicted, one inside the noise, on synthetic scores."""
import numpy as np
import pandas as pd
import pytest

from fula_core import claims

CLAIM = claims.Claim("c1", "99", "Fig 0", "A beats B", a="A", b="B")


def _scores(p, n=400, units=3, seed=0):
    rng = np.random.default_rng(seed)
    return 100.0 * (rng.random((units, n)) < p)


def test_a_clear_difference_holds():
    v = claims.judge(CLAIM, _scores(0.8), _scores(0.6, seed=1))
    assert v.verdict == "HOLDS" and v.ci_low > 0 and 15 < v.margin < 25 and v.n == 400


def test_the_opposite_difference_is_contradicted():
    v = claims.judge(CLAIM, _scores(0.5), _scores(0.7, seed=1))
    assert v.verdict == "CONTRADICTED" and v.ci_high < 0


def test_a_difference_inside_the_noise_is_inconclusive():
    a = _scores(0.7, n=200)
    b = a.copy()
    b[:, :3] = 100 - b[:, :3]  # three images flipped: a sub-point margin on 200 images
    v = claims.judge(CLAIM, a, b)
    assert v.verdict == "INCONCLUSIVE" and v.ci_low <= 0 <= v.ci_high


def test_pairing_narrows_the_interval():
    """Scores that move together on the same images (shared hard images) give a tight paired interval."""
    rng = np.random.default_rng(3)
    hard = rng.random(500) < 0.3
    a = 100.0 * ~hard[None]
    b = a.copy()
    b[0, np.flatnonzero(~hard)[:10]] = 0  # B misses 10 more images than A
    v = claims.judge(CLAIM, a, b)
    assert v.verdict == "HOLDS" and v.ci_high - v.ci_low < 3


def test_seeds_widen_the_interval_when_runs_disagree():
    """Three seeds whose margins disagree (+10, -8, +1): clustered over seeds, the interval covers zero,
    while pooling the units as if they were one run would not."""
    rng = np.random.default_rng(4)
    base = 100.0 * (rng.random((1, 2000)) < 0.6)
    a = np.concatenate([base, base, base])
    b = np.concatenate([base - 10, base + 8, base - 1])
    pooled = claims.judge(CLAIM, a, b)
    clustered = claims.judge(CLAIM, a, b, seeds_a=[1, 2, 3], seeds_b=[1, 2, 3])
    assert clustered.sources == "images+seeds" and pooled.sources == "images"
    assert clustered.verdict == "INCONCLUSIVE" and pooled.verdict == "HOLDS"


def test_judge_values_and_errors():
    v = claims.judge_values(CLAIM, [0.9, 0.8, 0.85], [0.5, 0.55, 0.4])
    assert v.verdict == "HOLDS" and v.n == 3
    with pytest.raises(ValueError, match="same images"):
        claims.judge(CLAIM, _scores(0.5, n=10), _scores(0.5, n=11))
    with pytest.raises(ValueError, match="kind"):
        claims.Claim("x", "01", "Fig 1", "s", "A", "B", kind="opinion")


def test_table_has_the_claims_csv_columns(tmp_path, monkeypatch):
    monkeypatch.setenv("FULA_OUTPUT_DIR", str(tmp_path))
    v = claims.judge(CLAIM, _scores(0.8), _scores(0.6, seed=1))
    assert list(claims.table([v]).columns) == list(claims.CSV_COLUMNS)
    assert "verdict" in claims.render([v]).columns


def test_save_keeps_the_other_notebooks_rows(tmp_path, monkeypatch):
    import pandas as pd

    monkeypatch.setenv("FULA_OUTPUT_DIR", str(tmp_path))
    v1 = claims.judge(CLAIM, _scores(0.8), _scores(0.6, seed=1))
    other = claims.Claim("c2", "98", "Fig 9", "B beats A", a="B", b="A")
    path = claims.save([v1], "smoke", "99")
    claims.save([claims.judge(other, _scores(0.6), _scores(0.8, seed=1))], "smoke", "98")
    claims.save([v1], "smoke", "99")  # rerun of notebook 99: replaced, not appended
    claims.save([v1], "smoke", "99_named")  # the same notebook number under its full name: replaced too
    df = pd.read_csv(path, dtype={"notebook": str})
    assert path.parent == tmp_path / "figures" / "smoke"
    assert sorted(df.claim_id) == ["c1", "c2"] and set(df.verdict) == {"HOLDS", "CONTRADICTED"}
    assert sorted(df.notebook) == ["98", "99_named"]  # rows carry the name the notebook saved them under


# --- judging tidy result rows (experiments.eval_rows) -----------------------------------------------------

def _rows(values_by_objective, seeds=(0,), n=200, rng_seed=0):
    """Tidy rows with per-image accuracy scores: each objective's images are correct with its probability."""
    from fula_core.experiments import eval_rows

    rng = np.random.default_rng(rng_seed)
    rows = []
    for seed in seeds:
        for obj, p in values_by_objective.items():
            correct = rng.random(n) < p
            rows += eval_rows({"accuracy": 100 * correct.mean(), "agreement": 50.0, "correct": correct,
                               "agree": np.full(n, 50.0, np.float32)}, objective=obj, seed=seed, eval="test")
    return pd.DataFrame(rows)


def test_judge_rows_holds_contradicts_and_stays_inside_the_noise():
    c = claims.Claim("x", "01", "Fig 4", "A beats B", "A", "B")
    df = _rows({"a": 0.9, "b": 0.5, "c": 0.5})
    assert claims.judge_rows(c, df, {"objective": "a"}, {"objective": "b"}, metric="accuracy").verdict == "HOLDS"
    assert claims.judge_rows(c, df, {"objective": "b"}, {"objective": "a"}, metric="accuracy").verdict == "CONTRADICTED"
    near = _rows({"a": 0.5, "b": 0.5}, n=50)
    assert claims.judge_rows(c, near, {"objective": "a"}, {"objective": "b"}, metric="accuracy").verdict == "INCONCLUSIVE"


def test_units_clusters_over_the_seed_column_and_refuses_unmatched_filters():
    df = _rows({"a": 0.9, "b": 0.5}, seeds=(0, 1, 2))
    x, seeds = claims.units(df, objective="a", metric="accuracy")
    assert x.shape == (3, 200) and list(seeds) == [0, 1, 2]
    v = claims.judge_rows(claims.Claim("x", "01", "", "", "A", "B"), df, {"objective": "a"}, {"objective": "b"},
                          metric="accuracy")
    assert v.sources == "images+seeds"
    with pytest.raises(ValueError, match="no result row"):
        claims.units(df, objective="zzz")
    with pytest.raises(KeyError, match="no column"):
        claims.units(df, arch="resnet18")


def test_a_threshold_is_judged_against_a_number():
    c = claims.Claim("t", "00", "", "clean accuracy >= 80", "accuracy", "80", kind="target")
    x, _ = claims.units(_rows({"a": 0.95}, n=500), objective="a", metric="accuracy")
    assert claims.judge(c, x, 80.0).verdict == "HOLDS"
    assert claims.judge(c, x, 99.0).verdict == "CONTRADICTED"


def test_summary_counts_paper_claims_apart_from_targets(tmp_path):
    c = claims.Claim
    vs = [claims.Verdict(c("a", "01_x", "", "", "A", "B"), 1, 0, 1, 0.5, 1.5, 10, "images"),
          claims.Verdict(c("b", "01_x", "", "", "A", "B"), 1, 1, 0, -1, 1, 10, "images"),
          claims.Verdict(c("c", "02_y", "", "", "A", "B"), 0, 1, -1, -1.5, -0.5, 10, "images"),
          claims.Verdict(c("t", "00_z", "", "", "A", "90", kind="target"), 95, 90, 5, 4, 6, 10, "images")]
    path = tmp_path / "claims.csv"
    claims.table(vs).to_csv(path, index=False)
    assert claims.summary(path) == ("3 paper claims: 1 hold, 1 contradicted, 1 inconclusive (01: 1/2, 02: 0/1); "
                                    "1 project targets and sanity checks: 1 hold")
