"""Inference behind the facade: full-ranking evaluation of a split and top-k recommendation.

Both take the encoder and an ``augment(h, users, lengths) -> h~`` function (the RAM over the
bank's memories), so they serve the frozen encoder and RaSeRec alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from raserec_adapter._checks import as_id_array
from raserec_adapter._progress import progress
from raserec_adapter.data import Batch, LeaveOneOutSplit, PrefixSet, Sequences
from raserec_adapter.data.loaders import as_batch
from raserec_adapter.data.validation import to_padded
from raserec_adapter.encoder import WrappedEncoder
from raserec_adapter.evaluation.metrics import check_protocol, target_rank
from raserec_adapter.evaluation.ranking import rank_targets

__all__ = ["Augment", "rank_batches", "rank_split", "top_k", "variants"]

Augment = Callable[[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"], torch.Tensor]
"""``(h, users, lengths) -> h~``: retrieval and the RAM, users and lengths for the no-leakage
rule (``None`` for queries from outside the bank)."""


def variants(augmented: bool | Sequence[bool]) -> tuple[bool, ...]:
    """``augmented`` as a tuple of variants: a single bool is one variant."""
    if isinstance(augmented, bool):
        return (augmented,)
    out = tuple(augmented)
    if not out or not all(isinstance(a, bool) for a in out):
        raise TypeError(
            f"augmented must be True, False or a non-empty sequence of them, got {augmented!r}"
        )
    return out


def with_inputs(
    split: LeaveOneOutSplit, queries: PrefixSet, inputs: Sequences
) -> tuple[Sequences, PrefixSet]:
    """Sequences "given input + target" for each query, and the prefixes that read them."""
    if not isinstance(inputs, Sequences):
        raise TypeError(
            f"inputs must be a Sequences object (one input per user), got {type(inputs).__name__}; "
            "build it with Sequences.from_lists(lists, num_items=split.sequences.num_items)"
        )
    n_users = split.sequences.num_users
    if inputs.num_users != n_users:
        raise ValueError(
            f"inputs holds {inputs.num_users} sequences but the split has {n_users} users; give "
            "one input per user, in user order"
        )
    if len(inputs.items) and int(inputs.items.max()) > split.sequences.num_items:
        raise ValueError(
            f"inputs holds item id {int(inputs.items.max())} but the split's items are 1.."
            f"{split.sequences.num_items}; map unknown items away before ranking"
        )
    lengths = inputs.lengths[queries.users]
    if len(lengths) and lengths.min() < 1:
        user = int(queries.users[int(np.argmin(lengths))])
        raise ValueError(
            f"inputs gives user {user} an empty sequence; every evaluated user needs at least "
            "one input item"
        )
    rows = [
        np.append(inputs[int(u)], t) for u, t in zip(queries.users, queries.targets, strict=True)
    ]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    items = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    seqs = Sequences(items.astype(np.int64), offsets, split.sequences.num_items)
    row_ids = np.arange(len(rows), dtype=np.int64)
    return seqs, PrefixSet(row_ids, lengths.astype(np.int64), queries.targets)


@torch.no_grad()
def rank_split(
    encoder: WrappedEncoder,
    augment: Augment,
    table: torch.Tensor,
    split: LeaveOneOutSplit,
    which: str,
    *,
    protocol: str,
    augmented: tuple[bool, ...],
    device: torch.device | str,
    batch_size: int,
    inputs: Sequences | None,
    show_progress: bool = False,
    prepare: Callable[[], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Ranks of ``which``'s targets per variant: ``{"plain": ranks, "raserec": ranks}``.

    ``prepare`` runs once the inputs are checked, before an augmented variant (the augmenter
    puts the bank into ``which``'s phase there).
    """
    queries = split.eval_set(which)
    sequences, prefixes = split.sequences, queries
    if inputs is not None:
        sequences, prefixes = with_inputs(split, queries, inputs)
    if prepare is not None and True in augmented:
        prepare()
    split_users = torch.from_numpy(queries.users)
    split_lengths = torch.from_numpy(queries.lengths)
    out: dict[str, torch.Tensor] = {}
    for aug in augmented:

        def represent(b: Batch, aug: bool = aug) -> torch.Tensor:
            with encoder.trusted_inputs():  # batches of validated sequences
                h = encoder(b.item_seq, b.lengths)
            if not aug:
                return h
            # the no-leakage rule reads the split's users and prefix lengths, whatever the input
            row = b.index.cpu()
            return augment(h, split_users[row], split_lengths[row])

        name = "raserec" if aug else "plain"
        out[name] = rank_targets(
            represent,
            table,
            sequences,
            prefixes,
            split.max_len,
            protocol,
            batch_size=batch_size,
            device=device,
            show_progress=show_progress,
            desc=f"rank {which} ({name})",
        )
    return out


@torch.no_grad()
def rank_batches(
    encoder: WrappedEncoder,
    augment: Augment,
    table: torch.Tensor,
    batches: Iterable[Any],
    *,
    protocol: str,
    augmented: tuple[bool, ...],
    device: torch.device | str,
    show_progress: bool = False,
    prepare: Callable[[], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Ranks of each row's target in a user's own batches (read by
    :func:`~raserec_adapter.data.loaders.as_batch`), per variant, in the batches' order.

    The no-leakage rule reads each row's ``users`` and ``prefix_lengths``; ``"seen_removed"``
    removes the items of the row's input (the batches hold nothing older).
    """
    check_protocol(protocol)
    if prepare is not None and True in augmented:
        prepare()
    weights_t = table.to(device).t()
    out: dict[bool, list[torch.Tensor]] = {aug: [] for aug in augmented}
    for raw in progress(batches, None, "rank batches", show_progress):
        b = as_batch(raw)
        h = encoder(b.item_seq.to(device), b.lengths.to(device))
        seen = b.item_seq if protocol == "seen_removed" else None
        for aug in augmented:
            r = augment(h, b.users, b.prefix_lengths) if aug else h
            out[aug].append(target_rank(r @ weights_t, b.targets.to(device), seen).cpu())
    if not any(out.values()):
        raise ValueError("the batches to evaluate gave no rows")
    return {"raserec" if a else "plain": torch.cat(r) for a, r in out.items()}


def _check_k(k: int, n: int, seen: torch.Tensor | None) -> int:
    """``k`` (an int, checked by the caller) if ``1 <= k <= n`` and every row has k unseen."""
    if k < 1 or k > n:
        raise ValueError(f"k must be in 1..{n}, got {k}")
    if seen is not None:
        s = seen.sort(dim=1).values  # distinct non-zero ids per row
        distinct = (s[:, :1] > 0).sum(1) + ((s[:, 1:] != s[:, :-1]) & (s[:, 1:] > 0)).sum(1)
        unseen = n - distinct
        if int(unseen.min()) < k:
            i = int(unseen.argmin())
            raise ValueError(
                f"k = {k} but sequence {i} leaves only {int(unseen[i])} unseen items of "
                f"{n}; lower k or pass exclude_seen=False"
            )
    return int(k)


@torch.no_grad()
def top_k(
    encoder: WrappedEncoder,
    augment: Augment | None,
    table: torch.Tensor,
    sequences: Sequence[Sequence[int]] | torch.Tensor,
    k: int,
    *,
    max_len: int,
    lengths: torch.Tensor | None = None,
    exclude_seen: bool = False,
    users: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(item_ids, scores)``, both ``(B, k)``, best first (see ``RetrievalAugmenter.recommend``).

    ``augment=None`` ranks by the encoder alone.
    """
    n = encoder.num_items
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {k!r}")
    seq, lens, full, seen = to_padded(sequences, lengths, max_len, n, exclude_seen)
    u = None
    if users is not None:  # checked also when unused, so a wrong list fails either way
        u = torch.from_numpy(as_id_array(users, "users", len(lens), low=0))
    _check_k(k, n, seen)
    seq, lens = seq.to(device), lens.to(device)
    h = encoder(seq, lens)
    if augment is not None:
        h = augment(h, u, None if u is None else full)
    scores = h @ table.to(device).t()
    if not bool(torch.isfinite(scores[:, 1:]).all()):  # say where, only when it happened
        if not bool(torch.isfinite(table[1:]).all()):
            where = "the encoder's item table"
        elif augment is not None:
            where = "the RAM's output h~ (its weights or the bank's memories)"
        else:
            where = "the encoder's output for these sequences"
        raise ValueError(
            f"scores contain NaN or infinite values, from {where}; the top-k would be "
            "arbitrary: check for weights of a diverged run, or retrain"
        )
    scores[:, 0] = -math.inf
    if seen is not None:
        scores.scatter_(1, seen.to(device), -math.inf)
    top = scores.topk(k, dim=1)
    return top.indices, top.values
