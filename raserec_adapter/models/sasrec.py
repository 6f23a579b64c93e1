"""SASRec: causal self-attention over the item sequence."""

from __future__ import annotations

import torch
from torch import nn

from raserec_adapter.models._fast import use_fast_paths
from raserec_adapter.models.layers import TransformerBlock, init_weights, last_position

__all__ = ["SASRec"]


class SASRec(nn.Module):
    """SASRec (Kang & McAuley, 2018): causal self-attention over the item sequence.

    The representation of a sequence is the last layer's output at its last real item. Because
    attention is causal and positions count from the first item, the output at position ``t``
    equals the encoding of the prefix ending at ``t``: :meth:`forward_all` encodes every prefix in
    one pass (``is_causal = True``).

    Examples:
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
        use_fast_paths(self)  # cheaper CPU dropout masks, same distribution

    def forward_all(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """``(B, T, d)``: position ``t`` encodes the prefix ``item_seq[:, : t + 1]``."""
        t = item_seq.shape[1]
        if t > self.max_len:
            raise ValueError(
                f"sequences of {t} items exceed this model's max_len = {self.max_len}; build "
                f"the model with a larger max_len, or cut inputs to {self.max_len} items: "
                f"leave_one_out(sequences, max_len={self.max_len}) and "
                f"AugmenterConfig(max_len={self.max_len})"
            )
        pos = torch.arange(t, device=item_seq.device)
        x = self.dropout(self.norm(self.item_embedding(item_seq) + self.position_embedding(pos)))
        for layer in self.layers:
            x = layer(x, causal=True)
        return x

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        return last_position(self.forward_all(item_seq, item_seq_len), item_seq_len)
