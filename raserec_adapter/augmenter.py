"""``RetrievalAugmenter``: RaSeRec's two stages around any sequence encoder.

The facade delegates to :mod:`~raserec_adapter.training` (both stages),
:mod:`raserec_adapter.memory.state` (the bank per phase), :mod:`raserec_adapter.evaluation`
(ranking, recommendation) and :mod:`raserec_adapter.checkpoint` (saving, the load policy).

Examples:
    >>> from raserec_adapter import (AugmenterConfig, BankConfig, RAFTConfig, RAMConfig,
    ...     RetrievalAugmenter, Sequences, leave_one_out)
    >>> from raserec_adapter.models import SASRec
    >>> split = leave_one_out(Sequences.from_lists([[1, 2, 3, 4, 5, 6], [2, 3, 4, 5, 6, 1]] * 5))
    >>> aug = RetrievalAugmenter(SASRec(num_items=6, hidden_size=16),
    ...     AugmenterConfig(bank=BankConfig(kind="torch"), ram=RAMConfig(k=3)))
    >>> aug.build_bank(split, show_progress=False)
    >>> _ = aug.fit_raft(split, RAFTConfig(epochs=1), show_progress=False)
    >>> sorted(aug.evaluate(split, "test", show_progress=False))
    ['plain', 'raserec']
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raserec_adapter import checkpoint as ckpt
from raserec_adapter._checks import check_device, require_config, require_flag
from raserec_adapter._modes import eval_mode, keeps_encoder_modes
from raserec_adapter.config import (
    AugmenterConfig,
    PretrainConfig,
    RAFTConfig,
    RAMConfig,
    RunOptions,
)
from raserec_adapter.data import Batch, LeaveOneOutSplit, PrefixSet, Sequences
from raserec_adapter.data.validation import check_split_fits, require_split
from raserec_adapter.encoder import (
    EncodeFn,
    ItemWeightsFn,
    encode_prefixes,
    wrap_encoder,
)
from raserec_adapter.evaluation import RankingMetrics
from raserec_adapter.evaluation.inference import rank_batches, rank_split, top_k, variants
from raserec_adapter.memory.protocol import MemoryBank
from raserec_adapter.memory.state import PhasedBank
from raserec_adapter.ram import RetrievalAugmentedModule
from raserec_adapter.training.pretraining import RecLoss, pretrain
from raserec_adapter.training.raft import build_phased_bank, fit_raft_frozen
from raserec_adapter.training.state import TrainResult

__all__ = ["RetrievalAugmenter"]

logger = logging.getLogger("raserec_adapter")

Ids = Sequence[int] | np.ndarray | torch.Tensor


class RetrievalAugmenter(nn.Module):
    """Adds a memory bank and a RAM head to a sequence encoder (RaSeRec).

    Args:
        encoder: The user's encoder (see :class:`~raserec_adapter.SequenceEncoder`).
        config: Settings saved with the checkpoint; the released code's defaults when omitted.
        encode: Optional ``(item_seq, lengths) -> (B, d)`` for encoders that do not follow the
            RecBole contract (see :func:`~raserec_adapter.wrap_encoder`).
        item_weights: Optional ``() -> (N + 1, d)`` item table accessor.
        encode_all: Optional causal ``(item_seq, lengths) -> (B, T, d)``.

    Use: :meth:`pretrain` (or a trained encoder), :meth:`build_bank`, :meth:`fit_raft`,
    :meth:`evaluate` / :meth:`recommend`, :meth:`save`; splits or the user's own batches."""

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
        cfg, d = config or AugmenterConfig(), self.encoder.hidden_size
        self.encoder.check_max_len(cfg.max_len, "AugmenterConfig.max_len")
        self.config = cfg.for_hidden_size(d)
        self.ram = RetrievalAugmentedModule(d, self.config.ram)
        self.memory = PhasedBank(self.config.bank, self.encoder, self.config.max_len)

    @property
    def bank(self) -> MemoryBank | None:
        """The current memory bank (``None`` before :meth:`build_bank`)."""
        return self.memory.bank

    def pretrain(
        self,
        split: LeaveOneOutSplit,
        config: PretrainConfig | None = None,
        *,
        rec_loss: RecLoss | None = None,
        device: torch.device | str = "cpu",
        checkpoint: str | Path | None = None,
        show_progress: bool = True,
        run: RunOptions | None = None,
    ) -> TrainResult:
        """Stage 1, collaborative pre-training of the encoder (forgets any bank built before);
        the arguments are :func:`raserec_adapter.training.pretrain`'s."""
        require_split(split, "pretrain")
        self.memory.forget()  # the encoder changes: its memories would be stale
        return pretrain(
            self.encoder, split, config, rec_loss=rec_loss, device=device,
            checkpoint=checkpoint, show_progress=show_progress, run=run,
        )  # fmt: skip

    @keeps_encoder_modes
    def encode(
        self, sequences: Sequences, prefixes: PrefixSet, batch_size: int = 1024, device: Any = "cpu"
    ) -> torch.Tensor:
        """Frozen-encoder representations ``(n, d)`` of prefixes (dropout off), in their order."""
        check_device(device)  # batch_size is checked by iter_batches
        max_len = self.config.max_len
        return encode_prefixes(self.encoder, sequences, prefixes, max_len, batch_size, device)

    @torch.no_grad()
    @keeps_encoder_modes
    def build_bank(
        self,
        source: LeaveOneOutSplit | Iterable[Batch],
        phase: str = "train",
        *,
        device: torch.device | str = "cpu",
        show_progress: bool = True,
    ) -> None:
        """Encodes <prefix, next item> pairs with the frozen encoder into a new memory bank.

        ``source``: a split (its training pairs; plus validation pairs when ``phase="test"``,
        as the released code does; ``"train"`` is also the validation phase), or any iterable
        of prefix batches (:func:`~raserec_adapter.data.iter_batches`) carrying ``users`` and
        ``prefix_lengths``. ``device``: where the encoder runs (and a ``torch`` bank lives).
        """
        if phase not in ("train", "test"):
            raise ValueError(f"phase must be 'train' or 'test', got {phase!r}")
        check_device(device)
        t0 = time.perf_counter()
        build_phased_bank(self.memory, source, phase, device, show_progress)  # sharded in a group
        n = len(self.memory.require("build_bank"))
        logger.info("memory bank: %d memories in %.1f s", n, time.perf_counter() - t0)

    @torch.no_grad()
    @keeps_encoder_modes
    def add_memories(
        self,
        sequences: Sequence[Sequence[int]] | Sequences,
        users: Ids,
        *,
        start_lengths: Sequence[int] | np.ndarray | int = 1,
        device: torch.device | str = "cpu",
    ) -> int:
        """Adds users' new interactions to the bank as memories, without retraining.

        For each sequence ``s`` (a whole history, oldest first) every pair ``(s[:n], s[n])``
        with ``n >= start_length`` is added with its user and prefix length ``n``, retrievable
        at once under the no-leakage rule. ``users``: bank ids (a split's users: their row);
        ``start_lengths``: items already covered (``1``: every pair; one int for all). Returns
        the number added. The bank then no longer follows the split (:meth:`fit_raft` needs
        :meth:`build_bank` again)."""
        return self.memory.add_histories(sequences, users, start_lengths, device)

    def remove_memories(self, users: Ids | int) -> int:
        """Removes every memory of ``users`` (bank ids); returns how many. Then as above."""
        return self.memory.remove(users)

    def augment(
        self,
        h: torch.Tensor,
        users: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``h~``: retrieves K memories for each ``h`` and mixes them in with the RAM.

        ``users`` and ``lengths`` (full prefix lengths) of the queries switch on the no-leakage
        rule; leave them out for users outside the bank. ``h`` as it is where RAFT chose not to
        serve the RAM (:attr:`~raserec_adapter.ram.RetrievalAugmentedModule.serves`).
        """
        if not self.ram.serves:
            return self.ram.passthrough(h)
        keys, values = self.memory.memories(h, self.config.ram.k, users, lengths)
        dev = h.device
        if next(self.ram.parameters()).device != dev:
            self.ram.to(dev)  # a small head: it follows the queries
        return self.ram(h, keys.to(dev), values.to(dev))

    def reset_ram(self, ram: RAMConfig | None = None, *, seed: int | None = None) -> None:
        """Replaces the RAM head with a freshly initialised one; keeps the encoder and the bank.

        For tuning the RAM over one frozen encoder (each setting costs only its :meth:`fit_raft`);
        ``seed`` seeds the new head's weights (the global random state is left as it was).

        Examples:
            >>> from raserec_adapter import RAMConfig, RetrievalAugmenter
            >>> from raserec_adapter.models import SASRec
            >>> aug = RetrievalAugmenter(SASRec(num_items=30))
            >>> aug.reset_ram(RAMConfig(alpha=0.7, k=10), seed=0)
            >>> aug.config.ram.alpha, aug.config.ram.k
            (0.7, 10)
        """
        device = next(self.ram.parameters()).device
        ram_cfg = self.config.ram if ram is None else ram
        self.ram = RetrievalAugmentedModule.fresh(self.config.hidden_size, ram_cfg, seed).to(device)
        self.config = self.config.replace(ram=self.ram.config)

    @keeps_encoder_modes
    def fit_raft(
        self,
        split: LeaveOneOutSplit | Iterable[Any],
        config: RAFTConfig | None = None,
        *,
        valid: Iterable[Any] | None = None,
        device: torch.device | str = "cpu",
        show_progress: bool = True,
    ) -> TrainResult:
        """Stage 2, retrieval-augmented fine-tuning: trains only the RAM, the encoder frozen.

        Queries and their K neighbours are computed once; early stopping on validation keeps
        the best epoch's RAM (``RAFTConfig.alpha_grid``: then its alpha is chosen). The result's
        ``baseline_valid`` holds the frozen encoder's validation metrics; where the RAM does not
        beat them, a warning says so and the encoder is served alone (``RAFTConfig.fallback``).
        Or the user's training batches, ``valid`` theirs for validation (data.from_batches).
        """
        check_device(device)
        split = self.memory.split_of(split, valid, device, show_progress)
        cfg = RAFTConfig() if config is None else require_config(config, RAFTConfig, "fit_raft")
        check_split_fits(split, self.config.max_len, self.encoder.num_items)
        result = fit_raft_frozen(self.ram, self.memory, split, cfg, device, show_progress)
        self.config = self.config.replace(ram=self.ram.config)  # an alpha chosen on validation
        return result

    @torch.no_grad()
    def evaluate(
        self, split: LeaveOneOutSplit | Iterable[Any], which: str = "test", **options: Any
    ) -> dict[str, dict[str, float]]:
        """Full-ranking HR/NDCG/MRR@5,10,20 with and/or without augmentation in one call.

        For ``which="test"`` the bank holds training plus validation pairs (released code); for
        ``"valid"`` only training pairs. Returns ``{"plain": {...}, "raserec": {...}}`` for the
        variants asked for; ``options`` are :meth:`ranks`' (``show_progress`` on by default).
        """
        options.setdefault("show_progress", True)
        ranks = self.ranks(split, which, **options)
        return {variant: RankingMetrics.of(r) for variant, r in ranks.items()}

    @torch.no_grad()
    @keeps_encoder_modes
    def ranks(
        self,
        split: LeaveOneOutSplit | Iterable[Any],
        which: str = "test",
        *,
        protocol: str = "full",
        augmented: bool | Sequence[bool] = (False, True),
        device: torch.device | str = "cpu",
        batch_size: int = 1024,
        inputs: Sequences | None = None,
        show_progress: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Rank (1-based, ties against the target) of every user's ``which`` target.

        ``protocol``: ``"full"`` (seen items stay in the ranking) or ``"seen_removed"``;
        ``augmented``: ``False``, ``True`` or both (frozen encoder, RaSeRec); ``inputs``: other
        input sequences to rank the split's targets from, one per user (e.g. with noise
        inserted), the bank and the no-leakage rule staying the split's. ``split`` may be the
        user's own batches (rows in their order; :mod:`~raserec_adapter.data.from_batches`).

        Returns:
            ``{"plain": ranks, "raserec": ranks}``, each ``(U,)`` in ``split.eval_set(which)``'s
            order.
        """
        if which not in ("valid", "test"):
            raise ValueError(f"which must be 'valid' or 'test', got {which!r}")
        chosen = variants(augmented)
        check_device(device)
        eval_mode(self)
        if not isinstance(split, LeaveOneOutSplit):  # the user's own batches, ranked as given
            return rank_batches(
                self.encoder, self.augment, self.memory.table(), self.memory.batches(split, inputs),
                protocol=protocol, augmented=chosen, device=device, show_progress=show_progress,
                prepare=lambda: self.memory.use_own_phase(which, device),
            )  # fmt: skip
        check_split_fits(split, self.config.max_len, self.encoder.num_items)
        return rank_split(
            self.encoder, self.augment, self.memory.table().to(device), split, which,
            protocol=protocol, augmented=chosen, device=device, batch_size=batch_size,
            inputs=inputs, show_progress=show_progress,
            prepare=lambda: self.memory.use_phase(split, which, device),
        )  # fmt: skip

    @torch.no_grad()
    @keeps_encoder_modes
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
        """Top-``k`` next items for item sequences: ``(item_ids, scores)``, ``(B, k)`` each.

        ``sequences``: lists of 1-based item ids (oldest first), or a left-aligned padded
        ``(B, T)`` tensor with ``lengths``. ``exclude_seen`` never recommends an item of the
        sequence; ``users`` (bank ids of the owners) keeps their own memories from the same or
        later positions out of retrieval.

        Examples:
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
        augment = self.augment if require_flag(augmented, "augmented") else None
        exclude_seen = require_flag(exclude_seen, "exclude_seen")
        check_device(device)
        eval_mode(self)
        return top_k(
            self.encoder, augment, self.memory.table(), sequences, k, max_len=self.config.max_len,
            lengths=lengths, exclude_seen=exclude_seen, users=users, device=device,
        )  # fmt: skip

    def save(self, path: str | Path) -> None:
        """Writes the augmenter's own parts: ``config.json``, ``ram.pt`` and ``bank/``.

        The encoder is not saved (it is the user's). The directory is written aside and moved
        in at the end, so a failure never leaves a half-written checkpoint or destroys an
        earlier one (format: :mod:`raserec_adapter.checkpoint`, ``docs/checkpoints.md``).

        Raises:
            FileExistsError: If ``path`` is a file or a directory that is not a checkpoint.
        """
        name = type(self.encoder.module).__name__
        table, phase = self.memory.table(), self.memory.phase
        meta = ckpt.checkpoint_meta(self.config, self.encoder.num_items, name, phase, table)
        ckpt.write_checkpoint(path, meta, self.ram.state_dict(), self.memory.bank)

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

        An encoder of another class or with other item embeddings than at :meth:`save` fits the
        checkpoint's shapes but not its bank and RAM: a warning, or with ``strict=True`` a
        ``CheckpointError`` (see :func:`raserec_adapter.checkpoint.check_encoder_fits`).

        ``config``, if given, must be the one saved; ``device``: for the RAM and the bank;
        ``wrap_kwargs``: the constructor's ``encode`` / ``item_weights`` / ``encode_all``.

        Raises:
            CheckpointError: The checkpoint is missing or malformed, was saved with another
                config than ``config``, or does not fit the encoder.
        """
        if config is not None:
            require_config(config, AugmenterConfig, "RetrievalAugmenter.load")
        meta, saved = ckpt.read_meta(Path(path), config)
        aug = cls(encoder, saved.replace(hidden_size=0), **wrap_kwargs)
        bank, phase = ckpt.restore(Path(path), meta, saved, aug.encoder, aug.ram, device, strict)
        if bank is not None and phase is not None:
            aug.memory.install(bank, phase)
        return aug.eval()

    def trainable_parameters(self) -> str:
        """A one-line summary of RAM vs encoder parameters (what RAFT trains)."""
        ram, enc = (sum(p.numel() for p in m.parameters()) for m in (self.ram, self.encoder))
        return f"RAM parameters: {ram:,} | encoder parameters (frozen in RAFT): {enc:,}"
