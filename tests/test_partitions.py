"""benchmarks/partitions.py: memory banks restricted to partitions by prefix length (Fig. 6)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import TINY_MODEL as TINY
from conftest import finished_run, synthetic_sequences

from raserec_adapter import BankConfig, leave_one_out

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import partitions


def test_parse_parts_and_combinations():
    assert partitions.parse_parts("S=1-2,M=3-6,L=7-") == {
        "S": ((1, 2),),
        "M": ((3, 6),),
        "L": ((7, None),),
    }
    assert partitions.parse_parts(" A = 1-2;9- , B=3-8") == {
        "A": ((1, 2), (9, None)),
        "B": ((3, 8),),
    }
    for bad in ("S=1-2,S=3-", "1-2", "S=x", "=1-2"):
        with pytest.raises(ValueError, match="parts look like|part '"):
            partitions.parse_parts(bad)
    assert partitions.combos(["a", "b"]) == [("a", "b"), ("a",), ("b",)]
    assert len(partitions.combos(["S", "M", "L"])) == 7


def test_paper_parts_split_beauty_like_lengths_as_table_7_says():
    # every prefix length 1..60 falls in exactly one of the paper's parts, for each dataset
    import numpy as np

    lengths = np.arange(1, 61)
    for text in partitions.PAPER_PARTS.values():
        parts = partitions.parse_parts(text)
        hits = sum(BankConfig(prefix_lengths=r).keeps(lengths).astype(int) for r in parts.values())
        assert (hits == 1).all()


def test_partition_run_restricts_the_bank_and_trains_every_combination(tmp_path, monkeypatch):
    seqs = synthetic_sequences(60, 20, seed=4)
    data, run_dir = finished_run(tmp_path, "gru4rec", seqs, "--raft.epochs", "1")
    run = str(run_dir)
    out = tmp_path / "parts.json"
    args = ["--backbone", "gru4rec", f"--backbone-args={' '.join(TINY)}", "--dataset", str(data)]
    args += ["--run", run, "--parts", "S=1-2,L=3-", "--raft-epochs", "2", "--out", str(out)]

    # record what each combination's bank holds (train and test phase) while the script runs
    built: list[tuple[tuple, set[int]]] = []
    original = partitions.RetrievalAugmenter.build_bank

    def spy(self, split, *a, **kw):
        original(self, split, *a, **kw)
        lengths = self.bank._store.lengths  # the torch bank's stored prefix lengths
        built.append((self.config.bank.prefix_lengths, set(lengths.tolist())))

    monkeypatch.setattr(partitions.RetrievalAugmenter, "build_bank", spy)
    record = partitions.main(args)
    assert json.loads(out.read_text()) == record
    made = json.loads((tmp_path / "toy-gru4rec-raserec-seed0.json").read_text())
    assert record["run_provenance"][run] == {
        k: made[k]
        for k in ("command", "git_commit", "machine", "wall_seconds", "finished_at", "mean")
    }
    assert [r["combo"] for r in record["summary"]] == ["All", "{S}", "{L}"]
    assert [ranges for ranges, _ in built] == [((1, 2), (3, None)), ((1, 2),), ((3, None),)]
    assert built[1][1] <= {1, 2} and built[2][1] and min(built[2][1]) >= 3
    split = leave_one_out(seqs, max_len=10)
    n = len(split.train)
    by_combo = {r["combo"]: r for r in record["results"]}
    assert by_combo["All"]["train_memories"] == n
    short = int((split.train.lengths <= 2).sum())
    assert by_combo["{S}"]["train_memories"] == short
    assert by_combo["{L}"]["train_memories"] == n - short
    assert record["part_share_percent"]["S"] == pytest.approx(100 * short / n, abs=0.01)
    all_hr5 = record["summary"][0]["test"]["HR@5"]  # "All" against itself: no change
    assert record["summary"][0]["change_vs_all_percent"]["HR@5"] == (0.0 if all_hr5 else None)
    recorded = json.loads((tmp_path / "toy-gru4rec-pretrained-plain-seed0.json").read_text())
    for m in partitions.METRICS:
        assert record["plain_mean"]["test"][m] == pytest.approx(recorded["mean"][m])
    # resume: nothing is trained again, the same file comes back
    monkeypatch.setattr(partitions.RetrievalAugmenter, "fit_raft", None)
    again = partitions.main([*args, "--resume"])
    assert again["results"] == record["results"]
    # resume with one more run: the first run's rows are kept, the new run's are trained
    monkeypatch.undo()
    run1 = str(finished_run(tmp_path, "gru4rec", seqs, "--raft.epochs", "1", "--seed", "1")[1])
    both = partitions.main([*args[:7], "--run", run1, *args[7:], "--resume"])
    assert both["runs"] == [run, run1]
    assert both["results"][:3] == record["results"]
    assert [r["run"] for r in both["results"][3:]] == [run1] * 3
    for i, row in enumerate(both["summary"]):
        pair = [r["test"]["HR@5"] for r in both["results"] if r["combo"] == row["combo"]]
        assert len(pair) == 2 and row["test"]["HR@5"] == pytest.approx(sum(pair) / 2), i
    assert both["earlier_invocations"][-1]["command"] == record["command"]
    with pytest.raises(
        SystemExit, match=r"other settings: \{'protocol': \('full', 'seen_removed'\)"
    ):
        partitions.main(
            [*args[:7], "--run", run1, *args[7:], "--protocol", "seen_removed", "--resume"]
        )
    with pytest.raises(SystemExit, match="other runs, parts or seed"):
        partitions.main([*args, "--seed", "3", "--resume"])
    with pytest.raises(SystemExit, match="other runs, parts or seed"):
        partitions.main([*args[:-4], "--parts", "S=1-3,L=4-", "--out", str(out), "--resume"])
    with pytest.raises(SystemExit, match="--parts"):
        partitions.main([*args[:-4], "--parts", "S=1-2,S=3-", "--out", str(out)])
