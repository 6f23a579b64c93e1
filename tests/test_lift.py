"""raserec_adapter.evaluation.lift: the paired lift and its bootstrap interval."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raserec_adapter import RankingMetrics
from raserec_adapter.evaluation.lift import lift_record, paired_lift, per_user_metrics


def _ranks(rng: np.random.Generator, users: int, items: int = 200) -> np.ndarray:
    return rng.integers(1, items + 1, size=users)


def test_the_lift_is_the_difference_of_the_ranking_metrics():
    rng = np.random.default_rng(0)
    base, new = _ranks(rng, 500), _ranks(rng, 500, items=60)
    lift = paired_lift(base, new, resamples=100)
    for ranks, side in ((base, "base"), (new, "new")):
        m = RankingMetrics()
        m.update(torch.from_numpy(ranks))
        ref = m.compute()
        for name, row in lift.items():
            assert row[side] == pytest.approx(ref[name], abs=1e-12)
    for row in lift.values():
        assert row["diff"] == pytest.approx(row["new"] - row["base"], abs=1e-12)


def test_the_interval_is_the_bootstrap_done_by_hand():
    """A plain loop over resamples, drawing users from the same generator."""
    rng = np.random.default_rng(1)
    base, new = _ranks(rng, 40, items=30), _ranks(rng, 40, items=30)
    lift = paired_lift(base, new, ks=(10,), resamples=300, seed=7)
    hit = lambda r: (r <= 10).astype(float)  # noqa: E731
    ndcg = lambda r: np.where(r <= 10, 1 / np.log2(r + 1.0), 0.0)  # noqa: E731
    draws = np.random.default_rng(7)
    boot = {"HR@10": [], "NDCG@10": []}
    for _ in range(300):
        idx = draws.integers(0, 40, size=40)
        boot["HR@10"].append(float(np.mean(hit(new[idx]) - hit(base[idx]))))
        boot["NDCG@10"].append(float(np.mean(ndcg(new[idx]) - ndcg(base[idx]))))
    for name, values in boot.items():
        values = sorted(values)
        # numpy's default (linear) quantile by hand: position q * (n - 1)
        for q, key in ((0.025, "low"), (0.975, "high")):
            pos = q * (len(values) - 1)
            lo, frac = math.floor(pos), pos - math.floor(pos)
            expect = values[lo] + frac * (values[min(lo + 1, len(values) - 1)] - values[lo])
            assert lift[name][key] == pytest.approx(expect, abs=1e-12)


def test_a_large_sample_interval_matches_the_normal_approximation():
    """With many users the percentile interval is mean +- 1.96 standard errors."""
    rng = np.random.default_rng(2)
    base = _ranks(rng, 20000, items=40)
    new = np.where(rng.random(20000) < 0.1, 1, base)  # a tenth of the users moved to rank 1
    lift = paired_lift(base, new, ks=(10,), resamples=2000)
    d = per_user_metrics(new, (10,))["HR@10"] - per_user_metrics(base, (10,))["HR@10"]
    se = d.std(ddof=1) / math.sqrt(len(d))
    row = lift["HR@10"]
    assert row["low"] == pytest.approx(d.mean() - 1.96 * se, abs=0.15 * se)
    assert row["high"] == pytest.approx(d.mean() + 1.96 * se, abs=0.15 * se)
    assert row["excludes_zero"]


def test_no_difference_gives_a_zero_interval_that_does_not_exclude_zero():
    ranks = np.arange(1, 101)
    lift = paired_lift(ranks, ranks, resamples=50)
    for row in lift.values():
        assert row["diff"] == row["low"] == row["high"] == 0.0
        assert not row["excludes_zero"]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 50), st.integers(1, 50)), min_size=1, max_size=60),
    st.integers(0, 2**31),
)
def test_swapping_the_sides_mirrors_the_lift(pairs, seed):
    base = np.array([a for a, _ in pairs])
    new = np.array([b for _, b in pairs])
    ab = paired_lift(base, new, resamples=40, seed=seed)
    ba = paired_lift(new, base, resamples=40, seed=seed)
    for name in ab:
        assert ba[name]["diff"] == pytest.approx(-ab[name]["diff"], abs=1e-12)
        assert ba[name]["low"] == pytest.approx(-ab[name]["high"], abs=1e-12)
        assert ba[name]["high"] == pytest.approx(-ab[name]["low"], abs=1e-12)
        assert ab[name]["low"] <= ab[name]["diff"] + 1e-12
        assert ab[name]["diff"] <= ab[name]["high"] + 1e-12


def test_seeds_are_averaged_per_user_before_resampling():
    rng = np.random.default_rng(3)
    base, new = rng.integers(1, 30, size=(3, 50)), rng.integers(1, 30, size=(3, 50))
    lift = paired_lift(base, new, ks=(5,), resamples=20)
    mean_base = np.mean([(b <= 5).mean() for b in base])
    assert lift["HR@5"]["base"] == pytest.approx(mean_base)
    rec = lift_record(torch.from_numpy(base), torch.from_numpy(new), ks=(5,), resamples=20)
    assert rec["seeds_averaged"] == 3 and rec["users"] == 50
    assert rec["metrics"] == lift


def test_bad_input_is_refused_with_what_is_wrong():
    with pytest.raises(ValueError, match="rank different users"):
        paired_lift([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="1-based integer ranks"):
        paired_lift([0, 2], [1, 2])
    with pytest.raises(ValueError, match="1-based integer ranks"):
        paired_lift([1.5, 2.0], [1, 2])
    with pytest.raises(ValueError, match="at least one user"):
        paired_lift([], [])
    with pytest.raises(ValueError, match="level"):
        paired_lift([1], [1], level=1.0)
    with pytest.raises(ValueError, match="resamples"):
        paired_lift([1], [1], resamples=0)
    with pytest.raises(ValueError, match="cut-offs"):
        per_user_metrics([1], ks=(0,))
