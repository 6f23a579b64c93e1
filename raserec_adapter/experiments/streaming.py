"""A streaming protocol: train up to a cut, then feed the interactions after it step by step.

A :class:`Stream` holds every user's whole history (``sequences``), how many of each user's
items lie before the cut (``cut``: the training part) and the steps of the held-out stream.
Step ``j`` knows ``steps[j].known[u]`` items of user ``u`` when it starts and
``steps[j].end[u]`` when it ends; its new interactions are positions ``known .. end - 1``, and
each one with at least one item before it is a next-item target whose query is the user's
history before it. The steps partition the held-out interactions.

Two ways to cut:

- :func:`global_time_stream`: one date for everyone; the stream is every interaction after it in
  time order, in steps of ``step_seconds`` (for data with real timestamps, e.g. MovieLens);
- :func:`per_user_stream`: each user's last ``steps`` interactions beyond the training part form
  the stream; step ``j`` is every user's ``j``-th new item (for data without timestamps).

:func:`snapshot` turns what is known at a time into a leave-one-out split to train on (users
with at least three known items) and a bank id for every user (the split's rows first, then
the others); :func:`fill_bank` builds the bank of every known pair and :func:`add_stream` adds
the pairs that became known since, through
:meth:`~raserec_adapter.RetrievalAugmenter.add_memories` (the no-leakage rule reads each
memory's user and prefix length). :func:`rank_step` ranks a step's targets with the frozen
encoder or with the RAM; :func:`retrieved` returns the user and prefix length of every memory a
step's queries retrieve, for checks.

Examples:
    >>> import numpy as np
    >>> from raserec_adapter import Sequences
    >>> seqs = Sequences.from_lists([[1, 2, 3, 4], [2, 3, 4]])
    >>> times = np.array([0, 1, 5, 6, 0, 7, 8])
    >>> stream = global_time_stream(seqs, times, cut=5, step_seconds=2)
    >>> stream.cut.tolist(), [s.known.tolist() for s in stream.steps]
    ([2, 1], [[2, 1], [4, 1]])
    >>> stream.steps[0].targets().lengths.tolist()  # user 0's items 2 and 3 are step 0's
    [2, 3]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from raserec_adapter.data import LeaveOneOutSplit, PrefixSet, Sequences, leave_one_out
from raserec_adapter.evaluation.ranking import rank_targets

__all__ = [
    "Snapshot",
    "Stream",
    "StreamStep",
    "add_stream",
    "bank_metadata",
    "fill_bank",
    "global_time_stream",
    "per_user_stream",
    "rank_step",
    "retrieval_checks",
    "retrieved",
    "snapshot",
    "timed_sequences",
    "truncated",
]


@dataclass(frozen=True)
class StreamStep:
    """One step of a stream: each user's known items at its start and at its end.

    Attributes:
        sequences: Every user's whole history.
        known: ``(U,)`` items of each user known when the step starts.
        end: ``(U,)`` items known when it ends (``>= known``).
        label: What the step covers, e.g. ``"1998-03-01 .. 1998-03-08"`` or ``"item 1"``.
    """

    sequences: Sequences
    known: np.ndarray
    end: np.ndarray
    label: str = ""

    def interactions(self) -> PrefixSet:
        """Every new interaction of the step: user, position (0-based) and item."""
        counts = self.end - self.known
        users = np.repeat(np.arange(len(counts)), counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        pos = self.known[users] + np.arange(len(users)) - first
        return PrefixSet(users, pos, self.sequences.items[self.sequences.offsets[users] + pos])

    def targets(self) -> PrefixSet:
        """The step's next-item targets: each new interaction with at least one item before it
        (prefix length = its position; the query is the user's history before it)."""
        new = self.interactions()
        return new.subset(np.flatnonzero(new.lengths >= 1))


@dataclass(frozen=True)
class Stream:
    """Whole histories, the training part of each (``cut``) and the stream's steps."""

    sequences: Sequences
    cut: np.ndarray
    steps: tuple[StreamStep, ...]

    def held_out(self) -> int:
        """How many interactions lie after the cut (the steps partition them)."""
        return int((self.sequences.lengths - self.cut).sum())

    def head(self, users: int) -> Stream:
        """The stream of the first ``users`` users alone (a small test of a large dataset)."""
        keep = np.arange(min(users, self.sequences.num_users))
        seqs = truncated(self.sequences, keep, self.sequences.lengths[keep])
        steps = tuple(StreamStep(seqs, s.known[keep], s.end[keep], s.label) for s in self.steps)
        return Stream(seqs, self.cut[keep], steps)


def _check_times(sequences: Sequences, times: np.ndarray) -> np.ndarray:
    times = np.asarray(times)
    if times.shape != sequences.items.shape:
        raise ValueError(
            f"times must hold one timestamp per interaction ({len(sequences.items)}), got "
            f"shape {times.shape}; pass the times in the order of sequences.items"
        )
    inner = np.ones(len(times), dtype=bool)
    inner[sequences.offsets[:-1][sequences.lengths > 0]] = False  # each user's first item
    if len(times) > 1 and (np.diff(times) < 0)[inner[1:]].any():
        raise ValueError(
            "times must not decrease within a user's history: sort each user's interactions "
            "by time (timed_sequences does)"
        )
    return times


def _count_before(sequences: Sequences, times: np.ndarray, bound: float) -> np.ndarray:
    """Per user, how many items have a time ``< bound`` (a prefix: times are sorted)."""
    cs = np.concatenate([[0], np.cumsum(times < bound)])
    return cs[sequences.offsets[1:]] - cs[sequences.offsets[:-1]]


def global_time_stream(
    sequences: Sequences,
    times: np.ndarray,
    cut: float,
    step_seconds: float,
    *,
    label: Any = None,
) -> Stream:
    """A stream cut at one time for all users, in steps of ``step_seconds``.

    Training is every interaction with time ``< cut``; step ``j`` is every interaction with time
    in ``[cut + j * step_seconds, cut + (j + 1) * step_seconds)``, up to the last interaction.
    ``label(t)`` names a step by its start time (default: the number).

    Raises:
        ValueError: If ``times`` does not fit ``sequences``, the step is not positive or no
            interaction lies after the cut.
    """
    times = _check_times(sequences, times)
    if not step_seconds > 0:
        raise ValueError(f"step_seconds must be > 0, got {step_seconds!r}")
    if not len(times) or times.max() < cut:
        raise ValueError(f"no interaction lies at or after the cut {cut}; choose an earlier cut")
    n = max(1, math.ceil((float(times.max()) - cut + 1) / step_seconds))
    bounds = [cut + j * step_seconds for j in range(n)] + [math.inf]
    known = [_count_before(sequences, times, b) for b in bounds]
    name = label or (lambda t: f"{t:g}")
    steps = tuple(
        StreamStep(sequences, known[j], known[j + 1], f"{name(bounds[j])} ..") for j in range(n)
    )
    return Stream(sequences, known[0], steps)


def per_user_stream(sequences: Sequences, steps: int = 5, min_train: int = 3) -> Stream:
    """Each user's last ``steps`` items form the stream, keeping ``min_train`` for training.

    A user with fewer than ``min_train + steps`` items streams only what lies beyond the first
    ``min_train`` (none with ``min_train`` or fewer). Step ``j`` is every user's ``j``-th new
    item (0-based).

    Examples:
        >>> s = per_user_stream(Sequences.from_lists([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4]]), 2)
        >>> s.cut.tolist(), [st.targets().users.tolist() for st in s.steps]
        ([4, 3], [[0, 1], [0]])
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    lengths = sequences.lengths
    cut = lengths - np.clip(lengths - min_train, 0, steps)
    out = tuple(
        StreamStep(
            sequences,
            np.minimum(cut + j, lengths),
            np.minimum(cut + j + 1, lengths),
            f"item {j + 1}",
        )
        for j in range(steps)
    )
    return Stream(sequences, cut, out)


def timed_sequences(
    users: np.ndarray, items: np.ndarray, times: np.ndarray, num_items: int | None = None
) -> tuple[Sequences, np.ndarray]:
    """Sequences and their times from one row per interaction (as ``read_interactions`` orders
    them): users in order of first appearance, each user's rows sorted stably by time, items
    numbered ``1..N`` in order of first appearance in the result.

    Examples:
        >>> users, items = np.array([7, 3, 7]), np.array([9, 8, 8])
        >>> seqs, t = timed_sequences(users, items, np.array([5, 1, 2]))
        >>> seqs.items.tolist(), seqs.offsets.tolist(), t.tolist()
        ([1, 2, 1], [0, 2, 3], [2, 5, 1])
    """
    _, ucode = np.unique(users, return_inverse=True)
    first = np.full(ucode.max() + 1, len(ucode))
    np.minimum.at(first, ucode, np.arange(len(ucode)))
    order_of_user = np.argsort(np.argsort(first, kind="stable"), kind="stable")
    u = order_of_user[ucode]
    rows = np.lexsort((np.asarray(times), u))  # stable: ties keep the file order
    seq_items = np.asarray(items)[rows]
    uniq, inv = np.unique(seq_items, return_inverse=True)
    first_item = np.full(len(uniq), len(inv))
    np.minimum.at(first_item, inv, np.arange(len(inv)))
    rank = np.argsort(np.argsort(first_item, kind="stable"), kind="stable")
    ids = (rank[inv] + 1).astype(np.int64)
    counts = np.bincount(u, minlength=u.max() + 1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n = int(num_items if num_items is not None else len(uniq))
    return Sequences(ids, offsets, n), np.asarray(times)[rows]


def truncated(sequences: Sequences, users: np.ndarray, lengths: np.ndarray) -> Sequences:
    """The first ``lengths[i]`` items of user ``users[i]``, one row each (same item ids).

    Examples:
        >>> cut = truncated(Sequences.from_lists([[1, 2, 3], [4, 5]]), np.array([1, 0]), [1, 2])
        >>> cut.items.tolist(), cut.offsets.tolist()
        ([4, 1, 2], [0, 1, 3])
    """
    starts = sequences.offsets[users]
    parts = [sequences.items[s : s + n] for s, n in zip(starts, lengths, strict=True)]
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Sequences(flat.astype(np.int64), offsets, sequences.num_items)


@dataclass(frozen=True)
class Snapshot:
    """What is known at one time, as a split to train on and bank ids for every user.

    Attributes:
        known: ``(U,)`` items known of each user.
        split: Leave-one-out split of the users with at least ``min_length`` known items.
        bank_ids: ``(U,)`` each user's id in a bank built from ``split``: its split row, or for
            the other users ``split users + their order`` (never a split row).
        min_length: Known items a user needs to be in ``split``.
    """

    known: np.ndarray
    split: LeaveOneOutSplit
    bank_ids: np.ndarray
    min_length: int = 3

    def users_of(self, bank_ids: np.ndarray) -> np.ndarray:
        """The stream's users (rows of the whole histories) of some bank ids."""
        inverse = np.empty(len(self.bank_ids), dtype=np.int64)
        inverse[self.bank_ids] = np.arange(len(self.bank_ids))
        return inverse[np.asarray(bank_ids)]


def snapshot(
    sequences: Sequences, known: np.ndarray, max_len: int = 50, min_length: int = 3
) -> Snapshot:
    """The split of what is known (``known[u]`` items of user ``u``) and every user's bank id.

    Examples:
        >>> seqs = Sequences.from_lists([[1, 2, 3, 4], [2, 3], [3, 4, 1, 2]])
        >>> snap = snapshot(seqs, np.array([3, 2, 4]))  # user 1 knows too few to train on
        >>> snap.split.sequences.lengths.tolist(), snap.bank_ids.tolist()
        ([3, 4], [0, 2, 1])

    Raises:
        ValueError: If no user has ``min_length`` known items.
    """
    known = np.asarray(known, dtype=np.int64)
    rows = np.flatnonzero(known >= min_length)
    if not len(rows):
        raise ValueError(f"no user has {min_length} known items to train on; cut later")
    others = np.flatnonzero(known < min_length)
    bank_ids = np.empty(len(known), dtype=np.int64)
    bank_ids[rows] = np.arange(len(rows))
    bank_ids[others] = len(rows) + np.arange(len(others))
    split = leave_one_out(truncated(sequences, rows, known[rows]), max_len, min_length)
    return Snapshot(known, split, bank_ids, min_length)


def _add(
    aug: Any,
    sequences: Sequences,
    users: np.ndarray,
    upto: np.ndarray,
    start: np.ndarray,
    bank_ids: np.ndarray,
    device: Any,
) -> int:
    keep = upto > np.maximum(start, 1)  # at least one pair (s[:n], s[n]) with n >= start
    if not keep.any():
        return 0
    users, upto, start = users[keep], upto[keep], np.maximum(start[keep], 1)
    part = truncated(sequences, users, upto)
    return int(aug.add_memories(part, bank_ids[users], start_lengths=start, device=device))


def fill_bank(aug: Any, snap: Snapshot, sequences: Sequences, device: Any = "cpu") -> int:
    """A new bank in ``aug`` of every known pair: the split's training and validation pairs
    (``build_bank(split, "test")``), each split user's last known pair and the pairs of users
    with too few items for the split. Returns the bank's size."""
    aug.build_bank(snap.split, "test", device=device, show_progress=False)
    users = np.arange(len(snap.known))
    in_split = snap.known >= snap.min_length
    start = np.where(in_split, snap.known - 1, 1)
    _add(aug, sequences, users, snap.known, start, snap.bank_ids, device)
    return len(aug.bank)


def add_stream(
    aug: Any,
    sequences: Sequences,
    before: np.ndarray,
    after: np.ndarray,
    bank_ids: np.ndarray,
    skip: np.ndarray | None = None,
    device: Any = "cpu",
) -> int:
    """Adds the pairs that became known between ``before`` and ``after`` (items per user) to
    ``aug``'s bank, without retraining; users in ``skip`` (e.g. forgotten ones) are left out.
    Returns how many memories were added."""
    users = np.flatnonzero(after > before)
    if skip is not None and len(skip):
        users = users[~np.isin(users, skip)]
    return _add(aug, sequences, users, after[users], before[users], bank_ids, device)


def _represent(aug: Any, bank_ids: np.ndarray, augmented: bool) -> Any:
    ids = torch.from_numpy(np.asarray(bank_ids, dtype=np.int64))

    def represent(b: Any) -> torch.Tensor:
        h = aug.encoder(b.item_seq, b.lengths)
        if not augmented:
            return h
        return aug.augment(h, ids[b.users.cpu()], b.prefix_lengths.cpu())

    return represent


@torch.no_grad()
def rank_step(
    aug: Any,
    sequences: Sequences,
    targets: PrefixSet,
    bank_ids: np.ndarray,
    *,
    augmented: bool,
    protocol: str = "full",
    device: Any = "cpu",
) -> torch.Tensor:
    """Rank of every target (full ranking) by the frozen encoder or by the RAM over ``aug``'s
    bank; the queries carry their users' bank ids and prefix lengths (the no-leakage rule)."""
    aug.encoder.eval()
    aug.ram.eval()
    represent = _represent(aug, bank_ids, augmented)
    max_len = aug.config.max_len
    return rank_targets(
        represent, aug.memory.table(), sequences, targets, max_len, protocol, device=device
    )


def bank_metadata(bank: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(users, prefix lengths)`` of every memory of a shipped bank, in id order."""
    store = getattr(bank, "_store", None)
    if store is None:
        raise TypeError(f"{type(bank).__name__} does not expose its memories' users and lengths")
    return store.users.cpu().numpy(), store.lengths.cpu().numpy()


@torch.no_grad()
def retrieved(
    aug: Any, sequences: Sequences, targets: PrefixSet, bank_ids: np.ndarray, device: Any = "cpu"
) -> dict[str, np.ndarray]:
    """The memories the RAM's search retrieves for each target's query (as ``augment`` does).

    Returns:
        ``query_users``, ``query_lengths``: ``(Q,)`` the queries' bank ids and prefix lengths;
        ``users``, ``lengths``: ``(Q, K)`` the retrieved memories' bank ids and prefix lengths.
    """
    from raserec_adapter.data.batching import iter_batches

    aug.encoder.eval()
    bank, k = aug.bank, aug.config.ram.k
    mem_users, mem_lengths = bank_metadata(bank)
    ids = np.asarray(bank_ids, dtype=np.int64)
    qu = ids[targets.users]
    ql = targets.lengths.astype(np.int64)
    found = np.empty((len(targets), k), dtype=np.int64)
    for b in iter_batches(sequences, targets, 1024, max_len=aug.config.max_len):
        h = aug.encoder(b.item_seq.to(device), b.lengths.to(device)).float().cpu()
        rows = b.index.numpy()
        res = bank.search(h, k, torch.from_numpy(qu[rows]), torch.from_numpy(ql[rows]))
        found[rows] = res.ids.cpu().numpy()
    return {
        "query_users": qu,
        "query_lengths": ql,
        "users": mem_users[found],
        "lengths": mem_lengths[found],
    }


def retrieval_checks(
    aug: Any,
    stream: Stream,
    targets: PrefixSet,
    snap: Snapshot,
    removed: np.ndarray | None = None,
    device: Any = "cpu",
) -> dict[str, Any]:
    """What a step's queries retrieve from ``aug``'s bank (ids of ``snap``), checked.

    Returns ``stream_share`` (the share of retrieved memories whose target lies after the
    cut), ``queries_with_a_stream_memory``, ``leaks`` (memories of the query's own user at
    its own or a later prefix length) and, given the ``removed`` users (stream rows),
    ``forgotten_retrieved`` (their memories).

    Raises:
        AssertionError: If ``leaks`` or ``forgotten_retrieved`` is not 0.
    """
    got = retrieved(aug, stream.sequences, targets, snap.bank_ids, device=device)
    stream_mem = got["lengths"] >= stream.cut[snap.users_of(got["users"])]
    own_future = (got["users"] == got["query_users"][:, None]) & (
        got["lengths"] >= got["query_lengths"][:, None]
    )
    some = stream_mem.size > 0
    out: dict[str, Any] = {
        "stream_share": float(stream_mem.mean()) if some else 0.0,
        "queries_with_a_stream_memory": float(stream_mem.any(1).mean()) if some else 0.0,
        "leaks": int(own_future.sum()),
    }
    assert out["leaks"] == 0, "a query retrieved its own or its user's later pair"
    if removed is not None:
        out["forgotten_retrieved"] = int(np.isin(got["users"], snap.bank_ids[removed]).sum())
        assert out["forgotten_retrieved"] == 0, "a removed user's memory was retrieved"
    return out
