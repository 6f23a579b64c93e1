"""Sequences a user passes to ``recommend``: item-id lists or a padded tensor, validated.

Example:
    >>> block, lengths, full, seen = to_padded([[3, 1, 2], [4]], None, max_len=2, num_items=5)
    >>> block.tolist(), lengths.tolist(), full.tolist(), seen
    ([[1, 2], [4, 0]], [2, 1], [3, 1], None)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "as_id_array",
    "check_device",
    "check_padded",
    "require_flag",
    "require_positive_int",
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


def as_id_array(values: Any, name: str, count: int | None, low: int | None) -> np.ndarray:
    """A 1-D int64 array of integer ids (lists, NumPy arrays, tensors), checked.

    Args:
        values: The ids.
        name: The argument's name, for errors.
        count: Required number of ids (``None``: any).
        low: Smallest allowed id (``None``: any that fits int64).

    Raises:
        ValueError: If an id is not an integer, is below ``low`` or does not fit int64, or the
            count differs.
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{name} must be integers, got {values!r}")
    try:
        arr = np.asarray(values if isinstance(values, np.ndarray) else list(values))
    except TypeError as e:
        raise ValueError(f"{name} must be a sequence of integers, got {values!r}") from e
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of integers, got shape {arr.shape}")
    if count is not None and len(arr) != count:
        raise ValueError(f"{name} has {len(arr)} entries for {count} sequences; give one each")
    if not len(arr):
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iuO":  # bool, float, str...
        raise ValueError(f"{name} must be integers, got {arr[:5].tolist()}")
    items = arr.tolist()  # Python ints, exact also for uint64
    bad = [v for v in items if not isinstance(v, int) or isinstance(v, bool)]
    if bad:
        raise ValueError(f"{name} must be integers, got {bad[:5]}")
    floor, top = (-(2**63) if low is None else low), 2**63 - 1
    lo, hi = min(items), max(items)
    if lo < floor or hi > top:
        raise ValueError(f"{name} must lie in {floor}..{top}, got {lo if lo < floor else hi}")
    return np.asarray(items, dtype=np.int64)


def refuse_as_batches(source: object, method: str) -> None:
    """Clear errors for objects users pass where a split (or batches) is expected."""
    from raserec_adapter.data import Sequences

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


def require_split(split: object, method: str) -> Any:
    """``split`` if it is a :class:`~raserec_adapter.LeaveOneOutSplit`, else a clear error."""
    from raserec_adapter.data import LeaveOneOutSplit

    if not isinstance(split, LeaveOneOutSplit):
        refuse_as_batches(split, method)
        raise TypeError(
            f"{method} takes a LeaveOneOutSplit (leave_one_out(sequences)), got "
            f"{type(split).__name__}"
        )
    return split


def require_config(config: object, kind: type, method: str) -> None:
    """Refuses a ``config`` that is not a ``kind`` (e.g. a dict, or the other stage's config)."""
    if not isinstance(config, kind):
        raise TypeError(
            f"{method} takes a {kind.__name__}, got {type(config).__name__}"
            + (f" {config!r}" if isinstance(config, dict) else "")
            + f"; e.g. {kind.__name__}(epochs=...)"
        )


def check_device(device: torch.device | str) -> torch.device:
    """``device`` as a ``torch.device``; a clear error for CUDA on a machine without it."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={str(device)!r} but CUDA is not available here (a CPU build of torch or "
            "no GPU); use device='cpu'"
        )
    return dev


def require_flag(value: object, name: str) -> bool:
    """``value`` if it is a bool (numpy's too): a string such as ``"False"`` would be truthy."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def require_positive_int(value: object, name: str, low: int = 1) -> int:
    """``value`` if it is an int ``>= low`` (numpy's too; not a bool or a float like 2.5)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {low}, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)
