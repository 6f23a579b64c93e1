"""The shipped backbones, each readable on one screen: SASRec, GRU4Rec and BERT4Rec.

All follow the RecBole contract that :func:`raserec_adapter.wrap_encoder` expects:
``forward(item_seq, item_seq_len) -> (B, d)`` on left-aligned, zero-padded sequences of 1-based
item ids, and an ``item_embedding`` table whose rows score items by dot product. Their bodies
are plain torch layers; CPU fast paths (cheaper dropout masks) are switched in automatically
(see ``raserec_adapter.models._fast``).

Examples:
    >>> import torch
    >>> from raserec_adapter.models import SASRec
    >>> SASRec(num_items=100)(torch.tensor([[5, 7, 0]]), torch.tensor([2])).shape
    torch.Size([1, 64])
"""

from raserec_adapter.models.bert4rec import BERT4Rec
from raserec_adapter.models.gru4rec import GRU4Rec
from raserec_adapter.models.sasrec import SASRec

__all__ = ["BERT4Rec", "GRU4Rec", "SASRec"]
