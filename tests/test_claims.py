"""Verdicts with intervals: one claim that holds, one contradicted, one inside the noise, on synthetic scores."""
import numpy as np
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
    df = pd.read_csv(path, dtype={"notebook": str})
    assert path.parent == tmp_path / "figures" / "smoke"
    assert sorted(df.claim_id) == ["c1", "c2"] and set(df.verdict) == {"HOLDS", "CONTRADICTED"}
