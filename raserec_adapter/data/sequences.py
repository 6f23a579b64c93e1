"""Compact user sequences and the leave-one-out split.

All sequences of a dataset live in one flat ``items`` array plus ``offsets`` (CSR layout), so
tens of millions of interactions cost a few hundred MB and load in seconds. Item ids are
1-based; 0 is padding.

Examples:
    >>> seqs = Sequences.from_lists([[1, 2, 3, 4], [2, 3, 1, 4, 5]])
    >>> split = leave_one_out(seqs)
    >>> split.train.targets.tolist()  # every prefix of the training part -> next item
    [2, 3, 1]
    >>> split.test.targets.tolist()
    [4, 5]
"""

from __future__ import annotations

import operator
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raserec_adapter._checks import require_positive_int

__all__ = ["DataFormatError", "LeaveOneOutSplit", "PrefixSet", "Sequences", "leave_one_out"]


class DataFormatError(ValueError):
    """A data file or array does not have the expected shape or content."""


@dataclass(frozen=True)
class Sequences:
    """Chronological item sequences of all users in CSR layout.

    Attributes:
        items: Flat ``int64`` array of 1-based item ids, user after user.
        offsets: ``int64`` array of length ``num_users + 1``; user ``u`` owns
            ``items[offsets[u]:offsets[u + 1]]``.
        num_items: Largest item id ``N``; valid items are ``1..N``.
        user_labels: Original user ids (``user_labels[u]`` for internal user ``u``), or ``None``.
        item_labels: Original item ids (``item_labels[i - 1]`` for item ``i``), or ``None``.
    """

    items: np.ndarray
    offsets: np.ndarray
    num_items: int
    user_labels: np.ndarray | None = None
    item_labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        items, offsets = self.items, self.offsets
        for name, array in (("items", items), ("offsets", offsets)):
            if array.dtype.kind not in "iu":
                raise DataFormatError(
                    f"{name} must be an integer array, got dtype {array.dtype}; ids and offsets "
                    "are never rounded: convert them to integers first"
                )
        if items.ndim != 1 or offsets.ndim != 1 or len(offsets) < 1:
            raise DataFormatError("items and offsets must be 1-D arrays (offsets non-empty)")
        if offsets[0] != 0 or offsets[-1] != len(items) or np.any(np.diff(offsets) < 0):
            raise DataFormatError(
                "offsets must start at 0, end at len(items) and never decrease; "
                "build Sequences with Sequences.from_lists(...) if unsure"
            )
        if len(items) and (items.min() < 1 or items.max() > self.num_items):
            raise DataFormatError(
                f"item ids must lie in 1..{self.num_items} (0 is reserved for padding); "
                f"found ids from {items.min()} to {items.max()}. Remap 0-based ids by adding 1."
            )
        if self.user_labels is not None and len(self.user_labels) != self.num_users:
            raise DataFormatError("user_labels must have one entry per user")
        if self.item_labels is not None and len(self.item_labels) != self.num_items:
            raise DataFormatError("item_labels must have one entry per item")
        if self.item_labels is not None:
            labels, counts = np.unique(np.asarray(self.item_labels, dtype=str), return_counts=True)
            if (counts > 1).any():
                raise DataFormatError(
                    f"item_labels must be distinct (one original id per item), but "
                    f"{labels[counts > 1][:5].tolist()} appear more than once; merge those items "
                    "into one id first"
                )

    @classmethod
    def from_lists(
        cls,
        sequences: Sequence[Sequence[int]],
        num_items: int | None = None,
        user_labels: Sequence[str] | None = None,
        item_labels: Sequence[str] | None = None,
    ) -> Sequences:
        """Builds from Python lists of 1-based item ids (convenient for small data and tests).

        Item ids must be integers (Python or NumPy); floats (even ``2.0``), booleans and strings
        are refused rather than converted.

        Raises:
            DataFormatError: If an item id is not an integer (the message names the user and
                the position), or is not in ``1..num_items``.
        """
        example = "pass one list of item ids per user, e.g. [[1, 2, 3], [2, 4]]"
        if isinstance(sequences, (str, bytes)):
            raise DataFormatError(f"{example}, got {type(sequences).__name__} {sequences!r}")
        if not hasattr(sequences, "__len__"):
            sequences = list(sequences)  # a generator
        flat = next((i for i, s in enumerate(sequences) if not hasattr(s, "__len__")), None)
        if flat is not None:
            raise DataFormatError(
                f"{example}, not one flat list of ids (element {flat} is {sequences[flat]!r})"
            )
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        items = np.fromiter(_integer_ids(sequences), dtype=np.int64, count=int(offsets[-1]))
        n = int(num_items if num_items is not None else (items.max() if len(items) else 0))
        return cls(
            items,
            offsets,
            n,
            None if user_labels is None else np.asarray(user_labels, dtype=str),
            None if item_labels is None else np.asarray(item_labels, dtype=str),
        )

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def num_interactions(self) -> int:
        return len(self.items)

    def __getitem__(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def with_vocabulary(
        self, items: Any = None, users: Any = None, *, unknown: str = "error"
    ) -> Sequences:
        """These sequences renumbered into another item (and user) vocabulary, e.g. the
        encoder's of another library; see
        :func:`~raserec_adapter.data.vocabulary.apply_vocabulary`.

        Examples:
            >>> seqs = Sequences.from_lists([[1, 2]], item_labels=["b07", "a11"])
            >>> seqs.with_vocabulary({"a11": 1, "b07": 2, "c42": 3})[0].tolist()
            [2, 1]
        """
        from raserec_adapter.data.vocabulary import apply_vocabulary

        return apply_vocabulary(self, items, users, unknown=unknown)

    def labels_of(self, ids: Any) -> np.ndarray:
        """The original item ids (as in the data file) of 1-based item ids, same shape.

        Use it on ``recommend``'s output: readers renumber items, so id ``i`` is the file's
        ``item_labels[i - 1]``.

        Raises:
            ValueError: If the sequences carry no ``item_labels`` or an id is outside ``1..N``.

        Examples:
            >>> seqs = Sequences.from_lists([[1, 2], [2, 3]], item_labels=["b07", "a11", "c42"])
            >>> seqs.labels_of([[3, 1]]).tolist(), seqs.ids_of(["a11", "c42"]).tolist()
            ([['c42', 'b07']], [2, 3])
        """
        labels = self._item_labels()
        arr = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids)
        if arr.size and (arr.dtype.kind not in "iu" or arr.min() < 1 or arr.max() > self.num_items):
            raise ValueError(
                f"item ids must be integers in 1..{self.num_items}, got {arr.dtype} values "
                + (f"from {arr.min()} to {arr.max()}" if arr.dtype.kind in "iuf" else "")
            )
        return labels[arr.astype(np.int64) - 1]

    def ids_of(self, labels: Sequence[str] | np.ndarray) -> np.ndarray:
        """The 1-based item ids of original item ids (the file's), e.g. to build a query.

        Raises:
            ValueError: If the sequences carry no ``item_labels`` or a label is unknown (the
                message names the first few).
        """
        table = self._item_labels()
        wanted = np.asarray(labels).astype(str)
        order = np.argsort(table, kind="stable")
        pos = np.searchsorted(table, wanted, sorter=order)
        pos = np.minimum(pos, len(table) - 1)
        found = table[order[pos]] == wanted
        if not found.all():
            missing = wanted[~found]
            raise ValueError(
                f"{len(missing)} item labels are not in the data, e.g. {missing[:5].tolist()}; "
                "items the data never saw have no id (drop them from the query)"
            )
        return order[pos].astype(np.int64) + 1

    def _item_labels(self) -> np.ndarray:
        if self.item_labels is None:
            raise ValueError(
                "these sequences carry no item_labels (they were built from ids, not read from "
                "a file): their item ids are the only ids there are"
            )
        return np.asarray(self.item_labels, dtype=str)

    def save(self, path: str | Path) -> None:
        """Writes an ``.npz`` file (no pickles) holding the sequences and the id maps."""
        arrays: dict[str, np.ndarray] = {
            "items": self.items,
            "offsets": self.offsets,
            "num_items": np.asarray(self.num_items),
        }
        if self.user_labels is not None:
            arrays["user_labels"] = self.user_labels.astype(str)
        if self.item_labels is not None:
            arrays["item_labels"] = self.item_labels.astype(str)
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> Sequences:
        """Reads a file written by :meth:`save` (never unpickles anything).

        Raises:
            DataFormatError: If the file is not an ``.npz`` archive written by :meth:`save`:
                another kind of file, arrays missing, holding Python objects, or of the wrong
                shape or type (e.g. float item ids, which are refused rather than truncated).
        """
        expected = "expected an .npz file written by Sequences.save"
        try:
            f = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, zipfile.BadZipFile):
            raise DataFormatError(
                f"{path} is not a Sequences file: it is not an .npz archive of arrays; {expected}"
            ) from None
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise DataFormatError(
                f"{path} is not a Sequences file: it holds a single array (an .npy file); "
                f"{expected}"
            )
        with f:
            missing = {"items", "offsets", "num_items"} - set(f.files)
            if missing:
                raise DataFormatError(
                    f"{path} is not a Sequences file: missing {sorted(missing)}; {expected}"
                )

            def array(name: str, ndim: int | None = None) -> np.ndarray:
                try:
                    a = f[name]
                except (ValueError, zipfile.BadZipFile):
                    raise DataFormatError(
                        f"{path}: array {name!r} holds Python objects (dtype object) or is "
                        f"corrupt, and is not loaded; {expected}"
                    ) from None
                if ndim is not None and (a.ndim != ndim or a.dtype.kind not in "iu"):
                    raise DataFormatError(
                        f"{path}: array {name!r} must be a {ndim}-D integer array, found a "
                        f"{a.ndim}-D {a.dtype} array (ids are never rounded); {expected}"
                    )
                return a

            return cls(
                array("items", 1).astype(np.int64),
                array("offsets", 1).astype(np.int64),
                int(array("num_items", 0)),
                array("user_labels") if "user_labels" in f.files else None,
                array("item_labels") if "item_labels" in f.files else None,
            )

    def describe(self) -> dict[str, float]:
        """Counts as in the paper's dataset table."""
        n = self.num_users
        return {
            "users": n,
            "items": self.num_items,
            "interactions": self.num_interactions,
            "avg_length": self.num_interactions / max(n, 1),
            "sparsity": 1 - self.num_interactions / max(n * self.num_items, 1),
        }


def _integer_ids(sequences: Sequence[Sequence[int]]) -> Iterator[int]:
    """The item ids of all sequences in order; raises on anything that is not an integer."""
    for user, seq in enumerate(sequences):
        if isinstance(seq, np.ndarray) and seq.dtype.kind in "iu":
            yield from seq.tolist()
            continue
        for position, item in enumerate(seq):
            if not isinstance(item, bool | np.bool_):
                try:
                    yield operator.index(item)
                    continue
                except TypeError:
                    pass
            raise DataFormatError(
                f"item ids must be integers, but user {user}, position {position} holds "
                f"{item!r} ({type(item).__name__}); ids are never rounded: pass integer ids "
                "(e.g. int(x) for whole-number floats) or map other ids to 1..N first"
            )


@dataclass(frozen=True)
class PrefixSet:
    """Queries of the form "user ``u``'s first ``length`` items -> ``target``".

    A prefix refers into a :class:`Sequences` object, so no item is copied. The model input is
    the last ``max_len`` items of the prefix. ``target`` is 0 where unknown (inference).
    """

    users: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray

    def __post_init__(self) -> None:
        arrays = (("users", self.users), ("lengths", self.lengths), ("targets", self.targets))
        for name, array in arrays:
            if not isinstance(array, np.ndarray) or array.ndim != 1:
                raise DataFormatError(
                    f"PrefixSet.{name} must be a 1-D numpy array, got "
                    f"{type(array).__name__} of shape {np.shape(array)}"
                )
            if array.dtype.kind not in "iu":
                raise DataFormatError(
                    f"PrefixSet.{name} must hold integers, got dtype {array.dtype}; "
                    "convert with np.asarray(x, dtype=np.int64)"
                )
        if not len(self.users) == len(self.lengths) == len(self.targets):
            raise DataFormatError(
                "PrefixSet.users, lengths and targets must have one entry per prefix, got "
                f"{len(self.users)}, {len(self.lengths)} and {len(self.targets)}"
            )

    def __len__(self) -> int:
        return len(self.users)

    def check_against(self, sequences: Sequences) -> None:
        """Raises :class:`DataFormatError` unless every prefix lies inside its user's sequence.

        A prefix of user ``u`` may be ``1 .. len(sequence u)`` items long; anything else would
        read another user's items (or past the end of the data).

        Examples:
            >>> seqs = Sequences.from_lists([[1, 2, 3], [2, 3]])
            >>> PrefixSet(np.array([0]), np.array([3]), np.array([0])).check_against(seqs)
            >>> too_long = PrefixSet(np.array([1]), np.array([3]), np.array([0]))
            >>> too_long.check_against(seqs)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            raserec_adapter.data.sequences.DataFormatError: prefix 0 (user 1) is 3 items long ...
        """
        if not len(self):
            return
        users, lengths = self.users, self.lengths
        bad_user = np.flatnonzero((users < 0) | (users >= sequences.num_users))
        if len(bad_user):
            i = int(bad_user[0])
            raise DataFormatError(
                f"prefix {i} refers to user {int(users[i])}, but the sequences hold users "
                f"0 .. {sequences.num_users - 1} ({len(bad_user)} such prefixes); build the "
                "PrefixSet from the same Sequences it is used with"
            )
        if lengths.min() < 1:
            raise DataFormatError("every prefix needs at least one item (empty sequence found)")
        have = sequences.lengths[users]
        too_long = np.flatnonzero(lengths > have)
        if len(too_long):
            i = int(too_long[0])
            raise DataFormatError(
                f"prefix {i} (user {int(users[i])}) is {int(lengths[i])} items long but user "
                f"{int(users[i])} has only {int(have[i])} items; a prefix must lie inside its "
                "user's sequence (length 1 .. that sequence's length)"
            )

    def subset(self, index: np.ndarray) -> PrefixSet:
        return PrefixSet(self.users[index], self.lengths[index], self.targets[index])

    @staticmethod
    def concat(*sets: PrefixSet) -> PrefixSet:
        return PrefixSet(
            np.concatenate([s.users for s in sets]),
            np.concatenate([s.lengths for s in sets]),
            np.concatenate([s.targets for s in sets]),
        )


@dataclass(frozen=True)
class LeaveOneOutSplit:
    """The DuoRec/RaSeRec leave-one-out protocol.

    ``train`` holds every prefix of each user's training part with its next item, ``valid`` the
    whole training part -> second-to-last item, ``test`` training part + validation item -> last
    item. ``valid`` and ``test`` have one row per user, in user order.
    """

    sequences: Sequences
    train: PrefixSet
    valid: PrefixSet
    test: PrefixSet
    max_len: int

    def bank_pairs(self, phase: str) -> PrefixSet:
        """Pairs that form the memory bank: training pairs, plus validation pairs for ``test``."""
        if phase == "test":
            return PrefixSet.concat(self.train, self.valid)
        if phase in ("train", "valid"):
            return self.train
        raise ValueError(f"phase must be 'train', 'valid' or 'test', got {phase!r}")

    def eval_set(self, split: str) -> PrefixSet:
        if split not in ("valid", "test"):
            raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
        if split == "test" and not len(self.test):
            raise ValueError(
                "the split has no test rows (built from batches without test=...): evaluate the "
                "test batches themselves, augmenter.evaluate(test_loader)"
            )
        return self.valid if split == "valid" else self.test


def leave_one_out(sequences: Sequences, max_len: int = 50, min_length: int = 3) -> LeaveOneOutSplit:
    """Splits each user's sequence: last item test, second-to-last validation, rest training.

    Args:
        sequences: Chronological sequences.
        max_len: Model inputs are truncated to their last ``max_len`` items.
        min_length: Users with fewer items are rejected (3 = one training item, one validation
            item, one test item).

    Raises:
        DataFormatError: If a user has fewer than ``min_length`` items.
    """
    if not isinstance(sequences, Sequences):
        raise TypeError(
            f"leave_one_out takes Sequences, got {type(sequences).__name__}; build them with "
            "Sequences.from_lists(lists_of_item_ids) or a reader (read_interactions, ...)"
        )
    max_len = require_positive_int(max_len, "max_len")
    min_length = require_positive_int(min_length, "min_length (a leave-one-out split)", low=3)
    if sequences.num_users == 0:
        raise DataFormatError("the sequences hold no users: there is nothing to split")
    lengths = sequences.lengths
    short = np.flatnonzero(lengths < min_length)
    if len(short):
        raise DataFormatError(
            f"{len(short)} users have fewer than {min_length} items (e.g. user index {short[0]} "
            f"with {lengths[short[0]]}); filter them first, e.g. with k-core filtering"
        )
    users = np.arange(sequences.num_users, dtype=np.int64)
    # training part of user u has m = L - 2 items; prefixes n = 1..m-1 predict item n (0-based).
    n_pairs = lengths - 3
    pair_users = np.repeat(users, n_pairs)
    first = np.repeat(np.cumsum(n_pairs) - n_pairs, n_pairs)
    pair_lengths = np.arange(len(pair_users), dtype=np.int64) - first + 1
    starts = sequences.offsets[:-1]
    train = PrefixSet(
        pair_users, pair_lengths, sequences.items[sequences.offsets[pair_users] + pair_lengths]
    )
    valid = PrefixSet(users, lengths - 2, sequences.items[starts + lengths - 2])
    test = PrefixSet(users.copy(), lengths - 1, sequences.items[starts + lengths - 1])
    return LeaveOneOutSplit(sequences, train, valid, test, max_len)
