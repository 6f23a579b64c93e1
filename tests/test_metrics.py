from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raserec_adapter.evaluation.metrics import RankingMetrics, hit_rate, mrr, ndcg, target_rank


def brute_force(scores: np.ndarray, targets: np.ndarray, seen: list[set[int]] | None, ks):
    """Independent reference: loops over users and items."""
    hr = dict.fromkeys(ks, 0.0)
    nd = dict.fromkeys(ks, 0.0)
    rr = dict.fromkeys(ks, 0.0)
    for u in range(len(targets)):
        t = targets[u]
        rank = 1
        for i in range(1, scores.shape[1]):
            if i == t or (seen is not None and i in seen[u]):
                continue
            if scores[u, i] >= scores[u, t]:
                rank += 1
        for k in ks:
            if rank <= k:
                hr[k] += 1
                nd[k] += 1 / math.log2(rank + 1)
                rr[k] += 1 / rank
    n = len(targets)
    return {
        **{f"HR@{k}": hr[k] / n for k in ks},
        **{f"NDCG@{k}": nd[k] / n for k in ks},
        **{f"MRR@{k}": rr[k] / n for k in ks},
    }


def test_hand_computed():
    scores = torch.tensor([[9.0, 0.1, 0.5, 0.3, 0.2], [0.0, 0.4, 0.4, 0.4, 0.1]])
    targets = torch.tensor([3, 2])
    # user 0: item 2 (0.5) beats target 3 (0.3); column 0 is padding and ignored -> rank 2
    # user 1: items 1 and 3 tie with the target -> ties count against it -> rank 3
    assert target_rank(scores, targets).tolist() == [2, 3]
    m = RankingMetrics(ks=(1, 2, 3))
    m.update(target_rank(scores, targets))
    r = m.compute()
    assert r["HR@1"] == 0 and r["HR@2"] == 0.5 and r["HR@3"] == 1.0
    assert r["NDCG@2"] == pytest.approx(0.5 * (1 / math.log2(3)))
    assert r["NDCG@3"] == pytest.approx(0.5 * (1 / math.log2(3) + 1 / math.log2(4)))
    assert r["MRR@1"] == 0 and r["MRR@2"] == pytest.approx(0.25)
    assert r["MRR@3"] == pytest.approx(0.5 * (1 / 2 + 1 / 3))
    ranks = target_rank(scores, targets)
    assert (hit_rate(ranks, 2), ndcg(ranks, 2), mrr(ranks, 2)) == pytest.approx(
        (r["HR@2"], r["NDCG@2"], r["MRR@2"])
    )


def test_seen_removed_protocol():
    scores = torch.tensor([[0.0, 0.9, 0.5, 0.3]])
    seen = torch.tensor([[1, 3, 0]])  # target 3 is never removed even if listed
    assert target_rank(scores, torch.tensor([3])).tolist() == [3]
    assert target_rank(scores, torch.tensor([3]), seen).tolist() == [2]


def test_constant_model_scores_zero():
    scores = torch.zeros(50, 101)
    ranks = target_rank(scores, torch.randint(1, 101, (50,)))
    assert (ranks == 100).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(2, 25), st.integers(0, 10_000), st.booleans())
def test_against_brute_force(users, items, seed, remove_seen):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(users, items + 1)).astype(np.float32)  # many ties
    targets = rng.integers(1, items + 1, size=users)
    seen_sets = [set(rng.integers(1, items + 1, size=3).tolist()) for _ in range(users)]
    seen_t = torch.tensor([sorted(s) + [0] * (3 - len(s)) for s in seen_sets])
    ks = (1, 5, 10)
    m = RankingMetrics(ks)
    # two batches, to check accumulation
    half = users // 2
    for sl in (slice(0, half), slice(half, users)):
        m.update(
            target_rank(
                torch.from_numpy(scores[sl]),
                torch.from_numpy(targets[sl]),
                seen_t[sl] if remove_seen else None,
            )
        )
    expect = brute_force(scores, targets, seen_sets if remove_seen else None, ks)
    got = m.compute()
    for key, value in expect.items():
        assert got[key] == pytest.approx(value)


def test_bad_input():
    with pytest.raises(ValueError, match="0 is padding"):
        target_rank(torch.zeros(1, 5), torch.tensor([0]))
    with pytest.raises(ValueError, match="NaN"):
        target_rank(torch.full((1, 5), float("nan")), torch.tensor([1]))


def test_target_rank_infinities_are_not_nan_and_ranks_are_long():
    """+inf and -inf together (their sum is NaN) are valid scores; a NaN next to them is not."""
    scores = torch.tensor([[0.0, float("inf"), 1.0, float("-inf"), 2.0]])
    ranks = target_rank(scores, torch.tensor([2]))
    assert ranks.dtype == torch.int64
    assert ranks.tolist() == [3]  # inf and 2.0 score higher than 1.0
    scores[0, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        target_rank(scores, torch.tensor([2]))
