"""Frozen, validated configuration dataclasses, one per component, saved as JSON.

Defaults follow the RaSeRec authors' released settings for Beauty. Runtime choices (threads,
a resumable state file, facts about the run) live in one :class:`RunOptions`, never saved
with a config; the device and progress bars are function arguments.

Examples:
    >>> cfg = AugmenterConfig(ram=RAMConfig(alpha=0.3))
    >>> AugmenterConfig.from_dict(cfg.to_dict()) == cfg
    True
    >>> RAMConfig(alpha=1.5)
    Traceback (most recent call last):
    ...
    ValueError: RAMConfig.alpha must be in [0, 1], got 1.5
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

import numpy as np

from raserec_adapter.evaluation.metrics import DEFAULT_KS
from raserec_adapter.memory.faiss_scale import check_bank_config

__all__ = [
    "AugmenterConfig",
    "BankConfig",
    "PretrainConfig",
    "RAFTConfig",
    "RAMConfig",
    "RunOptions",
]

C = TypeVar("C", bound="_Config")

# the keys training looks the validation metric up in: the evaluation's, at its default cut-offs
VALID_METRICS = tuple(f"{m}@{k}" for k in DEFAULT_KS for m in ("HR", "NDCG", "MRR"))


def _check(cond: bool, cls: object, name: str, msg: str, value: object) -> None:
    if not cond:
        raise ValueError(f"{type(cls).__name__}.{name} must be {msg}, got {value!r}")


def _type_error(obj: object, name: str, want: str, value: object) -> ValueError:
    return ValueError(
        f"{type(obj).__name__}.{name} must be {want}, got {value!r} ({type(value).__name__})"
    )


def _as_int(obj: object, name: str, value: object) -> int:
    """``value`` as a Python int: ints and numpy integers pass, bools, floats and strings not."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    raise _type_error(obj, name, "an int", value)


def _check_loss(obj: Any) -> None:
    """``loss``, ``negatives`` and ``in_batch_negatives`` of a training stage's config."""
    _check(obj.loss in ("full", "sampled"), obj, "loss", "'full' or 'sampled'", obj.loss)
    _check(obj.negatives >= 0, obj, "negatives", ">= 0", obj.negatives)
    ok = obj.loss == "full" or obj.negatives > 0 or obj.in_batch_negatives
    _check(ok, obj, "negatives", "> 0 where in_batch_negatives is off", obj.negatives)


def _check_seed(obj: Any) -> None:
    """Seeds feed torch.manual_seed and numpy's generators: 0 <= seed < 2**63."""
    ok = 0 <= obj.seed < 2**63
    _check(ok, obj, "seed", "a non-negative int below 2**63 (e.g. 0, 1, 2)", obj.seed)


def _config_type(hint: object) -> type[_Config] | None:
    """``hint`` if it is a config class (a nested section), else ``None``."""
    is_class = isinstance(hint, type) and getattr(hint, "__origin__", None) is None  # not list[int]
    return hint if is_class and issubclass(hint, _Config) else None


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """The evaluated annotation of each field of a config class."""
    return typing.get_type_hints(cls)


def _check_types(obj: _Config) -> None:
    """Checks (and normalises to plain Python types) every field whose annotation is ``int``,
    ``float``, ``bool``, ``str`` or a nested config; fields of other types check themselves."""
    hints = _field_types(type(obj))
    for f in fields(obj):
        hint, value = hints[f.name], getattr(obj, f.name)
        if hint is int:
            new: object = _as_int(obj, f.name, value)
        elif hint is float:
            ok = isinstance(value, (int, float, np.integer, np.floating))
            if not ok or isinstance(value, (bool, np.bool_)):
                raise _type_error(obj, f.name, "a float or an int", value)
            new = float(value)
            if not math.isfinite(new):
                raise _type_error(obj, f.name, "a finite float", value)
        elif hint is bool:
            if not isinstance(value, (bool, np.bool_)):
                raise _type_error(obj, f.name, "a bool (True or False)", value)
            new = bool(value)
        elif hint is str:
            if not isinstance(value, str):
                raise _type_error(obj, f.name, "a str", value)
            new = value
        elif (nested := _config_type(hint)) is not None:
            if not isinstance(value, nested):
                raise _type_error(obj, f.name, f"a {nested.__name__}", value)
            new = value
        else:
            continue
        if new is not value:
            object.__setattr__(obj, f.name, new)


@dataclass(frozen=True)
class _Config:
    def __post_init__(self) -> None:
        _check_types(self)  # first: the value checks below may compare, e.g. ``k >= 1``
        self._validate()

    def _validate(self) -> None:
        """Value checks of the subclass, run after every field has its annotated type."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        if not isinstance(data, Mapping):
            raise ValueError(
                f"{cls.__name__}.from_dict expects a JSON object (dict) of {cls.__name__} "
                f"fields, got {data!r} ({type(data).__name__})"
            )
        known = {f.name: f for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} fields {sorted(unknown, key=str)}; known: {sorted(known)}"
            )
        hints = _field_types(cls)
        kwargs = {}
        for name, value in data.items():
            target = _config_type(hints[name])
            if target is not None:
                if isinstance(value, Mapping):
                    value = target.from_dict(value)
                elif not isinstance(value, target):
                    raise ValueError(
                        f"{cls.__name__}.{name} must be a JSON object (dict) of "
                        f"{target.__name__} fields, got {value!r} ({type(value).__name__})"
                    )
            kwargs[name] = value
        return cls(**kwargs)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


def _valid_metric(obj: object, name: str, value: str) -> None:
    _check(value in VALID_METRICS, obj, name, f"one of {VALID_METRICS}", value)


BATCHING = ("windows", "bucketed", "random")


@dataclass(frozen=True)
class PretrainConfig(_Config):
    """Stage 1: next-item cross-entropy plus the contrastive retrieval objective.

    Attributes:
        epochs: Maximum epochs.
        batch_size: Training pairs per step.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        patience: Stop after this many epochs without a better validation score.
        valid_metric: Validation metric for early stopping and the best checkpoint
            (``"MRR@10"``, as the released pre-training stage): ``"HR@K"``, ``"NDCG@K"`` or
            ``"MRR@K"`` with K one of the evaluated cut-offs 5, 10, 20.
        retrieval_weight: lambda in L_rec + lambda * L_ret; 0 trains plain cross-entropy.
        temperature: tau of the InfoNCE loss.
        mask_false_negatives: Drop in-batch "negatives" that share the anchor's target.
        mask_same_user_negatives: Drop in-batch "negatives" from the anchor's own user (its
            other prefixes: a ``"windows"`` batch holds about 12 per anchor on Beauty, a
            ``"random"`` one almost none).
        max_len: Inputs are the last ``max_len`` items; ``None`` (default) takes the
            split's, any other value must equal it.
        seed: Seed of initialisation-independent randomness (batch order, dropout, positives).
        batching: How training pairs form batches. ``"windows"`` (default): a causal encoder
            sees all prefixes of a user in one pass, windows of similar length batched
            together (about 7x less encoder work); other encoders fall back to
            ``"bucketed"``. ``"bucketed"``: random prefixes, one encoding each, batches of
            similar length (little padding). ``"random"``: uniformly random prefixes per
            batch, as the released code's data loader draws them; on a CPU each batch is
            encoded in groups of similar length, on a GPU padded to its longest. For SASRec on
            Beauty it trained better encoders than ``"windows"`` over five seeds (test HR@5
            with the RAM 0.0575 against 0.0560), at about twice the CPU time per epoch, so
            ``examples/sasrec.py`` uses it; the default stays the fast ``"windows"``.
        loss: ``"full"`` (softmax over every item) or ``"sampled"`` (large catalogues:
            :class:`~raserec_adapter.training.sampled_softmax.SampledSoftmax`).
        negatives: ``loss="sampled"``: uniformly drawn candidates per step (0: none).
        in_batch_negatives: ``loss="sampled"``: the batch's targets are candidates too.
    """

    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10
    valid_metric: str = "MRR@10"
    retrieval_weight: float = 0.1
    temperature: float = 1.0
    mask_false_negatives: bool = False
    mask_same_user_negatives: bool = False
    max_len: int | None = None
    seed: int = 0
    batching: str = "windows"
    loss: str = "full"
    negatives: int = 256
    in_batch_negatives: bool = True

    def _validate(self) -> None:
        _check_loss(self)
        _check(self.epochs >= 1, self, "epochs", ">= 1", self.epochs)
        _check(self.batching in BATCHING, self, "batching", f"one of {BATCHING}", self.batching)
        _check(self.batch_size >= 2, self, "batch_size", ">= 2", self.batch_size)
        _check(self.lr > 0, self, "lr", "> 0", self.lr)
        _check(self.weight_decay >= 0, self, "weight_decay", ">= 0", self.weight_decay)
        _check(self.patience >= 1, self, "patience", ">= 1", self.patience)
        _check(self.retrieval_weight >= 0, self, "retrieval_weight", ">= 0", self.retrieval_weight)
        _check(self.temperature > 0, self, "temperature", "> 0", self.temperature)
        if self.max_len is not None:
            object.__setattr__(self, "max_len", _as_int(self, "max_len", self.max_len))
            _check(self.max_len >= 1, self, "max_len", ">= 1", self.max_len)
        _valid_metric(self, "valid_metric", self.valid_metric)
        _check_seed(self)


@dataclass(frozen=True)
class BankConfig(_Config):
    """The memory bank.

    Attributes:
        kind: ``"faiss"``, ``"torch"`` (exact, GPU-capable) or ``"milvus"``
            (:class:`~raserec_adapter.memory.MilvusMemoryBank`, the ``milvus`` extra).
        index_factory: Faiss factory string; ``"IVF128,Flat"`` is the paper's, ``"Flat"`` exact.
        nprobe: IVF lists probed per query.
        overfetch: Candidates fetched per wanted memory before the exclusion rule filters them.
        prefix_lengths: Keep only memories whose prefix length lies in one of these inclusive
            ranges ``(lo, hi)`` (``hi = None``: no upper bound; ``None``: every memory), the
            test bank's validation pairs included; queries are not filtered. The paper's
            partitions (appendix G): ``(1, 2)``, ``(3, 6)``, ``(7, None)``; Sports does best
            with ``((1, 6),)``.
        milvus_uri: A Milvus Lite file (``"x.db"``) or server (``"http://host:19530"``);
            ``""``: Milvus Lite in a new temporary folder.
        milvus_collection: The prefix of the Milvus collections' names.
        store: Faiss only: ``"compact"`` keeps float16 keys and each distinct value once.
        refine: Faiss only: re-score the index's candidates with the stored keys.
        train_size: Faiss only: train the index on a seeded sample of this many memories.
        shards: Faiss only: split an IVF index into this many shards searched in parallel.
            These four: :mod:`~raserec_adapter.memory.faiss_scale`, "Choosing a Faiss index".

    Examples:
        >>> BankConfig(prefix_lengths=((1, 2), (7, None))).prefix_lengths
        ((1, 2), (7, None))
    """

    kind: str = "faiss"
    index_factory: str = "IVF128,Flat"
    nprobe: int = 1
    overfetch: int = 4
    prefix_lengths: tuple[tuple[int, int | None], ...] | None = None
    milvus_uri: str = ""
    milvus_collection: str = "raserec_memories"
    store: str = "full"
    refine: bool = False
    train_size: int | None = None
    shards: int = 1

    def _validate(self) -> None:
        check_bank_config(self)  # every field but prefix_lengths
        if self.prefix_lengths is not None:
            name = "prefix_lengths"
            want = "ranges (lo, hi) of ints with 1 <= lo <= hi or hi = None, at least one"
            try:  # JSON gives lists back: store tuples, so configs compare and hash
                ranges = tuple(
                    (_as_int(self, name, lo), None if hi is None else _as_int(self, name, hi))
                    for lo, hi in self.prefix_lengths
                )
            except (TypeError, ValueError):
                ranges = ()
            ok = bool(ranges) and all(lo >= 1 and (hi is None or hi >= lo) for lo, hi in ranges)
            _check(ok, self, "prefix_lengths", want, self.prefix_lengths)
            object.__setattr__(self, "prefix_lengths", ranges)

    def keeps(self, prefix_lengths: np.ndarray) -> np.ndarray | None:
        """Boolean mask of the memories this config keeps (``None``: all of them).

        Examples:
            >>> BankConfig(prefix_lengths=((1, 2), (7, None))).keeps(np.array([1, 3, 7, 50]))
            array([ True, False,  True,  True])
        """
        if self.prefix_lengths is None:
            return None
        keep = np.zeros(len(prefix_lengths), dtype=bool)
        for lo, hi in self.prefix_lengths:
            keep |= (prefix_lengths >= lo) & (True if hi is None else prefix_lengths <= hi)
        return keep


@dataclass(frozen=True)
class RAMConfig(_Config):
    """The Retrieval-Augmented Module: dual-channel cross-attention (paper Eq. 9-11).

    Attributes:
        alpha: Weight of the encoder's own representation in the final mix.
        beta: Weight of channel 1 (keys h_k, values v_k) vs channel 2 (keys v_k, values h_k).
        k: Memories retrieved per query.
        num_heads: Attention heads.
        inner_size: Feed-forward inner size.
        dropout: Dropout throughout the RAM.
        attn_temperature: Attention scores are divided by this before the softmax.
        layers: Cross-attention blocks per channel (each after the first preceded by a
            feed-forward block): 2 gives the released cross-attention -> FFN -> cross-attention.
    """

    alpha: float = 0.5
    beta: float = 1.0
    k: int = 20
    num_heads: int = 2
    inner_size: int = 256
    dropout: float = 0.5
    attn_temperature: float = 1.0
    layers: int = 2

    def _validate(self) -> None:
        _check(0 <= self.alpha <= 1, self, "alpha", "in [0, 1]", self.alpha)
        _check(0 <= self.beta <= 1, self, "beta", "in [0, 1]", self.beta)
        _check(self.k >= 1, self, "k", ">= 1", self.k)
        _check(self.num_heads >= 1, self, "num_heads", ">= 1", self.num_heads)
        _check(self.inner_size >= 1, self, "inner_size", ">= 1", self.inner_size)
        _check(0 <= self.dropout < 1, self, "dropout", "in [0, 1)", self.dropout)
        _check(self.attn_temperature > 0, self, "attn_temperature", "> 0", self.attn_temperature)
        _check(self.layers >= 1, self, "layers", ">= 1", self.layers)


@dataclass(frozen=True)
class RAFTConfig(_Config):
    """Stage 2: retrieval-augmented fine-tuning of the RAM with the encoder frozen.

    Attributes:
        epochs: Maximum epochs.
        batch_size: Queries per step.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        patience: Early-stopping patience in epochs.
        valid_metric: Validation metric for early stopping: ``"HR@K"``, ``"NDCG@K"`` or
            ``"MRR@K"`` with K one of 5, 10, 20.
        seed: Seed of batch order and dropout.
        precision: ``"float32"``, or ``"bfloat16"`` for the step's item scores and softmax (on a
            CPU about 2x faster than float32 with AVX512-BF16 or AMX, slower without; on a GPU
            one bfloat16 product). Evaluation always scores in float32.
        fallback: Do no harm: when the RAM's best validation score does not beat the frozen
            encoder's, the augmenter serves the encoder's own representation (a warning says
            so; ``augmenter.ram.serve(True)`` forces the RAM). ``False`` always serves the RAM.
        alpha_grid: After training, choose ``RAMConfig.alpha`` among these values (and the
            trained one) by the validation metric over the cached validation queries; a tie
            keeps the trained alpha, then the larger. Empty (default): the paper's fixed 0.5.
        loss: ``"full"`` or ``"sampled"``, as :class:`PretrainConfig`'s.
        negatives: As :class:`PretrainConfig`'s.
        in_batch_negatives: As :class:`PretrainConfig`'s.
    """

    epochs: int = 100
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10
    valid_metric: str = "HR@10"
    seed: int = 0
    precision: str = "float32"
    fallback: bool = True
    alpha_grid: tuple[float, ...] = ()
    loss: str = "full"
    negatives: int = 256
    in_batch_negatives: bool = True

    def _validate(self) -> None:
        _check_loss(self)
        _check(self.epochs >= 1, self, "epochs", ">= 1", self.epochs)
        _check(self.batch_size >= 1, self, "batch_size", ">= 1", self.batch_size)
        _check(self.lr > 0, self, "lr", "> 0", self.lr)
        _check(self.weight_decay >= 0, self, "weight_decay", ">= 0", self.weight_decay)
        _check(self.patience >= 1, self, "patience", ">= 1", self.patience)
        _valid_metric(self, "valid_metric", self.valid_metric)
        ok = self.precision in ("float32", "bfloat16")
        _check(ok, self, "precision", "'float32' or 'bfloat16'", self.precision)
        _check_seed(self)
        want = "a tuple of numbers in [0, 1]"
        try:  # JSON gives lists back: store a tuple of floats, so configs compare and hash
            grid = tuple(float(a) for a in self.alpha_grid if not isinstance(a, bool))
        except (TypeError, ValueError):
            grid = (math.nan,)
        ok = len(grid) == len(self.alpha_grid) and all(0.0 <= a <= 1.0 for a in grid)
        _check(
            ok and not isinstance(self.alpha_grid, str), self, "alpha_grid", want, self.alpha_grid
        )
        object.__setattr__(self, "alpha_grid", grid)


@dataclass(frozen=True)
class AugmenterConfig(_Config):
    """Everything a :class:`~raserec_adapter.RetrievalAugmenter` saves with its checkpoint.

    Attributes:
        hidden_size: Representation size d (checked against the encoder; 0 = take the encoder's).
        max_len: Inputs are the last ``max_len`` items.
        bank: Memory-bank settings.
        ram: RAM head settings.
    """

    hidden_size: int = 0
    max_len: int = 50
    bank: BankConfig = field(default_factory=BankConfig)
    ram: RAMConfig = field(default_factory=RAMConfig)

    def _validate(self) -> None:
        _check(self.hidden_size >= 0, self, "hidden_size", ">= 0", self.hidden_size)
        _check(self.max_len >= 1, self, "max_len", ">= 1", self.max_len)

    def for_hidden_size(self, hidden_size: int) -> AugmenterConfig:
        """This config with ``hidden_size`` set to an encoder's (0 here means "take it")."""
        if self.hidden_size and self.hidden_size != hidden_size:
            raise ValueError(
                f"config.hidden_size = {self.hidden_size} but the encoder's item table has size "
                f"{hidden_size}; leave hidden_size at 0 to take the encoder's"
            )
        return self.replace(hidden_size=hidden_size)


@dataclass(frozen=True)
class RunOptions:
    """How a training call runs, as opposed to what it computes: never saved with a config.

    Attributes:
        threads: CPU threads for torch during the call (``None``: leave torch's setting);
            restored afterwards.
        state_path: If given, stage 1 writes its whole training state (weights, optimizer,
            early-stopping counters, random states, history) there after every epoch,
            atomically, so that an interrupted run can continue.
        resume: Continue from ``state_path`` when that file exists (start from epoch 1 when it
            does not); on the same device the resumed run draws the same batches, dropout
            masks and positives as an uninterrupted one.
        run_info: JSON-able facts about the call (say the command line and the code's
            commit), recorded with its epochs, time, device and thread count in
            ``TrainResult.invocations``.
        fuse: Encode a stage-1 step's anchor pass, second view and positives in one padded
            call (``None``: on an accelerator, not on a CPU). Same losses in distribution.

    Examples:
        >>> RunOptions(state_path="runs/x/pretrain-state.pt", resume=True).resume
        True
        >>> RunOptions(resume=True)
        Traceback (most recent call last):
        ...
        ValueError: RunOptions(resume=True) needs state_path: the file the interrupted run wrote
    """

    threads: int | None = None
    state_path: str | os.PathLike[str] | None = None
    resume: bool = False
    run_info: Mapping[str, Any] | None = None
    fuse: bool | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ValueError(
                f"RunOptions.threads must be None or an int >= 1, got {self.threads!r}"
            )
        for name in ("resume",):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"RunOptions.{name} must be True or False, got {self.resume!r}")
        if self.fuse is not None and not isinstance(self.fuse, bool):
            raise TypeError(f"RunOptions.fuse must be None, True or False, got {self.fuse!r}")
        if self.resume and self.state_path is None:
            raise ValueError(
                "RunOptions(resume=True) needs state_path: the file the interrupted run wrote"
            )
