"""The lift of one ranking over another, with a paired confidence interval over test users.

Both rankings rank the same users' same targets (the frozen encoder and the encoder with the
RAM, say), so each user contributes a pair of metric values and the lift is the mean of the
per-user differences. Its interval is a paired bootstrap: the test users are resampled with
replacement (the same draw for both rankings) ``resamples`` times and the percentile interval
of the resampled mean differences is reported. A lift whose interval contains zero is not told
apart from no lift by this test set.

Ranks of several seeds (``(S, U)``: the same users in the same order) are averaged per user
first, so the interval is over users for the mean over seeds; it does not include the spread
of training runs beyond what the seeds' average carries.

Examples:
    >>> import torch
    >>> base = torch.tensor([1, 4, 12, 30, 2, 8])
    >>> new = torch.tensor([1, 2, 9, 30, 2, 5])
    >>> lift = paired_lift(base, new, ks=(10,), resamples=200)
    >>> [round(lift["HR@10"][key], 4) for key in ("base", "new", "diff")]  # 4 of 6, 5 of 6
    [0.6667, 0.8333, 0.1667]
    >>> lift["HR@10"]["low"] <= lift["HR@10"]["diff"] <= lift["HR@10"]["high"]
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["LIFT_METHOD", "lift_record", "paired_lift", "per_user_metrics"]

LIFT_METHOD = "paired bootstrap over test users, percentile interval"
"""How :func:`paired_lift` computes its interval (recorded next to it in results files)."""


def _as_ranks(ranks: torch.Tensor | np.ndarray | Sequence[int], name: str) -> np.ndarray:
    r = ranks.detach().cpu().numpy() if isinstance(ranks, torch.Tensor) else np.asarray(ranks)
    if r.ndim == 1:
        r = r[None]
    if r.ndim != 2 or r.shape[1] == 0:
        raise ValueError(
            f"{name} must be (users,) or (seeds, users) ranks with at least one user, got "
            f"shape {r.shape}"
        )
    if not np.issubdtype(r.dtype, np.integer) or (r < 1).any():
        raise ValueError(f"{name} must hold 1-based integer ranks (>= 1), as ranks() returns")
    return r


def per_user_metrics(
    ranks: torch.Tensor | np.ndarray | Sequence[int], ks: Sequence[int] = (5, 10, 20)
) -> dict[str, np.ndarray]:
    """Each user's ``HR@K`` and ``NDCG@K`` from 1-based ranks, ``(U,)`` float64 arrays.

    ``(S, U)`` ranks of S seeds give each user's mean over the seeds. The means of the arrays
    are :class:`~raserec_adapter.RankingMetrics`' values.

    Examples:
        >>> m = per_user_metrics([1, 3, 20], ks=(5,))
        >>> m["HR@5"].tolist(), [round(x, 4) for x in m["NDCG@5"].tolist()]
        ([1.0, 1.0, 0.0], [1.0, 0.5, 0.0])
    """
    r = _as_ranks(ranks, "ranks").astype(np.float64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        if int(k) != k or k < 1:
            raise ValueError(f"cut-offs must be positive integers, got {k!r}")
        hit = r <= k
        out[f"HR@{k}"] = hit.mean(0)
        out[f"NDCG@{k}"] = np.where(hit, 1.0 / np.log2(r + 1.0), 0.0).mean(0)
    return out


def paired_lift(
    base: torch.Tensor | np.ndarray | Sequence[int],
    new: torch.Tensor | np.ndarray | Sequence[int],
    *,
    ks: Sequence[int] = (5, 10, 20),
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per metric, ``new``'s lift over ``base`` with a paired bootstrap interval over users.

    Args:
        base: Ranks of the reference (``(U,)``, or ``(S, U)`` for S seeds).
        new: Ranks of the same users' same targets by the other model, same shape.
        ks: Cut-offs of ``HR@K`` and ``NDCG@K``.
        resamples: Bootstrap resamples of the users.
        level: Coverage of the interval.
        seed: Seed of the resampling (the interval is reproducible).

    Returns:
        ``{"HR@10": {"base", "new", "diff", "low", "high", "excludes_zero"}, ...}``: the two
        means, their difference (``new - base``), the interval and whether it excludes zero.

    Raises:
        ValueError: If the shapes differ, ranks are not 1-based integers, ``resamples < 1`` or
            ``level`` is not in (0, 1).
    """
    a, b = _as_ranks(base, "base"), _as_ranks(new, "new")
    if a.shape != b.shape:
        raise ValueError(
            f"base and new rank different users: shapes {a.shape} and {b.shape}; pass the ranks "
            "of the same split and protocol, in the same user order"
        )
    if int(resamples) != resamples or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    ma, mb = per_user_metrics(a, ks), per_user_metrics(b, ks)
    names = list(ma)
    diffs = np.stack([mb[n] - ma[n] for n in names], axis=1)  # (U, M)
    users = diffs.shape[0]
    rng = np.random.default_rng(seed)
    boot = np.empty((resamples, len(names)))
    chunk = max(1, 2_000_000 // users)  # bounded memory: chunk x users indices at a time
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        idx = rng.integers(0, users, size=(n, users))
        boot[start : start + n] = diffs[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [tail, 1.0 - tail], axis=0)
    out: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(names):
        diff = float(diffs[:, j].mean())
        lo, hi = float(low[j]), float(high[j])
        out[name] = {
            "base": float(ma[name].mean()),
            "new": float(mb[name].mean()),
            "diff": diff,
            "low": lo,
            "high": hi,
            "excludes_zero": bool(lo > 0.0 or hi < 0.0),
        }
    return out


def lift_record(
    base: torch.Tensor | np.ndarray,
    new: torch.Tensor | np.ndarray,
    over: str = "test users",
    **options: Any,
) -> dict[str, Any]:
    """:func:`paired_lift` with what a results file records of how it was computed.

    ``over`` names what the ranks' rows are (``"validation users"``, ...) in ``method``.

    Examples:
        >>> rec = lift_record([1, 2, 30], [1, 1, 3], ks=(5,), resamples=50)
        >>> rec["method"], rec["users"], rec["metrics"]["HR@5"]["diff"]
        ('paired bootstrap over test users, percentile interval, 50 resamples, seed 0', 3, \
0.3333333333333333)
    """
    seeds, users = _as_ranks(base, "base").shape
    resamples = options.get("resamples", 2000)
    return {
        "method": f"{LIFT_METHOD.replace('test users', over)}, {resamples} resamples, "
        f"seed {options.get('seed', 0)}",
        "level": options.get("level", 0.95),
        "users": users,
        "seeds_averaged": seeds,
        "metrics": paired_lift(base, new, **options),
    }
