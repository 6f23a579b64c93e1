"""Shared vocabularies: sequences re-expressed in the item (and user) ids of another library.

An encoder trained elsewhere (RecBole, a production pipeline) numbers items in its own way;
its item table row ``i`` is the item its vocabulary calls ``i``. Readers number items by first
appearance, so a file read here lines up with such an encoder only through the original ids
(tokens) that :class:`~raserec_adapter.Sequences` keeps as ``item_labels``.
:func:`apply_vocabulary` renumbers sequences into a given vocabulary:

* a mapping ``token -> id`` with ids ``>= 1`` (entries with id 0, such as RecBole's
  ``"[PAD]"``, are the padding and ignored), e.g. RecBole's ``dataset.field2token_id[field]``;
* or the tokens in id order, position 0 being the padding, e.g. RecBole's
  ``dataset.field2id_token[field]``.

``num_items`` becomes the vocabulary's largest id, so ids fit the encoder's table. A token of
the data that the vocabulary lacks is an error naming it, or, with ``unknown="drop"``, its
interactions are dropped (and counted in a log line). A user vocabulary orders the users as
its ids do (row ``u`` is user id ``u``; ids absent from the data get empty sequences).

Examples:
    >>> from raserec_adapter import Sequences
    >>> seqs = Sequences.from_lists([[1, 2], [2, 3]], item_labels=["b07", "a11", "c42"])
    >>> theirs = ["[PAD]", "c42", "b07", "a11", "z99"]  # their id order
    >>> shared = apply_vocabulary(seqs, items=theirs)
    >>> shared.num_items, shared[0].tolist(), shared[1].tolist()
    (4, [2, 3], [3, 1])
    >>> shared.labels_of([1]).tolist()
    ['c42']
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from raserec_adapter.data.sequences import DataFormatError, Sequences

__all__ = ["Vocabulary", "apply_vocabulary", "vocabulary_ids"]

logger = logging.getLogger("raserec_adapter")

Vocabulary = Mapping[str, int] | Sequence[str] | np.ndarray
"""``token -> id`` (ids >= 1; id 0 is padding), or the tokens in id order (position 0: padding)."""

UNKNOWN = ("error", "drop")


def vocabulary_ids(vocabulary: Vocabulary, what: str = "item") -> tuple[dict[str, int], int]:
    """``(token -> id, largest id)`` of a vocabulary in either form, checked.

    Raises:
        DataFormatError: Ids that are not integers >= 0, two tokens with one id, one token
            twice, or a vocabulary without any id >= 1.

    Examples:
        >>> vocabulary_ids({"[PAD]": 0, "x": 2, "y": 1})
        ({'x': 2, 'y': 1}, 2)
        >>> vocabulary_ids(["[PAD]", "x", "y"])
        ({'x': 1, 'y': 2}, 2)
    """
    if isinstance(vocabulary, Mapping):
        out: dict[str, int] = {}
        for token, i in vocabulary.items():
            if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)) or i < 0:
                raise DataFormatError(
                    f"the {what} vocabulary maps {token!r} to {i!r}; ids must be integers >= 1 "
                    "(0 is the padding)"
                )
            if int(i) > 0:
                out[str(token)] = int(i)
        if len(set(out.values())) != len(out):
            seen: dict[int, str] = {}
            for token, i in out.items():
                if i in seen:
                    raise DataFormatError(
                        f"the {what} vocabulary gives id {i} to both {seen[i]!r} and {token!r}; "
                        "one token per id"
                    )
                seen[i] = token
    elif isinstance(vocabulary, (str, bytes)):
        raise DataFormatError(
            f"the {what} vocabulary must be a token -> id mapping or the tokens in id order, "
            f"got a {type(vocabulary).__name__}"
        )
    else:
        tokens = [str(t) for t in vocabulary]
        out = {t: i for i, t in enumerate(tokens) if i > 0}
        if tokens and len(out) != len(tokens) - 1:
            dup = next(t for i, t in enumerate(tokens) if i > 0 and tokens.index(t, 1) != i)
            raise DataFormatError(f"the {what} vocabulary lists {dup!r} twice; one id per token")
    if not out:
        raise DataFormatError(
            f"the {what} vocabulary has no token with an id >= 1 (a token list starts with the "
            "padding at position 0, as RecBole's field2id_token does)"
        )
    return out, max(out.values())


def _check_unknown(unknown: str) -> None:
    if unknown not in UNKNOWN:
        raise ValueError(f"unknown must be 'error' or 'drop', got {unknown!r}")


def _missing(tokens: np.ndarray, known: np.ndarray, what: str, unknown: str) -> None:
    missing = np.unique(tokens[~known])
    if missing.size and unknown == "error":
        raise DataFormatError(
            f"{missing.size} {what} tokens of the data are not in the given {what} vocabulary, "
            f"e.g. {missing[:5].tolist()}: the data and the encoder number different {what}s "
            f"(another dataset or another version of it); pass unknown='drop' to drop their "
            f"interactions"
        )


def apply_vocabulary(
    sequences: Sequences,
    items: Vocabulary | None = None,
    users: Vocabulary | None = None,
    *,
    unknown: str = "error",
) -> Sequences:
    """``sequences`` renumbered into the given item and/or user vocabulary.

    Args:
        sequences: Sequences with ``item_labels`` (and ``user_labels`` for ``users``), as the
            readers give.
        items: The item vocabulary (see the module docstring), e.g. an encoder's.
        users: The user vocabulary; rows then follow its ids, ``0..max id`` (RecBole keeps id 0
            for padding: its row stays empty).
        unknown: ``"error"`` (default) refuses tokens the vocabulary lacks; ``"drop"`` drops
            their interactions (users: their whole sequence).

    Raises:
        DataFormatError: Unknown tokens (with ``unknown="error"``), or a malformed vocabulary.
        ValueError: ``sequences`` carry no labels to match, or ``unknown`` is not one of
            ``"error"`` and ``"drop"``.
    """
    _check_unknown(unknown)
    if items is None and users is None:
        return sequences
    items_arr, offsets, num_old = sequences.items, sequences.offsets, sequences.num_items
    num_items, item_labels = sequences.num_items, sequences.item_labels
    user_labels = sequences.user_labels
    if items is not None:
        table, num_items = vocabulary_ids(items, "item")
        labels = sequences.labels_of(np.arange(1, num_old + 1))  # ValueError without labels
        new_id = np.array([0, *(table.get(t, 0) for t in labels)], dtype=np.int64)  # per item
        used = np.zeros(num_old + 1, dtype=bool)
        used[items_arr] = True
        _missing(labels, (new_id[1:] > 0) | ~used[1:], "item", unknown)  # items the data uses
        ids = new_id[items_arr]
        keep = ids > 0
        if not keep.all():
            logger.info("dropped %d interactions of items outside the vocabulary", (~keep).sum())
            offsets = np.concatenate([[0], np.cumsum(keep)]).astype(np.int64)[offsets]
        items_arr = ids[keep]
        by_id = np.array([f"<id {i} unused>" for i in range(num_items + 1)], dtype=object)
        for token, i in table.items():
            by_id[i] = token
        item_labels = by_id[1:].astype(str)
    if users is not None:
        if user_labels is None:
            raise ValueError(
                "these sequences carry no user_labels to match a user vocabulary: read them "
                "from a file, or pass user_labels"
            )
        table, top = vocabulary_ids(users, "user")
        tokens = np.asarray(user_labels, dtype=str)
        rows = np.array([table.get(t, -1) for t in tokens], dtype=np.int64)
        _missing(tokens, rows >= 0, "user", unknown)
        lengths = np.zeros(top + 1, dtype=np.int64)
        lengths[rows[rows >= 0]] = np.diff(offsets)[rows >= 0]
        new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        new_items = np.empty(int(new_offsets[-1]), dtype=np.int64)
        for old, row in enumerate(rows):
            if row >= 0:
                new_items[new_offsets[row] : new_offsets[row + 1]] = items_arr[
                    offsets[old] : offsets[old + 1]
                ]
        by_row = np.array([f"<user {i} unused>" for i in range(top + 1)], dtype=object)
        for token, i in table.items():
            by_row[i] = token
        items_arr, offsets, user_labels = new_items, new_offsets, by_row.astype(str)
    return Sequences(items_arr, offsets, num_items, user_labels, item_labels)
