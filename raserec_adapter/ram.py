"""The Retrieval-Augmented Module (RAM): dual-channel cross-attention over retrieved memories.

For a query representation ``h`` and its K memories (keys ``h_k``: representations of retrieved
training prefixes, values ``v_k``: embeddings of their next items), paper Eq. 9-11:

* channel 1 attends with ``h`` over keys ``h_k`` and reads values ``v_k``;
* channel 2 attends with ``h`` over keys ``v_k`` and reads values ``h_k``;
* ``h~ = alpha * h + (1 - alpha) * (beta * c1 + (1 - beta) * c2)``.

Each channel is cross-attention -> feed-forward -> cross-attention (``layers = 2``). A
cross-attention block has no residual and no layer norm of its own, as in the released code.

The block never projects the K memories: since ``q . (W_k m + b_k) = (W_k^T q) . m + const`` and
``sum_k w_k (W_v m_k + b_v) = W_v (sum_k w_k m_k) + (sum_k w_k) b_v``, it moves the query into
the memories' space instead, which is exact and about K times cheaper.

Examples:
    >>> import torch
    >>> ram = RetrievalAugmentedModule(hidden_size=8, config=RAMConfig(k=3))
    >>> h, mem_keys, mem_values = torch.randn(2, 8), torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    >>> ram(h, mem_keys, mem_values).shape
    torch.Size([2, 8])
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raserec_adapter.config import RAMConfig
from raserec_adapter.models._fast import use_fast_paths

__all__ = ["CrossAttention", "RetrievalAugmentedModule"]

logger = logging.getLogger("raserec_adapter")


class CrossAttention(nn.Module):
    """Multi-head cross-attention of one query vector over K memory vectors.

    ``forward(q, keys, values)`` with ``q`` ``(B, d)`` and ``keys``/``values`` ``(B, K, d)``
    returns ``(B, d)``: project, scaled dot-product / temperature, softmax, dropout on the
    weights, output projection, dropout.
    """

    def __init__(self, hidden: int, heads: int, dropout: float, temperature: float) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        self.heads, self.head_size = heads, hidden // heads
        self.temperature = temperature
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.attn_dropout = nn.Dropout(dropout)
        self.out_dropout = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        b, d = q.shape
        heads, size = self.heads, self.head_size
        # batched matrix products over heads or queries (einsum's per-call planning cost more
        # than the products themselves for one query)
        hq = self.query(q).view(b, heads, size).transpose(0, 1)  # (H, B, s)
        # (W_k^T q) per head, in the memories' d-dim space; the key bias adds a per-query
        # constant to all scores and cancels in the softmax.
        qk = torch.bmm(hq, self.key.weight.view(heads, size, d)).transpose(0, 1)  # (B, H, d)
        scale = 1.0 / (math.sqrt(size) * self.temperature)
        scores = torch.bmm(qk, keys.transpose(1, 2)) * scale  # (B, H, K)
        weights = self.attn_dropout(torch.softmax(scores, dim=-1))
        mixed = torch.bmm(weights, values).transpose(0, 1)  # (H, B, d), raw memory space
        wv_t = self.value.weight.view(heads, size, d).transpose(1, 2)  # (H, d, s)
        ctx = torch.bmm(mixed, wv_t).transpose(0, 1)  # (B, H, s)
        ctx = ctx + weights.sum(-1, keepdim=True) * self.value.bias.view(heads, size)
        return self.out_dropout(self.out(ctx.reshape(b, d)))


class FeedForward(nn.Module):
    """Position-wise feed-forward block with residual and LayerNorm."""

    def __init__(self, hidden: int, inner: int, dropout: float, eps: float = 1e-12) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, inner)
        self.fc2 = nn.Linear(inner, hidden)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.fc2(F.gelu(self.fc1(x)))))


class _Channel(nn.Module):
    """cross-attention (-> feed-forward -> cross-attention) * (layers - 1)."""

    def __init__(self, hidden: int, cfg: RAMConfig) -> None:
        super().__init__()
        self.attn = nn.ModuleList(
            CrossAttention(hidden, cfg.num_heads, cfg.dropout, cfg.attn_temperature)
            for _ in range(cfg.layers)
        )
        self.ffn = nn.ModuleList(
            FeedForward(hidden, cfg.inner_size, cfg.dropout) for _ in range(cfg.layers - 1)
        )

    def forward(self, h: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        x = self.attn[0](h, keys, values)
        for ffn, attn in zip(self.ffn, self.attn[1:], strict=True):
            x = attn(ffn(x), keys, values)
        return x


class RetrievalAugmentedModule(nn.Module):
    """The RAM head: mixes retrieved memories into a sequence representation.

    Args:
        hidden_size: Size d of representations and item embeddings.
        config: :class:`~raserec_adapter.RAMConfig` (alpha, beta, K, heads, dropout, ...).
    """

    def __init__(self, hidden_size: int, config: RAMConfig | None = None) -> None:
        super().__init__()
        self.config = config or RAMConfig()
        self.hidden_size = hidden_size
        self.channel1 = _Channel(hidden_size, self.config)
        self.channel2 = _Channel(hidden_size, self.config)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        use_fast_paths(self)  # cheaper CPU dropout masks, same distribution
        # whether the augmenter mixes this head in; saved in the state dict (see ``serves``)
        self.register_buffer("serving", torch.tensor(True))
        self._told = False

    @property
    def serves(self) -> bool:
        """Whether the augmenter serves ``h~`` from this head, or the encoder's ``h`` as it is.

        RAFT sets it (:func:`~raserec_adapter.training.raft.fit_raft_frozen`): ``False`` when
        the head's best validation score does not beat the frozen encoder's and
        ``RAFTConfig.fallback`` is on (the default). It is saved with the head's weights.

        Examples:
            >>> ram = RetrievalAugmentedModule(hidden_size=8)
            >>> ram.serves, ram.serve(False), ram.serves
            (True, None, False)
        """
        return bool(self.serving)

    def serve(self, on: bool = True) -> None:
        """Forces the choice: ``serve(True)`` mixes the head in even where RAFT found no gain,
        ``serve(False)`` serves the encoder's representation as it is."""
        if not isinstance(on, bool):
            raise TypeError(f"serve takes True or False, got {on!r}")
        self.serving.fill_(on)
        self._told = False

    def passthrough(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` unchanged, in place of ``h~`` while the head is not served (said once)."""
        if not self._told:
            logger.warning(
                "the RAM is not served: RAFT found it no better than the frozen encoder on "
                "validation, so 'raserec' results and recommend(augmented=True) use the "
                "encoder's own representation; augmenter.ram.serve(True) forces the RAM"
            )
            self._told = True
        return h

    def _load_from_state_dict(self, state: dict[str, Any], prefix: str, *args: Any) -> None:
        if prefix + "serving" not in state:  # a head saved before RAFT chose: it was served
            state[prefix + "serving"] = torch.tensor(True)
        super()._load_from_state_dict(state, prefix, *args)

    @classmethod
    def fresh(
        cls, hidden_size: int, config: RAMConfig | None = None, seed: int | None = None
    ) -> RetrievalAugmentedModule:
        """A new head; ``seed`` seeds its initial weights, leaving the global random state as it
        was (``None``: drawn from the global random state)."""
        if config is not None and not isinstance(config, RAMConfig):
            raise TypeError(f"ram must be a RAMConfig, got {type(config).__name__}")
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            return cls(hidden_size, config)

    def forward(
        self, h: torch.Tensor, memory_keys: torch.Tensor, memory_values: torch.Tensor
    ) -> torch.Tensor:
        """``h~`` from ``h`` ``(B, d)`` and memories ``(B, K, d)`` (keys h_k, values v_k)."""
        if memory_keys.shape != memory_values.shape or memory_keys.shape[0] != h.shape[0]:
            raise ValueError(
                f"memories must be (B, K, d) for both keys and values with B = {h.shape[0]}, got "
                f"{tuple(memory_keys.shape)} and {tuple(memory_values.shape)}"
            )
        if h.shape[-1] != self.hidden_size or memory_keys.shape[-1] != self.hidden_size:
            raise ValueError(
                f"the RAM was built for size {self.hidden_size}, got representations of size "
                f"{h.shape[-1]} and memories of size {memory_keys.shape[-1]}"
            )
        a, b = self.config.alpha, self.config.beta
        mixed = torch.zeros_like(h)
        if b > 0:
            mixed = mixed + b * self.channel1(h, memory_keys, memory_values)
        if b < 1:
            mixed = mixed + (1 - b) * self.channel2(h, memory_values, memory_keys)
        return a * h + (1 - a) * mixed
