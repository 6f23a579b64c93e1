"""A training step shared by the processes of a group: each encodes its part of the batch.

Every process draws the same global batch (the same seed gives the same order everywhere) and
keeps a contiguous part of it: about ``1 / world_size`` of its training pairs (causal windows
are cut by their pairs, not their rows). Its gradients reach the others through
``DistributedDataParallel``, which averages them; so each process scales its part of a
per-pair mean by ``world_size * (its pairs / the batch's pairs)``, and the average is the
gradient of the mean over the whole batch, as one process computes it.

The InfoNCE loss couples the examples of a batch (each view's negatives are the other
``2B - 2`` views), so it is computed over the whole global batch: the processes all-gather
their views, each keeping its own rows in the autograd graph
(:func:`~raserec_adapter.distributed.gather_live`), and each computes the same loss; scaled by
``world_size``, the averaged gradient is the one-process gradient. Positives are drawn for the
global batch on every process, from the same generator, so they match one process's too.

A process whose part of a small last batch would be empty encodes one row of the batch with
weight 0: every process then takes part in every step's forward and backward passes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from raserec_adapter import distributed
from raserec_adapter.data.batching import Batch, CausalWindows, window_pair_index
from raserec_adapter.encoder import WrappedEncoder
from raserec_adapter.training.views import PositiveSampler

__all__ = ["EncoderCalls", "Sharding", "StepShard", "wrap_ddp"]


def wrap_ddp(module: nn.Module, find_unused: bool = False) -> DistributedDataParallel:
    """``module`` in ``DistributedDataParallel``; buffers synchronised once, at the start.

    ``find_unused``: parameters a forward pass may leave unused (the RAM's second channel when
    ``RAMConfig.beta = 1``); only for modules called once per step.
    """
    kwargs: dict[str, Any] = {"find_unused_parameters": find_unused}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        kwargs["forward_sync_buffers"] = False
    else:  # PyTorch before the option existed
        kwargs["broadcast_buffers"] = False
    return DistributedDataParallel(module, **kwargs)


class _Forward(nn.Module):
    """Runs ``fn(*args)`` as its forward pass: any call on the encoder, inside DDP's forward."""

    def __init__(self, encoder: WrappedEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
        return fn(*args)


class EncoderCalls:
    """The encoder's calls of a step (``encoder(...)``, ``forward_all``, a backbone's
    ``rec_loss``) routed through one ``DistributedDataParallel`` wrapper, so that the backward
    pass averages their gradients over the processes. A step may call it any number of times.
    """

    def __init__(self, encoder: WrappedEncoder) -> None:
        self.encoder = encoder
        self.ddp = wrap_ddp(_Forward(encoder))

    @property
    def hidden_size(self) -> int:
        return self.encoder.hidden_size

    def __call__(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.ddp(self.encoder, item_seq, lengths)

    def forward_all(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.ddp(self.encoder.forward_all, item_seq, lengths)

    def run(self, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
        """``fn(*args)`` inside DDP's forward (a backbone's own loss)."""
        return self.ddp(fn, *args)


class DrawnPositives:
    """Positives drawn for a whole global batch; :meth:`sample` looks up a process's part.

    It stands in for the :class:`~raserec_adapter.training.views.PositiveSampler` (whose
    generator it shares, so a state file saves the same draws).
    """

    def __init__(self, sampler: PositiveSampler, num_pairs: int) -> None:
        self.sampler = sampler
        self.rng = sampler.rng
        self._drawn = np.zeros(num_pairs, dtype=np.int64)

    def draw(self, pairs: np.ndarray) -> np.ndarray:
        """Draws the positives of a global batch's pairs, as one process draws them."""
        self._drawn[pairs] = self.sampler.sample(pairs)
        return self._drawn[pairs]

    def sample(self, pairs: np.ndarray) -> np.ndarray:
        """The positives drawn for ``pairs`` (rows of the last global batch)."""
        return self._drawn[pairs]


@dataclass
class StepShard:
    """This process's part of a global batch.

    Attributes:
        host: Its rows (on the CPU); one row of weight 0 when it has none.
        share: Its training pairs over the batch's (0 for such a row).
        counts: Training pairs per process.
        targets: The global batch's targets, in the order one process reads them.
        view_pairs: The global batch's pairs, then their positives (``None`` without an
            InfoNCE loss).
    """

    host: Batch
    share: float
    counts: list[int]
    targets: torch.Tensor
    view_pairs: np.ndarray | None

    @property
    def scale(self) -> float:
        """What this process's per-pair mean loss is multiplied by for DDP's averaging."""
        return distributed.world_size() * self.share

    def global_views(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every process's views in the global batch's order; this process's rows live."""
        c = self.counts[distributed.rank()]
        both = distributed.gather_live(torch.cat([z1[:c], z2[:c]]), [2 * k for k in self.counts])
        parts = torch.split(both, [2 * k for k in self.counts])
        firsts = [p[:k] for p, k in zip(parts, self.counts, strict=True)]
        seconds = [p[k:] for p, k in zip(parts, self.counts, strict=True)]
        return torch.cat(firsts), torch.cat(seconds)


def _rows(host: Batch, lo: int, hi: int, causal: bool) -> Batch:
    """Rows ``lo:hi`` of a batch, trimmed to their longest input."""
    lengths = host.lengths[lo:hi]
    width = int(lengths.max())
    targets = host.targets[lo:hi, :width] if causal else host.targets[lo:hi]
    return Batch(
        host.item_seq[lo:hi, :width].contiguous(),
        lengths,
        targets.contiguous(),
        host.index[lo:hi],
        None if host.users is None else host.users[lo:hi],
        None if host.prefix_lengths is None else host.prefix_lengths[lo:hi],
    )


@dataclass
class Sharding:
    """What a pre-training run shares between processes: the DDP-routed encoder calls and the
    positives drawn for each global batch."""

    calls: EncoderCalls
    positives: DrawnPositives | None

    def shard(self, host: Batch, windows: CausalWindows | None) -> StepShard:
        """This process's part of the global batch ``host`` (causal ``windows`` or prefixes)."""
        if windows is not None:
            rows_pos = (host.targets > 0).nonzero().numpy()
            pairs = window_pair_index(windows, host.index.numpy()[rows_pos[:, 0]], rows_pos[:, 1])
            targets = host.targets[rows_pos[:, 0], rows_pos[:, 1]]
            weights = (host.targets > 0).sum(1).numpy()
        else:
            pairs, targets = host.index.numpy(), host.targets
            weights = np.ones(len(pairs), dtype=np.int64)
        parts = distributed.weighted_bounds(weights, distributed.world_size())
        counts = [int(weights[a:b].sum()) for a, b in parts]
        lo, hi = parts[distributed.rank()]
        share = counts[distributed.rank()] / max(sum(counts), 1)
        if lo == hi:  # a small last batch: one row of weight 0
            lo, hi = 0, 1
        view_pairs = None
        if self.positives is not None:
            view_pairs = np.concatenate([pairs, self.positives.draw(pairs)])
        return StepShard(
            _rows(host, lo, hi, windows is not None), share, counts, targets, view_pairs
        )
