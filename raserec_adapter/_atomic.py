"""Saves that are atomic at every instant, SHA-256 manifests, and what interrupted saves leave.

A save writes the new directory (or file) beside its target under a hidden name,
``.<name>.tmp-<pid>-<hex>``, syncs it to disk and puts it in place in one step:

* a directory: on Linux ``renameat2(RENAME_EXCHANGE)`` swaps it with the old directory (a
  reader finds the complete old or the complete new one at every instant), then the old one,
  now under the hidden name, is deleted. Where the exchange is not available (another OS, a
  filesystem that refuses it) the old directory is first renamed aside to
  ``.<name>.old-<pid>-<hex>``; between that rename and the next nothing is at the path, and
  :func:`settle` puts the complete directory back if a save is killed there.
* a file: ``os.replace``, atomic everywhere.

:func:`settle`, run by every save and load of a path, removes the leftovers of interrupted
saves of that path (only names of the form above, only of processes no longer running) and,
when nothing is at the path, first moves the complete new (else the old) directory back.

``_after_step`` is a test hook: called with each step's name after that step of a save, so a
test can raise or kill the process there (``tests/test_checkpoint_integrity.py``).

Examples:
    >>> import tempfile
    >>> from pathlib import Path
    >>> target = Path(tempfile.mkdtemp()) / "data"
    >>> tmp = new_dir(target)
    >>> _ = (tmp / "a.txt").write_text("hello")
    >>> install_dir(tmp, target, "demo")
    >>> sorted(p.name for p in target.parent.iterdir()), (target / "a.txt").read_text()
    (['data'], 'hello')
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "DIGEST_KEY",
    "REPLACE_STEPS",
    "check_zip_seal",
    "install_dir",
    "mismatches",
    "new_dir",
    "record_files",
    "seal",
    "seal_zip",
    "settle",
    "unsealed",
    "write_file",
]

logger = logging.getLogger("raserec_adapter")

_after_step: Callable[[str], None] | None = None
"""Test hook: called with a step's name (``"<prefix>.<step>"``) after each step of a save."""

_use_exchange = True  # tests set False to run the two-rename fallback
_ACTIVE: set[Path] = set()  # hidden paths of saves running in this process: never cleaned

DIGEST_KEY = "manifest_sha256"
REPLACE_STEPS: dict[str, tuple[str, ...]] = {
    "first": ("moved new in",),  # nothing at the path yet
    "exchange": ("swapped", "removed old"),
    "fallback": ("moved old aside", "moved new in", "removed old"),
}
"""The steps of :func:`install_dir` after ``"synced"``, by how the new directory goes in."""
FILE_STEPS = ("wrote", "replaced", "synced")
"""The steps of :func:`write_file`."""
_CHUNK = 1 << 20


def step(name: str) -> None:
    """Calls the test hook (if set) after the save step ``name``."""
    if _after_step is not None:
        _after_step(name)


# ------------------------------------------------------------------------------ manifests
def file_record(path: Path) -> dict[str, Any]:
    """``{"sha256": ..., "size": ...}`` of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return {"sha256": h.hexdigest(), "size": path.stat().st_size}


def record_files(root: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The manifest entry of each ``root/name`` (names relative to ``root``, ``/``-separated)."""
    return {name: file_record(root / name) for name in sorted(names)}


def mismatches(
    root: Path, files: dict[str, Any], skip_missing: frozenset[str] = frozenset()
) -> list[str]:
    """What differs between the files under ``root`` and a manifest: one line per file.

    Files in ``skip_missing`` may be absent (the caller rebuilds them).
    """
    out = []
    for name, want in sorted(files.items()):
        path = root / name
        if not path.is_file():
            if name not in skip_missing:
                out.append(f"{path} is missing")
            continue
        if not isinstance(want, dict):
            out.append(f"{name}: the manifest's entry {want!r} is malformed")
            continue
        got = file_record(path)
        if got != {k: want.get(k) for k in got}:
            now, then = _shown(got["sha256"], want.get("sha256"))
            out.append(
                f"{path} differs from the record (SHA-256 {now}, {got['size']} bytes; "
                f"recorded {then}, {want.get('size')} bytes)"
            )
    return out


def _digest(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != DIGEST_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def seal(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with :data:`DIGEST_KEY`: the SHA-256 of its own content (formatting aside)."""
    return {**meta, DIGEST_KEY: _digest(meta)}


def unsealed(meta: dict[str, Any]) -> str | None:
    """Why ``meta`` fails its own digest, or ``None`` if it matches or has neither a digest nor
    file records (saved before they were written)."""
    recorded = meta.get(DIGEST_KEY)
    if recorded is None and "files" in meta:
        return f"it records its files' checksums but not its own ({DIGEST_KEY} is missing)"
    if recorded is None or recorded == _digest(meta):
        return None
    now, then = _shown(_digest(meta), recorded)
    return (
        f"its content does not match the SHA-256 it records ({now}, recorded {then}): it was "
        "edited or damaged after the save"
    )


def _shown(actual: str, recorded: Any) -> tuple[str, str]:
    """Two digests as a message shows them: their first 16 digits, all where those agree."""
    recorded = str(recorded)
    if actual[:16] == recorded[:16]:
        return actual, recorded
    return actual[:16] + "...", recorded[:16] + "..."


# ------------------------------------------------------------------------------ sealed zips
_SEAL = b"raserec-sha256:"
_SEALED_TAIL = 22 + len(_SEAL) + 64  # the end-of-archive record, then its comment
_EOCD = b"PK\x05\x06"


def seal_zip(path: Path) -> None:
    """Writes the SHA-256 of a zip file (``torch.save``'s format) into the archive's comment.

    The file stays a zip archive that ``torch.load`` reads as before; :func:`check_zip_seal`
    recomputes the digest over every other byte. Nothing is done to a file that does not end
    with an end-of-archive record without a comment (not ``torch.save``'s zip format).
    """
    with open(path, "r+b") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size < 22:
            return
        fh.seek(size - 22)
        if (tail := fh.read(22))[:4] != _EOCD or tail[-2:] != b"\x00\x00":
            return
        fh.seek(0)
        h = hashlib.sha256()
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
        comment = _SEAL + h.hexdigest().encode()
        fh.seek(size - 2)
        fh.write(len(comment).to_bytes(2, "little") + comment)


def check_zip_seal(path: Path) -> tuple[str, str]:
    """``("ok", "")`` if the file matches the SHA-256 :func:`seal_zip` wrote into it,
    ``("unsealed", "")`` for a zip archive without one (written before, or by ``torch.save``
    alone), ``("mismatch", what)`` or ``("foreign", what)`` otherwise."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(size - _SEALED_TAIL, 0))
        tail = fh.read()
        sealed = tail[22 : 22 + len(_SEAL)] == _SEAL and tail[:4] == _EOCD
        if not sealed:
            if tail[-22:-18] == _EOCD and tail[-2:] == b"\x00\x00":
                return "unsealed", ""
            return "foreign", "it does not end as a zip archive (torch.save's format) does"
        recorded = tail[22 + len(_SEAL) :].decode("ascii", "replace")
        if int.from_bytes(tail[20:22], "little") != len(_SEAL) + 64:
            return "mismatch", "the length of its checksum record is damaged"
        fh.seek(0)
        h, left = hashlib.sha256(), size - _SEALED_TAIL + 20
        while left > 0 and (chunk := fh.read(min(_CHUNK, left))):
            h.update(chunk)
            left -= len(chunk)
        h.update(b"\x00\x00")
    if h.hexdigest() != recorded:
        now, then = _shown(h.hexdigest(), recorded)
        return "mismatch", f"its SHA-256 is {now}, the file records {then}"
    return "ok", ""


# ------------------------------------------------------------------------------ syncing
def fsync_path(path: Path) -> None:
    """Flushes a file or a directory to disk (directories where the OS allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. a directory on Windows
        if path.is_dir():
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems refuse fsync of a directory
        if not path.is_dir() or e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flushes every file and directory under ``root``, then ``root`` itself."""
    for here, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fsync_path(Path(here) / name)
        fsync_path(Path(here))


# ------------------------------------------------------------------------------ leftovers
def _hidden(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _leftovers(path: Path) -> list[tuple[Path, str, int]]:
    """``(path, "tmp" | "old", pid)`` of the hidden entries beside ``path`` that saves of
    ``path`` made (only names of exactly that form)."""
    try:
        names = os.listdir(path.parent)
    except OSError:  # no parent yet, or not readable: nothing of ours there
        return []
    out = []
    for name in names:
        for kind in ("tmp", "old"):
            head = f".{path.name}.{kind}-"
            pid, _, token = name[len(head) :].partition("-")
            hexa = len(token) == 8 and all(c in "0123456789abcdef" for c in token)
            if name.startswith(head) and pid.isdigit() and hexa:
                out.append((path.parent / name, kind, int(pid)))
    return out


def _stale(entry: Path, pid: int) -> bool:
    """Whether the save that made ``entry`` has ended (its process is gone, or it is this
    process and no save of it is running)."""
    if pid == os.getpid():
        return entry not in _ACTIVE
    if os.name != "posix":  # no cheap liveness test that is safe: leave it
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. another user's process: alive
        return False
    return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def settle(path: Path, problem: Callable[[Path], str | None] | None = None) -> None:
    """Cleans up after interrupted saves of ``path``; recovers a directory when none is there.

    When nothing is at ``path`` (a save killed between its two renames), the complete new
    directory (``problem(candidate)`` is ``None``), else the old one, is renamed back to
    ``path`` with a warning. Then every other leftover of a finished process is deleted.
    ``problem=None`` (files) only deletes.
    """
    found = [(p, kind) for p, kind, pid in _leftovers(path) if _stale(p, pid)]
    if not found:
        return
    if problem is not None and not os.path.lexists(path):
        new = [p for p, kind in found if kind == "tmp" and problem(p) is None]
        old = [p for p, kind in found if kind == "old"]
        for candidate, what in [*((p, "new") for p in new), *((p, "earlier") for p in old)]:
            try:
                os.rename(candidate, path)
            except OSError as e:
                logger.warning(
                    "%s is missing (a save was interrupted) and the %s copy %s cannot be moved "
                    "back (%s): rename it to %s by hand",
                    path, what, candidate, e, path.name,
                )  # fmt: skip
                return
            logger.warning(
                "%s was missing: a save to it was interrupted; the %s complete copy it left "
                "(%s) is back in place",
                path, what, candidate.name,
            )  # fmt: skip
            found = [(p, k) for p, k in found if p != candidate]
            break
    for leftover, _kind in found:
        logger.info("removing %s, left by an interrupted save of %s", leftover, path)
        _remove(leftover)


# ------------------------------------------------------------------------------ directories
def new_dir(path: Path) -> Path:
    """A fresh hidden directory beside ``path`` for a save of it (registered as running)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _hidden(path, "tmp")
    tmp.mkdir()
    _ACTIVE.add(tmp)
    return tmp


_renameat2: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Swaps ``a`` and ``b`` atomically (Linux ``renameat2``); ``False`` where unavailable."""
    global _renameat2
    if not _use_exchange or not sys.platform.startswith("linux"):
        return False
    if _renameat2 is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
        except (OSError, AttributeError):  # an old libc
            fn = False
        else:
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
            fn.argtypes += [ctypes.c_uint]
            fn.restype = ctypes.c_int
        _renameat2 = fn
    if _renameat2 is False:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if _renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False  # this kernel or filesystem cannot: rename twice instead
    raise OSError(err, os.strerror(err), str(b))


def install_dir(tmp: Path, path: Path, prefix: str) -> None:
    """Puts the complete directory ``tmp`` (from :func:`new_dir`) at ``path``, syncing it first.

    What ``path`` held is replaced and deleted afterwards. A failure or an interrupt at any
    step leaves the complete old or the complete new directory at ``path`` and removes the
    rest; a killed process leaves hidden leftovers that :func:`settle` handles.
    """
    old: Path | None = None
    try:
        fsync_tree(tmp)
        step(f"{prefix}.synced")
        if not os.path.lexists(path):
            os.rename(tmp, path)
            step(f"{prefix}.moved new in")
            fsync_path(path.parent)
            return
        if _exchange(tmp, path):
            old = tmp  # now holds what was at path
            step(f"{prefix}.swapped")
        else:
            old = _hidden(path, "old")
            _ACTIVE.add(old)
            os.rename(path, old)
            step(f"{prefix}.moved old aside")
            os.rename(tmp, path)
            step(f"{prefix}.moved new in")
        fsync_path(path.parent)  # the new entry is on disk before the old one goes
        _remove(old)
        step(f"{prefix}.removed old")
    except BaseException:
        if old is not None and old.exists() and not os.path.lexists(path):
            os.rename(old, path)  # the new one never went in: the old one goes back
        raise
    finally:
        for p in (tmp, old):
            if p is not None:
                if p.exists() and p != path:
                    _remove(p)
                _ACTIVE.discard(p)


# ------------------------------------------------------------------------------ files
def write_file(path: Path, write: Callable[[Path], None], prefix: str) -> None:
    """``write(tmp)`` to a hidden file beside ``path``, synced, then ``os.replace`` onto it.

    A failure or a kill at any step leaves the old or the new file at ``path``; stale hidden
    files of earlier interrupted writes of ``path`` are deleted first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    settle(path)
    tmp = _hidden(path, "tmp")
    _ACTIVE.add(tmp)
    try:
        write(tmp)
        fsync_path(tmp)
        step(f"{prefix}.wrote")
        os.replace(tmp, path)
        step(f"{prefix}.replaced")
        fsync_path(path.parent)
        step(f"{prefix}.synced")
    finally:
        if os.path.lexists(tmp):  # the write or the rename failed: the old file stays
            _remove(tmp)
        _ACTIVE.discard(tmp)
