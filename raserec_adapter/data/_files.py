"""File handling for the readers: compression, text encodings, separators, columns, times."""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import re
import zlib
from pathlib import Path
from typing import TextIO

import numpy as np

from raserec_adapter.data.sequences import DataFormatError

_NOT_INT_BYTE = re.compile(rb"[^0-9 \t\r\n]")
_SUFFIX_SEP = {".csv": ",", ".tsv": "\t", ".inter": "\t"}
_RECBOLE_TYPES = frozenset({"token", "token_seq", "float", "float_seq"})
_DEFAULT_USER_COLS = ("user_id", "user")
_DEFAULT_ITEM_COLS = ("item_id", "item")
_DEFAULT_TIME_COLS = ("timestamp", "time")
_GZIP_MAGIC = b"\x1f\x8b"
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)  # UTF-32 BOMs start with these too
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)
_HEAD = 1024  # bytes looked at to recognise compressed, UTF-16 or binary files


# --------------------------------------------------------------------------------------------
# compression and encoding
# --------------------------------------------------------------------------------------------


def _is_gz(path: Path) -> bool:
    return path.suffix.lower() == ".gz"


def _format_suffix(path: Path) -> str:
    """The extension naming the format, ignoring a trailing ``.gz``: ``t.csv.gz`` -> ``.csv``."""
    return (path.with_suffix("") if _is_gz(path) else path).suffix.lower()


def _open_binary(path: Path) -> io.BufferedIOBase:
    """Opens ``path`` for reading bytes, decompressing it on the fly if its name ends in .gz."""
    return gzip.open(path, "rb") if _is_gz(path) else path.open("rb")


def _read_bytes(path: Path, size: int = -1) -> bytes:
    """The (decompressed) bytes of ``path``: all of them, or the first ``size``."""
    try:
        with _open_binary(path) as f:
            return f.read(size)
    except _GZIP_ERRORS as e:
        raise _gzip_error(path, e) from None


def _gzip_error(path: Path, error: Exception) -> DataFormatError:
    """The error for a ``.gz`` file that cannot be decompressed."""
    with path.open("rb") as f:
        if f.read(2) != _GZIP_MAGIC:
            return DataFormatError(
                f"{path}: the name ends in .gz but the file is not gzip-compressed; rename it "
                "without the .gz extension"
            )
    return DataFormatError(
        f"{path}: cannot decompress the gzip file ({error}); it is truncated or corrupt, "
        "download or compress it again"
    )


def _check_text_head(path: Path, head: bytes) -> None:
    """Raises if the first bytes of a file show that it is compressed, UTF-16 or binary."""
    if head.startswith(_GZIP_MAGIC):
        raise DataFormatError(
            f"{path} is gzip-compressed; give it a .gz extension (e.g. {path.name}.gz) to read "
            "it as it is, or decompress it first (gunzip)"
        )
    if head.startswith(_UTF16_BOMS) or b"\x00" in head:
        what = (
            "is UTF-16 (or UTF-32) encoded"
            if head.startswith(_UTF16_BOMS)
            else "contains NUL bytes: it is UTF-16/UTF-32 text or a binary file"
        )
        raise DataFormatError(
            f"{path} {what}, not UTF-8 text; re-encode it as UTF-8 (e.g. "
            "iconv -f UTF-16 -t UTF-8 FILE > NEW_FILE, or save it as 'CSV UTF-8') and read that"
        )


def _not_utf8_error(path: Path) -> DataFormatError:
    """The error for a file that is not valid UTF-8, naming the line of the first bad byte."""
    with _open_binary(path) as f:
        for line_number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return DataFormatError(
                    f"{path}, line {line_number}: byte {line[e.start]:#04x} (byte {e.start + 1} "
                    "of the line) is not valid UTF-8; the file is probably Latin-1 or "
                    "Windows-1252 encoded: re-encode it as UTF-8 (e.g. "
                    "iconv -f latin1 -t utf-8 FILE > NEW_FILE) and read that"
                )
    return DataFormatError(  # pragma: no cover - the decoder and this scan disagree
        f"{path} is not valid UTF-8 text; re-encode it as UTF-8"
    )


# --------------------------------------------------------------------------------------------
# user item item ... text files
# --------------------------------------------------------------------------------------------


def _guess_sep(path: Path, f: TextIO) -> str:
    """Separator from the file extension, else sniffed from the first line."""
    suffix = _format_suffix(path)
    sep = _SUFFIX_SEP.get(suffix)
    if sep is not None:
        return sep
    first = f.readline()
    f.seek(0)
    try:
        return csv.Sniffer().sniff(first, delimiters=",\t;|").delimiter
    except csv.Error:
        raise DataFormatError(
            f"{path}: cannot tell the field separator from the extension {suffix!r} or "
            f"the header {first.strip()!r}; pass sep=',' or sep='\\t'"
        ) from None


def _sep_name(sep: str) -> str:
    return {"\t": "tab", ",": "comma", ";": "semicolon", " ": "space"}.get(sep, repr(sep))


def _base_name(name: str) -> str:
    """Strips a RecBole type suffix: ``user_id:token`` -> ``user_id``."""
    base, colon, kind = name.rpartition(":")
    return base if colon and kind.strip() in _RECBOLE_TYPES else name


def _find_column(
    path: Path,
    names: list[str],
    wanted: str | None,
    defaults: tuple[str, ...],
    what: str,
    sep: str,
) -> int | None:
    """Index of the wanted column (exact, then RecBole-stripped, then case-insensitive match).

    Returns ``None`` only for a missing default time column.
    """
    bases = [_base_name(n) for n in names]
    candidates = (wanted,) if wanted is not None else defaults
    for cand in candidates:
        for pool in (names, bases):
            if cand in pool:
                return pool.index(cand)
        lowered = [b.lower() for b in bases]
        if cand.lower() in lowered:
            return lowered.index(cand.lower())
    if what == "time" and wanted is None:
        return None
    arg = f"{what}_col" if what != "time" else "time_col"
    looked = repr(wanted) if wanted is not None else " or ".join(map(repr, defaults))
    raise DataFormatError(
        f"{path}: no {what} column {looked}; the header has the columns {names} "
        f"({_sep_name(sep)}-separated). Pass {arg}=... naming one of them"
        + ("" if len(names) > 1 else ", or sep=... if the separator is wrong")
    )


def _parse_times(path: Path, times: list[str], lines: list[int]) -> np.ndarray:
    """Timestamps as float64; raises naming the line of the first bad one."""
    try:
        stamps = np.array(times, dtype=np.float64)
    except ValueError:
        for k, t in enumerate(times):
            try:
                float(t)
            except ValueError:
                raise DataFormatError(
                    f"{path}, line {lines[k]}: timestamp {t!r} is not a number; timestamps "
                    "must be numeric (e.g. Unix seconds), convert dates first"
                ) from None
        raise  # pragma: no cover - numpy and float() disagree
    bad = np.flatnonzero(~np.isfinite(stamps))
    if len(bad):
        k = int(bad[0])
        raise DataFormatError(
            f"{path}, line {lines[k]}: timestamp {times[k]!r} is not a finite number; "
            "fill in the time or drop the row"
        )
    return stamps
