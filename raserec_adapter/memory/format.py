"""The on-disk format of a saved memory bank, shared by both bank classes.

A bank is a directory with ``bank.json`` (format, version, class, dim, count, config) and
``arrays.npz`` (keys, values, users, lengths), plus whatever a bank class adds (the Faiss bank
its ``index.faiss``). Nothing is pickled: the arrays are read with ``allow_pickle=False``. A save
goes to a temporary directory that is renamed into place, so a failed save never corrupts an
existing bank.

Examples:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> keys = torch.ones(2, 3)
    >>> arrays = bank_arrays(keys, keys, torch.tensor([0, 1]), torch.tensor([1, 1]))
    >>> path = Path(tempfile.mkdtemp()) / "bank"
    >>> write_bank_dir(path, bank_meta("MyBank", dim=3, count=2, config={}), arrays)
    >>> meta, read = read_bank_dir(path, "MyBank", dim=3)
    >>> meta["count"], read["keys"].shape
    (2, (2, 3))
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "BANK_FORMAT",
    "BANK_FORMAT_VERSION",
    "MemoryBankFormatError",
    "add_saved",
    "bank_arrays",
    "bank_meta",
    "read_bank_dir",
    "write_bank_dir",
]

BANK_FORMAT = "raserec_adapter.memory_bank"
BANK_FORMAT_VERSION = 1
_JSON_NAME = "bank.json"
_ARRAYS_NAME = "arrays.npz"
_ARRAY_FIELDS = ("keys", "values", "users", "lengths")


class MemoryBankFormatError(ValueError):
    """A saved memory bank directory is missing, malformed or of another class/dim/version."""


def write_bank_dir(
    path: str | os.PathLike[str],
    meta: dict[str, Any],
    arrays: dict[str, np.ndarray],
    extra: Callable[[Path], None] | None = None,
) -> None:
    """Write ``bank.json`` + ``arrays.npz`` (+ ``extra(tmpdir)``) to a temp dir, then rename.

    An existing bank at ``path`` is replaced only after the new one is completely written.
    """
    target = Path(path)
    if target.exists():
        if not target.is_dir():
            raise FileExistsError(f"cannot save a memory bank to {target}: it is a file")
        if any(target.iterdir()) and not (target / _JSON_NAME).is_file():
            raise FileExistsError(
                f"refusing to overwrite {target}: it is a non-empty directory that does not "
                f"hold a saved memory bank (no {_JSON_NAME}); choose another path"
            )
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    backup: Path | None = None
    try:
        with open(tmp / _ARRAYS_NAME, "wb") as fh:
            np.savez(fh, **arrays)
        if extra is not None:
            extra(tmp)
        with open(tmp / _JSON_NAME, "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2, sort_keys=True)
            fh.write("\n")
        if target.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))
            backup.rmdir()
            os.replace(target, backup)
        try:
            os.replace(tmp, target)
        except BaseException:
            if backup is not None:
                os.replace(backup, target)
                backup = None
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def read_bank_dir(
    path: str | os.PathLike[str], cls_name: str, dim: int | None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and validate ``bank.json`` and ``arrays.npz`` of a saved bank."""
    root = Path(path)
    meta_path = root / _JSON_NAME
    if not meta_path.is_file():
        raise MemoryBankFormatError(f"{root} is not a saved memory bank: {_JSON_NAME} not found")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MemoryBankFormatError(f"{meta_path} is not valid JSON: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != BANK_FORMAT:
        raise MemoryBankFormatError(f"{meta_path} is not a {BANK_FORMAT} file")
    version = meta.get("format_version")
    if version != BANK_FORMAT_VERSION:
        raise MemoryBankFormatError(
            f"{meta_path} has format version {version!r}; this library reads version "
            f"{BANK_FORMAT_VERSION}"
        )
    if meta.get("class") != cls_name:
        raise MemoryBankFormatError(
            f"{root} holds a {meta.get('class')!r}, not a {cls_name!r}; load it with "
            f"{meta.get('class')}.load(...)"
        )
    saved_dim = meta.get("dim")
    if isinstance(saved_dim, bool) or not isinstance(saved_dim, int) or saved_dim < 1:
        raise MemoryBankFormatError(
            f"{meta_path}: dim must be a positive integer, got {saved_dim!r}"
        )
    if dim is not None and saved_dim != dim:
        raise MemoryBankFormatError(f"{root} holds a bank of dim {saved_dim}, expected dim {dim}")
    count = meta.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise MemoryBankFormatError(f"{meta_path}: count must be an integer >= 0, got {count!r}")
    if not isinstance(meta.get("config", {}), dict):
        raise MemoryBankFormatError(f"{meta_path}: config must be a JSON object")
    arrays_path = root / _ARRAYS_NAME
    if not arrays_path.is_file():
        raise MemoryBankFormatError(f"{root} is missing {_ARRAYS_NAME}")
    try:
        with np.load(arrays_path, allow_pickle=False) as npz:
            missing = [f for f in _ARRAY_FIELDS if f not in npz.files]
            if missing:
                raise MemoryBankFormatError(f"{arrays_path} lacks arrays {missing}")
            arrays = {f: npz[f] for f in _ARRAY_FIELDS}
    except (OSError, ValueError) as err:
        if isinstance(err, MemoryBankFormatError):
            raise
        raise MemoryBankFormatError(f"cannot read {arrays_path}: {err}") from err
    expected = {
        "keys": (count, saved_dim),
        "values": (count, saved_dim),
        "users": (count,),
        "lengths": (count,),
    }
    for name, shape in expected.items():
        if arrays[name].shape != shape:
            raise MemoryBankFormatError(
                f"{arrays_path}: {name} has shape {arrays[name].shape}, expected {shape} "
                f"(count {count}, dim {saved_dim} in {_JSON_NAME})"
            )
    for name in ("keys", "values"):
        if arrays[name].dtype.kind != "f":
            raise MemoryBankFormatError(
                f"{arrays_path}: {name} must be float, got {arrays[name].dtype}"
            )
    for name in ("users", "lengths"):
        if arrays[name].dtype.kind not in "iu":
            raise MemoryBankFormatError(
                f"{arrays_path}: {name} must be integer, got {arrays[name].dtype}"
            )
    return meta, arrays


def add_saved(bank: Any, arrays: dict[str, np.ndarray], path: str | os.PathLike[str]) -> None:
    """``bank.add`` of the arrays :func:`read_bank_dir` returned; the checks ``add`` makes
    (finite keys and values, lengths >= 1) become a :class:`MemoryBankFormatError` naming
    the file."""
    try:
        bank.add(*(torch.from_numpy(arrays[f]) for f in _ARRAY_FIELDS))
    except ValueError as err:
        raise MemoryBankFormatError(
            f"{Path(path) / _ARRAYS_NAME}: {err}; the file is damaged or was saved from a "
            "diverged encoder: rebuild the bank (build_bank)"
        ) from err


def bank_meta(cls_name: str, dim: int, count: int, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": BANK_FORMAT,
        "format_version": BANK_FORMAT_VERSION,
        "class": cls_name,
        "dim": dim,
        "count": count,
        "config": config,
    }


def bank_arrays(
    keys: torch.Tensor, values: torch.Tensor, users: torch.Tensor, lengths: torch.Tensor
) -> dict[str, np.ndarray]:
    return {
        "keys": keys.detach().cpu().numpy(),
        "values": values.detach().cpu().numpy(),
        "users": users.detach().cpu().numpy(),
        "lengths": lengths.detach().cpu().numpy(),
    }
