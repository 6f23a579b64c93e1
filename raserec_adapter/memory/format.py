"""The on-disk format of a saved memory bank, shared by both bank classes.

A bank is a directory with ``bank.json`` (format, version, class, dim, count, config) and
``arrays.npz`` (keys, values, users, lengths), plus whatever a bank class adds (the Faiss bank
its ``index.faiss``). Nothing is pickled: the arrays are read with ``allow_pickle=False``. A save
goes to a hidden directory beside the target that is swapped into place in one step, so a failed
or killed save never corrupts an existing bank; ``bank.json`` records the size and SHA-256 of the
other files and of its own content, and a load refuses a file that differs.

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
import logging
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raserec_adapter import _atomic

__all__ = [
    "BANK_FORMAT",
    "BANK_FORMAT_VERSION",
    "SAVE_STEPS",
    "MemoryBankDamagedError",
    "MemoryBankFormatError",
    "add_saved",
    "bank_arrays",
    "bank_incomplete",
    "bank_meta",
    "read_bank_dir",
    "verify_files",
    "write_bank_dir",
]

logger = logging.getLogger("raserec_adapter")

BANK_FORMAT = "raserec_adapter.memory_bank"
BANK_FORMAT_VERSION = 1
_JSON_NAME = "bank.json"
_ARRAYS_NAME = "arrays.npz"
_INDEX_NAME = "index.faiss"  # FaissMemoryBank's
_ARRAY_FIELDS = ("keys", "values", "users", "lengths")


class MemoryBankFormatError(ValueError):
    """A saved memory bank directory is missing, malformed or of another class/dim/version."""


class MemoryBankDamagedError(MemoryBankFormatError):
    """A saved bank's file differs from the size and SHA-256 its ``bank.json`` records (the
    message names the file and says what to do)."""


def write_bank_dir(
    path: str | os.PathLike[str],
    meta: dict[str, Any],
    arrays: dict[str, np.ndarray],
    extra: Callable[[Path], None] | None = None,
) -> None:
    """Write ``bank.json`` + ``arrays.npz`` (+ ``extra(tmpdir)``) beside ``path``, then swap it in.

    The new directory is synced to disk and put in place in one step
    (:func:`raserec_adapter._atomic.install_dir`): at every instant, a kill included, ``path``
    holds the complete old bank or the complete new one. ``bank.json`` records the size and
    SHA-256 of every other file and of its own content; loading verifies them. Leftovers of an
    interrupted earlier save of ``path`` are removed first (or put back if nothing is at
    ``path``).
    """
    target = Path(path)
    _atomic.settle(target, bank_incomplete)
    if target.exists():
        if not target.is_dir():
            raise FileExistsError(f"cannot save a memory bank to {target}: it is a file")
        if any(target.iterdir()) and not (target / _JSON_NAME).is_file():
            raise FileExistsError(
                f"refusing to overwrite {target}: it is a non-empty directory that does not "
                f"hold a saved memory bank (no {_JSON_NAME}); choose another path"
            )
    tmp = _atomic.new_dir(target)
    try:
        with open(tmp / _ARRAYS_NAME, "wb") as fh:
            np.savez(fh, **arrays)
        _atomic.step("bank.wrote arrays.npz")
        if extra is not None:
            extra(tmp)
            _atomic.step("bank.wrote extra files")
        names = [p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file()]
        sealed = _atomic.seal({**meta, "files": _atomic.record_files(tmp, names)})
        with open(tmp / _JSON_NAME, "w", encoding="utf-8") as fh:
            json.dump(sealed, fh, indent=2, sort_keys=True)
            fh.write("\n")
        _atomic.step("bank.wrote bank.json")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _atomic._ACTIVE.discard(tmp)
        raise
    _atomic.install_dir(tmp, target, "bank")


SAVE_STEPS = ("bank.wrote arrays.npz", "bank.wrote extra files", "bank.wrote bank.json")
"""The steps of :func:`write_bank_dir` before :func:`~raserec_adapter._atomic.install_dir`'s
(``"bank.wrote extra files"`` only with ``extra``)."""


def bank_incomplete(path: Path) -> str | None:
    """Why ``path`` is not a complete bank directory whose checksums all match (``None``
    when it is one)."""
    try:
        meta = json.loads((path / _JSON_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"{_JSON_NAME} cannot be read: {err}"
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        return f"{_JSON_NAME} records no checksums"
    return _atomic.unsealed(meta) or "; ".join(_atomic.mismatches(path, meta["files"])) or None


def _index_header(path: Path) -> tuple[int, int] | None:
    """``(dim, ntotal)`` from a Faiss index file's header (fourcc, int32 d, int64 ntotal)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return None
    if len(head) < 16:
        return None
    return int(np.frombuffer(head, "<i4", 1, 4)[0]), int(np.frombuffer(head, "<i8", 1, 8)[0])


def verify_files(path: str | os.PathLike[str]) -> None:
    """Refuses a bank whose files differ from the sizes and SHA-256 its ``bank.json`` records.

    A recorded ``index.faiss`` that is missing is rebuilt from the arrays (a warning); one
    that differs is refused, with what its header says it holds. A bank saved before
    checksums were recorded is accepted with a warning that it cannot be verified.

    Raises:
        MemoryBankDamagedError: Naming the first file that differs and what to do.
    """
    root = Path(path)
    meta = json.loads((root / _JSON_NAME).read_text(encoding="utf-8"))
    if damaged := _atomic.unsealed(meta):
        raise MemoryBankDamagedError(
            f"{root / _JSON_NAME}: {damaged}; restore the bank from a backup, or rebuild it "
            "(build_bank) and save it again"
        )
    files = meta.get("files")
    if not isinstance(files, dict):
        logger.warning(
            "the memory bank in %s was saved without checksums (by a raserec-adapter before "
            "they were recorded): its files cannot be verified; save it again to add them",
            root,
        )
        return
    if _INDEX_NAME in files and not (root / _INDEX_NAME).is_file():
        logger.warning(
            "%s is missing: the index is rebuilt from %s at the first search",
            root / _INDEX_NAME,
            _ARRAYS_NAME,
        )
    problems = _atomic.mismatches(root, files, skip_missing=frozenset({_INDEX_NAME}))
    if not problems:
        return
    first = problems[0]
    if first.startswith(str(root / _INDEX_NAME)):
        header = _index_header(root / _INDEX_NAME)
        holds = ""
        if header is not None and header != (meta.get("dim"), meta.get("count")):
            holds = (
                f" (it holds {header[1]} vectors of dim {header[0]}, but the bank has "
                f"{meta.get('count')} memories of dim {meta.get('dim')})"
            )
        raise MemoryBankDamagedError(
            f"{first}{holds}: the Faiss index was damaged or replaced after the save and is "
            f"not used; delete it to have the index rebuilt from {_ARRAYS_NAME}, or save the "
            "bank again"
        )
    raise MemoryBankDamagedError(
        f"{first}: the bank was changed or damaged after it was saved; restore it from a "
        "backup, or rebuild it (build_bank) and save it again"
    )


def read_bank_dir(
    path: str | os.PathLike[str], cls_name: str, dim: int | None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and validate ``bank.json`` and ``arrays.npz`` of a saved bank."""
    root = Path(path)
    _atomic.settle(root, bank_incomplete)  # an interrupted save: its leftovers, or recovery
    meta_path = root / _JSON_NAME
    if not meta_path.is_file():
        raise MemoryBankFormatError(f"{root} is not a saved memory bank: {_JSON_NAME} not found")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MemoryBankFormatError(f"{meta_path} is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise MemoryBankFormatError(f"{meta_path} is not a {BANK_FORMAT} file")
    try:
        return _checked(root, meta, cls_name, dim)
    except MemoryBankFormatError as err:
        if (damaged := _atomic.unsealed(meta)) is None:
            raise
        raise MemoryBankDamagedError(f"{err} (and {meta_path}: {damaged})") from err


def _checked(
    root: Path, meta: dict[str, Any], cls_name: str, dim: int | None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """:func:`read_bank_dir`'s checks of ``bank.json``'s content and of ``arrays.npz``."""
    meta_path = root / _JSON_NAME
    if meta.get("format") != BANK_FORMAT:
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
    except (OSError, ValueError, zipfile.BadZipFile) as err:
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
    """``bank.add`` of the arrays :func:`read_bank_dir` returned, then :func:`verify_files`.

    The checks ``add`` makes (finite keys and values, lengths >= 1) become a
    :class:`MemoryBankFormatError` naming the file. The checksums are verified last, after the
    checks that say more of what is wrong, and before a bank class reads ``index.faiss``.
    """
    try:
        bank.add(*(torch.from_numpy(arrays[f]) for f in _ARRAY_FIELDS))
    except ValueError as err:
        raise MemoryBankFormatError(
            f"{Path(path) / _ARRAYS_NAME}: {err}; the file is damaged or was saved from a "
            "diverged encoder: rebuild the bank (build_bank)"
        ) from err
    verify_files(path)


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
