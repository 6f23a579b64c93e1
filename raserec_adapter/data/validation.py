"""Sequences a user passes to ``recommend``: item-id lists or a padded tensor, validated.

Examples:
    >>> block, lengths, full, seen = to_padded([[3, 1, 2], [4]], None, max_len=2, num_items=5)
    >>> block.tolist(), lengths.tolist(), full.tolist(), seen
    ([[1, 2], [4, 0]], [2, 1], [3, 1], None)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from raserec_adapter.data.sequences import LeaveOneOutSplit, Sequences

logger = logging.getLogger("raserec_adapter")

__all__ = [
    "check_item_count",
    "check_padded",
    "check_split_fits",
    "refuse_as_batches",
    "require_split",
    "to_padded",
]


def to_padded(
    sequences: Sequence[Sequence[int]] | torch.Tensor,
    lengths: torch.Tensor | Sequence[int] | None,
    max_len: int,
    num_items: int,
    with_seen: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(block, lengths, full lengths, seen)``: the left-aligned ``(B, T)`` block of the last
    ``max_len`` items, its lengths, the untruncated lengths and (``with_seen``) a padded block
    of all items, else ``None``. Only the items used are checked, all of them with ``seen``."""
    if isinstance(sequences, torch.Tensor):
        seq, lens, full, cpu = check_padded(sequences, lengths, max_len, num_items)
        return seq, lens, full, cpu if with_seen else None
    if lengths is not None:
        raise ValueError(
            "lengths are only for a padded tensor of sequences; lists carry their own lengths "
            "(drop lengths=, or cut each list to the items you want used)"
        )
    if not isinstance(sequences, (list, tuple)):  # a generator, a NumPy array, a range...
        try:
            sequences = list(sequences)
        except TypeError:
            raise TypeError(
                "sequences must be lists of item ids (e.g. [[1, 2, 3]]) or a padded tensor with "
                f"lengths, got {type(sequences).__name__}"
            ) from None
    # rows given as tensors or arrays (e.g. [torch.tensor([1, 2, 3])]) count as lists of ids
    sequences = [s.tolist() if isinstance(s, (torch.Tensor, np.ndarray)) else s for s in sequences]
    if not len(sequences):
        raise ValueError("no sequences given: pass a list of item-id sequences, e.g. [[1, 2, 3]]")
    if any(not hasattr(s, "__len__") for s in sequences):
        raise ValueError(
            "pass a list of sequences (one list of item ids per user), e.g. [[1, 2, 3]], not "
            "one flat list of ids"
        )
    full = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    if int(full.min()) == 0:
        raise ValueError("every sequence needs at least one item (got an empty one)")
    rows = [list(s)[-max_len:] for s in sequences]
    bad = [
        i
        for s, r in zip(sequences, rows, strict=True)
        for i in (s if with_seen else r)
        if isinstance(i, bool) or not (isinstance(i, (int, np.integer)) and 1 <= i <= num_items)
    ]
    if bad:
        raise ValueError(
            f"item ids must be integers in 1..{num_items} (0 is padding), got {bad[:5]}; map "
            "unknown items to known ids or drop them, and add 1 to 0-based ids"
        )
    seen = None
    if with_seen:
        seen = np.zeros((len(full), int(full.max())), dtype=np.int64)
        for i, s in enumerate(sequences):
            seen[i, : len(s)] = list(s)
    block = np.zeros((len(rows), max(len(r) for r in rows)), dtype=np.int64)
    for i, r in enumerate(rows):
        block[i, : len(r)] = r
    lens = torch.tensor([len(r) for r in rows], dtype=torch.long)
    return torch.from_numpy(block), lens, full, None if seen is None else torch.from_numpy(seen)


def check_padded(
    sequences: torch.Tensor,
    lengths: torch.Tensor | Sequence[int] | None,
    max_len: int,
    num_items: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validates a left-aligned padded ``(B, T)`` tensor of item ids with its lengths."""
    if lengths is None:
        raise ValueError("pass lengths with a padded tensor of sequences")
    if sequences.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"sequences must hold integer item ids, got {sequences.dtype}; use .long()")
    if sequences.dim() != 2 or sequences.shape[0] == 0 or sequences.shape[1] == 0:
        raise ValueError(
            f"a tensor of sequences must be (batch, length) with both sizes > 0, got shape "
            f"{tuple(sequences.shape)}; use seq.unsqueeze(0) for a single sequence"
        )
    if sequences.shape[1] > max_len:
        raise ValueError(
            f"sequences are {sequences.shape[1]} long, more than max_len = {max_len}; "
            "pass lists instead (they are truncated to the last max_len items)"
        )
    lens = torch.as_tensor(lengths)
    if lens.is_floating_point() or lens.dtype == torch.bool or lens.shape != sequences.shape[:1]:
        raise ValueError(
            f"lengths must be {sequences.shape[0]} integers (one per sequence), got "
            f"{lens.dtype} of shape {tuple(lens.shape)}"
        )
    lens = lens.long().cpu()
    seq = sequences.long()
    width = seq.shape[1]
    if int(lens.min()) < 1 or int(lens.max()) > width:
        raise ValueError(
            f"lengths must lie in 1..{width} (the tensor's width), got {lens.tolist()}"
        )
    inside = torch.arange(width) < lens[:, None]
    cpu = seq.cpu()
    bad = cpu[inside & ((cpu < 1) | (cpu > num_items))]
    if len(bad):
        raise ValueError(
            f"item ids within the lengths must lie in 1..{num_items} (0 is padding, items are "
            f"left-aligned), got {bad[:5].tolist()}; check the padding side and the lengths"
        )
    if (cpu[~inside] != 0).any():
        raise ValueError(
            "the tensor has non-zero ids after the stated lengths; sequences must be "
            "left-aligned with padding 0 on the right, or the lengths are too short"
        )
    return seq, lens, lens.clone(), cpu


def refuse_as_batches(source: object, method: str) -> None:
    """Clear errors for objects users pass where a split (or batches) is expected."""
    if isinstance(source, Sequences):
        raise TypeError(
            f"{method} takes a LeaveOneOutSplit, got the Sequences themselves; split them "
            "first: split = leave_one_out(sequences)"
        )
    if isinstance(source, (str, bytes, dict, np.ndarray, torch.Tensor)) or not isinstance(
        source, Iterable
    ):
        raise TypeError(
            f"{method} takes a LeaveOneOutSplit (leave_one_out(sequences)) or an iterable of "
            f"Batch objects, got {type(source).__name__}"
        )


def require_split(split: object, method: str) -> LeaveOneOutSplit:
    """``split`` if it is a :class:`~raserec_adapter.LeaveOneOutSplit`, else a clear error."""
    if not isinstance(split, LeaveOneOutSplit):
        refuse_as_batches(split, method)
        raise TypeError(
            f"{method} takes a LeaveOneOutSplit (leave_one_out(sequences)), got "
            f"{type(split).__name__}"
        )
    return split


_WARNED_FEWER: set[tuple[int, int]] = set()


def check_item_count(num_items: int, split: LeaveOneOutSplit) -> None:
    """Refuses data with items beyond the encoder's table (on CUDA that would be a device
    assert deep inside the embedding lookup); warns, once per pair of sizes, about data with
    fewer items than the table (a trained encoder's ids and the data's may not match)."""
    data = split.sequences.num_items
    vocab = (
        "if the encoder was trained elsewhere, its item ids and the data's are likely "
        "different: read the data in the encoder's item vocabulary (load_dataset(..., "
        "item_vocab=<its token -> id mapping or token list>), or Sequences.with_vocabulary)"
    )
    if data > num_items:
        raise ValueError(
            f"the encoder's item table covers items 1..{num_items} but the data has items up to "
            f"{data}; {vocab}; for a new, untrained model build it with num_items={data}"
        )
    if data < num_items and (data, num_items) not in _WARNED_FEWER:
        _WARNED_FEWER.add((data, num_items))
        logger.warning(
            "the data numbers %d items but the encoder's item table covers 1..%d; %s. Data "
            "already numbered in the encoder's vocabulary (a subset of its catalog) is fine",
            data, num_items, vocab,
        )  # fmt: skip


def check_split_fits(split: LeaveOneOutSplit, max_len: int, num_items: int) -> None:
    """Refuses a split whose inputs are cut to another length, or with unknown items."""
    if split.max_len != max_len:
        raise ValueError(
            f"the split truncates to max_len = {split.max_len} but the augmenter uses "
            f"{max_len}; use leave_one_out(sequences, max_len={max_len}) or "
            f"AugmenterConfig(max_len={split.max_len})"
        )
    check_item_count(num_items, split)
