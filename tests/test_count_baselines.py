"""benchmarks/count_baselines.py against ranks worked out by hand on a tiny dataset."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import count_baselines

# items 1..5. Validation uses each sequence without its last two items for the counts,
# the test without its last item.
SEQS = [[1, 2, 3, 4], [1, 2, 4, 5], [2, 3, 1, 2], [3, 1, 2, 5]]


def test_validation_ranks_by_hand():
    r = count_baselines.target_ranks(SEQS, 5, "valid")
    # training parts [1,2] [1,2] [2,3] [3,1]: transitions 1->2 (x2), 2->3 (x1), 3->1 (x1);
    # counts 1:3, 2:3, 3:2, 4:0, 5:0.
    # user 0: last 2, target 3; row {3: 1}: rank 1.   user 1: last 2, target 4: unseen -> 5.
    # user 2: last 3, target 1; row {1: 1}: rank 1.   user 3: last 1, target 2; row {2: 2}: 1.
    assert r["transitions"].tolist() == [1, 5, 1, 1]
    # popularity, ties against the target: 3 -> items with count >= 2: {1, 2, 3} = 3;
    # 4 -> count 0 ties with every item: 5; 1 -> {1, 2} = 2; 2 -> 2
    assert r["popularity"].tolist() == [3, 5, 2, 2]


def test_test_ranks_by_hand():
    r = count_baselines.target_ranks(SEQS, 5, "test")
    # training parts [1,2,3] [1,2,4] [2,3,1] [3,1,2]: 1->2 x3, 2->3 x2, 2->4 x1, 3->1 x2
    # user 0: last 3, target 4: unseen -> 5. user 1: last 4, no row -> 5.
    # user 2: last 1, target 2: rank 1. user 3: last 2, target 5: unseen -> 5.
    assert r["transitions"].tolist() == [5, 5, 1, 5]
    # counts 1:4, 2:4, 3:3, 4:1, 5:0 -> target 4: {1,2,3,4} = 4; 5: 5; 2: 2; 5: 5
    assert r["popularity"].tolist() == [4, 5, 2, 5]


def test_test_ranks_counted_on_the_training_part_by_hand():
    r = count_baselines.target_ranks(SEQS, 5, "test", counted="train")
    # the validation counts above: 1->2 x2, 2->3 x1, 3->1 x1; counts 1:3, 2:3, 3:2, 4:0, 5:0
    # user 0: last 3, target 4: unseen -> 5. user 1: last 4, no row -> 5.
    # user 2: last 1, target 2: rank 1. user 3: last 2, target 5: unseen -> 5.
    assert r["transitions"].tolist() == [5, 5, 1, 5]
    # popularity: 4 and 5 have count 0 -> 5; 2 -> {1, 2} = 2
    assert r["popularity"].tolist() == [5, 5, 2, 5]
    # the validation split is counted the same either way
    for name, ranks in count_baselines.target_ranks(SEQS, 5, "valid", counted="train").items():
        assert ranks.tolist() == count_baselines.target_ranks(SEQS, 5, "valid")[name].tolist()


def test_an_unknown_counting_is_refused():
    with pytest.raises(ValueError, match="counted must be"):
        count_baselines.target_ranks(SEQS, 5, "test", counted="all")


def test_metrics_by_hand():
    m = count_baselines.metrics(np.array([1, 3, 6, 11]))
    assert math.isclose(m["HR@5"], 0.5) and math.isclose(m["HR@10"], 0.75)
    ndcg5 = (1.0 + 1.0 / math.log2(4)) / 4
    assert math.isclose(m["NDCG@5"], ndcg5)
    assert math.isclose(m["NDCG@10"], ndcg5 + 1.0 / math.log2(7) / 4)
