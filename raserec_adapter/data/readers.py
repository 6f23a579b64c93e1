"""Readers that turn interaction files into :class:`~raserec_adapter.data.Sequences`.

Two formats are supported:

* :func:`read_sequences_txt` reads the ``user_id item_id item_id ...`` files of S3-Rec, CoSeRec,
  ICLRec, DuoRec and RaSeRec (one user per line, items in chronological order).
* :func:`read_interactions` reads user / item / timestamp tables: CSV, TSV and RecBole atomic
  ``.inter`` files. Interactions are sorted by time per user, optionally k-core filtered
  (:func:`k_core_filter`) and remapped to contiguous ids.

Both keep the original ids as ``user_labels`` / ``item_labels`` so that recommendations can be
mapped back, and raise :class:`~raserec_adapter.data.DataFormatError` naming the file, the line
and what to fix when the input is malformed. Files must be UTF-8 (or ASCII) text; files whose
name ends in ``.gz`` (``Beauty.txt.gz``, ``ratings.csv.gz``) are decompressed while reading.

Examples:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "toy.csv"
    >>> _ = path.write_text("user_id,item_id,timestamp\\nu1,a,3\\nu1,b,1\\nu2,a,5\\n")
    >>> seqs = read_interactions(path)
    >>> [seqs[u].tolist() for u in range(seqs.num_users)]
    [[1, 2], [2]]
    >>> seqs.item_labels.tolist()
    ['b', 'a']
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import os
from itertools import chain
from pathlib import Path
from typing import NoReturn

import numpy as np

from raserec_adapter.data._files import (
    _DEFAULT_ITEM_COLS,
    _DEFAULT_TIME_COLS,
    _DEFAULT_USER_COLS,
    _GZIP_ERRORS,
    _HEAD,
    _NOT_INT_BYTE,
    _check_text_head,
    _find_column,
    _guess_sep,
    _gzip_error,
    _not_utf8_error,
    _open_binary,
    _parse_times,
    _read_bytes,
    _sep_name,
)
from raserec_adapter.data.sequences import DataFormatError, Sequences
from raserec_adapter.data.vocabulary import Vocabulary, apply_vocabulary

__all__ = ["k_core_filter", "read_interactions", "read_sequences_txt"]

logger = logging.getLogger("raserec_adapter")

_INT64_MAX = np.iinfo(np.int64).max


def read_sequences_txt(
    path: str | os.PathLike[str],
    *,
    item_vocab: Vocabulary | None = None,
    user_vocab: Vocabulary | None = None,
    unknown: str = "error",
) -> Sequences:
    """Reads a ``user_id item_id item_id ...`` file (one user per line, chronological items).

    Ids must be non-negative integers separated by spaces or tabs; blank lines are skipped. A
    name ending in ``.gz`` is decompressed while reading.
    Users keep the file order (internal user ``u`` is the ``u``-th non-blank line). If the item
    ids are exactly ``1..N`` they are kept unchanged (so results match the published files);
    otherwise items are renumbered ``1..N`` in order of first appearance (logged at INFO).
    ``user_labels`` and ``item_labels`` hold the original ids as decimal strings (ids are
    integers here, so ``007`` and ``7`` are one id, labelled ``"7"``);
    :meth:`~raserec_adapter.Sequences.labels_of` and :meth:`~raserec_adapter.Sequences.ids_of`
    map between them and the ids the library uses.

    Args:
        path: The text file.
        item_vocab: Optional item vocabulary (``token -> id``, or the tokens in id order with
            the padding first) to number items as an encoder trained elsewhere does; see
            :func:`~raserec_adapter.data.vocabulary.apply_vocabulary`.
        user_vocab: Optional user vocabulary; rows then follow its ids.
        unknown: With a vocabulary: ``"error"`` refuses tokens it lacks, ``"drop"`` drops
            their interactions.

    Returns:
        The sequences, with ``user_labels`` and ``item_labels`` set.

    Raises:
        DataFormatError: If the file is empty, holds a token that is not a non-negative
            integer, a user line without items, or the same user on two lines (the message
            names the file and the line), or is gzip-compressed without a ``.gz`` name,
            UTF-16 encoded or a corrupt ``.gz`` file.

    Examples:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "toy.txt"
        >>> _ = path.write_text("1 1 2 3\\n2 2 3\\n")
        >>> seqs = read_sequences_txt(path)
        >>> seqs.num_users, seqs.num_items, seqs[1].tolist()
        (2, 3, [2, 3])
    """
    path = Path(path)
    data = _read_bytes(path)
    _check_text_head(path, data[:_HEAD])
    data = data.removeprefix(codecs.BOM_UTF8)
    bad = _NOT_INT_BYTE.search(data)
    if bad is not None:
        _raise_bad_token(path, data, bad.start())

    parts = [line.split() for line in data.decode("ascii").splitlines()]
    all_counts = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    line_numbers = np.flatnonzero(all_counts) + 1  # 1-based numbers of the non-blank lines
    if not len(line_numbers):
        raise DataFormatError(
            f"{path} is empty: expected one line per user, 'user_id item_id item_id ...'"
        )
    parts = [p for p in parts if p]
    counts = all_counts[all_counts > 0]
    tokens = list(chain.from_iterable(parts))
    try:
        values = np.fromiter(map(int, tokens), dtype=np.int64, count=len(tokens))
    except OverflowError:
        k = next(k for k, t in enumerate(tokens) if int(t) > _INT64_MAX)
        line = int(line_numbers[np.searchsorted(np.cumsum(counts), k, side="right")])
        raise DataFormatError(
            f"{path}, line {line}: id {tokens[k]} is too large (ids must fit in 64 bits); "
            "renumber the ids"
        ) from None

    empty = np.flatnonzero(counts == 1)
    if len(empty):
        raise DataFormatError(
            f"{path}, line {line_numbers[empty[0]]}: user {parts[empty[0]][0]} has no "
            f"items ({len(empty)} such line(s)); each line must be 'user_id item_id item_id "
            "...': remove the line or add the user's items"
        )

    starts = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    users = values[starts]
    is_item = np.ones(len(values), dtype=bool)
    is_item[starts] = False
    items = values[is_item]
    _check_unique_users(path, users, line_numbers)

    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts - 1, out=offsets[1:])
    original = items
    items, item_labels = _renumber_items(items)
    if items is not original:
        logger.info(
            "%s: item ids are not exactly 1..N (they run from %d to %d); renumbered 1..%d in "
            "order of first appearance: sequences.labels_of(ids) gives the file's ids back",
            path,
            original.min(),
            original.max(),
            len(item_labels),
        )
    seqs = Sequences(items, offsets, len(item_labels), users.astype(str), item_labels)
    return apply_vocabulary(seqs, item_vocab, user_vocab, unknown=unknown)


def _raise_bad_token(path: Path, data: bytes, pos: int) -> NoReturn:
    """Raises the error for a byte that cannot belong to a non-negative integer."""
    line = len(data[: pos + 1].splitlines())  # counts \n, \r\n and \r endings, as the reading
    start = max(data.rfind(ws, 0, pos) for ws in (b" ", b"\t", b"\n", b"\r"))
    end = len(data)
    for ws in (b" ", b"\t", b"\n", b"\r"):
        k = data.find(ws, pos)
        if k != -1:
            end = min(end, k)
    token = data[start + 1 : end].decode("utf-8", errors="replace")
    raise DataFormatError(
        f"{path}, line {line}: {token!r} is not a non-negative integer id; this format needs "
        "'user_id item_id item_id ...' with integer ids separated by spaces. For string ids or "
        "timestamped tables use read_interactions on a CSV/TSV file instead"
    )


def _check_unique_users(path: Path, users: np.ndarray, line_numbers: np.ndarray) -> None:
    """Raises if a user id occurs on two lines."""
    order = np.argsort(users, kind="stable")
    dup = np.flatnonzero(users[order][1:] == users[order][:-1])
    if len(dup):
        # the duplicate that occurs first in the file
        second = order[dup + 1]
        k = int(np.argmin(second))
        first_line = line_numbers[order[dup[k]]]
        raise DataFormatError(
            f"{path}, line {line_numbers[second[k]]}: user {users[second[k]]} already appeared "
            f"on line {first_line}; each user must have exactly one line (merge the lines in "
            "chronological order)"
        )


def _renumber_items(items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keeps ids that are exactly ``1..N``, else renumbers by first appearance.

    Returns:
        The 1-based item ids and the original ids as strings (``labels[i - 1]`` for item ``i``).
    """
    if len(items) and items.min() == 1:
        n = int(items.max())
        if n <= len(items) and np.all(np.bincount(items, minlength=n + 1)[1:] > 0):
            return items, np.arange(1, n + 1).astype(str)
    uniq, first, inverse = np.unique(items, return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), dtype=np.int64)
    order = np.argsort(first, kind="stable")
    rank[order] = np.arange(1, len(uniq) + 1)
    return rank[inverse.reshape(-1)], uniq[order].astype(str)


# --------------------------------------------------------------------------------------------
# user / item / timestamp tables
# --------------------------------------------------------------------------------------------


def k_core_filter(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Iteratively drops users and items with fewer than ``k`` interactions.

    Removing a user can push an item below ``k`` and vice versa, so counting repeats until
    nothing changes; afterwards every kept user and every kept item has at least ``k`` kept
    interactions (repeated user-item pairs count once per interaction).

    Args:
        users: User id of every interaction (any integer or string array).
        items: Item id of every interaction, same length as ``users``.
        k: Minimum number of interactions per user and per item (``k <= 1`` keeps everything).

    Returns:
        Boolean mask over the interactions: ``True`` for the ones that are kept.

    Examples:
        >>> import numpy as np
        >>> users = np.array([0, 0, 1, 1, 2])
        >>> items = np.array([5, 6, 5, 6, 5])
        >>> k_core_filter(users, items, 2).tolist()
        [True, True, True, True, False]
    """
    users = np.asarray(users)
    items = np.asarray(items)
    if users.shape != items.shape or users.ndim != 1:
        raise ValueError("users and items must be 1-D arrays of the same length")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    keep = np.ones(len(users), dtype=bool)
    if k <= 1 or not len(users):
        return keep
    _, u = np.unique(users, return_inverse=True)
    _, i = np.unique(items, return_inverse=True)
    u, i = u.reshape(-1), i.reshape(-1)
    n_u, n_i = int(u.max()) + 1, int(i.max()) + 1
    while True:
        u_count = np.bincount(u[keep], minlength=n_u)
        i_count = np.bincount(i[keep], minlength=n_i)
        new = keep & (u_count[u] >= k) & (i_count[i] >= k)
        if np.array_equal(new, keep):
            return keep
        keep = new


def _stray_quote_error(path: Path, first: int, last: int) -> DataFormatError:
    return DataFormatError(
        f"{path}, line {first}: a user or item field runs over lines {first}-{last}, so a '\"' "
        f"on line {first} is never closed; remove the stray quote (or close it)"
    )


def read_interactions(
    path: str | os.PathLike[str],
    *,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    sep: str | None = None,
    k_core: int | None = None,
    item_vocab: Vocabulary | None = None,
    user_vocab: Vocabulary | None = None,
    unknown: str = "error",
) -> Sequences:
    """Reads a user / item / timestamp table (CSV, TSV or RecBole ``.inter``) into sequences.

    The file must be UTF-8 text; a name ending in ``.gz`` is decompressed while reading (the
    extension before it picks the separator). The first line must be a header. RecBole type
    suffixes (``user_id:token``) are ignored when matching column names. Each user's
    interactions are sorted by time with a stable sort, so ties keep the file order; without a
    time column the file order is used. Users are
    numbered ``0..U-1`` in order of first appearance in the file, items ``1..N`` (0 is padding)
    in order of first appearance in the resulting sequences (user by user, chronologically),
    so writing the result as ``user item item ...`` lines and reading it back with
    :func:`read_sequences_txt` keeps the ids. Repeated interactions are kept.

    Args:
        path: The table.
        user_col: User column; default: the first of ``user_id``, ``user`` present.
        item_col: Item column; default: the first of ``item_id``, ``item`` present.
        time_col: Timestamp column (numbers, e.g. Unix time); default: the first of
            ``timestamp``, ``time`` present, else no sorting.
        sep: Field separator; default: from the extension (``.csv`` ``,``; ``.tsv`` and
            ``.inter`` tab), else sniffed from the header.
        k_core: If given, iteratively drop users and items with fewer than ``k_core``
            interactions (see :func:`k_core_filter`) before numbering.
        item_vocab: As :func:`read_sequences_txt`'s: items numbered as a given vocabulary.
        user_vocab: As :func:`read_sequences_txt`'s: users ordered as a given vocabulary.
        unknown: As :func:`read_sequences_txt`'s (``"error"`` or ``"drop"``).

    Returns:
        The sequences, with the original ids in ``user_labels`` and ``item_labels``
        (:meth:`~raserec_adapter.Sequences.labels_of` maps recommended ids back to them).

    Raises:
        DataFormatError: If the file has no header or rows, a column is missing (the
            message lists the columns found), a row is too short, an id is empty, a
            timestamp is not a finite number (the message gives the line), nothing is left
            after k-core filtering, or the file is not UTF-8 text (e.g. Latin-1 or UTF-16; the
            message gives the line of the first bad byte), gzip-compressed without a ``.gz``
            name, or a corrupt ``.gz`` file.

    Examples:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "toy.inter"
        >>> _ = path.write_text(
        ...     "user_id:token\\titem_id:token\\ttimestamp:float\\n"
        ...     "7\\t30\\t2\\n7\\t10\\t1\\n8\\t30\\t1\\n"
        ... )
        >>> seqs = read_interactions(path)
        >>> seqs[0].tolist(), seqs[1].tolist(), seqs.item_labels.tolist()
        ([1, 2], [2], ['10', '30'])
    """
    path = Path(path)
    if k_core is not None and k_core < 0:
        raise ValueError(f"k_core must be >= 0, got {k_core}")
    if sep is not None and (not isinstance(sep, str) or len(sep) != 1 or sep in '\r\n"'):
        raise ValueError(
            f"sep must be one character (e.g. ',' or '\\t'), got {sep!r}; for a separator of "
            "several characters (MovieLens '::') replace it with one first, e.g. "
            "text.replace('::', '\\t')"
        )
    _check_text_head(path, _read_bytes(path, _HEAD))
    line = 0  # where a csv.Error happened
    try:
        with io.TextIOWrapper(_open_binary(path), encoding="utf-8-sig", newline="") as f:
            delimiter = sep if sep is not None else _guess_sep(path, f)
            reader = csv.reader(f, delimiter=delimiter, skipinitialspace=True)
            header = next(reader, None)
            while header is not None and not any(h.strip() for h in header):
                header = next(reader, None)
            if header is None:
                raise DataFormatError(
                    f"{path} is empty: expected a header line (e.g. 'user_id,item_id,timestamp') "
                    "followed by one interaction per line"
                )
            names = [h.strip() for h in header]
            line = reader.line_num
            ui = _find_column(path, names, user_col, _DEFAULT_USER_COLS, "user", delimiter)
            ii = _find_column(path, names, item_col, _DEFAULT_ITEM_COLS, "item", delimiter)
            ti = _find_column(path, names, time_col, _DEFAULT_TIME_COLS, "time", delimiter)
            needed = max(ui, ii, -1 if ti is None else ti) + 1
            user_ids: list[str] = []
            item_ids: list[str] = []
            times: list[str] = []
            lines: list[int] = []
            for row in reader:
                first_line, line = line + 1, reader.line_num
                if len(row) < needed:
                    if not row or not "".join(row).strip():
                        continue
                    if reader.line_num > first_line:
                        raise _stray_quote_error(path, first_line, reader.line_num)
                    raise DataFormatError(
                        f"{path}, line {reader.line_num}: expected at least {needed} "
                        f"{_sep_name(delimiter)}-separated fields, found {len(row)}: {row!r}; "
                        "fix the line or pass sep=... if the separator is wrong"
                    )
                if any("\n" in row[c] or "\r" in row[c] for c in (ui, ii)):
                    raise _stray_quote_error(path, first_line, reader.line_num)
                user_ids.append(row[ui].strip())
                item_ids.append(row[ii].strip())
                if ti is not None:
                    times.append(row[ti])
                lines.append(reader.line_num)
    except UnicodeDecodeError:
        raise _not_utf8_error(path) from None
    except _GZIP_ERRORS as e:
        raise _gzip_error(path, e) from None
    except csv.Error as e:
        raise DataFormatError(
            f"{path}, after line {line}: cannot read the table ({e}); a '\"' that is never "
            "closed makes the rest of the file one field: remove the stray quote"
        ) from None

    if not user_ids:
        raise DataFormatError(f"{path} has a header but no interactions")
    user_code: dict[str, int] = {}
    item_code: dict[str, int] = {}
    users = np.fromiter(
        (user_code.setdefault(x, len(user_code)) for x in user_ids), np.int64, len(user_ids)
    )
    items = np.fromiter(
        (item_code.setdefault(x, len(item_code)) for x in item_ids), np.int64, len(item_ids)
    )
    for codes, ids, what in ((user_code, user_ids, "user"), (item_code, item_ids, "item")):
        if "" in codes:
            line = lines[ids.index("")]
            raise DataFormatError(
                f"{path}, line {line}: empty {what} id; fill it in or drop the row"
            )
    stamps = _parse_times(path, times, lines) if ti is not None else None

    user_names = np.asarray(list(user_code), dtype=str)
    item_names = np.asarray(list(item_code), dtype=str)
    return sequences_from_codes(
        str(path), users, items, stamps, user_names, item_names, k_core=k_core,
        item_vocab=item_vocab, user_vocab=user_vocab, unknown=unknown,
    )  # fmt: skip


def sequences_from_codes(
    where: str,
    users: np.ndarray,
    items: np.ndarray,
    stamps: np.ndarray | None,
    user_names: np.ndarray,
    item_names: np.ndarray,
    *,
    k_core: int | None = None,
    item_vocab: Vocabulary | None = None,
    user_vocab: Vocabulary | None = None,
    unknown: str = "error",
) -> Sequences:
    """Sequences from interactions coded in order of first appearance (``users[i]`` indexes
    ``user_names``, ``items[i]`` ``item_names``), each user's sorted by ``stamps`` (stable;
    ``None``: as given), numbered as :func:`read_interactions` numbers them. ``where`` names
    the source in errors."""
    if k_core is not None and k_core > 1:
        keep = k_core_filter(users, items, k_core)
        if not keep.any():
            raise DataFormatError(
                f"{where}: no interactions left after {k_core}-core filtering "
                f"({len(users)} interactions, {len(user_names)} users, {len(item_names)} items "
                "before); use a smaller k_core"
            )
        users, items = users[keep], items[keep]
        stamps = None if stamps is None else stamps[keep]

    # renumber users 0..U-1 keeping first-appearance order (codes already follow it)
    kept_users, users = np.unique(users, return_inverse=True)
    users = users.reshape(-1)
    order = np.arange(len(users)) if stamps is None else np.argsort(stamps, kind="stable")
    order = order[np.argsort(users[order], kind="stable")]
    users, items = users[order], items[order]

    uniq, first, inverse = np.unique(items, return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), dtype=np.int64)
    by_first = np.argsort(first, kind="stable")
    rank[by_first] = np.arange(1, len(uniq) + 1)
    new_items = rank[inverse.reshape(-1)]

    offsets = np.zeros(len(kept_users) + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=len(kept_users)), out=offsets[1:])
    user_labels = user_names[kept_users]
    item_labels = item_names[uniq[by_first]]
    seqs = Sequences(new_items, offsets, len(uniq), user_labels, item_labels)
    return apply_vocabulary(seqs, item_vocab, user_vocab, unknown=unknown)
