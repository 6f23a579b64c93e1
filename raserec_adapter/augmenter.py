"""``RetrievalAugmenter``: RaSeRec's two stages around any sequence encoder.

Example:
    >>> import torch
    >>> from raserec_adapter import (AugmenterConfig, BankConfig, RAFTConfig,
    ...     RAMConfig, RetrievalAugmenter, Sequences, leave_one_out)
    >>> from raserec_adapter.models import SASRec
    >>> rows = [[1, 2, 3, 4, 5, 6], [2, 3, 4, 5, 6, 1], [3, 4, 5, 6, 1, 2]]
    >>> seqs = Sequences.from_lists(rows * 5)
    >>> split = leave_one_out(seqs, max_len=8)
    >>> aug = RetrievalAugmenter(SASRec(num_items=6, hidden_size=16, max_len=8),
    ...     AugmenterConfig(max_len=8, bank=BankConfig(kind="torch"), ram=RAMConfig(k=3)))
    >>> aug.build_bank(split)
    >>> _ = aug.fit_raft(split, RAFTConfig(epochs=1), show_progress=False)
    >>> sorted(aug.evaluate(split, "test"))
    ['plain', 'raserec']
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch
from torch import nn

from raserec_adapter._checks import as_id_array, check_device, require_config, require_flag
from raserec_adapter._progress import progress
from raserec_adapter.checkpoint import (
    CheckpointError,
    checkpoint_meta,
    read_bank,
    read_meta,
    read_ram_state,
    table_fingerprint,
    write_checkpoint,
)
from raserec_adapter.config import AugmenterConfig, PretrainConfig, RAFTConfig, RAMConfig
from raserec_adapter.data import LeaveOneOutSplit, PrefixSet, Sequences
from raserec_adapter.data.batching import (
    Batch,
    causal_windows,
    iter_batches,
    iter_windows,
    window_pair_index,
)
from raserec_adapter.data.validation import refuse_as_batches, require_split, to_padded
from raserec_adapter.encoder import EncodeFn, ItemWeightsFn, wrap_encoder
from raserec_adapter.evaluation import rank_targets
from raserec_adapter.evaluation.metrics import RankingMetrics
from raserec_adapter.memory.protocol import MemoryBank
from raserec_adapter.memory.torch_bank import TorchMemoryBank
from raserec_adapter.ram import RetrievalAugmentedModule
from raserec_adapter.training.pretraining import (
    RecLoss,
    check_item_count,
    pretrain,
    seed_everything,
)
from raserec_adapter.training.raft import fit_raft, search_neighbours
from raserec_adapter.training.state import TrainResult

__all__ = ["RetrievalAugmenter"]

logger = logging.getLogger("raserec_adapter")


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _gives_back_encoder_modes(method: _Method) -> _Method:
    """The user's encoder leaves the call in the train/eval modes it came with.

    Inference and bank building switch its dropout off (``eval()``); a model the user goes on
    training elsewhere must not silently stay that way.
    """

    @functools.wraps(method)
    def wrapper(self: RetrievalAugmenter, *args: Any, **kwargs: Any) -> Any:
        modes = [(m, m.training) for m in self.encoder.module.modules()]
        try:
            return method(self, *args, **kwargs)
        finally:
            for module, training in modes:
                if module.training != training:  # setting is slow (nn.Module.__setattr__)
                    module.training = training

    return cast(_Method, wrapper)


def _eval(module: nn.Module) -> None:
    """``module.eval()`` that touches only what is in training mode: ``eval()`` sets every
    submodule's flag through the slow ``nn.Module.__setattr__`` (a sixth of a profiled
    single-user ``recommend`` for SASRec + RAM)."""
    for m in module.modules():
        if m.training:
            m.training = False


class RetrievalAugmenter(nn.Module):
    """Adds a memory bank and a RAM head to a sequence encoder (RaSeRec).

    Args:
        encoder: The user's encoder (see :class:`~raserec_adapter.SequenceEncoder`).
        config: Settings saved with the checkpoint; the released code's defaults when omitted.
        encode: Optional ``(item_seq, lengths) -> (B, d)`` for encoders that do not follow the
            RecBole contract (see :func:`~raserec_adapter.wrap_encoder`).
        item_weights: Optional ``() -> (N + 1, d)`` item table accessor.
        encode_all: Optional causal ``(item_seq, lengths) -> (B, T, d)``.

    Typical use: ``pretrain`` (or bring a trained encoder), ``build_bank``, ``fit_raft``,
    ``evaluate`` / ``recommend``, ``save``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        config: AugmenterConfig | None = None,
        *,
        encode: EncodeFn | None = None,
        item_weights: ItemWeightsFn | None = None,
        encode_all: EncodeFn | None = None,
    ) -> None:
        super().__init__()
        if config is not None:
            require_config(config, AugmenterConfig, "RetrievalAugmenter")
        self.encoder = wrap_encoder(encoder, encode, item_weights, encode_all)
        cfg = config or AugmenterConfig()
        d = self.encoder.hidden_size
        if cfg.hidden_size and cfg.hidden_size != d:
            raise ValueError(
                f"config.hidden_size = {cfg.hidden_size} but the encoder's item table has size "
                f"{d}; leave hidden_size at 0 to take the encoder's"
            )
        self.encoder.check_max_len(cfg.max_len, "AugmenterConfig.max_len")
        self.config = cfg.replace(hidden_size=d)
        self.ram = RetrievalAugmentedModule(d, self.config.ram)
        self.bank: MemoryBank | None = None
        self._bank_phase: str | None = None
        self._bank_split: LeaveOneOutSplit | None = None
        # cached frozen-encoder representations of the training pairs (bank keys = RAFT queries)
        self._train_keys: torch.Tensor | None = None

    # ------------------------------------------------------------------ stage 1
    def pretrain(
        self,
        split: LeaveOneOutSplit,
        config: PretrainConfig | None = None,
        *,
        rec_loss: RecLoss | None = None,
        device: torch.device | str = "cpu",
        checkpoint: str | Path | None = None,
        show_progress: bool = True,
        fuse: bool | None = None,
        state_path: str | Path | None = None,
        resume: bool = False,
        run_info: Mapping[str, Any] | None = None,
    ) -> TrainResult:
        """Collaborative pre-training of the encoder (see :func:`~raserec_adapter.pretrain`).

        ``state_path`` / ``resume`` make a long run resumable: the training state is written
        there after every epoch and ``resume=True`` continues from it. ``run_info`` (say the
        command line) is recorded per call in the result's ``invocations``.
        """
        require_split(split, "pretrain")
        if config is not None:
            require_config(config, PretrainConfig, "pretrain")
        self._forget_bank()
        return pretrain(
            self.encoder,
            split,
            config,
            rec_loss=rec_loss,
            device=device,
            checkpoint=checkpoint,
            show_progress=show_progress,
            fuse=fuse,
            state_path=state_path,
            resume=resume,
            run_info=run_info,
        )

    # ------------------------------------------------------------------ encoding
    @torch.no_grad()
    @_gives_back_encoder_modes
    def encode(
        self,
        sequences: Sequences,
        prefixes: PrefixSet,
        batch_size: int = 1024,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Frozen-encoder representations ``(n, d)`` of prefixes (dropout off), in their order."""
        check_device(device)  # batch_size is checked by iter_batches
        _eval(self.encoder)
        out = torch.empty(len(prefixes), self.encoder.hidden_size)
        with self.encoder.trusted_inputs():  # batches of validated sequences
            for batch in iter_batches(sequences, prefixes, batch_size, self.config.max_len):
                b = batch.to(device)
                out[batch.index] = self.encoder(b.item_seq, b.lengths).float().cpu()
        return out

    @torch.no_grad()
    def _encode_train_pairs(
        self, split: LeaveOneOutSplit, device: torch.device | str, show_progress: bool
    ) -> torch.Tensor:
        """Representations of all training pairs; one pass per sequence for causal encoders."""
        _eval(self.encoder)
        if not self.encoder.is_causal:
            return self.encode(split.sequences, split.train, device=device)
        windows = causal_windows(split)
        out = torch.empty(len(split.train), self.encoder.hidden_size)
        batches = iter_windows(split.sequences, windows, 8192, shuffle=False)
        n = math.ceil(windows.num_pairs / 8192)
        for batch in progress(batches, n, "encode bank", show_progress):
            b = batch.to(device)
            take = b.targets > 0
            with self.encoder.trusted_inputs():
                h = self.encoder.forward_all(b.item_seq, b.lengths)[take]
            pos = take.nonzero().cpu().numpy()
            rows = window_pair_index(windows, batch.index.numpy()[pos[:, 0]], pos[:, 1])
            out[torch.from_numpy(rows)] = h.float().cpu()
        return out

    # ------------------------------------------------------------------ memory bank
    def _new_bank(self, device: torch.device | str) -> MemoryBank:
        bc, d = self.config.bank, self.config.hidden_size
        if bc.kind == "torch":
            return TorchMemoryBank(d, device=device)
        from raserec_adapter.memory.faiss_bank import FaissMemoryBank

        return FaissMemoryBank(d, bc.index_factory, nprobe=bc.nprobe, overfetch=bc.overfetch)

    def _forget_bank(self) -> None:
        self.bank, self._bank_phase, self._bank_split, self._train_keys = None, None, None, None

    def _item_table(self) -> torch.Tensor:
        return self.encoder.item_weights().detach().float().cpu()

    @torch.no_grad()
    @_gives_back_encoder_modes
    def build_bank(
        self,
        source: LeaveOneOutSplit | Iterable[Batch],
        phase: str = "train",
        *,
        device: torch.device | str = "cpu",
        show_progress: bool = True,
    ) -> None:
        """Encodes <prefix, next item> pairs with the frozen encoder into a new memory bank.

        Args:
            source: A split (its training pairs; plus validation pairs when ``phase="test"``,
                as the released code does), or any iterable of prefix batches (e.g. from
                :func:`~raserec_adapter.iter_batches`) that carry ``users`` and
                ``prefix_lengths``.
            phase: ``"train"`` (also used for validation) or ``"test"``.
            device: Where the encoder runs (and where a ``torch`` bank lives).
            show_progress: Show progress.
        """
        if phase not in ("train", "test"):
            raise ValueError(f"phase must be 'train' or 'test', got {phase!r}")
        check_device(device)
        t0 = time.perf_counter()
        # the new bank is built aside: a failed build leaves the old bank (and its cache) as is
        bank = self._new_bank(device)
        table = self._item_table()
        train_keys: torch.Tensor | None = None
        bank_split: LeaveOneOutSplit | None = None
        if isinstance(source, LeaveOneOutSplit):
            split = source
            self._check_split(split)
            keys = self._encode_train_pairs(split, device, show_progress)
            self._add_kept(
                bank, keys, table[split.train.targets], split.train.users, split.train.lengths
            )
            train_keys, bank_split = keys, split
            if phase == "test":
                self._add_valid_pairs(bank, split, device)
            new_phase = phase
        else:
            refuse_as_batches(source, "build_bank")
            _eval(self.encoder)
            for batch in progress(source, None, "encode bank", show_progress):
                if not isinstance(batch, Batch):
                    raise TypeError(
                        f"build_bank takes a LeaveOneOutSplit or an iterable of Batch objects; "
                        f"got an iterable of {type(batch).__name__}. Make batches with "
                        "raserec_adapter.iter_batches(...)"
                    )
                if batch.users is None or batch.prefix_lengths is None:
                    raise ValueError(
                        "bank batches need users and prefix_lengths (for the no-leakage rule); "
                        "make them with raserec_adapter.iter_batches(...)"
                    )
                b = batch.to(device)
                h = self.encoder(b.item_seq, b.lengths).float().cpu()
                self._add_kept(bank, h, table[batch.targets], batch.users, batch.prefix_lengths)
            new_phase = "custom"
        if len(bank) == 0:
            raise self._empty_bank_error("the source gave no training pairs")
        self.bank, self._bank_phase = bank, new_phase
        self._train_keys, self._bank_split = train_keys, bank_split
        logger.info("memory bank: %d memories in %.1f s", len(bank), time.perf_counter() - t0)

    @torch.no_grad()
    @_gives_back_encoder_modes
    def add_memories(
        self,
        sequences: Sequence[Sequence[int]] | Sequences,
        users: Sequence[int] | np.ndarray | torch.Tensor,
        *,
        start_lengths: Sequence[int] | np.ndarray | int = 1,
        device: torch.device | str = "cpu",
    ) -> int:
        """Adds users' new interactions to the memory bank as memories, without retraining.

        RaSeRec's memory is explicit: when users interact again, their new <prefix, next item>
        pairs join the bank at once and the RAM retrieves them for every query (the paper's
        answer to preference drift); the encoder and the RAM stay as they are. For each
        sequence ``s`` (a user's whole history, oldest first) every pair ``(s[:n], s[n])`` with
        ``n >= start_length`` is encoded by the frozen encoder (its last ``max_len`` items) and
        added with the user's id and prefix length ``n``, so the no-leakage rule keeps applying
        (``BankConfig.prefix_lengths`` filters them as in :meth:`build_bank`).

        The bank then no longer follows the split protocol: :meth:`evaluate` uses it as it is,
        and :meth:`fit_raft` needs :meth:`build_bank` again. Pairs already in the bank are not
        detected: a ``start_length`` below what the bank covers adds them a second time.

        Args:
            sequences: Each user's item ids (1-based), oldest first (lists, or a
                :class:`~raserec_adapter.Sequences`).
            users: The users' bank ids, integers >= 0 (for a split's users: their row in the
                split).
            start_lengths: Prefix length of each sequence's first new pair, i.e. how many of
                its items the bank already covers (a split's bank covers the training part, or
                training part + validation item after a test evaluation); ``1`` (default)
                adds every pair of a user new to the bank. One int applies to all.
            device: Where the encoder runs.

        Returns:
            The number of memories added.

        Example:
            >>> # user 7 had 12 items in the bank's pairs and has interacted twice since
            >>> # augmenter.add_memories([history_of_7], users=[7], start_lengths=12)
            >>> # -> 2 (the pairs with prefix lengths 12 and 13)
        """
        bank = self._require_bank("add_memories", allow_empty=True)  # emptied by removals
        if isinstance(sequences, Sequences):
            seqs = sequences
            if seqs.num_items > self.encoder.num_items:
                raise ValueError(
                    f"the sequences have {seqs.num_items} items, the encoder knows "
                    f"{self.encoder.num_items}; item ids must lie in 1..{self.encoder.num_items}"
                )
        else:
            seqs = Sequences.from_lists(list(sequences), num_items=self.encoder.num_items)
        n = seqs.num_users
        bank_ids = as_id_array(users, "users", n, low=0)
        if isinstance(start_lengths, (int, np.integer)) and not isinstance(start_lengths, bool):
            start_lengths = [int(start_lengths)] * n
        starts = as_id_array(start_lengths, "start_lengths", n, low=1)
        # pairs (s[:length], s[length]) for start <= length < len(s), vectorised
        counts = np.maximum(np.diff(seqs.offsets) - starts, 0)
        index = np.repeat(np.arange(n), counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        lengths = starts[index] + np.arange(len(index)) - first
        if not len(index):
            return 0
        targets = seqs.items[seqs.offsets[index] + lengths]
        keys = self.encode(seqs, PrefixSet(index, lengths, targets), device=device)
        before = len(bank)
        self._add_kept(bank, keys, self._item_table()[targets], bank_ids[index], lengths)
        added = len(bank) - before
        if added:  # the split's protocol (which pairs the bank holds per phase) no longer applies
            self._bank_phase, self._bank_split, self._train_keys = "custom", None, None
        logger.info("added %d memories (%d users); bank: %d", added, n, len(bank))
        return added

    def remove_memories(self, users: Sequence[int] | np.ndarray | torch.Tensor | int) -> int:
        """Removes every memory of the given users from the bank (e.g. deleted accounts).

        As after :meth:`add_memories`, the bank no longer follows the split protocol (when
        anything was removed). User ids with no memories remove nothing; negative ids are
        refused (``ValueError``), as :meth:`add_memories` refuses them.

        Returns:
            The number of memories removed.

        Example:
            >>> # augmenter.remove_memories([7, 42])
        """
        bank = self._require_bank("remove_memories")
        if users is None or isinstance(users, (str, bytes, float, bool)):
            raise TypeError(f"users must be bank user ids: an int or a list of ints, got {users!r}")
        if not isinstance(users, (torch.Tensor, np.ndarray, int, np.integer)):
            users = list(users)  # generators too; the bank checks the ids
        removed = bank.remove(users)
        if removed:
            self._bank_phase, self._bank_split, self._train_keys = "custom", None, None
        logger.info("removed %d memories; bank: %d", removed, len(bank))
        return removed

    def _check_split(self, split: LeaveOneOutSplit) -> None:
        """Refuses a split the augmenter cannot use as it is (clear errors, also on CUDA)."""
        if split.max_len != self.config.max_len:
            raise ValueError(
                f"the split truncates to max_len = {split.max_len} but the augmenter uses "
                f"{self.config.max_len}; use leave_one_out(sequences, max_len="
                f"{self.config.max_len}) or AugmenterConfig(max_len={split.max_len})"
            )
        check_item_count(self.encoder.num_items, split)

    def _add_valid_pairs(
        self, bank: MemoryBank, split: LeaveOneOutSplit, device: torch.device | str
    ) -> None:
        keys = self.encode(split.sequences, split.valid, device=device)
        self._add_kept(
            bank,
            keys,
            self._item_table()[split.valid.targets],
            split.valid.users,
            split.valid.lengths,
        )

    def _empty_bank_error(self, otherwise: str, phase: str | None = None) -> ValueError:
        ranges = self.config.bank.prefix_lengths
        pairs = {"train": "training pairs", "test": "training and validation pairs"}
        which = f" of the {phase} phase ({pairs[phase]})" if phase else ""
        return ValueError(
            f"the memory bank{which} is empty: "
            + (
                f"no memory's prefix length lies in BankConfig.prefix_lengths = {ranges}; "
                "widen the ranges"
                if ranges is not None
                else otherwise
            )
        )

    def _add_kept(
        self,
        bank: MemoryBank,
        keys: torch.Tensor,
        values: torch.Tensor,
        users: np.ndarray | torch.Tensor,
        lengths: np.ndarray | torch.Tensor,
    ) -> None:
        """Adds the memories whose prefix length ``BankConfig.prefix_lengths`` keeps."""
        keep = self.config.bank.keeps(np.asarray(lengths))
        if keep is not None:
            if not keep.any():
                return
            rows = np.flatnonzero(keep)
            keys, values = keys[torch.from_numpy(rows).to(keys.device)], values[rows]
            users, lengths = users[rows], lengths[rows]
        bank.add(keys, values, users, lengths)

    def _require_bank(self, what: str, allow_empty: bool = False) -> MemoryBank:
        if self.bank is None or (len(self.bank) == 0 and not allow_empty):
            hint = {
                "retrieval": " (or recommend(..., augmented=False) for the encoder alone)",
                "evaluation": " (or evaluate(..., augmented=(False,)) for the encoder alone)",
            }.get(what, "")
            raise RuntimeError(
                f"{what} needs a memory bank: call augmenter.build_bank(split) first (after "
                f"pre-training the encoder, before fit_raft){hint}"
            )
        return self.bank

    def _use_phase(self, split: LeaveOneOutSplit, which: str, device: torch.device | str) -> None:
        """Makes the bank hold what the RaSeRec protocol prescribes for evaluating ``which``."""
        bank = self._require_bank("evaluation")
        if self._bank_split is None:  # built from batches or loaded: the user's bank as it is
            if which == "test" and self._bank_phase == "train":
                logger.warning(
                    "the loaded bank holds training pairs only (it was saved before a test "
                    "evaluation); the protocol tests with training and validation pairs: call "
                    "build_bank(split) for test metrics of the protocol"
                )
            if which == "valid" and self._bank_phase == "test":
                logger.warning(
                    "the loaded bank holds validation pairs (it was saved after a test "
                    "evaluation); the protocol validates with training pairs only: call "
                    "build_bank(split) for validation metrics of the protocol"
                )
            return
        if not _same_split(self._bank_split, split):
            raise ValueError(
                "the memory bank was built from another split than the one evaluated; call "
                "augmenter.build_bank(split) with this split first"
            )
        want = "test" if which == "test" else "train"
        if want == self._bank_phase:
            return
        # a new bank from the cached training keys (+ validation pairs): its index is trained
        # on exactly the memories of the phase, as build_bank(split, phase) would train it
        assert self._train_keys is not None
        new = self._new_bank(bank.device)
        self._add_kept(
            new,
            self._train_keys,
            self._item_table()[split.train.targets],
            split.train.users,
            split.train.lengths,
        )
        if want == "test":
            self._add_valid_pairs(new, split, device)
        if len(new) == 0:  # keep the bank the user has; say why this phase has none
            raise self._empty_bank_error("the split has no training pairs", phase=want)
        self.bank = new
        self._bank_phase = want

    # ------------------------------------------------------------------ retrieval + RAM
    def _memories(
        self, h: torch.Tensor, users: torch.Tensor | None, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        bank = self._require_bank("retrieval")
        k = self.config.ram.k
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

    def augment(
        self,
        h: torch.Tensor,
        users: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``h~``: retrieves K memories for each ``h`` and mixes them in with the RAM.

        ``users`` and ``lengths`` (full prefix lengths) of the queries switch on the no-leakage
        rule; leave them out for users outside the bank.
        """
        keys, values = self._memories(h, users, lengths)
        dev = h.device
        if next(self.ram.parameters()).device != dev:
            self.ram.to(dev)  # a small head: it follows the queries
        return self.ram(h, keys.to(dev), values.to(dev))

    # ------------------------------------------------------------------ stage 2
    def reset_ram(self, ram: RAMConfig | None = None, *, seed: int | None = None) -> None:
        """Replaces the RAM head with a freshly initialised one; keeps the encoder and the bank.

        For tuning the RAM (alpha, beta, K, ...) over one frozen encoder: the memory bank and
        its cached keys stay, so each setting costs only its ``fit_raft``, with no re-encoding.

        Args:
            ram: New RAM settings (default: the current ones, re-initialised).
            seed: Seeds the new head's initial weights (the global random state is left as
                it was); default: drawn from the global random state.

        Example:
            >>> import torch
            >>> from raserec_adapter import RAMConfig, RetrievalAugmenter
            >>> from raserec_adapter.models import SASRec
            >>> aug = RetrievalAugmenter(SASRec(num_items=30))
            >>> aug.reset_ram(RAMConfig(alpha=0.7, k=10), seed=0)
            >>> aug.config.ram.alpha, aug.config.ram.k
            (0.7, 10)
        """
        cfg = self.config.ram if ram is None else ram
        if not isinstance(cfg, RAMConfig):
            raise TypeError(f"ram must be a RAMConfig, got {type(cfg).__name__}")
        device = next(self.ram.parameters()).device
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            head = RetrievalAugmentedModule(self.config.hidden_size, cfg)
        self.ram = head.to(device)
        self.config = self.config.replace(ram=cfg)

    @_gives_back_encoder_modes
    def fit_raft(
        self,
        split: LeaveOneOutSplit,
        config: RAFTConfig | None = None,
        *,
        device: torch.device | str = "cpu",
        show_progress: bool = True,
    ) -> TrainResult:
        """Retrieval-augmented fine-tuning: trains only the RAM, the encoder frozen (dropout off).

        Query representations and their K neighbours are computed once before the first epoch.
        Early stopping on ``config.valid_metric`` over the validation users; the best epoch's
        RAM weights are kept. The result's ``baseline_valid`` holds the frozen encoder's own
        validation metrics, and a warning is logged when the RAM's best epoch does not beat
        them.
        """
        require_split(split, "fit_raft")
        check_device(device)
        if config is not None:
            require_config(config, RAFTConfig, "fit_raft")
        cfg = config or RAFTConfig()
        self._check_split(split)
        self._require_bank("fit_raft")
        if self._bank_split is None or self._train_keys is None:
            raise RuntimeError(
                "fit_raft needs the bank built from the same split: call "
                "augmenter.build_bank(split) with this split first"
            )
        self._use_phase(split, "valid", device)
        bank = self._require_bank("fit_raft")
        seed_everything(cfg.seed)
        _eval(self.encoder)
        trainable = [p.requires_grad for p in self.encoder.parameters()]
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        try:
            return self._raft_frozen(split, cfg, bank, device, show_progress)
        finally:  # give the user back their encoder as it was, even if training fails
            for p, flag in zip(self.encoder.parameters(), trainable, strict=True):
                p.requires_grad_(flag)

    def _raft_frozen(
        self,
        split: LeaveOneOutSplit,
        cfg: RAFTConfig,
        bank: MemoryBank,
        device: torch.device | str,
        show_progress: bool,
    ) -> TrainResult:
        """RAFT's inputs from the frozen encoder and the bank, then :func:`fit_raft`."""
        t_start = time.perf_counter()
        k = self.config.ram.k
        queries = self._train_keys
        assert queries is not None  # checked by fit_raft
        train, valid = split.train, split.valid
        neighbours = search_neighbours(
            bank,
            queries,
            k,
            torch.from_numpy(train.users),
            torch.from_numpy(train.lengths),
            show_progress=show_progress,
        )
        valid_h = self.encode(split.sequences, valid, device=device)
        valid_nb = bank.search(
            valid_h, k, torch.from_numpy(valid.users), torch.from_numpy(valid.lengths)
        ).ids
        logger.info("RAFT: queries and neighbours ready in %.1f s", time.perf_counter() - t_start)
        result = fit_raft(
            self.ram,
            split,
            cfg,
            queries=queries,
            neighbours=neighbours,
            valid_queries=valid_h,
            valid_neighbours=valid_nb,
            memories=bank.fetch(torch.arange(len(bank))),  # the bank is frozen during RAFT
            item_table=self._item_table(),
            device=device,
            show_progress=show_progress,
        )
        result.seconds = time.perf_counter() - t_start
        return result

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    @_gives_back_encoder_modes
    def evaluate(
        self,
        split: LeaveOneOutSplit,
        which: str = "test",
        *,
        protocol: str = "full",
        augmented: bool | Sequence[bool] = (False, True),
        device: torch.device | str = "cpu",
        batch_size: int = 1024,
        inputs: Sequences | None = None,
    ) -> dict[str, dict[str, float]]:
        """Full-ranking HR/NDCG@5,10,20 with and/or without augmentation in one call.

        For ``which="test"`` the bank holds training plus validation pairs (released code); for
        ``"valid"`` only training pairs. Returns ``{"plain": {...}, "raserec": {...}}`` for the
        variants asked for (``augmented``: ``False``, ``True`` or both). :meth:`ranks` gives
        the rank of every user's target instead, and describes ``inputs`` (other input
        sequences, e.g. with noise inserted).
        """
        require_split(split, "evaluate")
        out = {}
        for variant, r in self.ranks(
            split,
            which,
            protocol=protocol,
            augmented=augmented,
            device=device,
            batch_size=batch_size,
            inputs=inputs,
        ).items():
            metrics = RankingMetrics()
            metrics.update(r)
            out[variant] = metrics.compute()
        return out

    @torch.no_grad()
    @_gives_back_encoder_modes
    def ranks(
        self,
        split: LeaveOneOutSplit,
        which: str = "test",
        *,
        protocol: str = "full",
        augmented: bool | Sequence[bool] = (False, True),
        device: torch.device | str = "cpu",
        batch_size: int = 1024,
        inputs: Sequences | None = None,
    ) -> dict[str, torch.Tensor]:
        """Rank (1-based, ties against the target) of every user's ``which`` target.

        The per-user view behind :meth:`evaluate`, for analyses by user or item group (e.g.
        ``benchmarks/groups.py``). Same bank contents and protocols as :meth:`evaluate`.

        Args:
            inputs: Other input sequences to rank the split's targets from, one per user of
                ``split.sequences`` (in user order; only the users of the evaluated set are
                read), e.g. copies with noise inserted (``benchmarks/robustness.py``, the
                paper's robustness analysis). Default: the split's own inputs. The bank and
                the no-leakage rule stay those of the split: a query keeps its user and the
                prefix length of its split input. With ``protocol="seen_removed"`` the items
                of the given input are the ones removed.

        Returns:
            ``{"plain": ranks, "raserec": ranks}`` for the variants asked for; each a ``(U,)``
            long tensor in the order of ``split.eval_set(which)`` (``split.test.users`` for the
            test split).

        Example:
            >>> import torch
            >>> from raserec_adapter import (AugmenterConfig, BankConfig, RAMConfig,
            ...     RetrievalAugmenter, Sequences, leave_one_out)
            >>> from raserec_adapter.models import SASRec
            >>> split = leave_one_out(Sequences.from_lists([[1, 2, 3, 4], [2, 3, 4, 1]]))
            >>> cfg = AugmenterConfig(bank=BankConfig(kind="torch"), ram=RAMConfig(k=2))
            >>> aug = RetrievalAugmenter(SASRec(num_items=4), cfg)
            >>> aug.build_bank(split, show_progress=False)
            >>> r = aug.ranks(split, "test")
            >>> r["plain"].shape, bool((r["raserec"] >= 1).all())
            (torch.Size([2]), True)
        """
        if which not in ("valid", "test"):
            raise ValueError(f"which must be 'valid' or 'test', got {which!r}")
        require_split(split, "ranks")
        augmented = _variants(augmented)
        check_device(device)
        self._check_split(split)
        queries = split.eval_set(which)
        sequences, prefixes = split.sequences, queries
        if inputs is not None:
            sequences, prefixes = _with_inputs(split, queries, inputs)
        split_users = torch.from_numpy(queries.users)
        split_lengths = torch.from_numpy(queries.lengths)
        _eval(self)
        out: dict[str, torch.Tensor] = {}
        table = self._item_table().to(device)
        if True in augmented:
            self._use_phase(split, which, device)
        for aug in augmented:

            def represent(b: Batch, aug: bool = aug) -> torch.Tensor:
                with self.encoder.trusted_inputs():  # batches of validated sequences
                    h = self.encoder(b.item_seq, b.lengths)
                if not aug:
                    return h
                # the no-leakage rule reads the split's users and prefix lengths, whatever
                # the input
                row = b.index.cpu()
                return self.augment(h, split_users[row], split_lengths[row])

            out["raserec" if aug else "plain"] = rank_targets(
                represent,
                table,
                sequences,
                prefixes,
                split.max_len,
                protocol,
                batch_size=batch_size,
                device=device,
            )
        return out

    @torch.no_grad()
    @_gives_back_encoder_modes
    def recommend(
        self,
        sequences: Sequence[Sequence[int]] | torch.Tensor,
        k: int = 10,
        *,
        lengths: torch.Tensor | None = None,
        augmented: bool = True,
        exclude_seen: bool = False,
        users: Sequence[int] | None = None,
        device: torch.device | str = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` next items for item sequences.

        Args:
            sequences: Lists of 1-based item ids (oldest first), or a left-aligned padded
                ``(B, T)`` tensor with ``lengths``.
            k: Items to return per sequence.
            lengths: Lengths when ``sequences`` is a tensor.
            augmented: Use retrieval augmentation (needs a bank).
            exclude_seen: Never recommend an item already in the sequence (all of it, also
                the items before the last ``max_len``).
            users: Bank user ids of the sequences' owners, if they are in the bank: their own
                memories from the same or later positions are then not retrieved. A
                sequence's position is its length: pass whole histories as lists (a padded
                tensor holds at most ``T`` items, so a longer history would count as ``T``).
            device: Where to compute.

        Returns:
            ``(item_ids, scores)``, both ``(B, k)``, best first.

        Example:
            >>> from raserec_adapter import (AugmenterConfig, BankConfig, RAMConfig,
            ...     RetrievalAugmenter, Sequences, leave_one_out)
            >>> from raserec_adapter.models import SASRec
            >>> split = leave_one_out(Sequences.from_lists([[1, 2, 3, 4], [2, 3, 4, 1]] * 3))
            >>> aug = RetrievalAugmenter(SASRec(num_items=4),
            ...     AugmenterConfig(bank=BankConfig(kind="torch"), ram=RAMConfig(k=2)))
            >>> aug.build_bank(split, show_progress=False)
            >>> ids, scores = aug.recommend([[1, 2], [3]], k=2, exclude_seen=True)
            >>> ids.shape, bool(set(ids[0].tolist()) & {1, 2})
            (torch.Size([2, 2]), False)
        """
        n = self.encoder.num_items
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an int, got {k!r}")
        augmented = require_flag(augmented, "augmented")
        exclude_seen = require_flag(exclude_seen, "exclude_seen")
        seq, lens, full, seen = to_padded(sequences, lengths, self.config.max_len, n, exclude_seen)
        u = None
        if users is not None:  # checked also when unused, so a wrong list fails either way
            u = torch.from_numpy(as_id_array(users, "users", len(lens), low=0))
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
        check_device(device)
        _eval(self)
        seq, lens = seq.to(device), lens.to(device)
        h = self.encoder(seq, lens)
        if augmented:
            h = self.augment(h, u, None if u is None else full)
        table = self._item_table()
        scores = h @ table.to(device).t()
        if not bool(torch.isfinite(scores[:, 1:]).all()):  # say where, only when it happened
            if not bool(torch.isfinite(table[1:]).all()):
                where = "the encoder's item table"
            elif augmented:
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

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | Path) -> None:
        """Writes the augmenter's own parts: ``config.json``, ``ram.pt`` and ``bank/``.

        The encoder is not saved (it is the user's; save it your own way). The directory is
        written to a temporary place and moved in at the end, so a failure never leaves a
        half-written checkpoint or destroys an earlier one.

        Raises:
            FileExistsError: If ``path`` is a file or a directory that is not a checkpoint.

        Example:
            >>> import tempfile, torch
            >>> from pathlib import Path
            >>> from raserec_adapter import (AugmenterConfig, BankConfig, RAMConfig,
            ...     RetrievalAugmenter, Sequences, leave_one_out)
            >>> from raserec_adapter.models import SASRec
            >>> split = leave_one_out(Sequences.from_lists([[1, 2, 3, 4], [2, 3, 4, 1]] * 3))
            >>> encoder = SASRec(num_items=4)
            >>> aug = RetrievalAugmenter(encoder,
            ...     AugmenterConfig(bank=BankConfig(kind="torch"), ram=RAMConfig(k=2)))
            >>> aug.build_bank(split, show_progress=False)
            >>> path = Path(tempfile.mkdtemp()) / "augmenter"
            >>> aug.save(path)
            >>> same = RetrievalAugmenter.load(encoder, path)  # the same encoder object
            >>> bool(torch.equal(same.recommend([[1, 2]], k=3)[0], aug.recommend([[1, 2]], k=3)[0]))
            True
        """
        meta = checkpoint_meta(
            self.config,
            self.encoder.num_items,
            type(self.encoder.module).__name__,
            self._bank_phase,
            self._item_table(),
        )
        write_checkpoint(path, meta, self.ram.state_dict(), self.bank)

    @classmethod
    def load(
        cls,
        encoder: nn.Module,
        path: str | Path,
        config: AugmenterConfig | None = None,
        *,
        device: torch.device | str = "cpu",
        strict: bool = False,
        **wrap_kwargs: Any,
    ) -> RetrievalAugmenter:
        """Rebuilds an augmenter around ``encoder`` from :meth:`save`'s directory.

        The checkpoint records the encoder's class and a fingerprint of its item table. An
        encoder of another class or with other item embeddings than at :meth:`save` fits the
        checkpoint's shapes but not its bank and RAM: by default that is logged as a warning
        (e.g. for an encoder fine-tuned on purpose); with ``strict=True`` it is refused.

        Args:
            encoder: The trained sequence encoder the checkpoint was saved with.
            path: The directory :meth:`save` wrote.
            config: If given, the checkpoint must have been saved with this config.
            device: Where the RAM and the bank go.
            strict: Refuse an encoder of another class or with other item embeddings.
            **wrap_kwargs: ``encode`` / ``item_weights`` / ``encode_all``, as for the
                constructor.

        Raises:
            CheckpointError: If the checkpoint is missing or malformed, was saved with another
                config than ``config`` (when given), does not fit the encoder, or (with
                ``strict=True``) was saved with an encoder of another class or other weights.
        """
        if config is not None:
            require_config(config, AugmenterConfig, "RetrievalAugmenter.load")
        path = Path(path)
        meta, saved = read_meta(path, config)
        aug = cls(encoder, saved.replace(hidden_size=0), **wrap_kwargs)
        if aug.encoder.num_items != meta.get("num_items"):
            raise CheckpointError(
                f"{path} was trained for {meta.get('num_items')} items, the encoder has "
                f"{aug.encoder.num_items}; load it with the encoder it was saved with (same "
                "dataset and item ids), or build a new bank and RAFT for this one"
            )
        if aug.config.hidden_size != saved.hidden_size:
            raise CheckpointError(
                f"{path} was trained with hidden size {saved.hidden_size}, the encoder has "
                f"{aug.config.hidden_size}; build the encoder with the settings it was saved "
                "with (e.g. hidden_size), or build a new bank and RAFT for this one"
            )
        saved_class = meta.get("encoder_class")
        mismatches = []
        saved_class = meta.get("encoder_class")
        if saved_class is not None and saved_class != type(aug.encoder.module).__name__:
            mismatches.append(
                f"{path} was saved with a {saved_class} encoder, it is loaded with a "
                f"{type(aug.encoder.module).__name__}: the bank's keys are that encoder's "
                "representations; rebuild the bank if the encoder changed"
            )
        saved_table = meta.get("item_table_sha256")
        if saved_table is not None and saved_table != table_fingerprint(aug._item_table()):
            mismatches.append(
                f"{path} was saved with an encoder whose item table differs from this "
                "encoder's (another training run or changed weights): the bank's keys and "
                "values and the RAM were fit to that encoder; load the encoder's own weights, "
                "or rebuild the bank (build_bank) and retrain the RAM (fit_raft)"
            )
        if mismatches and strict:
            raise CheckpointError(
                "; and ".join(mismatches) + " (strict=True; strict=False loads it with a warning)"
            )
        for message in mismatches:
            logger.warning("%s", message)
        try:
            aug.ram.load_state_dict(read_ram_state(path))
        except (RuntimeError, TypeError, AttributeError) as e:
            raise CheckpointError(
                f"{path / 'ram.pt'} does not fit the RAM of this config: {e}"
            ) from e
        check_device(device)
        aug.ram.to(device)
        aug.bank = read_bank(path, saved, device)
        phase = meta.get("bank_phase")
        if aug.bank is None and phase is not None:
            raise CheckpointError(
                f"{path / 'config.json'} records a memory bank (phase {phase!r}) but "
                f"{path / 'bank'} is missing; the checkpoint is incomplete: save it again, or "
                "load it and rebuild the bank with build_bank"
            )
        if aug.bank is not None:
            aug._bank_phase = phase if phase in ("train", "test") else "custom"
        aug.eval()
        return aug

    def trainable_parameters(self) -> str:
        """A one-line summary of RAM vs encoder parameters (what RAFT trains)."""
        ram = sum(p.numel() for p in self.ram.parameters())
        enc = sum(p.numel() for p in self.encoder.parameters())
        return f"RAM parameters: {ram:,} | encoder parameters (frozen in RAFT): {enc:,}"


def _same_split(a: LeaveOneOutSplit, b: LeaveOneOutSplit) -> bool:
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


def _with_inputs(
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


def _variants(augmented: bool | Sequence[bool]) -> tuple[bool, ...]:
    """``augmented`` as a tuple of variants: a single bool is one variant."""
    if isinstance(augmented, bool):
        return (augmented,)
    out = tuple(augmented)
    if not out or not all(isinstance(a, bool) for a in out):
        raise TypeError(
            f"augmented must be True, False or a non-empty sequence of them, got {augmented!r}"
        )
    return out
