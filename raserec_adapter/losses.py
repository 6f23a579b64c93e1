"""Cross-entropy against a frozen item table, computed in cache-sized chunks.

In RAFT only the RAM trains: the item table gets no gradient. The softmax cross-entropy of
``x @ W`` over all N items then needs only ``dL/dx = (softmax - onehot) @ W^T / B``, which can be
formed chunk by chunk in the forward pass, so the ``(B, N)`` score matrix is never held whole and
no separate backward pass over it is needed (about 2.5x faster on a CPU for Beauty's 12k items).
Each chunk takes one exp() pass over its scores, written into one reused buffer.

Example:
    >>> import torch, torch.nn.functional as F
    >>> x = torch.randn(5, 4, requires_grad=True)
    >>> w_t, y = torch.randn(4, 9), torch.tensor([0, 3, 8, 2, 2])
    >>> torch.allclose(frozen_table_cross_entropy(x, w_t, y, chunk=2), F.cross_entropy(x @ w_t, y))
    True
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["frozen_table_cross_entropy"]


# exp() of arguments below about -87 gives float32 denormals or zero, which a CPU computes
# about 20x slower; such terms add less than e^-80 each to a softmax sum, so they are clamped.
_EXP_FLOOR = -80.0


class _FrozenTableCE(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, w_t: torch.Tensor, targets: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        n = x.shape[0]
        grad = torch.empty_like(x)
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        # one score buffer for all chunks: no allocation (and page faults) per chunk
        buf = torch.empty(min(chunk, n), w_t.shape[1], dtype=x.dtype, device=x.device)
        w = w_t.t()
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            logits = torch.mm(x[s:e], w_t, out=buf[: e - s])
            tc = targets[s:e, None]
            top = logits.amax(1, keepdim=True)
            picked = logits.gather(1, tc)
            # one exp pass: softmax = exp(l - max) / sum, log-sum-exp = max + log(sum)
            logits.sub_(top).clamp_(min=_EXP_FLOOR).exp_()
            z = logits.sum(1, keepdim=True)
            total += (top + z.log() - picked).sum().double()
            probs = logits.div_(z)
            probs.scatter_add_(1, tc, torch.full_like(picked, -1.0))
            torch.mm(probs, w, out=grad[s:e])
        ctx.save_for_backward(grad)
        ctx.n = n
        return (total / n).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * (g / ctx.n), None, None, None


def frozen_table_cross_entropy(
    x: torch.Tensor, w_t: torch.Tensor, targets: torch.Tensor, chunk: int = 128
) -> torch.Tensor:
    """Mean softmax cross-entropy of ``x @ w_t``; gradient flows to ``x`` only.

    Args:
        x: ``(B, d)`` representations.
        w_t: ``(d, N)`` frozen class (item) table, transposed.
        targets: ``(B,)`` class indices in ``0..N-1``.
        chunk: Rows scored at a time.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return _FrozenTableCE.apply(x, w_t.detach(), targets, chunk)
