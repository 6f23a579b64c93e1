"""Shared fixtures: small synthetic data and tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from raserec_adapter import (
    AugmenterConfig,
    BankConfig,
    LeaveOneOutSplit,
    PretrainConfig,
    RAMConfig,
    RetrievalAugmenter,
    leave_one_out,
)
from raserec_adapter.data import Sequences
from raserec_adapter.models import SASRec
from raserec_adapter.training import pretrain

# Tiny models: one thread is faster than two and leaves the other core to the rest of the machine.
torch.set_num_threads(1)


def synthetic_sequences(
    num_users: int = 60, num_items: int = 30, min_len: int = 4, max_len: int = 14, seed: int = 0
) -> Sequences:
    """Users walk a ring of items with noise: item i is usually followed by item i + 1."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(num_users):
        n = int(rng.integers(min_len, max_len + 1))
        cur = int(rng.integers(1, num_items + 1))
        s = []
        for _ in range(n):
            s.append(cur)
            cur = (
                cur % num_items + 1 if rng.random() < 0.85 else int(rng.integers(1, num_items + 1))
            )
        seqs.append(s)
    return Sequences.from_lists(seqs, num_items=num_items)


def pretrained_sasrec(
    num_users: int, num_items: int, *, seed: int, epochs: int, max_len: int
) -> tuple[SASRec, LeaveOneOutSplit]:
    """A small SASRec (d = 16) pre-trained for ``epochs`` on synthetic data, and its split."""
    split = leave_one_out(synthetic_sequences(num_users, num_items, seed=seed), max_len=max_len)
    torch.manual_seed(0)
    model = SASRec(num_items, hidden_size=16, max_len=max_len)
    cfg = PretrainConfig(epochs=epochs, batch_size=64, max_len=max_len)
    pretrain(model, split, cfg, show_progress=False)
    return model, split


def small_augmenter(
    model: torch.nn.Module, *, max_len: int, k: int, kind: str = "torch", **ram: float
) -> RetrievalAugmenter:
    """An augmenter over ``model`` with an exact bank (torch, or Faiss ``Flat``) and K = ``k``."""
    bank = BankConfig(kind=kind, index_factory="Flat")
    cfg = AugmenterConfig(max_len=max_len, bank=bank, ram=RAMConfig(k=k, **ram))
    return RetrievalAugmenter(model, cfg)


def write_dataset_file(path: Path, seqs: Sequences) -> Path:
    """Writes ``seqs`` as a dataset file (``user item item ...`` per line) at ``path``."""
    lines = [" ".join(map(str, [u + 1, *seqs[u].tolist()])) for u in range(seqs.num_users)]
    path.write_text("\n".join(lines) + "\n")
    return path


TINY_MODEL = ["--max-len", "10", "--hidden-size", "16"]
"""Runner options of a tiny model for tests that run ``raserec_adapter.experiments``."""


def finished_run(
    tmp_path: Path, backbone: str, seqs: Sequences, *options: str, epochs: int = 2
) -> tuple[Path, Path]:
    """Runs both stages of ``backbone`` on ``seqs`` (written to ``tmp_path/toy.txt``) with a
    tiny model, an exact torch bank and 64-pair batches, as ``examples/<backbone>.py`` does;
    ``options`` are more runner options. Returns the data file and the seed's run folder."""
    from raserec_adapter.experiments import main

    data = write_dataset_file(tmp_path / "toy.txt", seqs)
    argv = ["--dataset", str(data), "--pretrain.epochs", str(epochs), "--out", str(tmp_path)]
    argv += [*TINY_MODEL, "--bank.kind", "torch", "--pretrain.batch-size", "64", *options]
    main(backbone, argv)
    seed = options[options.index("--seed") + 1] if "--seed" in options else "0"
    tag = f"-{options[options.index('--tag') + 1]}" if "--tag" in options else ""
    return data, tmp_path / f"toy-{backbone}{tag}-raserec-seed{seed}"


@pytest.fixture
def small_sequences() -> Sequences:
    return synthetic_sequences()
