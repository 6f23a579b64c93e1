"""Batched full-ranking evaluation of any "sequence -> representation" function.

Scores are computed batch by batch against the whole item table; no users x items matrix is ever
held in memory. See :mod:`raserec_adapter.evaluation.metrics` for the rank and metric definitions.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from raserec_adapter._progress import progress
from raserec_adapter.data import PrefixSet, Sequences
from raserec_adapter.data.batching import Batch, gather_windows, iter_batches
from raserec_adapter.evaluation.metrics import (
    DEFAULT_KS,
    RankingMetrics,
    check_protocol,
    target_rank,
)

__all__ = ["evaluate_ranking", "rank_targets"]

Represent = Callable[[Batch], torch.Tensor]


def _seen_items(sequences: Sequences, prefixes: PrefixSet, rows: np.ndarray) -> torch.Tensor:
    """``(B, max length)`` every item of each prefix (not only the last ``max_len``), 0-padded."""
    lengths = prefixes.lengths[rows]
    ends = sequences.offsets[prefixes.users[rows]] + lengths
    return gather_windows(sequences, ends, lengths)[0]


@torch.no_grad()
def rank_targets(
    represent: Represent,
    item_weights: torch.Tensor,
    sequences: Sequences,
    prefixes: PrefixSet,
    max_len: int = 50,
    protocol: str = "full",
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    show_progress: bool = False,
    desc: str = "evaluate",
) -> torch.Tensor:
    """Rank of every prefix's target among all items, in the order of ``prefixes``.

    Args:
        represent: Maps a :class:`~raserec_adapter.data.Batch` (on ``device``) to ``(B, d)``.
        item_weights: ``(N + 1, d)`` item table; score = representation . item row.
        sequences: The sequences the prefixes refer to.
        prefixes: Queries with known targets.
        max_len: Inputs are the last ``max_len`` items of each prefix.
        protocol: ``"full"`` (seen items kept) or ``"seen_removed"``.
        batch_size: Queries per scoring batch.
        device: Where to compute.
        show_progress: Show a progress bar.
        desc: The progress bar's name.
    """
    check_protocol(protocol)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"batch_size must be a positive int (queries per batch), got {batch_size!r}"
        )
    ranks = torch.empty(len(prefixes), dtype=torch.long)
    weights_t = item_weights.to(device).t()
    n_batches = -(-len(prefixes) // batch_size)
    batches = iter_batches(sequences, prefixes, batch_size, max_len=max_len)
    for batch in progress(batches, n_batches, desc, show_progress):
        batch = batch.to(device)
        scores = represent(batch) @ weights_t
        seen = None
        if protocol == "seen_removed":
            seen = _seen_items(sequences, prefixes, batch.index.cpu().numpy())
        ranks[batch.index.cpu()] = target_rank(scores, batch.targets, seen).cpu()
    return ranks


def evaluate_ranking(
    represent: Represent,
    item_weights: torch.Tensor,
    sequences: Sequences,
    prefixes: PrefixSet,
    max_len: int = 50,
    protocol: str = "full",
    ks: tuple[int, ...] = DEFAULT_KS,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    show_progress: bool = False,
) -> dict[str, float]:
    """HR@K, NDCG@K and MRR@K of ``represent`` on ``prefixes`` (see :func:`rank_targets`).

    Examples:
        >>> import torch
        >>> from raserec_adapter.data import Sequences, leave_one_out
        >>> seqs = Sequences.from_lists([[1, 2, 3], [2, 3, 1]])
        >>> table = torch.eye(4)  # item i scores 1 for representation e_i
        >>> last = lambda b: table[b.item_seq[torch.arange(len(b.lengths)), b.lengths - 1]]
        >>> evaluate_ranking(last, table, seqs, leave_one_out(seqs).test, ks=(1,))
        {'HR@1': 0.0, 'NDCG@1': 0.0, 'MRR@1': 0.0}
    """
    if len(prefixes) == 0:
        raise ValueError("no prefixes to evaluate: metrics over zero users would read as 0")
    metrics = RankingMetrics(ks)
    metrics.update(
        rank_targets(
            represent,
            item_weights,
            sequences,
            prefixes,
            max_len,
            protocol,
            batch_size,
            device,
            show_progress,
        )
    )
    return metrics.compute()
