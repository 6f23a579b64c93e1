"""GRU4Rec: a GRU over the item sequence, as RecBole implements it."""

from __future__ import annotations

import torch
from torch import nn

from raserec_adapter.models._fast import use_fast_paths
from raserec_adapter.models.layers import last_position

__all__ = ["GRU4Rec"]


class GRU4Rec(nn.Module):
    """GRU4Rec (Hidasi et al., 2016) as RecBole implements it, the paper's RNN backbone.

    Item embedding -> embedding dropout -> GRU (no biases) -> linear projection back to the
    embedding size; the representation of a sequence is the projected output at its last real
    item. RecBole's defaults: embedding 64, GRU hidden 128, 1 layer, dropout 0.3, Xavier
    initialisation. A GRU only looks back, so the output at position ``t`` is the encoding of the
    prefix ending at ``t`` and :meth:`forward_all` encodes every prefix in one pass
    (``is_causal = True``).

    Args:
        num_items: ``N``; item ids are ``1..N``, 0 is padding.
        hidden_size: Embedding size ``d`` (the size of the representation and item table).
        gru_hidden_size: Size of the GRU state (projected to ``hidden_size`` afterwards).
        num_layers: Stacked GRU layers.
        dropout: Dropout on the item embeddings.

    Examples:
        >>> import torch
        >>> model = GRU4Rec(num_items=100)
        >>> model(torch.tensor([[5, 7, 0]]), torch.tensor([2])).shape
        torch.Size([1, 64])
    """

    is_causal = True

    def __init__(
        self,
        num_items: int,
        hidden_size: int = 64,
        gru_hidden_size: int = 128,
        num_layers: int = 1,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.item_embedding = nn.Embedding(num_items + 1, hidden_size, padding_idx=0)
        self.emb_dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(hidden_size, gru_hidden_size, num_layers, bias=False, batch_first=True)
        self.dense = nn.Linear(gru_hidden_size, hidden_size)
        nn.init.xavier_normal_(self.item_embedding.weight)
        for name, weight in self.gru.named_parameters():
            if name.startswith("weight_"):
                nn.init.xavier_uniform_(weight)
        use_fast_paths(self)  # cheaper CPU dropout masks, same distribution

    def forward_all(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """``(B, T, d)``: position ``t`` encodes the prefix ``item_seq[:, : t + 1]``."""
        out, _ = self.gru(self.emb_dropout(self.item_embedding(item_seq)))
        return self.dense(out)

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        return last_position(self.forward_all(item_seq, item_seq_len), item_seq_len)
