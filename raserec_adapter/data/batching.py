"""Padding-free batching: length-bucketed prefix batches and causal windows.

Batches are left-aligned (items first, zeros after, as RecBole does) and trimmed to the longest
sequence in the batch; sequences are bucketed by length so that almost no compute is spent on
padding.

Examples:
    >>> from raserec_adapter.data import Sequences, leave_one_out
    >>> split = leave_one_out(Sequences.from_lists([[1, 2, 3, 4], [2, 3, 1, 4, 5]]))
    >>> batch = next(iter_batches(split.sequences, split.test, batch_size=2))
    >>> batch.item_seq.tolist(), batch.targets.tolist()
    ([[1, 2, 3, 0], [2, 3, 1, 4]], [4, 5])
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from raserec_adapter._checks import require_positive_int
from raserec_adapter.data.sequences import LeaveOneOutSplit, PrefixSet, Sequences

__all__ = ["Batch", "CausalWindows", "causal_windows", "iter_batches", "iter_windows"]


@dataclass
class Batch:
    """A padded batch of model inputs.

    Attributes:
        item_seq: ``(B, T)`` long tensor, left-aligned items, zeros after the last item.
        lengths: ``(B,)`` number of real items per row (``1..T``).
        targets: ``(B,)`` next items (0 where unknown); for :func:`iter_windows`, ``(B, T)``
            next item at every position, 0 where no loss is taken.
        index: ``(B,)`` row numbers into the prefix set (or window list) the batch came from.
        users: ``(B,)`` user of each row (prefix batches), for the no-leakage rule.
        prefix_lengths: ``(B,)`` full prefix length of each row before truncation to
            ``max_len`` (prefix batches), for the no-leakage rule.
    """

    item_seq: torch.Tensor
    lengths: torch.Tensor
    targets: torch.Tensor
    index: torch.Tensor
    users: torch.Tensor | None = None
    prefix_lengths: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.item_seq.to(device),
            self.lengths.to(device),
            self.targets.to(device),
            self.index.to(device),
            None if self.users is None else self.users.to(device),
            None if self.prefix_lengths is None else self.prefix_lengths.to(device),
        )


def _length_buckets(
    lengths: np.ndarray,
    batch_size: int,
    shuffle: bool,
    rng: np.random.Generator | None,
    weights: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Groups row numbers into batches of similar length.

    Without shuffling, rows are sorted by length. With shuffling, rows are permuted, cut into
    chunks of about 50 batches, sorted by length inside each chunk, and the batches are
    shuffled: random batches with little padding. With ``weights`` (e.g. training pairs per
    window), a batch holds rows whose weights add up to about ``batch_size``, so every step
    sees about as many pairs whatever the length of its rows.
    """
    n = len(lengths)
    if n == 0:
        return []
    if not shuffle:
        order = np.argsort(lengths, kind="stable")
    else:
        assert rng is not None
        perm = rng.permutation(n)
        avg = 1.0 if weights is None else max(float(weights.mean()), 1e-9)
        chunk = max(1, int(batch_size * 50 / avg))
        parts = []
        for s in range(0, n, chunk):
            part = perm[s : s + chunk]
            parts.append(part[np.argsort(lengths[part], kind="stable")])
        order = np.concatenate(parts)
    if weights is None:
        batches = [order[s : s + batch_size] for s in range(0, n, batch_size)]
    else:
        batch_id = (np.cumsum(weights[order]) - 1) // batch_size
        cuts = np.flatnonzero(np.diff(batch_id)) + 1
        batches = np.split(order, cuts)
    if shuffle:
        assert rng is not None
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def gather_windows(
    sequences: Sequences, ends: np.ndarray, lengths: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-aligned ``(B, max(lengths))`` block of the items ``ends-lengths .. ends-1``."""
    width = int(lengths.max())
    pos = np.arange(width, dtype=np.int64)
    idx = (ends - lengths)[:, None] + pos[None, :]
    valid = pos[None, :] < lengths[:, None]
    block = np.where(valid, sequences.items[np.where(valid, idx, 0)], 0)
    return torch.from_numpy(block), torch.from_numpy(lengths.copy())


def iter_batches(
    sequences: Sequences,
    prefixes: PrefixSet,
    batch_size: int,
    max_len: int = 50,
    shuffle: bool = False,
    seed: int | None = None,
    bucket: bool = True,
) -> Iterator[Batch]:
    """Yields padded batches of prefix inputs, bucketed by length and trimmed.

    Args:
        sequences: The sequences the prefixes refer to.
        prefixes: Which prefixes to batch.
        batch_size: Rows per batch.
        max_len: Inputs are the last ``max_len`` items of each prefix.
        shuffle: Random batches (for training); otherwise sorted by length.
        seed: Seed of the shuffling.
        bucket: With ``shuffle``, batch prefixes of similar length (little padding); if false,
            every batch is a uniform random draw, padded to its longest prefix.

    Examples:
        >>> from raserec_adapter.data import leave_one_out
        >>> seqs = Sequences.from_lists([[1, 2, 3, 4], [2, 3, 1, 4, 5]])
        >>> b = next(iter_batches(seqs, leave_one_out(seqs).test, batch_size=8))
        >>> b.item_seq.tolist(), b.lengths.tolist()
        ([[1, 2, 3, 0], [2, 3, 1, 4]], [3, 4])
    """
    batch_size = require_positive_int(batch_size, "batch_size")
    max_len = require_positive_int(max_len, "max_len")
    prefixes.check_against(sequences)
    in_lengths = np.minimum(prefixes.lengths, max_len)
    rng = np.random.default_rng(seed) if shuffle else None
    ends = sequences.offsets[prefixes.users] + prefixes.lengths
    if shuffle and not bucket:
        assert rng is not None
        perm = rng.permutation(len(prefixes))
        batches = [perm[s : s + batch_size] for s in range(0, len(perm), batch_size)]
    else:
        batches = _length_buckets(in_lengths, batch_size, shuffle, rng)
    for rows in batches:
        item_seq, lengths = gather_windows(sequences, ends[rows], in_lengths[rows])
        yield Batch(
            item_seq,
            lengths,
            torch.from_numpy(prefixes.targets[rows]),
            torch.from_numpy(rows),
            torch.from_numpy(prefixes.users[rows]),
            torch.from_numpy(prefixes.lengths[rows]),
        )


@dataclass(frozen=True)
class CausalWindows:
    """Windows that let a causal encoder see every training prefix in one pass.

    Window ``w`` is the items ``ends[w] - lengths[w] .. ends[w] - 1`` of the flat array; a loss is
    taken at its last ``loss_from_end[w]`` positions, where the output (causal, positions counted
    from the window start) equals the encoding of exactly one training prefix. Prefixes longer
    than ``max_len`` each get a window of their own (sliding window), so results are exact.
    """

    users: np.ndarray
    ends: np.ndarray
    lengths: np.ndarray
    loss_from_end: np.ndarray
    first_pair: np.ndarray  # row in split.train of the prefix encoded at position 0

    def __len__(self) -> int:
        return len(self.ends)

    @property
    def num_pairs(self) -> int:
        return int(self.loss_from_end.sum())


def causal_windows(split: LeaveOneOutSplit) -> CausalWindows:
    """Builds the one-pass windows covering exactly ``split.train`` (see :class:`CausalWindows`)."""
    seqs, t = split.sequences, split.max_len
    m = split.valid.lengths  # training part (one validation row per user); inputs: m-1 items
    n_in = m - 1
    starts = seqs.offsets[:-1]
    keep = n_in >= 1
    first_len = np.minimum(n_in, t)[keep]
    win_users = [np.flatnonzero(keep)]
    ends = [starts[keep] + first_len]
    lengths = [first_len]
    loss = [first_len]
    # prefixes of length > t: one window each
    extra = np.maximum(n_in - t, 0)
    users = np.repeat(np.arange(seqs.num_users), extra)
    if len(users):
        win_users.append(users)
        first = np.repeat(np.cumsum(extra) - extra, extra)
        n = t + 1 + np.arange(len(users)) - first
        ends.append(starts[users] + n)
        lengths.append(np.full(len(users), t, dtype=np.int64))
        loss.append(np.ones(len(users), dtype=np.int64))
    win_users_all = np.concatenate(win_users).astype(np.int64)
    ends_all, lengths_all = np.concatenate(ends), np.concatenate(lengths)
    # training pairs are ordered by user, then prefix length 1..m-1 (see leave_one_out)
    pair_start = np.concatenate([[0], np.cumsum(m - 1)])[win_users_all]
    first_pair = pair_start + ends_all - lengths_all - starts[win_users_all]
    return CausalWindows(
        win_users_all, ends_all, lengths_all, np.concatenate(loss), first_pair.astype(np.int64)
    )


def window_pair_index(
    windows: CausalWindows, rows: np.ndarray, positions: np.ndarray
) -> np.ndarray:
    """Row in ``split.train`` of the prefix at ``positions`` (0-based) of windows ``rows``."""
    return windows.first_pair[rows] + positions


def iter_windows(
    sequences: Sequences,
    windows: CausalWindows,
    batch_size: int,
    shuffle: bool = True,
    seed: int | None = None,
) -> Iterator[Batch]:
    """Yields batches of causal windows; ``targets`` is ``(B, T)`` with 0 where no loss is taken.

    ``batch_size`` counts training pairs (loss positions), not windows: windows are packed so
    that each step sees about ``batch_size`` pairs (as a per-prefix batch of that size would),
    whether its windows are short or long.
    """
    batch_size = require_positive_int(batch_size, "batch_size")
    rng = np.random.default_rng(seed) if shuffle else None
    buckets = _length_buckets(windows.lengths, batch_size, shuffle, rng, windows.loss_from_end)
    for rows in buckets:
        lengths = windows.lengths[rows]
        item_seq, lens = gather_windows(sequences, windows.ends[rows], lengths)
        width = item_seq.shape[1]
        nxt_idx = (windows.ends[rows] - lengths)[:, None] + 1 + np.arange(width)[None, :]
        pos = np.arange(width)[None, :]
        lo = (lengths - windows.loss_from_end[rows])[:, None]
        take = (pos >= lo) & (pos < lengths[:, None])
        targets = np.where(take, sequences.items[np.where(take, nxt_idx, 0)], 0)
        yield Batch(item_seq, lens, torch.from_numpy(targets), torch.from_numpy(rows))
