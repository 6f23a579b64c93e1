"""Sampled softmax for large catalogues: the next-item loss over a few sampled negatives.

The full softmax scores every item: at ``N`` items and ``B`` queries a step holds a ``(B, N)``
score matrix (10 GB at 10M items and B = 256). The sampled softmax scores each query against
its target and a shared set of candidates, drawn from

* ``uniform``: ``M`` items drawn uniformly from ``1..N`` (with replacement), and/or
* ``in_batch``: the batch's own targets (drawn, in effect, from the items' frequencies),

and corrects every logit by the log of the item's expected count in the candidate set
(the "logQ correction" of Jean et al., 2015; Yi et al., 2019), so that the loss estimates the
full softmax without favouring popular items: ``s_j - log E[count_j]`` with
``E[count_j] = M / N + B * p_j`` (``p_j`` the item's share of training targets). A candidate
equal to the row's own target is masked ("accidental hit"), so the target is counted once.

Examples:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> h, table = torch.randn(4, 8, generator=g), torch.randn(101, 8, generator=g)
    >>> targets = torch.tensor([3, 7, 7, 50])
    >>> loss = SampledSoftmax(num_items=100, negatives=20).loss(h, table, targets, generator=g)
    >>> bool(loss > 0)
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["SampledSoftmax"]


@dataclass
class SampledSoftmax:
    """The sampled next-item softmax over items ``1..num_items`` (row 0 of tables: padding).

    Args:
        num_items: ``N``, the catalogue's size.
        negatives: ``M`` uniformly drawn candidates per step (0: none).
        in_batch: Whether the batch's targets are candidates too.
        target_counts: ``(N + 1,)`` how often each item is a training target (index 0
            unused); the in-batch candidates' correction. Uniform counts when omitted.
    """

    num_items: int
    negatives: int = 256
    in_batch: bool = True
    target_counts: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {self.num_items}")
        if self.negatives < 0:
            raise ValueError(f"negatives must be >= 0, got {self.negatives}")
        if not self.negatives and not self.in_batch:
            raise ValueError("the sampled softmax needs negatives > 0 or in_batch=True")
        share = np.full(self.num_items + 1, 1.0 / self.num_items)
        if self.target_counts is not None:
            counts = np.asarray(self.target_counts, dtype=np.float64)
            if counts.shape != (self.num_items + 1,) or (counts < 0).any() or counts.sum() <= 0:
                raise ValueError(
                    f"target_counts must be ({self.num_items + 1},) non-negative counts per "
                    f"item id (np.bincount(targets, minlength=N + 1)), got shape {counts.shape}"
                )
            share = counts / counts.sum()
        share[0] = 0.0
        self._share = torch.from_numpy(share)

    def log_expected_counts(self, items: torch.Tensor, batch: int) -> torch.Tensor:
        """``log E[count]`` of each item in a step's candidates (``batch`` in-batch draws)."""
        expected = torch.full(items.shape, self.negatives / self.num_items, dtype=torch.float64)
        if self.in_batch:
            expected = expected + batch * self._share[items.cpu()]
        return torch.log(expected.clamp_min(1e-30)).to(torch.float32).to(items.device)

    def loss(
        self,
        h: torch.Tensor,
        item_weights: torch.Tensor,
        targets: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The mean sampled-softmax cross-entropy of ``h`` ``(B, d)`` against ``targets``.

        ``item_weights``: the ``(N + 1, d)`` item table; ``generator``: draws the uniform
        candidates (on the CPU), so a seeded run draws the same ones.
        """
        if h.dim() != 2 or targets.shape != (h.shape[0],):
            raise ValueError(
                f"expected h (B, d) and targets (B,), got {tuple(h.shape)} and "
                f"{tuple(targets.shape)}"
            )
        if item_weights.shape[0] != self.num_items + 1:
            raise ValueError(
                f"the item table has {item_weights.shape[0] - 1} items but the sampled softmax "
                f"was set up for {self.num_items}"
            )
        parts = []
        if self.in_batch:
            parts.append(targets)
        if self.negatives:
            drawn = torch.randint(1, self.num_items + 1, (self.negatives,), generator=generator)
            parts.append(drawn.to(targets.device))
        cands = torch.cat(parts)
        correction = self.log_expected_counts(cands, h.shape[0])
        pos = (h * item_weights[targets]).sum(dim=1, keepdim=True)
        pos = pos - self.log_expected_counts(targets, h.shape[0])[:, None]
        neg = h @ item_weights[cands].t() - correction[None, :]
        neg = neg.masked_fill(cands[None, :] == targets[:, None], -math.inf)
        logits = torch.cat([pos, neg], dim=1)
        zero = torch.zeros(h.shape[0], dtype=torch.long, device=h.device)
        return F.cross_entropy(logits, zero)
