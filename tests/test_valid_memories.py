"""benchmarks/valid_memories.py: the RAM's test metrics with and without validation memories."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
from conftest import TINY_MODEL as TINY
from conftest import finished_run, synthetic_sequences

from raserec_adapter import TorchMemoryBank, leave_one_out
from raserec_adapter.experiments import BACKBONES, parse_args
from raserec_adapter.training import search_neighbours

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _common
import valid_memories


def by_hand(aug, split, with_valid: bool) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Test HR/NDCG@5,10 from an exact bank built here from the public API, the RAM applied
    and every item scored and counted here (ties against the target); the retrieved ids and
    the scores."""
    table = aug.encoder.item_weights().detach()
    parts = [split.train] + ([split.valid] if with_valid else [])
    bank = TorchMemoryBank(table.shape[1])
    for p in parts:
        keys = aug.encode(split.sequences, p)
        bank.add(
            keys,
            table[torch.from_numpy(p.targets)],
            torch.from_numpy(p.users),
            torch.from_numpy(p.lengths),
        )
    test = split.test
    h = aug.encode(split.sequences, test)
    k = aug.config.ram.k
    ids = search_neighbours(
        bank, h, k, torch.from_numpy(test.users), torch.from_numpy(test.lengths)
    )
    mk, mv = bank.fetch(ids)
    aug.ram.eval()
    with torch.no_grad():
        scores = aug.ram(h, mk, mv) @ table.t()
    target = torch.from_numpy(test.targets)
    own = scores[torch.arange(len(target)), target]
    rank = 1 + (scores[:, 1:] >= own[:, None]).sum(1) - 1  # the target itself counted once
    out = {}
    for cut in (5, 10):
        hit = rank <= cut
        out[f"HR@{cut}"] = float(hit.double().mean())
        out[f"NDCG@{cut}"] = float(sum(1 / math.log2(int(r) + 1) for r in rank[hit]) / len(rank))
    return out, ids, scores


def test_both_banks_against_a_hand_built_reference(tmp_path):
    seqs = synthetic_sequences(80, 20, seed=5)
    options = ["--pretrain.lr", "0.01", "--ram.alpha", "0.0", "--raft.epochs", "6"]
    options += ["--protocols", "full"]
    data, run = finished_run(tmp_path, "sasrec", seqs, *options, epochs=8)
    out = tmp_path / "valid.json"
    args = ["--backbone", "sasrec", f"--backbone-args={' '.join(TINY)}", "--dataset", str(data)]
    record = valid_memories.main([*args, "--run", str(run), "--out", str(out)])
    assert json.loads(out.read_text()) == record
    res = record["per_run"][0]
    # the protocol's bank: what the example's own test gave
    for variant, key in (("pretrained-plain", "plain"), ("raserec", "protocol")):
        ref = json.loads((tmp_path / f"toy-sasrec-{variant}-seed0.json").read_text())["mean"]
        for m in valid_memories.METRICS:
            assert abs(res[key][m] - ref[m]) < 1e-6, (key, m)
    aug = _common.load_finished_run(BACKBONES["sasrec"], 20, parse_args("sasrec", TINY), run)
    split = leave_one_out(seqs, max_len=10)
    scores = {}
    for with_valid, key in ((True, "protocol"), (False, "train_only")):
        ref, ids, scores[key] = by_hand(aug, split, with_valid)
        for m, v in ref.items():
            assert abs(res[key][m] - v) < 1e-6, (key, m)
        if with_valid:  # the hand bank's ids: training pairs first, then validation pairs
            n_train = len(split.train)
            is_valid = ids >= n_train
            users = torch.from_numpy(split.test.users)
            own = is_valid & (
                torch.from_numpy(split.valid.users)[(ids - n_train).clamp(min=0)] == users[:, None]
            )
            shares = res["retrieved"]
            assert abs(shares["valid_share"] - float(is_valid.float().mean())) < 1e-9
            assert abs(shares["own_valid_share"] - float(own.float().mean())) < 1e-9
            assert 0 < shares["valid_share"] < 1
    # a RAFT-only run over the same encoder (another RAM seed) leaves a folder the analysis
    # reloads as well: the example copies the encoder it was given into it
    enc = run / "encoder.pt"
    again = ["--seed", "1", "--encoder-checkpoint", str(enc), "--tag", "again"]
    run1 = finished_run(tmp_path, "sasrec", seqs, *options, *again, epochs=8)[1]
    saved = torch.load(run1 / "encoder.pt", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in torch.load(enc, weights_only=True).items())
    both = valid_memories.main([*args, "--run", str(run), "--run", str(run1), "--out", str(out)])
    assert both["per_run"][0] == res
    for v in ("plain", "protocol", "train_only"):
        for m in valid_memories.METRICS:
            mean = (res[v][m] + both["per_run"][1][v][m]) / 2
            assert abs(both["mean"][v][m] - mean) < 1e-12
    assert both["per_run"][1]["plain"] == res["plain"]  # the same frozen encoder
    # the validation memories change what the RAM (alpha 0: memories alone) makes of the test
    gap = (scores["protocol"] - scores["train_only"]).abs().max()
    assert gap > 0.01 * scores["protocol"].abs().max()
