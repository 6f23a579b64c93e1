"""Dropout whose CPU masks are several times cheaper than ``torch.nn.Dropout``'s.

On a CPU, ``nn.Dropout`` draws its mask with ``bernoulli_``, about 25 ns per entry: in stage-1
training of the example SASRec the masks (of its hidden states and attention weights) took about
a quarter of a step. :func:`dropout` draws the same distribution from 64-bit random words
instead, one word for 8 entries:

* when ``256 p`` is an integer (``p = 0.5``, ``0.25``, ...), an entry is kept when its random
  byte is at least ``256 p``: exactly probability ``1 - p``;
* otherwise it compares a random 32-bit integer with ``round(2^32 p)``, so the keep rate is
  ``1 - p`` to within ``2^-32``.

Kept entries are scaled by ``1 / (1 - p)``, the gradient is the same mask, and
``torch.manual_seed`` fixes the masks, as with ``nn.Dropout``; the random stream differs, so a
model trained with one does not reproduce the other bit for bit. Other devices (CUDA, MPS) use
``torch.nn.functional.dropout`` itself, which is fast there.

Use :class:`Dropout` in place of ``nn.Dropout`` in your own encoder to speed up its CPU
training; its state dict is the same (empty), so checkpoints load either way.

Example:
    >>> import torch
    >>> from raserec_adapter.layers import Dropout
    >>> _ = torch.manual_seed(0)
    >>> y = Dropout(0.5)(torch.ones(10_000))
    >>> sorted(set(y.tolist())), round(float((y > 0).float().mean()), 1)
    ([0.0, 2.0], 0.5)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Dropout", "dropout"]

_INT64_MIN = -(2**63)


def _random_words(count: int) -> torch.Tensor:
    """``count`` uniform 64-bit words (``random_(from=int64 min)`` spans all 2^64 values)."""
    return torch.empty(count, dtype=torch.int64).random_(_INT64_MIN, None)


def _keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """Bool tensor of ``shape``, each entry True with probability ``1 - p``, independently."""
    n = math.prod(shape)
    if (p * 256).is_integer():
        data = _random_words((n + 7) // 8).view(torch.uint8)  # 8 uniform bytes per word
        return data[:n].view(shape) >= int(p * 256)
    data = _random_words((n + 1) // 2).view(torch.int32)  # 2 uniform 32-bit integers per word
    threshold = min(round(p * 2**32) - 2**31, 2**31 - 1)
    return data[:n].view(shape) >= threshold


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``torch.nn.functional.dropout(x, p, training)`` with cheaper CPU masks.

    Args:
        x: Any tensor; on a device other than the CPU this calls ``F.dropout``.
        p: Probability of zeroing an entry, in ``[0, 1]``.
        training: ``False`` (or ``p = 0``) returns ``x`` itself.

    Raises:
        ValueError: ``p`` is outside ``[0, 1]``.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> y = dropout(torch.ones(8, 1000), 0.3)
        >>> round(float((y > 0).float().mean()), 1), round(float(y.max()), 4)
        (0.7, 1.4286)
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p == 1.0:
        return F.dropout(x, p, True)
    keep = _keep_mask(x.shape, p).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * keep


class Dropout(nn.Dropout):
    """:class:`torch.nn.Dropout` with the cheaper CPU masks of :func:`dropout`.

    A subclass, so code that looks for ``nn.Dropout`` modules (to switch them off, or to read
    their rates) finds it. ``inplace=True`` is accepted and ignored on the CPU.

    Example:
        >>> import torch
        >>> drop = Dropout(0.25).train()
        >>> y = drop(torch.ones(4, 1000))
        >>> sorted(set(y.tolist()[0]))
        [0.0, 1.3333333730697632]
        >>> torch.equal(drop.eval()(y), y)
        True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        return dropout(x, self.p, self.training)
