"""benchmarks/robustness.py: noise inserted into the test inputs (the paper's Fig. 8)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL as TINY
from conftest import finished_run, synthetic_sequences
from hypothesis import given, settings
from hypothesis import strategies as st

from raserec_adapter import leave_one_out

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import robustness


@settings(max_examples=40, deadline=None)
@given(
    users=st.integers(1, 25),
    data_seed=st.integers(0, 10_000),
    ratio=st.floats(0.0, 1.0, allow_nan=False),
    seed=st.integers(0, 2**31),
)
def test_noise_keeps_the_users_items_in_order_and_inserts_unseen_items(
    users, data_seed, ratio, seed
):
    seqs = synthetic_sequences(users, 40, min_len=3, max_len=12, seed=data_seed)
    split = leave_one_out(seqs, max_len=10)
    noisy = robustness.noisy_inputs(split, "test", ratio, seed)
    assert noisy.num_users == seqs.num_users and noisy.num_items == seqs.num_items
    again = robustness.noisy_inputs(split, "test", ratio, seed)
    assert np.array_equal(noisy.items, again.items) and np.array_equal(noisy.offsets, again.offsets)
    for u, n in zip(split.test.users, split.test.lengths, strict=True):
        own = seqs[int(u)].tolist()
        clean = own[: int(n)]
        row = noisy[int(u)].tolist()
        kept = [i for i in row if i in own]
        added = [i for i in row if i not in own]
        assert kept == clean  # every own item, in order, nothing of the user's future
        assert len(added) in (math.floor(ratio * n), math.ceil(ratio * n))
        assert len(set(added)) == len(added)
        assert all(1 <= i <= seqs.num_items for i in added)
        if ratio == 0.0:
            assert row == clean


def test_noise_share_matches_the_ratio_and_positions_spread():
    seqs = synthetic_sequences(3000, 200, min_len=3, max_len=20, seed=5)
    split = leave_one_out(seqs, max_len=50)
    clean = split.test.lengths
    for ratio in (0.1, 0.2, 0.3):
        noisy = robustness.noisy_inputs(split, "test", ratio, seed=1)
        share = (noisy.lengths - clean).sum() / clean.sum()
        assert share == pytest.approx(ratio, abs=0.01)
    # the last input position is noise about as often as any other one: share ~ ratio / (1 + ratio)
    noisy = robustness.noisy_inputs(split, "test", 0.3, seed=1)
    last_is_noise = [noisy[int(u)][-1] not in seqs[int(u)] for u in split.test.users]
    assert np.mean(last_is_noise) == pytest.approx(0.3 / 1.3, abs=0.03)
    with pytest.raises(ValueError, match=r"ratio must lie in \[0, 1\]"):
        robustness.noisy_inputs(split, "test", 1.5, seed=0)


def test_robustness_run_gives_the_clean_metrics_at_ratio_zero(tmp_path):
    seqs = synthetic_sequences(60, 20, seed=3)
    data, run = finished_run(tmp_path, "gru4rec", seqs, "--raft.epochs", "1")
    out = tmp_path / "robustness.json"
    args = ["--backbone", "gru4rec", f"--backbone-args={' '.join(TINY)}", "--dataset", str(data)]
    args += ["--run", str(run), "--run", str(run), "--ratios", "0.3,0.1", "--out", str(out)]
    record = robustness.main(args)
    assert json.loads(out.read_text()) == record
    made = json.loads((tmp_path / "toy-gru4rec-raserec-seed0.json").read_text())
    assert record["run_provenance"][str(run)]["mean"] == made["mean"]
    assert record["run_provenance"][str(run)]["git_commit"] == made["git_commit"]
    assert [r["ratio"] for r in record["ratios"]] == [0.0, 0.1, 0.3]
    recorded = {
        v: json.loads((tmp_path / f"toy-gru4rec-{v}-seed0.json").read_text())["mean"]
        for v in ("pretrained-plain", "raserec")
    }
    clean = record["ratios"][0]
    assert clean["inserted_share"] == 0.0
    for variant, key in (("plain", "pretrained-plain"), ("raserec", "raserec")):
        for m in robustness.METRICS:
            assert clean[variant][m] == pytest.approx(recorded[key][m])
            expected = 0.0 if clean[variant][m] else None  # clean against itself: no change
            assert clean[f"{variant}_change_percent"][m] == expected
    for row in record["ratios"][1:]:
        assert row["inserted_share"] == pytest.approx(row["ratio"], abs=0.1)
        assert row["plain"] != clean["plain"]  # noise changes what the encoder sees
    assert set(record["per_run"]) == {"0.0", "0.1", "0.3"}
    assert all(len(v) == 2 for r in record["per_run"].values() for v in r.values())
    # several draws of the noise: one entry per run and draw, the clean input once per run
    seeds = robustness.main([*args[:-2], "--noise-seeds", "0,5", "--out", str(out)])
    assert seeds["noise_seeds"] == [0, 5]
    assert [len(seeds["per_run"][r]["plain"]) for r in ("0.0", "0.1", "0.3")] == [2, 4, 4]
    assert seeds["per_run"]["0.1"]["plain"][0] == record["per_run"]["0.1"]["plain"][0]  # seed 0
    assert seeds["per_run"]["0.1"]["plain"][0] != seeds["per_run"]["0.1"]["plain"][1]
    for row in seeds["ratios"]:
        entries = seeds["per_run"][str(row["ratio"])]["raserec"]
        for m in robustness.METRICS:
            assert row["raserec"][m] == pytest.approx(sum(e[m] for e in entries) / len(entries))
    with pytest.raises(SystemExit, match="integers separated by commas"):
        robustness.main([*args[:-2], "--noise-seeds", "a", "--out", str(out)])
    for bad, says in (("--ratios=0.1,x", "numbers separated by commas"), ("--ratios=2", "0, 1")):
        with pytest.raises(SystemExit, match=says):
            robustness.main([*args[:-2], bad, "--out", str(out)])
    with pytest.raises(SystemExit, match="is missing"):
        robustness.main(["--dataset", str(data), "--run", str(tmp_path), "--out", str(out)])
