"""A fixed-seed tiny pipeline pinned to the numbers the code gave before the package was
reorganised (``tests/data/golden-pipeline.json``): stage 1, the bank's search ids, RAFT, the
augmented representations, test metrics and recommendations, for every shipped backbone.

A change that alters any of them alters training arithmetic or the random streams: if that is
intended, say so in the commit and regenerate the file with ``python tests/test_golden.py``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from raserec_adapter import (
    AugmenterConfig,
    BankConfig,
    PretrainConfig,
    RAFTConfig,
    RAMConfig,
    RetrievalAugmenter,
    leave_one_out,
)
from raserec_adapter.models import BERT4Rec, GRU4Rec, SASRec
from tests.conftest import synthetic_sequences

GOLDEN = Path(__file__).parent / "data" / "golden-pipeline.json"

CASES: dict[str, tuple[str, Any, PretrainConfig]] = {
    "sasrec_torch_windows": (
        "torch",
        lambda: SASRec(30, hidden_size=16, max_len=10),
        PretrainConfig(epochs=2, batch_size=64, max_len=10),
    ),
    "sasrec_faiss_random": (
        "faiss",
        lambda: SASRec(30, hidden_size=16, max_len=10),
        PretrainConfig(epochs=2, batch_size=64, max_len=10, batching="random"),
    ),
    "gru4rec_torch": (
        "torch",
        lambda: GRU4Rec(30, hidden_size=16),
        PretrainConfig(epochs=2, batch_size=64, max_len=10),
    ),
    "bert4rec_last": (
        "torch",
        lambda: BERT4Rec(30, hidden_size=16, max_len=10, readout="last"),
        PretrainConfig(epochs=2, batch_size=64, max_len=10),
    ),
    "bert4rec_mask": (
        "torch",
        lambda: BERT4Rec(30, hidden_size=16, max_len=10, readout="mask"),
        PretrainConfig(epochs=2, batch_size=64, max_len=10),
    ),
}


def run_case(kind: str, build: Any, pre: PretrainConfig) -> dict[str, Any]:
    """The whole pipeline on 80 synthetic users; what the golden file records."""
    split = leave_one_out(synthetic_sequences(80, 30, seed=3), max_len=10)
    torch.manual_seed(0)
    bank = BankConfig(kind=kind, index_factory="Flat")
    aug = RetrievalAugmenter(build(), AugmenterConfig(max_len=10, bank=bank, ram=RAMConfig(k=4)))
    res = aug.pretrain(split, pre, show_progress=False)
    aug.build_bank(split, show_progress=False)
    q = aug.encode(split.sequences, split.valid)
    users = torch.from_numpy(split.valid.users)
    lengths = torch.from_numpy(split.valid.lengths)
    ids = aug.bank.search(q, 4, users, lengths).ids
    # the RAM itself, served even where it does not beat the encoder (the pinned arithmetic)
    aug.fit_raft(split, RAFTConfig(epochs=2, seed=1, fallback=False), show_progress=False)
    out = aug.evaluate(split, "test")
    rec = aug.recommend([[1, 2, 3], [7, 8]], k=5)[0].tolist()
    with torch.no_grad():
        aug.eval()
        h = aug.augment(q[:4], users[:4], lengths[:4])
    hist = [{k: v for k, v in e.items() if "seconds" not in k} for e in res.history]
    return {
        "pretrain_history": hist,
        "augmented_valid_h": h[:, :6].tolist(),
        "query_h": q[:4, :6].tolist(),
        "valid_search_ids": ids[:20].tolist(),
        "test": out,
        "recommend": rec,
    }


def _close(got: Any, want: Any, where: str) -> None:
    if isinstance(want, dict):
        assert sorted(got) == sorted(want), where
        for key in want:
            _close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert math.isclose(got, want, rel_tol=0, abs_tol=1e-6), f"{where}: {got} != {want}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_pipeline_matches_the_golden_file(name: str) -> None:
    golden = json.loads(GOLDEN.read_text())
    _close(run_case(*CASES[name]), golden[name], name)


if __name__ == "__main__":  # regenerate (only when a change of the numbers is intended)
    torch.set_num_threads(1)
    data = {name: run_case(*case) for name, case in CASES.items()}
    GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)
