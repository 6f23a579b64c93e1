"""What a sequence encoder must offer, and adapters for encoders that offer it differently.

The contract follows RecBole: ``forward(item_seq, item_seq_len) -> (B, d)`` with left-aligned,
zero-padded ``item_seq`` of 1-based item ids, plus an ``item_embedding`` (``nn.Embedding`` with
``N + 1`` rows, row 0 = padding) whose rows score items by dot product. A RecBole-style model
wraps with no glue; anything else passes two small functions to :func:`wrap_encoder`.

Optionally, a *causal* encoder (SASRec, GRU4Rec) may offer
``forward_all(item_seq, item_seq_len) -> (B, T, d)``, the representation at every position
where position ``t`` sees only items ``<= t``, and set ``is_causal = True``; training and bank
building then encode all prefixes of a sequence in one pass (about 7x less work on Beauty).

Examples:
    >>> import torch
    >>> from torch import nn
    >>> class LastItem(nn.Module):  # a toy encoder: the embedding of the last item
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.item_embedding = nn.Embedding(11, 8, padding_idx=0)
    ...     def forward(self, item_seq, item_seq_len):
    ...         last = item_seq.gather(1, (item_seq_len - 1).unsqueeze(1)).squeeze(1)
    ...         return self.item_embedding(last)
    >>> enc = wrap_encoder(LastItem())
    >>> enc.hidden_size, enc.num_items
    (8, 10)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn

from raserec_adapter._modes import eval_mode
from raserec_adapter._progress import progress
from raserec_adapter.data import LeaveOneOutSplit, PrefixSet, Sequences
from raserec_adapter.data.batching import (
    causal_windows,
    iter_batches,
    iter_windows,
    window_pair_index,
)

__all__ = [
    "EncoderError",
    "SequenceEncoder",
    "Shard",
    "WrappedEncoder",
    "encode_prefixes",
    "encode_training_pairs",
    "wrap_encoder",
]


class EncoderError(TypeError):
    """A user's model does not fit the :class:`SequenceEncoder` contract."""


@runtime_checkable
class SequenceEncoder(Protocol):
    """The RecBole-style encoder contract.

    Attributes:
        item_embedding: ``nn.Embedding(N + 1, d)``; ``item_embedding.weight @ h`` scores items.
    """

    item_embedding: nn.Embedding

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """Maps ``(B, T)`` item ids and ``(B,)`` lengths to ``(B, d)`` representations."""
        ...


EncodeFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ItemWeightsFn = Callable[[], torch.Tensor]

_HOW_TO_ADAPT = (
    "Pass accessors instead: wrap_encoder(model, encode=lambda seq, lens: ..., "
    "item_weights=lambda: model.<your item table>.weight). See docs/custom-encoder.md."
)


def model_max_len(module: nn.Module) -> tuple[int | None, str]:
    """The longest input a model declares, and where it says so: its ``max_len`` attribute,
    else RecBole's ``max_seq_length``, else the rows of a ``position_embedding`` table;
    ``(None, "")`` when it declares none.

    Examples:
        >>> model_max_len(nn.Module())
        (None, '')
        >>> m = nn.Module(); m.position_embedding = nn.Embedding(50, 8)
        >>> model_max_len(m)
        (50, 'position_embedding.num_embeddings')
    """
    for name in ("max_len", "max_seq_length"):
        own = getattr(module, name, None)
        if isinstance(own, int) and not isinstance(own, bool):
            return own, name
    table = getattr(module, "position_embedding", None)
    if isinstance(table, nn.Embedding):
        return table.num_embeddings, "position_embedding.num_embeddings"
    return None, ""


class WrappedEncoder(nn.Module):
    """A user's encoder seen through the contract, with checks.

    Use :func:`wrap_encoder` to build one. ``module`` stays the user's own object, so its
    ``state_dict`` and training code are unchanged.
    """

    def __init__(
        self,
        module: nn.Module,
        encode: EncodeFn,
        item_weights: ItemWeightsFn,
        encode_all: EncodeFn | None = None,
    ) -> None:
        super().__init__()
        self.module = module
        self._encode = encode
        self._item_weights = item_weights
        self._encode_all = encode_all
        self._trusted = 0
        weights = self.item_weights()
        if weights.dim() != 2 or weights.shape[0] < 2:
            raise EncoderError(
                f"the item table must be a (N + 1, d) matrix with row 0 for padding, got shape "
                f"{tuple(weights.shape)}"
            )
        if weights.dtype != torch.float32:
            raise EncoderError(
                f"the item table is {weights.dtype}; the library trains, scores and stores "
                "memories in torch.float32: convert the model with model.float() (for lower "
                "precision at run time, use torch.autocast around the calls)"
            )

    @property
    def num_items(self) -> int:
        """``N``: item ids are ``1..N``."""
        return int(self.item_weights().shape[0]) - 1

    @property
    def hidden_size(self) -> int:
        return int(self.item_weights().shape[1])

    def check_max_len(self, max_len: int, source: str) -> None:
        """Refuses inputs of up to ``max_len`` items when the model declares a smaller
        ``max_len`` (e.g. its position table), before any work rather than in the first batch.

        ``source`` names where ``max_len`` comes from, e.g. ``"AugmenterConfig.max_len"``.
        """
        own, name = model_max_len(self.module)
        if own is not None and max_len > own:
            raise ValueError(
                f"{source} = {max_len} but {type(self.module).__name__}.{name} = {own}: inputs "
                f"of {max_len} items would not fit the model. Use max_len={own} (e.g. "
                f"leave_one_out(sequences, max_len={own}), AugmenterConfig(max_len={own})), or "
                f"build the model with max_len >= {max_len}"
            )

    @property
    def is_causal(self) -> bool:
        """Whether all prefixes of a sequence can be encoded in one pass."""
        return self._encode_all is not None

    @contextmanager
    def trusted_inputs(self) -> Iterator[WrappedEncoder]:
        """Skips the value checks of inputs that live on an accelerator, inside this block.

        Checking that item ids and lengths lie in range reads the device's tensors back, which
        makes the host wait for the device at every call and keeps it from queueing the next
        kernels while the device works. The library's own loops encode
        batches built from validated :class:`~raserec_adapter.Sequences` inside this block;
        shapes and dtypes are still checked, and CPU tensors are always checked in full.

        Examples:
            >>> import torch
            >>> from raserec_adapter.models import SASRec
            >>> enc = wrap_encoder(SASRec(num_items=5))
            >>> with enc.trusted_inputs():
            ...     enc(torch.tensor([[9]]), torch.tensor([1]))  # on the CPU: still checked
            Traceback (most recent call last):
            ...
            ValueError: item ids must lie in 1..5 (0 = padding), got values from 9 to 9; ...
        """
        self._trusted += 1
        try:
            yield self
        finally:
            self._trusted -= 1

    def item_weights(self) -> torch.Tensor:
        """``(N + 1, d)`` item table the scores use (row 0 = padding)."""
        return self._item_weights()

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """``(B, d)`` representation of each sequence, with input and output checks."""
        self._check_input(item_seq, item_seq_len)
        h = self._encode(item_seq, item_seq_len)
        return self._check_output(h, item_seq.shape[0], "encode")

    def forward_all(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """``(B, T, d)`` causal representation at every position (causal encoders only)."""
        if self._encode_all is None:
            raise EncoderError("this encoder is not causal: it has no forward_all")
        self._check_input(item_seq, item_seq_len)
        h = self._encode_all(item_seq, item_seq_len)
        if h.dim() != 3 or h.shape[:2] != item_seq.shape or h.shape[2] != self.hidden_size:
            raise EncoderError(
                f"forward_all must return (B, T, d) = {(*item_seq.shape, self.hidden_size)}, "
                f"got {tuple(h.shape)}"
            )
        _check_dtype(h, "encode_all")
        if not torch.is_grad_enabled():  # real positions only: padding may hold anything
            real = torch.arange(h.shape[1], device=h.device) < item_seq_len.unsqueeze(1)
            _check_finite(torch.where(real.unsqueeze(2), h, 0.0), "encode_all")
        return h

    def score(self, h: torch.Tensor) -> torch.Tensor:
        """``(B, N + 1)`` dot-product scores of representations against all items."""
        return h @ self.item_weights().t()

    def _check_input(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> None:
        if item_seq.dtype not in (torch.int64, torch.int32):
            raise TypeError(
                f"item_seq must hold integer item ids (torch.long), got {item_seq.dtype}; "
                "convert with item_seq.long()"
            )
        if item_seq.dim() != 2 or lengths.shape != item_seq.shape[:1]:
            raise ValueError(
                f"expected item_seq (B, T) and lengths (B,), got {tuple(item_seq.shape)} and "
                f"{tuple(lengths.shape)}"
            )
        table = self.item_weights()
        if item_seq.device != table.device or lengths.device != table.device:
            raise RuntimeError(
                f"the inputs are on {item_seq.device} (lengths on {lengths.device}) but the "
                f"encoder's item table is on {table.device}: move the encoder there first "
                f"(model.to({str(item_seq.device)!r})), or pass device={str(table.device)!r}"
            )
        if self._trusted and item_seq.device.type != "cpu":
            return
        if item_seq.numel() and (item_seq.min() < 0 or item_seq.max() > self.num_items):
            raise ValueError(
                f"item ids must lie in 1..{self.num_items} (0 = padding), got values from "
                f"{int(item_seq.min())} to {int(item_seq.max())}; unknown items must be mapped "
                "to known ids or dropped, and 0-based ids need + 1"
            )
        if lengths.numel() and (lengths.min() < 1 or lengths.max() > item_seq.shape[1]):
            raise ValueError(
                "every sequence needs 1..T items (empty sequences cannot be encoded); got "
                f"lengths from {int(lengths.min())} to {int(lengths.max())} with T = "
                f"{item_seq.shape[1]}"
            )

    def _check_output(self, h: object, batch: int, what: str) -> torch.Tensor:
        if not isinstance(h, torch.Tensor):
            raise EncoderError(
                f"the encoder's {what} returned {type(h).__name__}, expected a (B, d) tensor. "
                + _HOW_TO_ADAPT
            )
        if h.dim() == 3 and h.shape[0] == batch:
            raise EncoderError(
                f"the encoder returned {tuple(h.shape)}: one vector per position. The adapter "
                "needs one (B, d) vector per sequence, e.g. the last real position: "
                "wrap_encoder(model, encode=lambda s, n: model(s, n)[torch.arange(len(n)), n - 1], "
                "...)"
            )
        if h.dim() != 2 or h.shape[0] != batch:
            raise EncoderError(f"the encoder's {what} must return (B, d), got {tuple(h.shape)}")
        _check_dtype(h, what)
        if h.shape[1] != self.hidden_size:
            raise EncoderError(
                f"the encoder returns vectors of size {h.shape[1]} but the item table has size "
                f"{self.hidden_size}; scores need both equal (add a projection to the encoder)"
            )
        return _check_finite(h, what)


def _check_dtype(h: torch.Tensor, what: str) -> None:
    """Refuses float64/half outputs (outside autocast): scores against the float32 item table
    would fail deep inside a matmul."""
    if h.dtype != torch.float32 and not torch.is_autocast_enabled(h.device.type):
        raise EncoderError(
            f"the encoder's {what} returned {h.dtype} vectors but the item table is "
            "torch.float32; scores need one dtype: return h.float() from the encoder (or "
            "compute it in float32)"
        )


def _check_finite(h: torch.Tensor, what: str) -> torch.Tensor:
    """Refuses NaN or inf outputs at inference (bank, evaluation, recommend); training checks
    its scores once per step instead, without a device sync per forward pass."""
    if not torch.is_grad_enabled():
        bad = ~torch.isfinite(h).flatten(1).all(dim=1)
        if bad.any():
            raise ValueError(
                f"the encoder's {what} returned NaN or inf in {int(bad.sum())} of {len(h)} "
                "sequences; check the model's weights (a diverged training run) and its inputs"
            )
    return h


def _check_declared_items(model: nn.Module, weights: torch.Tensor) -> None:
    """Refuses an ``item_embedding`` whose row count disagrees with the model's ``num_items``.

    A table with extra rows (a ``[mask]`` or other special token after the items) would
    otherwise be taken for more items, and the extra rows ranked and recommended.
    """
    declared = getattr(model, "num_items", None)
    if not isinstance(declared, int) or isinstance(declared, bool):
        return
    rows = int(weights.shape[0]) if weights.dim() == 2 else -1
    if rows != declared + 1:
        name = type(model).__name__
        raise EncoderError(
            f"{name}.item_embedding has {rows} rows but {name}.num_items = {declared} means "
            f"{declared + 1} (items 1..{declared} plus the padding row 0). If the extra rows are "
            "special tokens (e.g. a [mask] row), say which rows score items: "
            f"wrap_encoder(model, item_weights=lambda: model.item_embedding.weight[: {declared} "
            "+ 1]), or give the model an item_weights() method returning them"
        )


def wrap_encoder(
    model: nn.Module,
    encode: EncodeFn | None = None,
    item_weights: ItemWeightsFn | None = None,
    encode_all: EncodeFn | None = None,
) -> WrappedEncoder:
    """Checks a model against :class:`SequenceEncoder` and wraps it.

    Args:
        model: The user's encoder. A RecBole-style model needs no other argument.
        encode: ``(item_seq, lengths) -> (B, d)``; default ``model(item_seq, lengths)``.
        item_weights: ``() -> (N + 1, d)`` item table; default ``model.item_weights()`` if the
            model has that method, else ``model.item_embedding.weight`` (whose row count must
            then agree with ``model.num_items`` when the model has that attribute).
        encode_all: ``(item_seq, lengths) -> (B, T, d)`` for causal encoders; default
            ``model.forward_all`` if the model has it and sets ``is_causal = True``.

    Raises:
        EncoderError: Naming what is missing and how to adapt the model, e.g. an
            ``item_embedding`` with more rows than ``model.num_items + 1`` (a ``[mask]`` row)
            and no ``item_weights`` saying which rows score items.

    Examples:
        >>> from torch import nn
        >>> wrap_encoder(nn.Linear(2, 2))
        Traceback (most recent call last):
        ...
        raserec_adapter.encoder.EncoderError: Linear has no `item_embedding` ...
    """
    if isinstance(model, WrappedEncoder):
        return model
    if not isinstance(model, nn.Module):
        raise EncoderError(f"the encoder must be a torch.nn.Module, got {type(model).__name__}")
    name = type(model).__name__
    own_weights = getattr(model, "item_weights", None)
    if item_weights is None and callable(own_weights):
        item_weights = own_weights  # the model says which rows score items (e.g. BERT4Rec)
    if item_weights is None:
        table = getattr(model, "item_embedding", None)
        if table is None:
            candidates = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
            hint = f" It has embeddings named {candidates}." if candidates else ""
            raise EncoderError(
                f"{name} has no `item_embedding` (the (N + 1, d) item table scores use).{hint} "
                + _HOW_TO_ADAPT
            )
        if isinstance(table, nn.Embedding):
            item_weights = lambda: table.weight  # noqa: E731
        elif isinstance(table, torch.Tensor):
            item_weights = lambda: table  # noqa: E731
        else:
            raise EncoderError(
                f"{name}.item_embedding is a {type(table).__name__}, expected nn.Embedding. "
                + _HOW_TO_ADAPT
            )
        _check_declared_items(model, item_weights())
    if encode is None:
        encode = model
    if encode_all is None and getattr(model, "is_causal", False):
        fa = getattr(model, "forward_all", None)
        if fa is None:
            raise EncoderError(f"{name} sets is_causal = True but has no forward_all method")
        encode_all = fa
    return WrappedEncoder(model, encode, item_weights, encode_all)


class Shard(NamedTuple):
    """The share of the batches one process encodes: every ``size``-th batch from ``rank`` on.

    ``total`` combines the processes' outputs (each row is filled by one process, zeros
    elsewhere): a sum over the process group. The default is one process doing everything.
    """

    rank: int = 0
    size: int = 1
    total: Callable[[torch.Tensor], torch.Tensor] = lambda t: t


@torch.no_grad()
def encode_prefixes(
    encoder: WrappedEncoder,
    sequences: Sequences,
    prefixes: PrefixSet,
    max_len: int,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    shard: Shard = Shard(),  # noqa: B008 (an immutable tuple)
) -> torch.Tensor:
    """Representations ``(n, d)`` of prefixes (the encoder in eval mode), in their order.

    Examples:
        >>> from raserec_adapter.data import Sequences, leave_one_out
        >>> from raserec_adapter.models import GRU4Rec
        >>> split = leave_one_out(Sequences.from_lists([[1, 2, 3, 4], [2, 3, 1, 4]]))
        >>> enc = wrap_encoder(GRU4Rec(num_items=4, hidden_size=8))
        >>> encode_prefixes(enc, split.sequences, split.test, max_len=50).shape
        torch.Size([2, 8])
    """
    eval_mode(encoder)
    out = (torch.zeros if shard.size > 1 else torch.empty)(len(prefixes), encoder.hidden_size)
    with encoder.trusted_inputs():  # batches of validated sequences
        for i, batch in enumerate(iter_batches(sequences, prefixes, batch_size, max_len)):
            if i % shard.size == shard.rank:
                b = batch.to(device)
                out[batch.index] = encoder(b.item_seq, b.lengths).float().cpu()
    return shard.total(out)


@torch.no_grad()
def encode_training_pairs(
    encoder: WrappedEncoder,
    split: LeaveOneOutSplit,
    device: torch.device | str = "cpu",
    show_progress: bool = True,
    shard: Shard = Shard(),  # noqa: B008 (an immutable tuple)
) -> torch.Tensor:
    """Representations of all training pairs, in ``split.train``'s order.

    A causal encoder (``forward_all``) encodes every prefix of a sequence in one pass.
    """
    eval_mode(encoder)
    if not encoder.is_causal:
        train = split.train
        return encode_prefixes(encoder, split.sequences, train, split.max_len, 1024, device, shard)
    windows = causal_windows(split)
    out = (torch.zeros if shard.size > 1 else torch.empty)(len(split.train), encoder.hidden_size)
    batches = iter_windows(split.sequences, windows, 8192, shuffle=False)
    n = math.ceil(windows.num_pairs / 8192)
    for i, batch in enumerate(progress(batches, n, "encode bank", show_progress)):
        if i % shard.size != shard.rank:
            continue
        b = batch.to(device)
        take = b.targets > 0
        with encoder.trusted_inputs():
            h = encoder.forward_all(b.item_seq, b.lengths)[take]
        pos = take.nonzero().cpu().numpy()
        rows = window_pair_index(windows, batch.index.numpy()[pos[:, 0]], pos[:, 1])
        out[torch.from_numpy(rows)] = h.float().cpu()
    return shard.total(out)
