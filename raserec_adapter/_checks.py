"""Argument checks shared by the whole package: clear errors that say what to pass instead."""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch

__all__ = [
    "as_id_array",
    "check_device",
    "require_config",
    "require_flag",
    "require_positive_int",
]


T = TypeVar("T")


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


def require_config(config: T, kind: type, method: str) -> T:
    """``config``, refused if it is not a ``kind`` (e.g. a dict, or the other stage's config)."""
    if not isinstance(config, kind):
        raise TypeError(
            f"{method} takes a {kind.__name__}, got {type(config).__name__}"
            + (f" {config!r}" if isinstance(config, dict) else "")
            + f"; e.g. {kind.__name__}(epochs=...)"
        )
    return config


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
