"""tools/learning_curves.py: curves read back from pre-training state files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import synthetic_sequences

from raserec_adapter import PretrainConfig, RunOptions, leave_one_out
from raserec_adapter.models import SASRec
from raserec_adapter.training import pretrain

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import learning_curves

# isort: split
import _common  # benchmarks/_common.py, on sys.path once learning_curves is imported


def test_curves_match_the_training_history(tmp_path: Path, monkeypatch, capsys) -> None:
    split = leave_one_out(synthetic_sequences(30, 20, seed=1), max_len=10)
    results = {}
    for name, epochs in (("a", 3), ("b", 2)):
        torch.manual_seed(0)
        model = SASRec(20, hidden_size=8, max_len=10)
        cfg = PretrainConfig(epochs=epochs, seed=len(name), lr=0.01 if name == "a" else 0.001)
        state = tmp_path / f"{name}.pt"
        results[name] = pretrain(
            model, split, cfg, show_progress=False, run=RunOptions(state_path=state)
        )
    monkeypatch.setattr(_common, "RESULTS", tmp_path / "out")
    learning_curves.main(
        ["--name", "probe", "--what", "two learning rates"]
        + [f"--arm={n}={tmp_path / n}.pt" for n in "ab"]
        + ["--command", "a=python train.py --lr 0.01"]
    )
    out = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert out["compared_epochs"] == 2
    assert out["arms"]["a"]["command"] == "python train.py --lr 0.01"
    for name, res in results.items():
        got = out["arms"][name]["epochs"]
        assert [e["epoch"] for e in got] == [e["epoch"] for e in res.history]
        want = [round(e["valid_MRR@10"], 4) for e in res.history]
        assert [e["valid_MRR@10"] for e in got] == want
    second = [round(results[n].history[1]["valid_MRR@10"], 4) for n in "ab"]
    printed = capsys.readouterr().out.splitlines()  # header, epoch 1, epoch 2, "wrote ..."
    assert printed[2].split() == ["2", *(f"{v:.4f}" for v in second)]
    assert {"git_commit", "machine", "command"} <= set(out)


def test_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        learning_curves.main(["--name", "x", "--what", "y", "--arm", "no-equals-sign"])
    with pytest.raises(SystemExit, match="at least two"):
        learning_curves.main(["--name", "x", "--what", "y", "--arm", f"a={tmp_path}/a.pt"])
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match="not a pre-training state file"):
        learning_curves.main(
            ["--name", "x", "--what", "y"] + [f"--arm={n}={tmp_path}/other.pt" for n in "ab"]
        )


def test_an_arm_read_back_from_an_earlier_results_file(tmp_path: Path, monkeypatch) -> None:
    split = leave_one_out(synthetic_sequences(30, 20, seed=1), max_len=10)
    for name in "ab":
        torch.manual_seed(0)
        cfg = PretrainConfig(epochs=2, seed=len(name))
        pretrain(
            SASRec(20, hidden_size=8, max_len=10),
            split,
            cfg,
            show_progress=False,
            run=RunOptions(state_path=tmp_path / f"{name}.pt"),
        )
    monkeypatch.setattr(_common, "RESULTS", tmp_path / "out")
    learning_curves.main(
        ["--name", "first", "--what", "w"]
        + [f"--arm={n}={tmp_path / n}.pt" for n in "ab"]
        + ["--command", "a=python train.py --seed 1"]
    )
    first = tmp_path / "out" / "first.json"
    (tmp_path / "a.pt").unlink()  # the state file is gone; the recorded curve stays usable
    learning_curves.main(
        ["--name", "second", "--what", "w", f"--arm=old={first}#a", f"--arm=b={tmp_path}/b.pt"]
    )
    rec = json.loads(first.read_text())["arms"]["a"]
    got = json.loads((tmp_path / "out" / "second.json").read_text())["arms"]["old"]
    assert got["epochs"] == rec["epochs"] and got["command"] == "python train.py --seed 1"
    assert got["state_file"] == str(tmp_path / "a.pt") and got["read_from"] == f"{first}#a"
    with pytest.raises(SystemExit, match="no recorded arm 'c'"):
        learning_curves.main(
            ["--name", "x", "--what", "y", f"--arm=c={first}#c", f"--arm=b={first}#b"]
        )
    with pytest.raises(SystemExit, match="after a '#'"):
        learning_curves.main(
            ["--name", "x", "--what", "y", f"--arm=c={first}", f"--arm=b={first}#b"]
        )
