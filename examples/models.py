"""Backbone encoders used by the example scripts, each readable on one screen.

All follow the RecBole contract that :func:`raserec_adapter.wrap_encoder` expects:
``forward(item_seq, item_seq_len) -> (B, d)`` on left-aligned, zero-padded sequences of 1-based
item ids, and an ``item_embedding`` table whose rows score items by dot product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
    """Post-LN Transformer layer: self-attention, then feed-forward; residual + LayerNorm each."""

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
        a = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=key_mask,
            dropout_p=self.attn_dropout if self.training else 0.0,
            is_causal=causal,
        )
        a = a.transpose(1, 2).reshape(b, t, d)
        x = self.norm1(x + self.dropout(self.out(a)))
        y = self.ff2(self.dropout(F.gelu(self.ff1(x))))
        return self.norm2(x + self.dropout(y))


class SASRec(nn.Module):
    """SASRec (Kang & McAuley, 2018): causal self-attention over the item sequence.

    The representation of a sequence is the last layer's output at its last real item. Because
    attention is causal and positions count from the first item, the output at position ``t``
    equals the encoding of the prefix ending at ``t``: :meth:`forward_all` encodes every prefix in
    one pass (``is_causal = True``).

    Example:
        >>> import torch
        >>> model = SASRec(num_items=100)
        >>> model(torch.tensor([[5, 7, 0]]), torch.tensor([2])).shape
        torch.Size([1, 64])
    """

    is_causal = True

    def __init__(
        self,
        num_items: int,
        hidden_size: int = 64,
        max_len: int = 50,
        num_layers: int = 2,
        num_heads: int = 2,
        inner_size: int = 256,
        dropout: float = 0.5,
        attn_dropout: float = 0.5,
        layer_norm_eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.item_embedding = nn.Embedding(num_items + 1, hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(max_len, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            TransformerBlock(
                hidden_size, num_heads, inner_size, dropout, attn_dropout, layer_norm_eps
            )
            for _ in range(num_layers)
        )
        init_weights(self)

    def forward_all(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """``(B, T, d)``: position ``t`` encodes the prefix ``item_seq[:, : t + 1]``."""
        t = item_seq.shape[1]
        if t > self.max_len:
            raise ValueError(
                f"sequences of {t} items exceed max_len = {self.max_len}; keep the last "
                f"{self.max_len} items (the data pipeline does this)"
            )
        pos = torch.arange(t, device=item_seq.device)
        x = self.dropout(self.norm(self.item_embedding(item_seq) + self.position_embedding(pos)))
        for layer in self.layers:
            x = layer(x, causal=True)
        return x

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        return last_position(self.forward_all(item_seq, item_seq_len), item_seq_len)
