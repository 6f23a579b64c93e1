"""Your own encoder + RaSeRec: a model that does not follow the RecBole conventions.

python examples/custom_encoder.py --dataset beauty --demo

``ProductSequenceModel`` stands for a model from your own code base: it takes a dict batch
``{"items": (B, T) ids, "mask": (B, T) bool}``, returns one vector per position ``(B, T, d)``
and keeps its item table under ``self.products``. The library needs neither changed: three
small accessors in :func:`wrap` tell it how to get one vector per sequence, every prefix at once
(the model is causal) and the item table. A :class:`~raserec_adapter.experiments.Backbone` then
hands it to the same command line and pipeline as ``sasrec.py``.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raserec_adapter.experiments import Backbone, dropout_kwargs, main


class ProductSequenceModel(nn.Module):
    """A dilated causal convolution over product sequences (in the spirit of NextItNet).

    Each layer is a causal 1-D convolution (kernel ``kernel``, dilation ``2**layer``) with GELU,
    dropout, a residual connection and LayerNorm, so position ``t`` sees only items ``<= t``.

    Args:
        num_products: Products are ``1..num_products``; 0 is padding.
        dim: Embedding and output size.
        num_layers: Convolution layers.
        kernel: Convolution width.
        dropout: Dropout on embeddings and layer outputs.

    Example:
        >>> model = ProductSequenceModel(num_products=50, dim=16)
        >>> items = torch.tensor([[3, 4, 0]])
        >>> model({"items": items, "mask": items > 0}).shape
        torch.Size([1, 3, 16])
    """

    def __init__(
        self,
        num_products: int,
        dim: int = 64,
        num_layers: int = 3,
        kernel: int = 3,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.kernel = kernel
        self.products = nn.Embedding(num_products + 1, dim, padding_idx=0)
        self.convs = nn.ModuleList(
            nn.Conv1d(dim, dim, kernel, dilation=2**i) for i in range(num_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.products.weight, std=0.02)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, T, dim)`` output at every position of ``batch["items"]``."""
        x = self.products(batch["items"]) * batch["mask"].unsqueeze(-1)
        x = self.dropout(x)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            left = (self.kernel - 1) * conv.dilation[0]
            y = conv(F.pad(x.transpose(1, 2), (left, 0))).transpose(1, 2)
            x = norm(x + self.dropout(F.gelu(y)))
        return x


def build(num_items: int, args: argparse.Namespace) -> ProductSequenceModel:
    """The user's model, built as the user's code builds it."""
    return ProductSequenceModel(
        num_items, dim=args.hidden_size, **dropout_kwargs(args, attention=False)
    )


def wrap(model: nn.Module) -> dict[str, Any]:
    """The only glue: how to call the model, pick one vector per sequence, find the items."""

    def all_positions(item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return model({"items": item_seq, "mask": item_seq > 0})

    def last_item(item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(len(lengths), device=lengths.device)
        return all_positions(item_seq, lengths)[rows, lengths - 1]

    return {
        "encode": last_item,
        "encode_all": all_positions,  # optional: causal, so all prefixes in one pass
        "item_weights": lambda: model.products.weight,
    }


BACKBONE = Backbone("custom", "custom encoder", build, wrap=wrap)

if __name__ == "__main__":
    main(BACKBONE, description=__doc__.splitlines()[0])
