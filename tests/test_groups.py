"""benchmarks/groups.py: test metrics by target popularity and by user length."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL as TINY
from conftest import finished_run, synthetic_sequences

from raserec_adapter import leave_one_out

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import groups


def test_groups_have_equal_sizes_and_ordered_keys():
    seqs = synthetic_sequences(53, 20, seed=4)
    split = leave_one_out(seqs, max_len=10)
    counts = np.bincount(seqs.items, minlength=21)
    for by, n in groups.GROUPINGS.items():
        g = groups.group_of_users(split, by, n)
        sizes = np.bincount(g, minlength=n)
        assert sizes.max() - sizes.min() <= 1 and sizes.sum() == len(split.test)
        if by == "popularity":
            key = [counts[seqs[int(u)][-1]] for u in split.test.users]
        else:
            key = [len(seqs[int(u)]) for u in split.test.users]
        key = np.array(key)
        for a in range(n - 1):  # every key of group a is <= every key of group a + 1
            assert key[g == a].max() <= key[g == a + 1].min()
    with pytest.raises(ValueError, match="by must be one of"):
        groups.group_of_users(split, "age", 3)


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
def test_group_metrics_add_up_to_the_runs_overall_metrics(name, tmp_path):
    seqs = synthetic_sequences(60, 20, seed=3)
    data, run = finished_run(tmp_path, name, seqs, "--raft.epochs", "1")
    out = tmp_path / "groups.json"
    torch.manual_seed(0)
    args = ["--backbone", name, f"--backbone-args={' '.join(TINY)}", "--dataset", str(data)]
    args += ["--run", str(run), "--run", str(run), "--out", str(out)]
    record = groups.main(args)
    assert json.loads(out.read_text()) == record
    overall = {
        v: json.loads((tmp_path / f"toy-{name}-{v}-seed0.json").read_text())["mean"]
        for v in ("pretrained-plain", "raserec")
    }
    for by, rows in record["groupings"].items():
        assert [r["group"] for r in rows] == list(range(1, groups.GROUPINGS[by] + 1))
        total = sum(r["users"] for r in rows)
        assert total == 60
        for variant, key in (("plain", "pretrained-plain"), ("raserec", "raserec")):
            for m in groups.METRICS:  # size-weighted group means give the overall metric back
                weighted = sum(r[variant][m] * r["users"] for r in rows) / total
                assert weighted == pytest.approx(overall[key][m])
    with pytest.raises(SystemExit, match="is missing"):
        groups.main(["--dataset", str(data), "--run", str(tmp_path), "--out", str(out)])
