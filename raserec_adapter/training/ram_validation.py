"""Validation of the RAM over cached queries and neighbours, and the choice of its alpha.

RAFT (:mod:`raserec_adapter.training.raft`) encodes the validation queries and retrieves their
neighbours once; every epoch's validation and the post-training choice of ``RAMConfig.alpha``
(``RAFTConfig.alpha_grid``) rank from those caches, so each costs one pass of the small RAM.
Since ``h~ = alpha * h + (1 - alpha) * mix`` and the mix does not depend on alpha, ``alpha = 1``
is the frozen encoder itself.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from raserec_adapter.config import RAFTConfig
from raserec_adapter.data import LeaveOneOutSplit
from raserec_adapter.data.batching import Batch
from raserec_adapter.evaluation import evaluate_ranking
from raserec_adapter.memory.protocol import gather_rows
from raserec_adapter.ram import RetrievalAugmentedModule

__all__ = ["best_alpha", "choose_alpha", "evaluate_ram"]

logger = logging.getLogger("raserec_adapter")


def evaluate_ram(
    ram: RetrievalAugmentedModule,
    split: LeaveOneOutSplit,
    queries: torch.Tensor,
    neighbours: torch.Tensor,
    memories: tuple[torch.Tensor, torch.Tensor],
    item_table: torch.Tensor,
) -> dict[str, float]:
    """Validation metrics of the RAM over cached query representations and neighbours.

    ``queries`` and ``neighbours`` hold one row per validation user (``split.valid``);
    ``memories`` are the bank's ``(keys, values)``; everything on ``item_table``'s device. The
    RAM is evaluated in eval mode and handed back in the mode it came in.
    """
    was = ram.training
    ram.eval()
    dev = item_table.device
    mem_k, mem_v = memories

    def represent(b: Batch) -> torch.Tensor:
        rows = b.index.to(dev)
        nb = neighbours[rows]
        return ram(queries[rows], gather_rows(mem_k, nb), gather_rows(mem_v, nb))

    try:
        return evaluate_ranking(
            represent, item_table, split.sequences, split.valid, max_len=split.max_len, device=dev
        )
    finally:
        ram.train(was)


def best_alpha(score: dict[float, float], trained: float) -> float:
    """The alpha with the best validation score; ties keep ``trained``, then the larger alpha.

    Example:
        >>> best_alpha({0.5: 0.10, 0.9: 0.12, 1.0: 0.12}, trained=0.5)
        1.0
    """
    return max(score, key=lambda a: (score[a], a == trained, a))


def choose_alpha(
    ram: RetrievalAugmentedModule,
    split: LeaveOneOutSplit,
    valid: tuple[torch.Tensor, torch.Tensor],
    memories: tuple[torch.Tensor, torch.Tensor],
    item_table: torch.Tensor,
    config: RAFTConfig,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Sets ``ram.config.alpha`` to the value of ``config.alpha_grid`` (or the trained alpha)
    with the best validation ``config.valid_metric``; ties keep the trained alpha, then the
    larger. ``valid``: the cached validation ``(queries, neighbours)``.

    Returns:
        The chosen alpha's validation metrics, and ``{"trained", "chosen", "valid"}``.
    """
    trained = ram.config.alpha
    metrics: dict[float, dict[str, float]] = {}
    for alpha in sorted({trained, *config.alpha_grid}):
        ram.config = ram.config.replace(alpha=alpha)
        metrics[alpha] = evaluate_ram(ram, split, *valid, memories, item_table)
    score = {a: m[config.valid_metric] for a, m in metrics.items()}
    chosen = best_alpha(score, trained)
    ram.config = ram.config.replace(alpha=chosen)
    if chosen != trained:
        logger.info(
            "RAFT: alpha %g chosen on validation (%s %.4f; the trained alpha %g: %.4f)",
            chosen, config.valid_metric, score[chosen], trained, score[trained],
        )  # fmt: skip
    valid = {f"{a:g}": s for a, s in score.items()}
    return metrics[chosen], {"trained": trained, "chosen": chosen, "valid": valid}
