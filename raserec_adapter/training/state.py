"""What a training run reports, and the state file that lets an interrupted run resume.

:class:`TrainResult` is what :func:`~raserec_adapter.pretrain` and
:meth:`~raserec_adapter.RetrievalAugmenter.fit_raft` return. :class:`TrainingRun` writes and
restores everything a pre-training run needs to continue after an interruption: the model's
weights (current and best), the optimizer, the early-stopping counters, the random states and
the history. The file holds tensors and one JSON string (no pickled objects), and its SHA-256 in
the zip comment; it is written to a hidden name, synced and renamed (a kill at any instant leaves
the old or the new file), and read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raserec_adapter import _atomic, distributed
from raserec_adapter.data import LeaveOneOutSplit

FORMAT = "raserec-adapter pretrain state 1"


@dataclass
class TrainResult:
    """What a training run did.

    Attributes:
        best_epoch: Epoch (1-based) of the best validation score; its weights are loaded.
        best_valid: Validation metrics of that epoch.
        history: One dict per epoch: loss parts, validation metrics, seconds.
        epochs_run: Epochs trained before stopping.
        seconds: Wall time of the run (of all its resumed parts).
        baseline_valid: RAFT only: validation metrics of the frozen encoder alone, without
            the RAM (what the RAM has to beat); empty for pre-training.
        invocations: Pre-training only: one dict per call that trained this run (a resumed
            run has one per call): ``first_epoch`` and ``last_epoch`` it trained (``last_epoch
            < first_epoch`` when it trained none), its ``seconds``, ``started_at`` (UTC),
            ``device``, ``torch_threads`` and the caller's ``run_info`` (command, commit, ...).
        alpha_selection: RAFT with ``RAFTConfig.alpha_grid`` only: ``trained`` (the alpha RAFT
            trained with), ``chosen`` and ``valid`` (each value's validation score);
            ``best_valid`` then holds the chosen alpha's metrics.
    """

    best_epoch: int = 0
    best_valid: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    epochs_run: int = 0
    seconds: float = 0.0
    baseline_valid: dict[str, float] = field(default_factory=dict)
    invocations: list[dict[str, Any]] = field(default_factory=list)
    alpha_selection: dict[str, Any] = field(default_factory=dict)


@dataclass
class EarlyStopping:
    """Where a run stands: its result so far, the best weights and the patience counter."""

    result: TrainResult = field(default_factory=TrainResult)
    best_state: dict[str, torch.Tensor] | None = None
    best_score: float = -math.inf
    bad_epochs: int = 0

    def update(self, epoch: int, score: float, valid: dict[str, float], module: nn.Module) -> bool:
        """Records an epoch's validation ``score``; on a new best keeps ``module``'s weights.

        Returns:
            Whether the epoch improved on the best score so far (a tie or a NaN score does
            not).
        """
        self.result.epochs_run = epoch
        if not score > self.best_score:  # also NaN: `NaN <= best` would be False
            self.bad_epochs += 1
            return False
        self.best_score, self.bad_epochs = score, 0
        self.result.best_epoch, self.result.best_valid = epoch, valid
        self.best_state = weights_copy(module)
        return True


def weights_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``module``'s state dict (one epoch's weights to give back later)."""
    return {n: t.detach().clone() for n, t in module.state_dict().items()}


@contextlib.contextmanager
def gives_back_best(module: nn.Module, stop: EarlyStopping) -> Iterator[None]:
    """On leaving the block, even by an error or an interrupt: ``module`` holds the best epoch's
    weights, else (no epoch finished) the weights it had on entering.

    A run that diverges (NaN) or is interrupted after a good epoch thus never leaves the
    model with the broken or half-trained weights of the last steps.
    """
    start = weights_copy(module)
    try:
        yield
    except BaseException as exc:
        kept = "the weights it had before training"
        if stop.best_state is not None:
            kept = f"the weights of its best epoch ({stop.result.best_epoch})"
        logging.getLogger("raserec_adapter").warning(
            "training stopped by %s: %s keeps %s", type(exc).__name__, type(module).__name__, kept
        )
        raise
    finally:
        module.load_state_dict(stop.best_state if stop.best_state is not None else start)


def atomic_save(
    state: dict[str, Any], path: Path, step_prefix: str = "file", checksum: bool = False
) -> None:
    """``torch.save`` to a hidden name beside ``path``, synced, then ``os.replace``.

    At every instant, a kill included, ``path`` holds the old or the new file; hidden files of
    earlier interrupted writes of ``path`` are deleted first (:func:`raserec_adapter._atomic.
    write_file`; ``step_prefix`` names its steps for the fault-injection tests). With
    ``checksum`` the file's SHA-256 goes into its zip comment (:func:`raserec_adapter._atomic.
    seal_zip`); ``torch.load`` reads it as any other.
    """

    def write(tmp: Path) -> None:
        torch.save(state, tmp)
        if checksum:
            _atomic.seal_zip(tmp)

    _atomic.write_file(Path(path), write, step_prefix)


@dataclass
class TrainingRun:
    """What a state file belongs to: the settings, the model, its optimizer and random draws.

    Args:
        config: The run's settings as a JSON-able dict; a resumed run must match it in every
            key but ``epochs``.
        module: The model being trained.
        optimizer: Its optimizer.
        rng: A NumPy generator the run draws from (``None`` if none).
        device: Where the run trains.
        data: What identifies the training data (a resumed run must train on the same data;
            states written without it are not checked).
    """

    config: dict[str, Any]
    module: nn.Module
    optimizer: torch.optim.Optimizer
    rng: np.random.Generator | None
    device: torch.device
    data: dict[str, Any] | None = None

    def save(self, path: Path, stopping: EarlyStopping) -> None:
        """Writes the run's state after an epoch."""
        r = stopping.result
        meta = {
            "format": FORMAT,
            "config": self.config,
            "data": self.data,
            "best_score": stopping.best_score,
            "bad_epochs": stopping.bad_epochs,
            "result": {
                "best_epoch": r.best_epoch,
                "best_valid": r.best_valid,
                "history": r.history,
                "epochs_run": r.epochs_run,
                "seconds": r.seconds,
                "invocations": r.invocations,
            },
            "numpy_rng": self.rng.bit_generator.state if self.rng is not None else None,
        }
        state: dict[str, Any] = {
            "meta": json.dumps(meta),
            "model": self.module.state_dict(),
            "best_model": stopping.best_state,
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        atomic_save(state, path, "state", checksum=True)  # restore() refuses a changed file

    def restore(self, path: Path) -> EarlyStopping:
        """Loads a state written by :meth:`save` into this run after checking that it fits.

        The file is checked against the SHA-256 that :meth:`save` wrote into it (states written
        before, or re-saved by ``torch.save``, load with a warning that they cannot be
        verified); hidden files that interrupted writes of ``path`` left are deleted.

        Raises:
            ValueError: The file is not such a state, is damaged (it differs from its
                SHA-256), or it comes from other settings (any but ``epochs``) or another
                model. Nothing is changed then.
        """
        _atomic.settle(Path(path))
        advice = "pass another state_path or resume=False to start over"
        try:
            seal, why = _atomic.check_zip_seal(Path(path))
        except OSError as exc:
            seal, why = "foreign", repr(exc)
        if seal == "mismatch":
            raise ValueError(
                f"the training state at {path} is damaged: {why} (it changed on disk after it "
                f"was written); resume from a backup copy, or {advice}"
            )
        try:
            if seal == "foreign":
                raise ValueError(why)
            state = torch.load(path, map_location=self.device, weights_only=True)
            meta = json.loads(state["meta"])
            if meta.get("format") != FORMAT:
                raise KeyError("format")
        except Exception as exc:  # any unreadable file gets the same advice
            raise ValueError(
                f"{path} is not a pre-training state written by pretrain(state_path=...), or it "
                f"is damaged ({exc!r}); {advice}"
            ) from exc
        if seal == "unsealed":
            logging.getLogger("raserec_adapter").warning(
                "%s has no checksum (written by a raserec-adapter before it was recorded, or "
                "re-saved with torch.save): its content cannot be verified",
                path,
            )
        free = {"epochs"}
        if "data" not in meta:  # written before states recorded their data: max_len was then
            free.add("max_len")  # recorded as 50 whatever the split used
        saved = {k: v for k, v in meta["config"].items() if k not in free}
        now = {k: v for k, v in self.config.items() if k not in free}
        if saved != now:
            diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            details = ", ".join(f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}" for k in diff)
            raise ValueError(
                f"the training state at {path} comes from different settings ({details}); "
                "resume with the saved settings (only epochs may change) or use another state_path"
            )
        saved_data = meta.get("data")
        if saved_data is not None and self.data is not None and saved_data != self.data:
            raise ValueError(
                f"the training state at {path} was written for other training data (saved "
                f"{saved_data}, now {self.data}); resume on the same data or use another "
                "state_path"
            )
        try:
            self.module.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise ValueError(
                f"the training state at {path} was written for a different model: {exc}"
            ) from exc
        # the implementation flags follow this run's device (a GPU run may be resumed on a CPU)
        keep = [
            {k: g[k] for k in ("fused", "foreach") if k in g} for g in self.optimizer.param_groups
        ]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, flags in zip(self.optimizer.param_groups, keep, strict=True):
            group.update(flags)
        torch.set_rng_state(state["torch_rng"].cpu())
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
        if self.rng is not None and meta["numpy_rng"] is not None:
            self.rng.bit_generator.state = meta["numpy_rng"]
        result = TrainResult(**meta["result"])
        if not result.invocations and result.epochs_run > 0:
            result.invocations = [
                {
                    "first_epoch": 1,
                    "last_epoch": result.epochs_run,
                    "note": "not recorded: the state was written before state files listed "
                    "the calls that trained them",
                }
            ]
        return EarlyStopping(
            result=result,
            best_state={k: v.to(self.device) for k, v in state["best_model"].items()},
            best_score=float(meta["best_score"]),
            bad_epochs=int(meta["bad_epochs"]),
        )


def seed_everything(seed: int) -> None:
    """Seeds torch (CPU and CUDA) and numpy's legacy global generator."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


class RunningMean:
    """Mean of one scalar loss per step, kept on the device and read once (0.0 for none).

    Each step adds in place to one tensor allocated up front, so a step never waits for the
    device and nothing of a step outlives it. Keeping every step's loss tensor until the epoch
    ends (a list) gives the same mean but, on a CPU, costs memory: resident memory grows by
    about a step's activations per step (from 1 to over 10 GB within one BERT4Rec epoch on
    Sports; ``benchmarks/memory_pretrain.py``), most likely because glibc places each kept
    scalar in a hole that a freed large activation left in the heap and the next step's
    activations, no longer fitting there, take fresh memory.

    Examples:
        >>> m = RunningMean(torch.device("cpu"))
        >>> for loss in (torch.tensor(1.0), torch.tensor(2.0, requires_grad=True) * 2):
        ...     m.add(loss)
        >>> m.value()
        2.5
    """

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0

    def add(self, loss: torch.Tensor) -> None:
        self.total += loss.detach()
        self.count += 1

    def value(self) -> float:
        return float(self.total.cpu()) / self.count if self.count else 0.0


def call_record(result: TrainResult, device: torch.device, info: dict[str, Any]) -> dict:
    """A new entry of ``result.invocations`` for a pre-training call (updated as it trains);
    with ``processes`` in a process group."""
    call: dict[str, Any] = {
        "first_epoch": result.epochs_run + 1,
        "last_epoch": result.epochs_run,
        "seconds": 0.0,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        **info,
    }
    if distributed.active():  # a shared run: how many processes trained it
        call["processes"] = distributed.world_size()
    result.invocations.append(call)
    return call


def json_info(run_info: Mapping[str, Any] | None) -> dict[str, Any]:
    """``run_info`` as a plain dict after checking that the state file's JSON can hold it."""
    if run_info is None:
        return {}
    if not isinstance(run_info, Mapping):
        raise ValueError(
            f"run_info must be a mapping such as {{'command': ...}}, got {type(run_info).__name__}"
        )
    taken = sorted(set(run_info) & CALL_KEYS)
    if taken:
        raise ValueError(
            f"run_info may not set {taken}: pretrain records those itself; use other names"
        )
    try:
        return json.loads(json.dumps(dict(run_info), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"run_info must hold JSON values only (str, numbers, lists, dicts): {exc}"
        ) from exc


# what pretrain records about each call itself (TrainResult.invocations; "note" marks the
# epochs of a state written before the calls were recorded)
CALL_KEYS = {
    "first_epoch",
    "last_epoch",
    "seconds",
    "started_at",
    "device",
    "torch_threads",
    "processes",
    "note",
}


def data_fingerprint(split: LeaveOneOutSplit) -> dict[str, int]:
    """What identifies a split's training data in a state file (sizes and a CRC of pairs)."""
    train = split.train
    crc = zlib.crc32(np.ascontiguousarray(train.targets, dtype=np.int64).tobytes())
    crc = zlib.crc32(np.ascontiguousarray(train.users, dtype=np.int64).tobytes(), crc)
    return {  # plain ints: the state's meta is JSON (num_items may be a NumPy integer)
        "users": int(split.sequences.num_users),
        "items": int(split.sequences.num_items),
        "train_pairs": len(train),
        "train_crc32": int(crc),
    }
