"""A user's own batches as the library's :class:`~raserec_adapter.data.Batch`.

``build_bank`` takes an iterable of batches, and a user's ``torch.utils.data.DataLoader`` is
one: each batch may be

* a :class:`~raserec_adapter.data.Batch`;
* a mapping of tensors, with the names RecBole uses (``item_id_list``, ``item_length``,
  ``item_id``, ``user_id``) or this library's (``item_seq``, ``lengths``, ``targets``,
  ``users``, ``prefix_lengths``), e.g. a RecBole ``Interaction`` or a collated dict;
* a tuple ``(item_seq, lengths, targets, users[, prefix_lengths])``.

``item_seq`` is ``(B, T)`` left-aligned with 0 as padding, ``lengths`` the real items per row.
``prefix_lengths`` (each row's full prefix length before truncation to the model's input
length) feeds the no-leakage rule; where a batch has none, ``lengths`` stand in for it. That
never lets a user's later prefix through (a truncated length is never smaller for a later
prefix), but may exclude a few of the user's earlier memories when histories are longer than
the input.

Examples:
    >>> import torch
    >>> b = as_batch({"item_id_list": torch.tensor([[3, 1, 0]]), "item_length": torch.tensor([2]),
    ...               "item_id": torch.tensor([4]), "user_id": torch.tensor([7])})
    >>> b.item_seq.tolist(), b.targets.tolist(), b.users.tolist(), b.prefix_lengths.tolist()
    ([[3, 1, 0]], [4], [7], [2])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from raserec_adapter.data.batching import Batch

__all__ = ["FIELD_NAMES", "as_batch"]

FIELD_NAMES: dict[str, tuple[str, ...]] = {
    "item_seq": ("item_seq", "item_id_list"),
    "lengths": ("lengths", "item_seq_len", "item_length"),
    "targets": ("targets", "target", "item_id", "pos_item_id"),
    "users": ("users", "user_id"),
    "prefix_lengths": ("prefix_lengths", "prefix_length"),
}
"""Per field of :class:`~raserec_adapter.data.Batch`, the names a mapping batch may use."""

_FIX = (
    "give batches with item_seq (B, T), lengths, targets and users (RecBole's item_id_list, "
    "item_length, item_id, user_id), as a mapping, a tuple in that order, or a Batch"
)


def _tensor(value: Any, field: str) -> torch.Tensor:
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TypeError(f"batch field {field} must hold integer ids or lengths, got {t.dtype}")
    return t.long()


def as_batch(obj: Any, fields: Mapping[str, str] | None = None) -> Batch:
    """``obj`` (a :class:`Batch`, a mapping or a tuple of tensors) as a :class:`Batch`.

    ``fields`` maps a :class:`Batch` field (``item_seq``, ``lengths``, ``targets``, ``users``,
    ``prefix_lengths``) to the key a mapping batch holds it under, where that key is none of
    :data:`FIELD_NAMES`' (e.g. ``{"item_seq": "history"}``).

    Raises:
        TypeError: An object of another kind, or a field that is not integers.
        ValueError: A field missing (the message names the names looked for), or fields
            whose sizes disagree.
    """
    if isinstance(obj, Batch):
        return obj
    inner = getattr(obj, "interaction", None)  # RecBole's Interaction keeps its dict here
    if isinstance(inner, Mapping):
        obj = inner
    own = dict(fields or {})
    unknown = sorted(set(own) - set(FIELD_NAMES))
    if unknown:
        raise ValueError(f"fields maps unknown Batch fields {unknown}; known: {list(FIELD_NAMES)}")
    found: dict[str, torch.Tensor | None] = {}
    if isinstance(obj, Mapping):
        for field, names in FIELD_NAMES.items():
            names = (own[field], *names) if field in own else names
            name = next((n for n in names if n in obj), None)
            if name is None and field != "prefix_lengths":
                raise ValueError(
                    f"a batch has none of {list(names)} (for {field}); it has {sorted(obj)}; "
                    + _FIX
                )
            found[field] = None if name is None else _tensor(obj[name], field)
    elif isinstance(obj, (tuple, list)) and len(obj) in (4, 5):
        for field, value in zip(FIELD_NAMES, obj, strict=False):
            found[field] = _tensor(value, field)
        found.setdefault("prefix_lengths", None)
    else:
        kind = type(obj).__name__
        raise TypeError(
            f"an iterable of {kind} was given where batches are expected, and a {kind} cannot "
            "be read as a batch; " + _FIX + " (or a LeaveOneOutSplit: leave_one_out(sequences))"
        )
    seq, lengths = found["item_seq"], found["lengths"]
    assert seq is not None and lengths is not None
    if seq.dim() != 2:
        raise ValueError(f"item_seq must be (B, T), got shape {tuple(seq.shape)}; " + _FIX)
    for field in ("lengths", "targets", "users", "prefix_lengths"):
        t = found[field]
        if t is not None and tuple(t.shape) != (seq.shape[0],):
            raise ValueError(
                f"{field} must be ({seq.shape[0]},), one per row of item_seq, got shape "
                f"{tuple(t.shape)}"
            )
    prefix = found["prefix_lengths"] if found["prefix_lengths"] is not None else lengths
    assert found["targets"] is not None and found["users"] is not None
    index = torch.arange(seq.shape[0])
    return Batch(seq, lengths, found["targets"], index, found["users"], prefix)
