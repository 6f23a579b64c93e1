"""BERT4Rec: bidirectional self-attention, read at the last item or at an appended [mask]."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from raserec_adapter.models._fast import use_fast_paths
from raserec_adapter.models.layers import TransformerBlock, init_weights

__all__ = ["BERT4Rec"]


def _only_real(item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
    """``item_seq`` with every id at or after position ``item_seq_len`` set to padding (0).

    A bidirectional encoder attends to every non-padding token, so ids left behind the stated
    length (a user's later items, say) would leak into the representation.
    """
    pos = torch.arange(item_seq.shape[1], device=item_seq.device)
    return item_seq.masked_fill(pos[None, :] >= item_seq_len[:, None], 0)


def _append(
    item_seq: torch.Tensor, item_seq_len: torch.Tensor, value: torch.Tensor | int
) -> torch.Tensor:
    """A copy of ``item_seq`` one column wider with ``value`` right after each row's last item."""
    out = F.pad(item_seq, (0, 1))
    out[torch.arange(item_seq.shape[0], device=item_seq.device), item_seq_len] = value
    return out


class BERT4Rec(nn.Module):
    """BERT4Rec (Sun et al., 2019): bidirectional self-attention over the item sequence.

    Settings follow RecBole's BERT4Rec (2 layers, 2 heads, FFN inner 256, GELU, dropout 0.2,
    LayerNorm eps 1e-12, N(0, 0.02) weights, mask ratio 0.2). The item table has ``N + 2`` rows:
    row 0 is padding and row ``N + 1`` the ``[mask]`` token; scores use rows ``0..N`` only,
    which the model's :meth:`item_weights` returns and :func:`raserec_adapter.wrap_encoder`
    uses by default. :meth:`forward` returns the output at the last item (``readout="last"``)
    or at a ``[mask]`` appended after it (``readout="mask"``), after BERT4Rec's prediction head
    (linear -> GELU -> LayerNorm, as in the BERT4Rec paper and RecBole; the paper's per-item
    output bias is left out, since this library scores by plain dot products);
    :meth:`cloze_loss` is the masked-item training objective of the ``"mask"`` readout.
    Attention is bidirectional, so there is no ``forward_all``: every prefix is encoded on its
    own.

    Args:
        num_items: ``N``; item ids are ``1..N``, 0 is padding.
        hidden_size: Size ``d`` of embeddings and representations.
        max_len: Longest input (in items); ``max_len + 1`` positions are learned, one for the
            appended ``[mask]``.
        num_layers: Transformer layers.
        num_heads: Attention heads.
        inner_size: Feed-forward inner size.
        dropout: Dropout on embeddings and hidden states.
        attn_dropout: Dropout on attention weights.
        mask_prob: Probability that the cloze task masks an item.
        layer_norm_eps: LayerNorm epsilon.
        head: Apply the prediction head (linear -> GELU -> LayerNorm) before scoring;
            ``False`` scores the last layer's output directly, as RecBole's BERT4Rec did before
            version 1.1.
        readout: Where the representation is read: ``"last"`` (the default) at the last item
            itself, with no ``[mask]`` (a bidirectional SASRec: the last item reaches the
            representation through the residual path, not only through attention), which
            reaches the paper's Table 3 on Beauty; ``"mask"`` (BERT4Rec's own inference) at a
            ``[mask]`` appended after the last item, about 20% lower there. The cloze loss
            trains at ``[mask]`` tokens, so train ``"last"`` with next-item cross-entropy.
        positions: How position embeddings count: ``"start"`` (the default, as RecBole) from
            the first item, so the appended ``[mask]`` sits at a different position in every
            sequence length; ``"end"`` backwards from the last token, so the readout token
            (``[mask]`` or last item) is always position 0 and the item before it position 1,
            whatever the length (what left-padded implementations such as the original
            SASRec get by aligning sequences at the right).

    Examples:
        >>> import torch
        >>> from raserec_adapter import wrap_encoder
        >>> model = BERT4Rec(num_items=100)
        >>> enc = wrap_encoder(model)  # scores through model.item_weights(): no [mask] row
        >>> enc(torch.tensor([[5, 7, 0]]), torch.tensor([2])).shape, enc.num_items
        (torch.Size([1, 64]), 100)
    """

    def __init__(
        self,
        num_items: int,
        hidden_size: int = 64,
        max_len: int = 50,
        num_layers: int = 2,
        num_heads: int = 2,
        inner_size: int = 256,
        dropout: float = 0.2,
        attn_dropout: float = 0.2,
        mask_prob: float = 0.2,
        layer_norm_eps: float = 1e-12,
        head: bool = True,
        readout: Literal["mask", "last"] = "last",
        positions: Literal["start", "end"] = "start",
    ) -> None:
        super().__init__()
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")
        if readout not in ("mask", "last"):
            raise ValueError(f"readout must be 'mask' or 'last', got {readout!r}")
        if positions not in ("start", "end"):
            raise ValueError(f"positions must be 'start' or 'end', got {positions!r}")
        self.readout = readout
        self.positions = positions
        self.num_items = num_items
        self.max_len = max_len
        self.mask_prob = mask_prob
        self.mask_token = num_items + 1
        self.item_embedding = nn.Embedding(num_items + 2, hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(max_len + 1, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            TransformerBlock(
                hidden_size, num_heads, inner_size, dropout, attn_dropout, layer_norm_eps
            )
            for _ in range(num_layers)
        )
        self.head: nn.Module = (
            nn.Sequential(
                nn.Linear(hidden_size, hidden_size),
                nn.GELU(),
                nn.LayerNorm(hidden_size, eps=layer_norm_eps),
            )
            if head
            else nn.Identity()
        )
        init_weights(self)
        use_fast_paths(self)  # cheaper CPU dropout masks, same distribution

    def item_weights(self) -> torch.Tensor:
        """``(N + 1, d)`` item table for scoring: the embedding without the ``[mask]`` row."""
        return self.item_embedding.weight[: self.num_items + 1]

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, T, d)`` last-layer outputs for token ids (items, ``[mask]``, 0 = padding).

        Padding is masked out of attention, so outputs at real positions do not depend on how
        much padding follows.
        """
        t = tokens.shape[1]
        if t > self.max_len + 1:
            raise ValueError(
                f"sequences of {t - 1} items exceed this model's max_len = {self.max_len}; "
                f"build the model with a larger max_len, or cut inputs to {self.max_len} items: "
                f"leave_one_out(sequences, max_len={self.max_len}) and "
                f"AugmenterConfig(max_len={self.max_len})"
            )
        pos = torch.arange(t, device=tokens.device)
        if self.positions == "end":  # left-aligned rows: count back from each row's last token
            pos = ((tokens > 0).sum(1, keepdim=True) - 1 - pos).clamp(min=0)  # (B, T)
        x = self.dropout(self.norm(self.item_embedding(tokens) + self.position_embedding(pos)))
        key_mask = (tokens > 0)[:, None, None, :]  # (B, 1, 1, T): True = may be attended to
        for layer in self.layers:
            x = layer(x, causal=False, key_mask=key_mask)
        return x

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """``(B, d)``: output at a ``[mask]`` token appended after each sequence's last item
        (``readout="mask"``) or at the last item (``readout="last"``)."""
        rows = torch.arange(item_seq.shape[0], device=item_seq.device)
        item_seq = _only_real(item_seq, item_seq_len)
        if self.readout == "last":
            return self.head(self.encode_tokens(item_seq)[rows, item_seq_len - 1])
        tokens = _append(item_seq, item_seq_len, self.mask_token)
        return self.head(self.encode_tokens(tokens)[rows, item_seq_len])

    def cloze_loss(
        self,
        item_seq: torch.Tensor,
        item_seq_len: torch.Tensor,
        generator: torch.Generator | None = None,
        targets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """BERT4Rec's masked-item objective on a batch of sequences.

        Every sequence is used twice: once with each item replaced by ``[mask]`` with
        probability ``mask_prob``, and once with only its last item masked (as the BERT4Rec paper
        adds, so that training matches inference, where the ``[mask]`` follows the history).
        The loss is the softmax cross-entropy over items ``1..N`` at all masked positions.

        With ``targets`` (the next item of each training prefix), the target is appended to its
        prefix first, so the last-item copy is exactly the inference input (history, then
        ``[mask]``) and every training target is a label; without them a prefix's own last item
        is the last label, and each user's last training target is never predicted.

        Args:
            item_seq: ``(B, T)`` left-aligned item ids, 0 = padding.
            item_seq_len: ``(B,)`` number of real items per row.
            generator: Optional random generator for the masks (on ``item_seq``'s device).
            targets: Optional ``(B,)`` next item of each row, appended before masking.

        Returns:
            The mean cross-entropy (a scalar).
        """
        if self.readout != "mask":
            raise ValueError(
                "cloze_loss trains the output at [mask] tokens, but this model reads its "
                f"representation at readout={self.readout!r}; train it with next-item "
                "cross-entropy instead (the default of pretrain), or build it with readout='mask'"
            )
        item_seq = _only_real(item_seq, item_seq_len)
        if targets is not None:
            item_seq, item_seq_len = _append(item_seq, item_seq_len, targets), item_seq_len + 1
        b, t = item_seq.shape
        pos = torch.arange(t, device=item_seq.device)[None, :]
        real = pos < item_seq_len[:, None]
        draw = torch.rand(b, t, generator=generator, device=item_seq.device)
        random_mask = real & (draw < self.mask_prob)
        last_mask = pos == (item_seq_len - 1)[:, None]
        masks = torch.cat([random_mask, last_mask])
        labels = torch.cat([item_seq, item_seq])
        tokens = labels.masked_fill(masks, self.mask_token)
        h = self.head(self.encode_tokens(tokens)[masks])
        return F.cross_entropy(h @ self.item_weights()[1:].t(), labels[masks] - 1)
