"""Shared fixtures: the repo root on sys.path (for `examples`), small synthetic data."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from raserec_adapter.data import Sequences  # noqa: E402

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


def write_dataset_file(path: Path, seqs: Sequences) -> Path:
    """Writes ``seqs`` as a dataset file (``user item item ...`` per line) at ``path``."""
    lines = [" ".join(map(str, [u + 1, *seqs[u].tolist()])) for u in range(seqs.num_users)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def small_sequences() -> Sequences:
    return synthetic_sequences()
