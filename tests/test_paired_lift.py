"""tools/paired_lift.py: the lift pooled over seeds run as separate processes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL, finished_run, synthetic_sequences

from raserec_adapter.evaluation.lift import lift_record

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import merge_seeds
import paired_lift


def test_the_pooled_lift_of_separate_seeds_from_saved_or_recomputed_ranks(tmp_path):
    seqs = synthetic_sequences(60, 20, seed=8)
    runs = []
    for seed in ("0", "1"):  # two processes, as the Table 2 seeds run
        options = ["--raft.epochs", "1", "--protocols", "full", "--seed", seed]
        runs.append(str(finished_run(tmp_path, "sasrec", seqs, *options)[1]))
    merged = {}
    for variant in ("raserec", "pretrained-plain"):
        files = [str(tmp_path / f"toy-sasrec-{variant}-seed{s}.json") for s in (0, 1)]
        merged[variant] = tmp_path / f"toy-sasrec-{variant}.json"
        merge_seeds.main([*files, "--out", str(merged[variant])])
    assert "lift" not in json.loads(merged["raserec"].read_text())  # per process only
    saved = [np.load(Path(r) / "test-ranks.npz") for r in runs]
    expected = lift_record(
        np.stack([s["full.plain"] for s in saved]), np.stack([s["full.raserec"] for s in saved])
    )
    args = [str(merged["raserec"]), "--run", runs[0], "--run", runs[1]]
    args += ["--backbone-args", " ".join(TINY_MODEL), "--dataset", str(tmp_path / "toy.txt")]
    lift = paired_lift.main(args)
    rec = json.loads(merged["raserec"].read_text())
    assert rec["lift"]["metrics"] == expected["metrics"] and rec["lift"]["seeds_averaged"] == 2
    assert "command" in rec["lift"]["provenance"]
    for r in runs:  # a run that predates test-ranks.npz is reloaded and ranked again
        (Path(r) / "test-ranks.npz").unlink()
    assert paired_lift.main(args)["metrics"] == lift["metrics"]
    with pytest.raises(SystemExit, match="other metrics than the results file"):
        paired_lift.main([str(merged["raserec"]), "--run", runs[1], "--run", runs[0], *args[5:]])
    with pytest.raises(SystemExit, match="give the raserec variant"):
        paired_lift.main([str(merged["pretrained-plain"]), *args[1:]])
    with pytest.raises(SystemExit, match="2 --run folders|1 --run folders"):
        paired_lift.main([str(merged["raserec"]), "--run", runs[0], *args[5:]])
