"""A user's own DataLoaders as batches and as the leave-one-out split they describe.

:func:`map_batches` reads any iterable of the user's batches (a ``torch.utils.data.DataLoader``
yielding dicts or tuples) through a small mapping, field names or one function, into
:class:`~raserec_adapter.data.Batch` objects that ``build_bank`` and ``evaluate`` take.
:func:`split_from_batches` turns training and validation (and test) rows into the
:class:`~raserec_adapter.LeaveOneOutSplit` they describe, which ``fit_raft`` needs: each row
``(item_seq, lengths, targets, users, prefix_lengths)`` places its input at positions
``prefix_length - length .. prefix_length - 1`` of its user's sequence and its target at
``prefix_length``, and the rows together must cover every position once, consistently.

Examples:
    >>> import torch
    >>> rows = [{"history": torch.tensor([[5, 0], [5, 6]]), "n": torch.tensor([1, 2]),
    ...          "next": torch.tensor([6, 7]), "uid": torch.tensor([0, 0])}]
    >>> names = {"item_seq": "history", "lengths": "n", "targets": "next", "users": "uid"}
    >>> [b.targets.tolist() for b in map_batches(rows, names)]
    [[6, 7]]
    >>> valid = [{"history": torch.tensor([[5, 6, 7]]), "n": torch.tensor([3]),
    ...           "next": torch.tensor([8]), "uid": torch.tensor([0])}]
    >>> split = split_from_batches(map_batches(rows, names), map_batches(valid, names))
    >>> split.sequences[0].tolist(), split.valid.lengths.tolist()
    ([5, 6, 7, 8], [3])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from raserec_adapter.data.batching import Batch
from raserec_adapter.data.loaders import as_batch
from raserec_adapter.data.sequences import LeaveOneOutSplit, PrefixSet, Sequences

__all__ = ["map_batches", "split_from_batches"]


class map_batches(Iterable[Batch]):
    """The user's ``loader`` read batch by batch as :class:`~raserec_adapter.data.Batch`.

    Args:
        loader: Any iterable of batches (re-iterable if it is read more than once, as a
            ``DataLoader`` is).
        fields: Where a mapping batch keeps each :class:`Batch` field, e.g.
            ``{"item_seq": "history", "users": "uid"}``; RecBole's and this library's names
            are found without it (:data:`~raserec_adapter.data.loaders.FIELD_NAMES`).
        convert: Or one function from the user's batch to a :class:`Batch`, a mapping or a
            tuple ``(item_seq, lengths, targets, users[, prefix_lengths])``.
    """

    def __init__(
        self,
        loader: Iterable[Any],
        fields: Mapping[str, str] | None = None,
        convert: Callable[[Any], Any] | None = None,
    ) -> None:
        if fields is not None and convert is not None:
            raise ValueError("give fields or convert, not both")
        if isinstance(loader, (str, bytes, Mapping)) or not isinstance(loader, Iterable):
            raise TypeError(
                f"map_batches reads an iterable of batches (e.g. a DataLoader), got "
                f"{type(loader).__name__}"
            )
        self.loader, self.fields, self.convert = loader, fields, convert

    def __iter__(self) -> Iterator[Batch]:
        for raw in self.loader:
            yield as_batch(raw if self.convert is None else self.convert(raw), self.fields)


def _rows(batches: Iterable[Any], what: str) -> tuple[np.ndarray, ...]:
    """Concatenated ``(users, prefix lengths, targets, lengths, item_seq)`` of ``batches``."""
    if isinstance(batches, (str, bytes, Mapping)) or not isinstance(batches, Iterable):
        raise TypeError(f"{what} must be an iterable of batches, got {type(batches).__name__}")
    parts: list[tuple[np.ndarray, ...]] = []
    width = 1
    for raw in batches:
        b = as_batch(raw)
        assert b.users is not None and b.prefix_lengths is not None
        cols = (b.users, b.prefix_lengths, b.targets, b.lengths)
        parts.append((*(c.cpu().numpy() for c in cols), b.item_seq.cpu().numpy()))
        width = max(width, b.item_seq.shape[1])
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty, np.zeros((0, 1), dtype=np.int64)
    seqs = [np.pad(p[4], ((0, 0), (0, width - p[4].shape[1]))) for p in parts]
    return (*(np.concatenate([p[i] for p in parts]) for i in range(4)), np.concatenate(seqs))


def _check_rows(users, prefix, targets, lengths, seq, what: str) -> None:
    width = seq.shape[1]
    bad = np.flatnonzero((lengths < 1) | (lengths > width) | (prefix < lengths))
    if len(bad):
        r = int(bad[0])
        raise ValueError(
            f"{what}: row {r} (user {int(users[r])}) has length {int(lengths[r])} and prefix "
            f"length {int(prefix[r])}; lengths must lie in 1..{width} (the item_seq width) and "
            "no prefix_length may be below its length"
        )
    if (targets < 1).any():
        r = int(np.flatnonzero(targets < 1)[0])
        raise ValueError(
            f"{what}: row {r} (user {int(users[r])}) has target {int(targets[r])}; every row "
            "needs its next item (ids from 1, 0 is padding)"
        )
    valid_mask = np.arange(width) < lengths[:, None]
    if (seq[valid_mask] < 1).any() or (seq[~valid_mask] != 0).any():
        raise ValueError(
            f"{what}: item_seq must hold items (ids from 1) in its first `lengths` columns, "
            "left-aligned, and 0 after them"
        )


def split_from_batches(
    train: Iterable[Any],
    valid: Iterable[Any],
    test: Iterable[Any] | None = None,
    *,
    max_len: int = 50,
    num_items: int | None = None,
) -> LeaveOneOutSplit:
    """The leave-one-out split that the user's training, validation (and test) rows describe.

    Every row is a prefix of its user's sequence: its items end at position
    ``prefix_length - 1`` and its target sits at ``prefix_length``. Where batches give no
    ``prefix_lengths``, each row's input is taken as its whole prefix. ``valid`` (and ``test``)
    hold at most one row per user; users become rows ``0..U-1`` in the order of their ids
    (:attr:`Sequences.user_labels` keeps the ids). ``max_len``: the encoder's input length;
    ``num_items``: the catalogue's size (e.g. the encoder's table), at least the largest id.

    Raises:
        ValueError: Rows that disagree on an item of a user's sequence, positions no row
            covers (often: inputs cut to the last ``T`` items without ``prefix_lengths``), more
            than one validation or test row per user, or malformed rows.
    """
    sets = [("train", _rows(train, "train"))]
    sets.append(("valid", _rows(valid, "valid")))
    if test is not None:
        sets.append(("test", _rows(test, "test")))
    for what, cols in sets:
        _check_rows(*cols, what)
    if not len(sets[1][1][0]):
        raise ValueError("valid gave no rows: give one validation row per user")
    all_users = np.concatenate([c[0] for _, c in sets])
    ids, user_rows = np.unique(all_users, return_inverse=True)
    counts = np.cumsum([0, *(len(c[0]) for _, c in sets)])
    # (user row, position, item) triples: each row's input items, then its target
    u_parts, p_parts, i_parts = [], [], []
    for s, (_, (_users, prefix, targets, lengths, seq)) in enumerate(sets):
        rows = user_rows[counts[s] : counts[s + 1]]
        col = np.arange(seq.shape[1])
        mask = col < lengths[:, None]
        pos = (prefix - lengths)[:, None] + col
        u_parts += [np.broadcast_to(rows[:, None], seq.shape)[mask], rows]
        p_parts += [pos[mask], prefix]
        i_parts += [seq[mask], targets]
    u, p, it = (np.concatenate(x).astype(np.int64) for x in (u_parts, p_parts, i_parts))
    order = np.lexsort((p, u))
    u, p, it = u[order], p[order], it[order]
    same = (u[1:] == u[:-1]) & (p[1:] == p[:-1])
    clash = np.flatnonzero(same & (it[1:] != it[:-1]))
    if len(clash):
        c = int(clash[0])
        raise ValueError(
            f"the rows of user {ids[u[c]]} disagree on the item at position {int(p[c])} "
            f"({int(it[c])} vs {int(it[c + 1])}): rows must be prefixes of one sequence per "
            "user; if inputs are cut to their last items, give prefix_lengths (each row's full "
            "prefix length) in the batches"
        )
    keep = np.concatenate([[True], ~same])
    u, p, it = u[keep], p[keep], it[keep]
    n_users = len(ids)
    lengths = np.bincount(u, minlength=n_users)
    last = np.zeros(n_users, dtype=np.int64)
    np.maximum.at(last, u, p)
    gap = np.flatnonzero(last + 1 != lengths)
    if len(gap):
        g = int(gap[0])
        have = set(p[u == g].tolist())
        missing = next(i for i in range(int(last[g]) + 1) if i not in have)
        raise ValueError(
            f"no row covers position {missing} of user {ids[g]}'s sequence: give every prefix "
            "(or the full histories) in the training rows; if inputs are cut to their last "
            "items, give prefix_lengths in the batches"
        )
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    n = max(int(it.max()), num_items or 0)
    sequences = Sequences(it, offsets, n, user_labels=ids.astype(str))

    def rows_of(s: int) -> tuple[np.ndarray, np.ndarray]:
        return user_rows[counts[s] : counts[s + 1]], sets[s][1][1].astype(np.int64)

    # the leave-one-out shape: one validation row per user, its whole training part; the
    # test row (if given) that plus the validation item; every training prefix exactly once
    tail = 2 if test is not None else 1
    ends = {"valid": lengths - tail, "test": lengths - 1}
    eval_sets = {}
    for s, what in ((1, "valid"), (2, "test"))[:tail]:
        rows, prefix = rows_of(s)
        per_user = np.bincount(rows, minlength=n_users)
        if (per_user != 1).any():
            g = int(np.flatnonzero(per_user != 1)[0])
            raise ValueError(
                f"{what} must hold exactly one row per user; user {ids[g]} has {per_user[g]}"
            )
        order = np.argsort(rows)
        bad = np.flatnonzero(prefix[order] != ends[what])
        if len(bad):
            g = int(bad[0])
            raise ValueError(
                f"the {what} row of user {ids[g]} has prefix length {int(prefix[order][g])}, "
                f"but the rows describe {int(lengths[g])} items: leave-one-out expects "
                f"{int(ends[what][g])} (every item before the last {tail - (what == 'test')})"
            )
        eval_sets[what] = PrefixSet(rows[order], prefix[order], sets[s][1][2][order])
    m = ends["valid"]  # each user's training part; its prefixes 1..m-1 are the training pairs
    want = leave_one_out_pairs(m)
    rows, prefix = rows_of(0)
    width = int(lengths.max()) + 1
    uniq, times = np.unique(rows * width + prefix, return_counts=True)
    key = want.users * width + want.lengths
    problem = None
    if (times > 1).any():
        problem = int(uniq[times > 1][0]), "appears more than once"
    elif len(extra := np.setdiff1d(uniq, key)):
        problem = int(extra[0]), "reaches into the validation or test items"
    elif len(lost := np.setdiff1d(key, uniq)):
        problem = int(lost[0]), "is missing"
    if problem is not None:
        u, p = divmod(problem[0], width)
        raise ValueError(
            "the training rows must hold every prefix of each user's training part once "
            f"(lengths 1 .. m - 1, m the validation row's prefix length): user {ids[u]}'s "
            f"prefix of length {p} {problem[1]}"
        )
    train_set = PrefixSet(want.users, want.lengths, it[offsets[want.users] + want.lengths])
    empty = PrefixSet(*(np.zeros(0, dtype=np.int64) for _ in range(3)))
    return LeaveOneOutSplit(
        sequences, train_set, eval_sets["valid"], eval_sets.get("test", empty), max_len
    )


def leave_one_out_pairs(m: np.ndarray) -> PrefixSet:
    """Prefixes ``1 .. m[u] - 1`` of every user ``u``, user by user (targets left 0)."""
    n_pairs = np.maximum(m - 1, 0)
    users = np.repeat(np.arange(len(m), dtype=np.int64), n_pairs)
    first = np.repeat(np.cumsum(n_pairs) - n_pairs, n_pairs)
    lengths = np.arange(len(users), dtype=np.int64) - first + 1
    return PrefixSet(users, lengths, np.zeros(len(users), dtype=np.int64))
