"""The augmenter's memory bank and which pairs of a split it holds (the per-phase protocol).

RaSeRec retrieves from different memories per phase (the released code): training and
validation queries search the training pairs; test queries search training plus validation
pairs. :class:`PhasedBank` keeps the bank, its phase, the split it was built from and the
cached training keys together, and switches phases without re-encoding the training pairs.

Examples:
    >>> import torch
    >>> from raserec_adapter import BankConfig
    >>> from raserec_adapter import BankConfig, Sequences, leave_one_out, wrap_encoder
    >>> from raserec_adapter.models import GRU4Rec
    >>> split = leave_one_out(Sequences.from_lists([[1, 2, 3, 4], [2, 3, 1, 4]]))
    >>> state = PhasedBank(BankConfig(kind="torch"), wrap_encoder(GRU4Rec(4)), max_len=50)
    >>> state.build(split, "train", device="cpu", show_progress=False)
    >>> state.phase, len(state.bank)
    ('train', 2)
    >>> state.use_phase(split, "test", device="cpu")  # + the validation pairs
    >>> state.phase, len(state.bank)
    ('test', 4)
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raserec_adapter._checks import as_id_array
from raserec_adapter._modes import eval_mode
from raserec_adapter._progress import progress
from raserec_adapter.config import BankConfig
from raserec_adapter.data import Batch, LeaveOneOutSplit, PrefixSet, Sequences
from raserec_adapter.data.from_batches import split_from_batches
from raserec_adapter.data.loaders import as_batch
from raserec_adapter.data.validation import check_split_fits, refuse_as_batches
from raserec_adapter.encoder import (
    Shard,
    WrappedEncoder,
    encode_prefixes,
    encode_training_pairs,
)
from raserec_adapter.memory.protocol import MemoryBank
from raserec_adapter.memory.torch_bank import TorchMemoryBank

__all__ = ["PhasedBank", "batch_memories", "history_pairs", "same_split"]

logger = logging.getLogger("raserec_adapter")

_BANKS = itertools.count()  # a new Milvus collection per bank the augmenter builds

_PAIRS = {"train": "training pairs", "test": "training and validation pairs"}
_HINTS = {
    "retrieval": " (or recommend(..., augmented=False) for the encoder alone)",
    "evaluation": " (or evaluate(..., augmented=(False,)) for the encoder alone)",
}


def same_split(a: LeaveOneOutSplit, b: LeaveOneOutSplit) -> bool:
    """The same object, or a split of the same sequences with the same ``max_len``."""
    if a is b:
        return True
    sa, sb = a.sequences, b.sequences
    same = a.max_len == b.max_len and sa.num_items == sb.num_items
    pairs = [(sa.offsets, sb.offsets), (sa.items, sb.items)]
    for name in ("train", "valid", "test"):
        pa, pb = getattr(a, name), getattr(b, name)
        pairs += [(pa.users, pb.users), (pa.lengths, pb.lengths)]
    return same and all(np.array_equal(x, y) for x, y in pairs)


class PhasedBank:
    """A memory bank with its phase: ``"train"``, ``"test"`` or ``"custom"``.

    ``"custom"`` is a bank built from the user's batches, loaded from a checkpoint, or edited
    with new or removed memories: it is used as it is. A bank built from a split also keeps the
    split and its training keys, so :meth:`use_phase` can rebuild the other phase's bank.

    Args:
        config: Which bank to build (kind, Faiss factory, prefix-length filter).
        encoder: The frozen encoder whose representations are the keys.
        max_len: Inputs are the last ``max_len`` items of each prefix.
    """

    def __init__(self, config: BankConfig, encoder: WrappedEncoder, max_len: int) -> None:
        self.config = config
        self.encoder = encoder
        self.dim = encoder.hidden_size
        self.max_len = max_len
        self.bank: MemoryBank | None = None
        self.phase: str | None = None
        self.split: LeaveOneOutSplit | None = None
        self.train_keys: torch.Tensor | None = None  # frozen-encoder keys = RAFT queries

    def new_bank(self, device: torch.device | str) -> MemoryBank:
        """An empty bank of the configured kind (Faiss imported only here)."""
        if self.config.kind == "torch":
            return TorchMemoryBank(self.dim, device=device)
        cfg = self.config
        if cfg.kind == "milvus":
            from raserec_adapter.memory.milvus_bank import MilvusMemoryBank

            uri = cfg.milvus_uri or str(Path(tempfile.mkdtemp(prefix="raserec-")) / "bank.db")
            name = f"{cfg.milvus_collection}_{os.getpid()}_{next(_BANKS)}"
            return MilvusMemoryBank(self.dim, uri, name, overfetch=cfg.overfetch)
        from raserec_adapter.memory.faiss_bank import FaissMemoryBank

        scale = {"store": cfg.store, "refine": cfg.refine, "train_size": cfg.train_size}
        return FaissMemoryBank(
            self.dim, cfg.index_factory, cfg.nprobe, cfg.overfetch, shards=cfg.shards, **scale
        )

    def install(
        self,
        bank: MemoryBank,
        phase: str,
        split: LeaveOneOutSplit | None = None,
        train_keys: torch.Tensor | None = None,
    ) -> None:
        """Makes ``bank`` the current one; all four facts change together."""
        self.bank, self.phase, self.split, self.train_keys = bank, phase, split, train_keys

    def forget(self) -> None:
        """No bank (the encoder changed: its memories would be stale)."""
        self.bank, self.phase, self.split, self.train_keys = None, None, None, None

    def edited(self) -> None:
        """Memories were added or removed: the split's protocol no longer applies."""
        self.phase, self.split, self.train_keys = "custom", None, None

    def add_kept(
        self,
        bank: MemoryBank,
        keys: torch.Tensor,
        values: torch.Tensor,
        users: np.ndarray | torch.Tensor,
        lengths: np.ndarray | torch.Tensor,
    ) -> None:
        """Adds the memories whose prefix length ``BankConfig.prefix_lengths`` keeps."""
        keep = self.config.keeps(np.asarray(lengths))
        if keep is not None:
            if not keep.any():
                return
            rows = np.flatnonzero(keep)
            keys, values = keys[torch.from_numpy(rows).to(keys.device)], values[rows]
            users, lengths = users[rows], lengths[rows]
        bank.add(keys, values, users, lengths)

    def empty_error(self, otherwise: str, phase: str | None = None) -> ValueError:
        """The error for an empty bank: the prefix-length filter, or ``otherwise``."""
        ranges = self.config.prefix_lengths
        which = f" of the {phase} phase ({_PAIRS[phase]})" if phase else ""
        why = (
            f"no memory's prefix length lies in BankConfig.prefix_lengths = {ranges}; "
            "widen the ranges"
            if ranges is not None
            else otherwise
        )
        return ValueError(f"the memory bank{which} is empty: {why}")

    def require(self, what: str, allow_empty: bool = False) -> MemoryBank:
        """The bank, or a clear error saying to build one first."""
        if self.bank is None or (len(self.bank) == 0 and not allow_empty):
            raise RuntimeError(
                f"{what} needs a memory bank: call augmenter.build_bank(split) first (after "
                f"pre-training the encoder, before fit_raft){_HINTS.get(what, '')}"
            )
        return self.bank

    def use_phase(self, split: LeaveOneOutSplit, which: str, device: torch.device | str) -> None:
        """Makes the bank hold what the protocol prescribes for evaluating ``which``.

        ``"valid"`` searches the training pairs, ``"test"`` training plus validation pairs; a
        bank that is not a split's (``"custom"``) is used as it is.
        """
        bank = self.require("evaluation")
        if self.split is None:  # built from batches or loaded: the user's bank as it is
            self._warn_off_protocol(which)
            return
        if not same_split(self.split, split):
            raise ValueError(
                "the memory bank was built from another split than the one evaluated; call "
                "augmenter.build_bank(split) with this split first"
            )
        want = "test" if which == "test" else "train"
        if want == self.phase:
            return
        # a new bank from the cached training keys (+ validation pairs): its index is trained
        # on exactly the memories of the phase, as build_bank(split, phase) would train it
        assert self.train_keys is not None
        new = self.new_bank(bank.device)
        train = split.train
        self.add_kept(new, self.train_keys, self.table()[train.targets], train.users, train.lengths)
        if want == "test":
            self._add_valid_pairs(new, split, device)
        if len(new) == 0:  # keep the bank the user has; say why this phase has none
            raise self.empty_error("the split has no training pairs", phase=want)
        self.bank, self.phase = new, want

    def table(self) -> torch.Tensor:
        """The encoder's item table ``(N + 1, d)`` on the CPU: the memories' values."""
        return self.encoder.item_weights().detach().float().cpu()

    def _add_valid_pairs(
        self,
        bank: MemoryBank,
        split: LeaveOneOutSplit,
        device: torch.device | str,
        shard: Shard = Shard(),  # noqa: B008 (an immutable tuple)
    ) -> None:
        valid, seqs = split.valid, split.sequences
        keys = encode_prefixes(self.encoder, seqs, valid, self.max_len, 1024, device, shard)
        self.add_kept(bank, keys, self.table()[valid.targets], valid.users, valid.lengths)

    def build(
        self,
        source: LeaveOneOutSplit | Iterable[Batch],
        phase: str,
        device: torch.device | str,
        show_progress: bool,
        shard: Shard = Shard(),  # noqa: B008 (an immutable tuple)
    ) -> None:
        """A new bank from a split's pairs (``phase`` ``"train"`` or ``"test"``) or batches.

        The bank is built aside: a failed build leaves the current bank (and its keys) as is.
        ``shard``: this process's share of a split's encoding (a process group's ranks).
        """
        if isinstance(source, LeaveOneOutSplit):
            check_split_fits(source, self.max_len, self.encoder.num_items)
        else:
            refuse_as_batches(source, "build_bank")
        bank, table = self.new_bank(device), self.table()
        if isinstance(source, LeaveOneOutSplit):
            split, train = source, source.train
            keys = encode_training_pairs(self.encoder, split, device, show_progress, shard)
            self.add_kept(bank, keys, table[train.targets], train.users, train.lengths)
            if phase == "test":
                self._add_valid_pairs(bank, split, device, shard)
            installed: tuple[Any, ...] = (phase, split, keys)
        else:
            eval_mode(self.encoder)

            def encode(seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
                return self.encoder(seq.to(device), lengths.to(device))

            for h, b in batch_memories(source, encode, show_progress):
                self.add_kept(bank, h, table[b.targets], b.users, b.prefix_lengths)
            installed = ("custom",)
        if len(bank) == 0:
            raise self.empty_error("the source gave no training pairs")
        self.install(bank, *installed)

    def add_histories(
        self,
        sequences: Sequence[Sequence[int]] | Sequences,
        users: Sequence[int] | np.ndarray | torch.Tensor,
        start_lengths: Sequence[int] | np.ndarray | int,
        device: torch.device | str,
    ) -> int:
        """Adds every pair of each history from its start length on; returns how many.

        See ``RetrievalAugmenter.add_memories``.
        """
        self.require("add_memories", allow_empty=True)  # emptied by removals
        n_items = self.encoder.num_items
        if isinstance(sequences, Sequences):
            if sequences.num_items > n_items:
                raise ValueError(
                    f"the sequences have {sequences.num_items} items, the encoder knows "
                    f"{n_items}; item ids must lie in 1..{n_items}"
                )
            seqs = sequences
        else:
            seqs = Sequences.from_lists(list(sequences), num_items=n_items)
        bank_ids = as_id_array(users, "users", seqs.num_users, low=0)
        if isinstance(start_lengths, (int, np.integer)) and not isinstance(start_lengths, bool):
            start_lengths = [int(start_lengths)] * seqs.num_users
        starts = as_id_array(start_lengths, "start_lengths", seqs.num_users, low=1)
        eval_mode(self.encoder)
        bank = self.require("add_memories", allow_empty=True)  # emptied by removals
        pairs = history_pairs(seqs, starts)
        if not len(pairs):
            return 0
        keys = encode_prefixes(self.encoder, seqs, pairs, self.max_len, device=device)
        before = len(bank)
        values = self.table()[pairs.targets]
        self.add_kept(bank, keys, values, bank_ids[pairs.users], pairs.lengths)
        added = len(bank) - before
        if added:
            self.edited()
        logger.info("added %d memories (%d users); bank: %d", added, seqs.num_users, len(bank))
        return added

    def remove(self, users: Sequence[int] | np.ndarray | torch.Tensor | int) -> int:
        """Removes every memory of ``users`` (bank user ids); returns how many."""
        bank = self.require("remove_memories")
        if users is None or isinstance(users, (str, bytes, float, bool)):
            raise TypeError(f"users must be bank user ids: an int or a list of ints, got {users!r}")
        if not isinstance(users, (torch.Tensor, np.ndarray, int, np.integer)):
            users = list(users)  # generators too; the bank checks the ids
        removed = bank.remove(users)
        if removed:
            self.edited()
        logger.info("removed %d memories; bank: %d", removed, len(bank))
        return removed

    def split_of(
        self,
        source: LeaveOneOutSplit | Iterable[Any],
        valid: Iterable[Any] | None,
        device: torch.device | str,
        show_progress: bool,
    ) -> LeaveOneOutSplit:
        """``source`` if a split, else the split that the user's training batches ``source``
        and validation batches ``valid`` describe, with a bank built from it (unless the bank
        was already built from an equal split)."""
        if isinstance(source, LeaveOneOutSplit):
            if valid is not None:
                raise TypeError(
                    "fit_raft takes valid= only with the user's own training batches; a split "
                    "carries its validation users"
                )
            return source
        refuse_as_batches(source, "fit_raft")
        if valid is None:
            raise TypeError(
                "fit_raft on the user's own training batches needs their validation batches "
                "too: fit_raft(train_loader, valid=valid_loader) (one row per user, for early "
                "stopping)"
            )
        split = split_from_batches(
            source, valid, max_len=self.max_len, num_items=self.encoder.num_items
        )
        if self.split is None or not same_split(self.split, split):
            logger.info("the memory bank is built from the training batches' pairs")
            self.build(split, "train", device, show_progress)
        return split

    def use_own_phase(self, which: str, device: torch.device | str) -> None:
        """For batches evaluated as ``which``: the split's phase where the bank came from one
        (:meth:`split_of`), else the bank as it is."""
        if self.split is not None:
            self.use_phase(self.split, which, device)
        else:
            self._warn_off_protocol(which)

    @staticmethod
    def batches(source: Any, inputs: Any = None) -> Iterable[Any]:
        """``source``, checked to be an iterable of batches to evaluate."""
        refuse_as_batches(source, "evaluate")
        if inputs is not None:
            raise TypeError("inputs= replaces a split's inputs; batches carry their own")
        return source

    def _warn_off_protocol(self, which: str) -> None:
        if which == "test" and self.phase == "train":
            logger.warning(
                "the loaded bank holds training pairs only (it was saved before a test "
                "evaluation); the protocol tests with training and validation pairs: call "
                "build_bank(split) for test metrics of the protocol"
            )
        if which == "valid" and self.phase == "test":
            logger.warning(
                "the loaded bank holds validation pairs (it was saved after a test "
                "evaluation); the protocol validates with training pairs only: call "
                "build_bank(split) for validation metrics of the protocol"
            )

    def memories(
        self, h: torch.Tensor, k: int, users: torch.Tensor | None, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``(B, k, d)`` of the ``k`` memories retrieved for each query."""
        bank = self.require("retrieval")
        if k > len(bank):
            raise ValueError(
                f"the RAM mixes RAMConfig.k = {k} memories into each query but the bank holds "
                f"only {len(bank)}; lower it (augmenter.reset_ram(RAMConfig(k=...)) before "
                "fit_raft) or build a larger bank"
            )
        try:
            found = bank.search(h.detach().float().cpu(), k, users, lengths)
        except ValueError as e:
            if "admissible memories" not in str(e):
                raise
            raise ValueError(f"{e} (k is RAMConfig.k, the RAM's number of memories)") from e
        return bank.fetch(found.ids)


def history_pairs(seqs: Sequences, start_lengths: np.ndarray) -> PrefixSet:
    """Every pair ``(s[:n], s[n])`` with ``start <= n < len(s)`` of each sequence, vectorised.

    The prefix set's ``users`` are rows of ``seqs``.

    Examples:
        >>> pairs = history_pairs(Sequences.from_lists([[1, 2, 3, 4]]), np.array([2]))
        >>> pairs.lengths.tolist(), pairs.targets.tolist()
        ([2, 3], [3, 4])
    """
    n = seqs.num_users
    counts = np.maximum(np.diff(seqs.offsets) - start_lengths, 0)
    index = np.repeat(np.arange(n), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    lengths = start_lengths[index] + np.arange(len(index)) - first
    targets = seqs.items[seqs.offsets[index] + lengths]
    return PrefixSet(index, lengths, targets)


def batch_memories(
    batches: Iterable[Batch],
    encode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    show_progress: bool,
) -> Iterator[tuple[torch.Tensor, Batch]]:
    """``(keys, batch)`` per user batch (a user's DataLoader batches are read by
    :func:`~raserec_adapter.data.loaders.as_batch`), checked to carry what the no-leakage
    rule reads."""
    for raw in progress(batches, None, "encode bank", show_progress):
        batch = as_batch(raw)  # a Batch, a mapping (RecBole's names too) or a tuple
        if batch.users is None or batch.prefix_lengths is None:
            raise ValueError(
                "bank batches need users and prefix_lengths (for the no-leakage rule); "
                "make them with raserec_adapter.data.iter_batches(...)"
            )
        yield encode(batch.item_seq, batch.lengths).float().cpu(), batch
