"""Cross-entropy against a frozen item table, without holding the whole score matrix.

In RAFT only the RAM trains: the item table gets no gradient. The softmax cross-entropy of
``x @ W^T`` over all N items then needs only ``dL/dx = (softmax(x W^T) - onehot) @ W / B``,
which is formed in the forward pass, so no separate backward pass over the ``(B, N)`` scores
is needed. ``softmax(x W^T) @ W`` is attention with the table as keys and values (scale 1), and
the loss is its log-sum-exp minus the target's score, so on a CPU (float32, float64 or
bfloat16) both come from one call of PyTorch's tiled flash-attention kernel, whose score tiles
stay in cache (``kernel="attention"``, about 1.7x faster than the chunked loop at Beauty's
sizes in float32; in bfloat16 the target's score and the gradient's subtraction are formed in
float32). Elsewhere (and for any dtype that kernel does not take) the scores are formed in
chunks of ``chunk`` rows, each with one exp() pass into one reused buffer (``kernel="chunked"``).

Examples:
    >>> import torch, torch.nn.functional as F
    >>> x = torch.randn(5, 4, requires_grad=True)
    >>> w_t, y = torch.randn(4, 9), torch.tensor([0, 3, 8, 2, 2])
    >>> torch.allclose(frozen_table_cross_entropy(x, w_t, y, chunk=2), F.cross_entropy(x @ w_t, y))
    True
    >>> torch.allclose(frozen_table_cross_entropy(x, w_t, y, kernel="chunked"),
    ...                frozen_table_cross_entropy(x, w_t, y, kernel="attention"))
    True
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = [
    "attention_kernel_available",
    "frozen_table_cross_entropy",
    "info_nce",
    "next_item_loss",
]


# exp() of arguments below about -87 gives float32 denormals or zero, which a CPU computes
# about 20x slower; such terms add less than e^-80 each to a softmax sum, so they are clamped.
_EXP_FLOOR = -80.0


def _cpu_attention_op() -> Any:
    """PyTorch's CPU flash-attention op returning ``(output, logsumexp)``, or None if absent."""
    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


@functools.cache
def _attention_op_works(dtype: torch.dtype) -> bool:
    """Whether the private CPU op exists and, on a small probe, matches a direct computation.

    The op is not public API: its signature or behaviour may change between PyTorch releases,
    so it is checked once per dtype and process (well under a millisecond) before use.
    """
    op = _cpu_attention_op()
    if op is None:
        return False
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=gen).to(dtype)
    w = torch.randn(300, 7, generator=gen).to(dtype)
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-4
    try:
        out, lse = op(x[None, None], w[None, None], w[None, None], 0.0, False, scale=1.0)
        xf, wf = x.double(), w.double()
        scores = xf @ wf.t()
        ok = torch.allclose(
            out.reshape(5, 7).double(), scores.softmax(1) @ wf, atol=tol, rtol=tol
        ) and torch.allclose(lse.reshape(5).double(), scores.logsumexp(1), atol=tol, rtol=tol)
    except Exception as err:  # any failure means: do not use it
        logger.warning("CPU flash-attention op unusable (%s); using the chunked kernel", err)
        return False
    if not ok:
        logger.warning("CPU flash-attention op gave wrong numbers; using the chunked kernel")
    return bool(ok)


def _attention_ce(
    x: torch.Tensor, w: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss and unscaled gradient ``softmax(x w^T) w - w[y]`` from one attention call.

    ``w`` is the ``(N, d)`` table. The op reads its inputs as dense row-major and silently
    returns wrong numbers for transposed views, so every input is made contiguous first.
    """
    op = _cpu_attention_op()
    q = x.contiguous()[None, None]
    kv = w.contiguous()[None, None]
    out, lse = op(q, kv, kv, 0.0, False, scale=1.0)
    picked_rows = w.index_select(0, targets)
    acc = torch.promote_types(x.dtype, torch.float32)  # bfloat16 products summed in float32
    picked = (x.to(acc) * picked_rows.to(acc)).sum(1)
    total = (lse.reshape(-1).double() - picked.double()).sum()
    return total, (out[0, 0].to(acc) - picked_rows.to(acc)).to(x.dtype)


class _FrozenTableCE(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        w_t: torch.Tensor,
        targets: torch.Tensor,
        chunk: int,
        attention: bool,
    ) -> torch.Tensor:
        n = x.shape[0]
        if attention:
            total, grad = _attention_ce(x, w_t.t(), targets)
            ctx.save_for_backward(grad)
            ctx.n = n
            return (total / n).to(x.dtype)
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
    def backward(  # type: ignore[override]
        ctx: Any, g: torch.Tensor
    ) -> tuple[torch.Tensor, None, None, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * (g / ctx.n), None, None, None, None


KERNELS = ("auto", "attention", "chunked")


def attention_kernel_available(x: torch.Tensor) -> bool:
    """Whether ``kernel="attention"`` can run on ``x``'s device and dtype."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64, torch.bfloat16)
        and _attention_op_works(x.dtype)
    )


def frozen_table_cross_entropy(
    x: torch.Tensor,
    w_t: torch.Tensor,
    targets: torch.Tensor,
    chunk: int = 128,
    kernel: str = "auto",
) -> torch.Tensor:
    """Mean softmax cross-entropy of ``x @ w_t``; gradient flows to ``x`` only.

    Args:
        x: ``(B, d)`` representations.
        w_t: ``(d, N)`` frozen class (item) table, transposed. The attention kernel reads the
            ``(N, d)`` table, so pass the transposed view of a contiguous ``(N, d)`` table
            (``table.t()``) to spare it a copy per call.
        targets: ``(B,)`` class indices in ``0..N-1``.
        chunk: Rows scored at a time by the chunked kernel.
        kernel: ``"attention"`` (one flash-attention call; CPU, float32, float64 or
            bfloat16),
            ``"chunked"`` (any device and dtype), or ``"auto"``: attention where it can run.

    Examples:
        >>> import torch
        >>> x = torch.randn(3, 4, requires_grad=True)
        >>> loss = frozen_table_cross_entropy(x, torch.randn(4, 10), torch.tensor([1, 0, 9]))
        >>> loss.backward(); x.grad.shape
        torch.Size([3, 4])
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if x.ndim != 2 or w_t.ndim != 2 or x.shape[1] != w_t.shape[0]:
        raise ValueError(
            f"x must be (B, d) and w_t (d, N) with the same d; got {tuple(x.shape)} and "
            f"{tuple(w_t.shape)}"
        )
    available = attention_kernel_available(x) and w_t.dtype == x.dtype
    if kernel == "attention" and not available:
        raise ValueError(
            "kernel='attention' needs float32, float64 or bfloat16 inputs of one dtype on the "
            f"CPU and a PyTorch with its CPU flash-attention op; got {x.dtype} / {w_t.dtype} on "
            f"{x.device} (torch {torch.__version__}). Use kernel='chunked' or 'auto'."
        )
    attention = kernel == "attention" or (kernel == "auto" and available)
    return _FrozenTableCE.apply(x, w_t.detach(), targets, chunk, attention)


def next_item_loss(
    h: torch.Tensor, item_weights: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Softmax cross-entropy of ``h . v_i`` over items 1..N (never the padding row 0)."""
    return F.cross_entropy(h @ item_weights[1:].t(), targets - 1)


def info_nce(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 1.0,
    targets: torch.Tensor | None = None,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE over ``2B`` views, dot-product similarity; ``z1[i]`` and ``z2[i]`` are positives.

    Args:
        z1: ``(B, d)`` first views.
        z2: ``(B, d)`` second views.
        temperature: Similarities are divided by it.
        targets: If given, ``(B,)`` targets of the anchors: negatives with the same target as the
            anchor (false negatives) are masked out.
        groups: If given, ``(2B,)`` group of each view (``z1`` rows first, then ``z2``), e.g.
            its user: a view's negatives from its own group are masked out (never its
            positive).

    Examples:
        >>> z = torch.eye(3)
        >>> float(info_nce(z * 10, z * 10)) < 1e-3
        True
    """
    b = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)
    sim = (z @ z.t()) / temperature
    eye = torch.eye(2 * b, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    pos = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    same = None
    if targets is not None:
        t = torch.cat([targets, targets])
        same = t[:, None] == t[None, :]
    if groups is not None:
        if groups.shape != (2 * b,):
            raise ValueError(
                f"groups must have shape ({2 * b},) (z1's views, then z2's), got "
                f"{tuple(groups.shape)}"
            )
        own = groups[:, None] == groups[None, :]
        same = own if same is None else same | own
    if same is not None:
        same = same & ~eye
        same[torch.arange(2 * b, device=z.device), pos] = False
        sim = sim.masked_fill(same, float("-inf"))
    return F.cross_entropy(sim, pos)
