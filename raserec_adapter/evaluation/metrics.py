"""Full-ranking HR@K, NDCG@K and MRR@K (leave-one-out, full ranking).

Every metric is a small pure function on ranks plus :class:`RankingMetrics`, a stateful
accumulator that keeps only sums and counts. Ranks are computed against all items 1..N (never
the padding id 0); ties count against the target: ``rank = 1 + #{other items with score >=
target score}``, so a constant model ranks every target last, not first.

Two protocols:

* ``"full"`` (default, DuoRec/RaSeRec): items the user has already seen stay in the ranking.
* ``"seen_removed"`` (S3-Rec/ICLRec/BSARec): the user's earlier items are removed (the target is
  never removed).

Examples:
    >>> import torch
    >>> scores = torch.tensor([[0.0, 0.9, 0.5, 0.1], [0.0, 0.2, 0.2, 0.7]])
    >>> target_rank(scores, torch.tensor([2, 1])).tolist()  # item 1 outranks item 2; a tie counts
    [2, 3]
    >>> m = RankingMetrics(ks=(1, 2))
    >>> m.update(target_rank(scores, torch.tensor([2, 1])))
    >>> {k: round(v, 4) for k, v in m.compute().items()}
    {'HR@1': 0.0, 'NDCG@1': 0.0, 'MRR@1': 0.0, 'HR@2': 0.5, 'NDCG@2': 0.3155, 'MRR@2': 0.25}
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "PROTOCOLS",
    "RankingMetrics",
    "hit_rate",
    "mrr",
    "ndcg",
    "target_rank",
]

PROTOCOLS = ("full", "seen_removed")
DEFAULT_KS = (5, 10, 20)


def target_rank(
    scores: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor | None = None
) -> torch.Tensor:
    """1-based rank of each target among items 1..N, ties counted against the target.

    Args:
        scores: ``(B, N + 1)`` scores; column 0 (padding) is ignored.
        targets: ``(B,)`` target item ids in ``1..N``.
        seen: Optional ``(B, L)`` item ids to remove from the ranking (0 = no item). The target
            is never removed, even if it appears here.

    Returns:
        ``(B,)`` long tensor of ranks in ``1..N``.
    """
    if scores.dim() != 2 or targets.dim() != 1 or scores.shape[0] != targets.shape[0]:
        raise ValueError(
            f"expected scores (B, N+1) and targets (B,), got {tuple(scores.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if len(targets) and (targets.min() < 1 or targets.max() >= scores.shape[1]):
        raise ValueError(f"targets must lie in 1..{scores.shape[1] - 1} (0 is padding)")
    # a NaN anywhere makes the sum NaN (one cheap pass); only then, or for +inf and -inf
    # together, is the exact (4x slower) elementwise test run
    if torch.isnan(scores.sum()) and torch.isnan(scores).any():
        raise ValueError("scores contain NaN; check the model for diverged weights")
    rows = torch.arange(len(targets), device=scores.device)
    target_scores = scores[rows, targets].unsqueeze(1)
    ge = scores[:, 1:] >= target_scores
    if seen is not None:
        removed = torch.zeros_like(scores, dtype=torch.bool)
        removed.scatter_(1, seen.to(scores.device), True)
        removed[rows, targets] = False
        ge &= ~removed[:, 1:]
    # the target counts itself (score >= its own score): that is the "1 +" of the rank;
    # an int32 sum of the bools is about 10x faster on a CPU than the default int64 one
    return ge.sum(dim=1, dtype=torch.int32).long()


def hit_rate(ranks: torch.Tensor, k: int) -> float:
    """Share of ranks within the top ``k``."""
    return float((ranks <= k).float().mean()) if len(ranks) else 0.0


def ndcg(ranks: torch.Tensor, k: int) -> float:
    """Mean over users of ``1 / log2(rank + 1)`` for ranks within the top ``k``, else 0."""
    if not len(ranks):
        return 0.0
    gain = 1.0 / torch.log2(ranks.double() + 1.0)
    return float(torch.where(ranks <= k, gain, torch.zeros_like(gain)).mean())


def mrr(ranks: torch.Tensor, k: int) -> float:
    """Mean over users of ``1 / rank`` for ranks within the top ``k``, else 0 (MRR@K)."""
    if not len(ranks):
        return 0.0
    rr = 1.0 / ranks.double()
    return float(torch.where(ranks <= k, rr, torch.zeros_like(rr)).mean())


class RankingMetrics:
    """Accumulates HR@K, NDCG@K and MRR@K over batches of ranks (sums and counts only).

    Args:
        ks: Cut-offs to report.
    """

    def __init__(self, ks: Sequence[int] = DEFAULT_KS) -> None:
        if not ks or any(k < 1 for k in ks):
            raise ValueError(f"ks must be positive integers, got {ks}")
        self.ks = tuple(ks)
        self.reset()

    @classmethod
    def of(cls, ranks: torch.Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
        """The metrics of one tensor of ranks (:meth:`compute` after one :meth:`update`).

        Examples:
            >>> RankingMetrics.of(torch.tensor([1, 3]), ks=(1,))
            {'HR@1': 0.5, 'NDCG@1': 0.5, 'MRR@1': 0.5}
        """
        metrics = cls(ks)
        metrics.update(ranks)
        return metrics.compute()

    def reset(self) -> None:
        self._hits = dict.fromkeys(self.ks, 0.0)
        self._gains = dict.fromkeys(self.ks, 0.0)
        self._reciprocal = dict.fromkeys(self.ks, 0.0)
        self.count = 0

    def update(self, ranks: torch.Tensor) -> None:
        ranks = ranks.detach().cpu().long()
        gain = 1.0 / torch.log2(ranks.double() + 1.0)
        reciprocal = 1.0 / ranks.double()
        for k in self.ks:
            inside = ranks <= k
            self._hits[k] += float(inside.sum())
            self._gains[k] += float(gain[inside].sum())
            self._reciprocal[k] += float(reciprocal[inside].sum())
        self.count += len(ranks)

    def compute(self) -> dict[str, float]:
        """Returns ``{"HR@K": ..., "NDCG@K": ..., "MRR@K": ...}`` for every K, in order of K."""
        n = max(self.count, 1)
        out: dict[str, float] = {}
        for k in self.ks:
            out[f"HR@{k}"] = self._hits[k] / n
            out[f"NDCG@{k}"] = self._gains[k] / n
            out[f"MRR@{k}"] = self._reciprocal[k] / n
        return out


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return protocol
