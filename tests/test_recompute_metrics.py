"""benchmarks/recompute_metrics.py agrees with the library's evaluation (two independent paths)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import synthetic_sequences

from examples.models import BERT4Rec, GRU4Rec, SASRec
from raserec_adapter import Sequences, evaluate_encoder, leave_one_out, pretrain
from raserec_adapter.config import PretrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import recompute_metrics


def _data_file(seqs: Sequences, path: Path) -> list[list[int]]:
    """Writes ``seqs`` as a ``user item item ...`` file; returns the rows as lists."""
    users = range(len(seqs.offsets) - 1)
    rows = [seqs.items[seqs.offsets[u] : seqs.offsets[u + 1]].tolist() for u in users]
    path.write_text("".join(f"{u + 1} {' '.join(map(str, r))}\n" for u, r in enumerate(rows)))
    return rows


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "bert4rec"])
def test_hand_counted_ranks_match_the_library(name: str, tmp_path: Path) -> None:
    seqs = synthetic_sequences(80, 25, seed=4)
    data = tmp_path / "data.txt"
    _data_file(seqs, data)
    n = int(seqs.num_items)
    torch.manual_seed(0)
    model = {"sasrec": SASRec, "gru4rec": GRU4Rec, "bert4rec": BERT4Rec}[name]
    model = model(n) if name == "gru4rec" else model(n, max_len=6)
    split = leave_one_out(seqs, max_len=6)
    pretrain(model, split, PretrainConfig(epochs=2, batch_size=32), show_progress=False)
    torch.save(model.state_dict(), tmp_path / "encoder.pt")
    for which in ("valid", "test"):
        got = recompute_metrics.main(
            [
                "--model",
                name,
                "--encoder",
                str(tmp_path / "encoder.pt"),
                "--data",
                str(data),
                "--which",
                which,
                "--max-len",
                "6",
            ]
        )
        want = evaluate_encoder(model, split, which)
        assert got == pytest.approx({k: want[k] for k in got}, abs=1e-9)
        assert got["HR@10"] > 0  # a trained model: the comparison is not of zeros


def test_train_last_scores_each_users_last_training_pair(tmp_path: Path) -> None:
    """train-last = validation of the same users with their last item dropped (s[:-3] -> s[-3])."""
    seqs = synthetic_sequences(60, 20, seed=5)
    data = tmp_path / "data.txt"
    rows = _data_file(seqs, data)
    torch.manual_seed(0)
    model = BERT4Rec(int(seqs.num_items), max_len=6, readout="last")
    split = leave_one_out(seqs, max_len=6)
    pretrain(model, split, PretrainConfig(epochs=2, batch_size=32), show_progress=False)
    torch.save(model.state_dict(), tmp_path / "encoder.pt")
    argv = ["--model", "bert4rec", "--encoder", str(tmp_path / "encoder.pt"), "--data", str(data)]
    got = recompute_metrics.main(
        [*argv, "--which", "train-last", "--max-len", "6", "--readout", "last"]
    )
    shorter = Sequences.from_lists([r[:-1] for r in rows], num_items=int(seqs.num_items))
    want = evaluate_encoder(model, leave_one_out(shorter, max_len=6), "valid")
    assert got == pytest.approx({k: want[k] for k in got}, abs=1e-9)
    assert got["HR@10"] > 0
    # the mask readout reads other outputs of the same weights: other figures
    assert recompute_metrics.main([*argv, "--which", "train-last", "--max-len", "6"]) != got
    # --positions end: the same weights with positions counted back from the readout token
    ends = BERT4Rec(int(seqs.num_items), max_len=6, readout="last", positions="end")
    ends.load_state_dict(model.state_dict())
    got = recompute_metrics.main(
        [*argv, "--which", "valid", "--max-len", "6", "--readout", "last", "--positions", "end"]
    )
    want = evaluate_encoder(ends, split, "valid")
    assert got == pytest.approx({k: want[k] for k in got}, abs=1e-9)
    assert got != recompute_metrics.main(
        [*argv, "--which", "valid", "--max-len", "6", "--readout", "last"]
    )
