"""Building blocks shared by the shipped Transformer models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raserec_adapter.models._fast import scaled_dot_product_attention

__all__ = ["TransformerBlock", "init_weights", "last_position"]


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """N(0, std) for linear and embedding weights, zero biases, unit LayerNorm (as RecBole)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def last_position(h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``(B, T, d)`` -> ``(B, d)`` at position ``lengths - 1`` of each row."""
    return h[torch.arange(h.shape[0], device=h.device), lengths - 1]


class TransformerBlock(nn.Module):
    """Post-LN Transformer layer: self-attention, then feed-forward; residual + LayerNorm each.

    As RecBole's ``TransformerLayer``: dropout on the attention weights, on the attention
    output and on the feed-forward output, each before its residual sum; none inside the
    feed-forward block.
    """

    def __init__(
        self, hidden: int, heads: int, inner: int, dropout: float, attn_dropout: float, eps: float
    ) -> None:
        super().__init__()
        self.heads = heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden, eps=eps)
        self.ff1 = nn.Linear(hidden, inner)
        self.ff2 = nn.Linear(inner, hidden)
        self.norm2 = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, causal: bool, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        p = self.attn_dropout if self.training else 0.0
        # F.scaled_dot_product_attention, with a cheaper dropout mask on a CPU (models._fast)
        a = scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=p, is_causal=causal)
        a = a.transpose(1, 2).reshape(b, t, d)
        x = self.norm1(x + self.dropout(self.out(a)))
        # RecBole's feed-forward: dense -> GELU -> dense -> dropout (none on the inner layer)
        y = self.ff2(F.gelu(self.ff1(x)))
        return self.norm2(x + self.dropout(y))
