"""Evaluation: ranking metrics (pure functions plus :class:`RankingMetrics`) and full ranking.

Examples:
    >>> import torch
    >>> from raserec_adapter.evaluation import RankingMetrics
    >>> metrics = RankingMetrics(ks=(1, 2))
    >>> metrics.update(torch.tensor([1, 3]))  # 1-based ranks of two users' targets
    >>> metrics.compute()["HR@1"]
    0.5
"""

from raserec_adapter.evaluation.metrics import RankingMetrics, target_rank
from raserec_adapter.evaluation.ranking import evaluate_ranking, rank_targets

__all__ = ["RankingMetrics", "evaluate_ranking", "rank_targets", "target_rank"]
