"""Stage 1: collaborative pre-training (paper Eq. 5-8, settings of the released code).

``L = L_rec + lambda * L_ret``: softmax cross-entropy of ``h . v_i`` over all items, plus an
InfoNCE loss that pulls together two sequences with the same next item. As in the authors'
released code, the two views of an anchor are a second, dropout-perturbed encoding of the anchor
and the encoding of a randomly drawn other training prefix with the same target (the anchor
itself when it has no such partner); the other 2B - 2 encodings of the batch are negatives
(:mod:`raserec_adapter.training.views` encodes them). ``mask_false_negatives`` removes negatives
that share the anchor's target, ``mask_same_user_negatives`` those from the anchor's own user.

The loop reads top to bottom: :func:`pretrain` sets up a :class:`_Run`, then per epoch
:func:`_train_epoch` (its :func:`_step` per batch) and :func:`_end_epoch` (validation, early
stopping, checkpoint, the resumable state). A backbone-specific recommendation loss (e.g.
BERT4Rec's cloze task) can replace the cross-entropy: pass ``rec_loss``.

Examples:
    >>> from raserec_adapter import PretrainConfig, Sequences, leave_one_out, wrap_encoder
    >>> from raserec_adapter.models import SASRec
    >>> seqs = Sequences.from_lists([[1, 2, 3, 4, 5], [2, 3, 4, 5, 1], [3, 4, 5, 1, 2]] * 4)
    >>> enc = wrap_encoder(SASRec(num_items=5, hidden_size=16, max_len=5))
    >>> result = pretrain(enc, leave_one_out(seqs, max_len=5), PretrainConfig(epochs=2),
    ...                   show_progress=False)
    >>> result.epochs_run
    2
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from raserec_adapter import distributed
from raserec_adapter._checks import check_device, require_config
from raserec_adapter._progress import progress
from raserec_adapter.config import PretrainConfig, RunOptions
from raserec_adapter.data import LeaveOneOutSplit
from raserec_adapter.data.batching import (
    Batch,
    CausalWindows,
    causal_windows,
    iter_batches,
    iter_windows,
)
from raserec_adapter.data.validation import check_item_count, require_split
from raserec_adapter.encoder import WrappedEncoder, wrap_encoder
from raserec_adapter.evaluation import evaluate_ranking
from raserec_adapter.training.losses import info_nce, next_item_loss
from raserec_adapter.training.sampled_softmax import SampledSoftmax
from raserec_adapter.training.sharding import DrawnPositives, EncoderCalls, Sharding
from raserec_adapter.training.state import (
    EarlyStopping,
    RunningMean,
    TrainingRun,
    TrainResult,
    atomic_save,
    call_record,
    data_fingerprint,
    gives_back_best,
    json_info,
    seed_everything,
)
from raserec_adapter.training.views import PositiveSampler, anchors, encode_pairs, fused_views

__all__ = ["RecLoss", "evaluate_encoder", "pretrain"]

logger = logging.getLogger("raserec_adapter")

RecLoss = Callable[[WrappedEncoder, Batch], torch.Tensor]
"""A backbone's own recommendation loss: ``(encoder, batch of training prefixes) -> scalar``."""


def pretrain(
    encoder: torch.nn.Module,
    split: LeaveOneOutSplit,
    config: PretrainConfig | None = None,
    *,
    rec_loss: RecLoss | None = None,
    device: torch.device | str = "cpu",
    checkpoint: str | Path | None = None,
    show_progress: bool = True,
    run: RunOptions | None = None,
) -> TrainResult:
    """Trains an encoder with ``L_rec + lambda * L_ret`` and early stopping on validation.

    Args:
        encoder: A :class:`~raserec_adapter.SequenceEncoder` or a wrapped one.
        split: Leave-one-out split; trains on ``split.train``, validates on ``split.valid``.
        config: Settings (the released code's defaults when omitted).
        rec_loss: A backbone-specific recommendation loss used instead of the cross-entropy;
            it receives per-prefix training batches.
        device: Where to train.
        checkpoint: If given, the best epoch's ``state_dict`` of the user's model is written
            there (``torch.save``, load with ``weights_only=True``).
        show_progress: Show per-batch progress and log per-epoch results.
        run: Runtime-only options (:class:`~raserec_adapter.RunOptions`): threads, the
            resumable state file (``state_path``, ``resume``: every setting but ``epochs``
            must equal the saved run's; a larger ``epochs`` extends a run that reached its
            limit; a run that had stopped early returns its result without training),
            ``run_info`` recorded per call in :attr:`TrainResult.invocations`, and ``fuse``.

    In a process group of ``torchrun`` (:func:`raserec_adapter.distributed.init`) each process
    trains on its part of every global batch of ``config.batch_size`` pairs; rank 0 validates and
    writes the files (``docs/distributed.md``).

    Returns:
        A :class:`TrainResult`; the model holds the best epoch's weights afterwards, also when
        training stops by an error or an interrupt (then the weights it came with if no epoch
        finished), so a run that diverges after good epochs keeps them.

    Raises:
        ValueError: The encoder's item table is too small for the data; a state file from
            other settings, another model, or not a state; ``run_info`` that JSON cannot hold.

    Examples:
        >>> import tempfile
        >>> from raserec_adapter import RunOptions, Sequences, leave_one_out
        >>> from raserec_adapter.models import SASRec
        >>> seqs = Sequences.from_lists([[1, 2, 3, 4, 5], [2, 3, 4, 5, 1], [3, 4, 5, 1, 2]] * 4)
        >>> split = leave_one_out(seqs, max_len=5)
        >>> state = Path(tempfile.mkdtemp()) / "state.pt"
        >>> for epochs in (1, 2):  # as if the first call had been interrupted after epoch 1
        ...     model = SASRec(num_items=5, hidden_size=16, max_len=5)
        ...     res = pretrain(model, split, PretrainConfig(epochs=epochs, max_len=5),
        ...                    run=RunOptions(state_path=state, resume=True), show_progress=False)
        >>> res.epochs_run, len(res.history)
        (2, 2)
        >>> [(c["first_epoch"], c["last_epoch"]) for c in res.invocations]
        [(1, 1), (2, 2)]
    """
    require_split(split, "pretrain")
    if config is not None:
        require_config(config, PretrainConfig, "pretrain")
    opts = run or RunOptions()
    if not isinstance(opts, RunOptions):
        raise TypeError(f"run must be a RunOptions, got {type(opts).__name__}")
    info = json_info(opts.run_info)
    cfg = config or PretrainConfig()
    if cfg.max_len is None:  # recorded (results, state files) as the length actually used
        cfg = cfg.replace(max_len=split.max_len)
    state_path = None if opts.state_path is None else Path(opts.state_path)
    _check_inputs(cfg, split, checkpoint, state_path)
    show_progress = show_progress and distributed.is_main()  # one log of a shared run
    with _threads(opts.threads):
        dev = distributed.local_device(check_device(device))
        r = _setup(encoder, split, cfg, rec_loss, dev, opts.fuse)
        stop, first_epoch = _restore(r, state_path, opts.resume)
        if r.sharding is not None and not distributed.is_main():  # their own dropout draws
            torch.manual_seed(distributed.rank_seed(cfg.seed + first_epoch - 1))
        result, seconds_before, start = stop.result, stop.result.seconds, time.perf_counter()
        call = call_record(result, r.device, info)
        with gives_back_best(r.enc.module, stop):  # an error or interrupt too: the best weights
            for epoch in range(first_epoch, cfg.epochs + 1):
                losses, train_seconds = _train_epoch(r, epoch, show_progress)
                done = _end_epoch(r, stop, epoch, losses, train_seconds, checkpoint, show_progress)
                result.seconds = seconds_before + time.perf_counter() - start
                call["last_epoch"], call["seconds"] = epoch, round(time.perf_counter() - start, 1)
                if state_path is not None and stop.best_state is not None and distributed.is_main():
                    r.state.save(state_path, stop)
                if done:
                    break
        r.enc.eval()
        distributed.barrier()  # rank 0's files are written when any process returns
    result.seconds = seconds_before + time.perf_counter() - start
    call["seconds"] = round(time.perf_counter() - start, 1)
    return result


@contextlib.contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    """torch's CPU thread count set to ``threads`` for the block (``None``: unchanged)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class _Run:
    """What every step of one pre-training call reads: fixed before the first epoch."""

    enc: WrappedEncoder
    split: LeaveOneOutSplit
    cfg: PretrainConfig
    rec_loss: RecLoss | None
    device: torch.device
    fuse: bool
    causal: bool
    windows: CausalWindows | None
    regroup: LeaveOneOutSplit | None
    sampler: PositiveSampler | None
    optimizer: torch.optim.Optimizer
    state: TrainingRun
    sharding: Sharding | None = None  # in a process group: the DDP calls, global positives
    sampled: SampledSoftmax | None = None  # cfg.loss == "sampled"


def _setup(
    encoder: torch.nn.Module,
    split: LeaveOneOutSplit,
    cfg: PretrainConfig,
    rec_loss: RecLoss | None,
    device: torch.device,
    fuse: bool | None,
) -> _Run:
    enc = wrap_encoder(encoder)
    check_item_count(enc.num_items, split)
    enc.check_max_len(split.max_len, "the split's max_len")
    fuse = device.type != "cpu" if fuse is None else fuse
    enc.to(device)
    seed_everything(cfg.seed)
    causal = enc.is_causal and rec_loss is None and cfg.batching == "windows"
    sampler = PositiveSampler(split.train.targets, cfg.seed) if cfg.retrieval_weight > 0 else None
    optimizer = torch.optim.Adam(
        enc.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda"
    )
    state = TrainingRun(
        json.loads(json.dumps(cfg.to_dict())),  # as the saved JSON has it (tuples -> lists)
        enc.module,
        optimizer,
        sampler.rng if sampler is not None else None,
        device,
        data=data_fingerprint(split),
    )
    sampled = None
    if cfg.loss == "sampled":
        if rec_loss is not None:
            raise ValueError(
                "PretrainConfig(loss='sampled') replaces the cross-entropy: no rec_loss"
            )
        counts = np.bincount(split.train.targets, minlength=enc.num_items + 1)
        sampled = SampledSoftmax(enc.num_items, cfg.negatives, cfg.in_batch_negatives, counts)
    sharding = None
    if distributed.active():  # after the seeding: DDP starts every process from rank 0's weights
        drawn = None if sampler is None else DrawnPositives(sampler, len(split.train))
        sharding = Sharding(EncoderCalls(enc), drawn)
    return _Run(
        enc,
        split,
        cfg,
        rec_loss,
        device,
        fuse,
        causal,
        causal_windows(split) if causal else None,
        # uniformly drawn batches span all lengths: on a CPU encode them grouped by length
        split if cfg.batching == "random" and not fuse else None,
        sampler,
        optimizer,
        state,
        sharding,
        sampled,
    )


def _restore(r: _Run, state_path: Path | None, resume: bool) -> tuple[EarlyStopping, int]:
    """The early-stopping state and first epoch: a saved run's when resuming, else fresh."""
    if resume and state_path is not None and state_path.exists():
        stop = r.state.restore(state_path)
        first_epoch = stop.result.epochs_run + 1
        if stop.bad_epochs >= r.cfg.patience:
            first_epoch = r.cfg.epochs + 1  # the saved run had stopped early: nothing left
        logger.info("resuming pre-training from %s after epoch %d", state_path, first_epoch - 1)
        return stop, first_epoch
    if resume:
        logger.info("no training state at %s yet: starting from epoch 1", state_path)
    return EarlyStopping(), 1


def _epoch_batches(r: _Run, epoch: int) -> tuple[Iterator[Batch], int]:
    """This epoch's shuffled batches (causal windows, or prefix pairs) and their number."""
    cfg, split = r.cfg, r.split
    if r.windows is not None:
        batches = iter_windows(split.sequences, r.windows, cfg.batch_size, True, cfg.seed + epoch)
        return batches, math.ceil(r.windows.num_pairs / cfg.batch_size)
    batches = iter_batches(
        split.sequences,
        split.train,
        cfg.batch_size,
        split.max_len,
        True,
        cfg.seed + epoch,
        bucket=cfg.batching != "random",
    )
    return batches, math.ceil(len(split.train) / cfg.batch_size)


def _train_epoch(r: _Run, epoch: int, show_progress: bool) -> tuple[tuple[float, float], float]:
    """One pass over the training pairs: ``((mean L_rec, mean L_ret), seconds)``."""
    r.enc.train()
    t0 = time.perf_counter()
    batches, n_batches = _epoch_batches(r, epoch)
    # losses stay on the device until the epoch ends: reading one every step stalls a GPU
    rec_losses, ret_losses = RunningMean(r.device), RunningMean(r.device)
    for host in progress(batches, n_batches, f"pretrain epoch {epoch}", show_progress):
        loss_rec, loss_ret = _step(r, host)
        rec_losses.add(loss_rec)
        if loss_ret is not None:
            ret_losses.add(loss_ret)
    if r.sharding is not None:  # each process added its share of every step's mean
        distributed.sum_(rec_losses.total)
    return (rec_losses.value(), ret_losses.value()), time.perf_counter() - t0


def _step(r: _Run, host: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimizer step on a batch (``host`` on the CPU): the two losses, detached later.

    In a process group ``host`` is the global batch: this process trains on its part
    (:mod:`~raserec_adapter.training.sharding`) and returns its share of the batch's mean
    ``L_rec`` (the shares add up to it) and the global ``L_ret``.
    """
    enc, cfg, split, sampler = r.enc, r.cfg, r.split, r.sampler
    shard, calls = None, cast(WrappedEncoder, enc)
    if r.sharding is not None:
        shard = r.sharding.shard(host, r.windows)
        host, calls = shard.host, cast(WrappedEncoder, r.sharding.calls)
        sampler = cast(PositiveSampler | None, r.sharding.positives)
    batch = host.to(r.device)
    need_h = r.rec_loss is None
    with enc.trusted_inputs():  # batches of the validated split
        if r.fuse:
            h, targets, z1, z2, view_pairs = fused_views(
                calls, split, batch, host, r.windows, r.causal, need_h, sampler
            )
        else:
            h, targets, pair_rows, second_view = anchors(
                calls, batch, host, r.windows, r.causal, need_h, r.regroup
            )
    if r.rec_loss is None:
        assert h is not None
        if r.sampled is None:
            loss_rec = next_item_loss(h, enc.item_weights(), targets)
        else:  # candidates drawn from the global generator: seeded, restored on resume
            loss_rec = r.sampled.loss(h, enc.item_weights(), targets)
    elif r.sharding is None:  # the user's code builds its own inputs: its calls stay checked
        loss_rec = r.rec_loss(enc, batch)
    else:  # inside DDP's forward, so that its gradients are averaged
        loss_rec = r.sharding.calls.run(r.rec_loss, enc, batch)
    loss, loss_ret = loss_rec, None
    if shard is not None:
        loss = loss_rec * shard.scale
    if sampler is not None:
        if not r.fuse:
            with enc.trusted_inputs():
                z1 = second_view()
                pos_rows = sampler.sample(pair_rows)
                view_pairs = np.concatenate([pair_rows, pos_rows])
                z2 = encode_pairs(calls, split, pos_rows, r.device)
        assert z1 is not None and z2 is not None and view_pairs is not None
        mask_t = targets if cfg.mask_false_negatives else None
        if shard is not None:  # the loss of the whole global batch
            z1, z2 = shard.global_views(z1, z2)
            view_pairs = shard.view_pairs
            mask_t = shard.targets.to(r.device) if cfg.mask_false_negatives else None
        groups = None
        if cfg.mask_same_user_negatives:
            groups = torch.from_numpy(split.train.users[view_pairs]).to(r.device)
        loss_ret = info_nce(z1, z2, cfg.temperature, mask_t, groups)
        if shard is None:
            loss = loss + cfg.retrieval_weight * loss_ret
        else:  # each process's gradient flows through its own views only
            loss = loss + cfg.retrieval_weight * (loss_ret * distributed.world_size())
    r.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    r.optimizer.step()
    if shard is not None:
        loss_rec = loss_rec.detach() * shard.share
    return loss_rec, loss_ret


def _end_epoch(
    r: _Run,
    stop: EarlyStopping,
    epoch: int,
    losses: tuple[float, float],
    train_seconds: float,
    checkpoint: str | Path | None,
    show_progress: bool,
) -> bool:
    """Validation, the epoch's record, early stopping and the best checkpoint; True: stop."""
    cfg, enc = r.cfg, r.enc
    # in a process group: validated on rank 0, every process applies the same rule to its numbers
    valid = distributed.from_main(lambda: evaluate_encoder(enc, r.split, "valid", device=r.device))
    record = {
        "epoch": epoch,
        "loss_rec": losses[0],
        "loss_ret": losses[1],
        "train_seconds": train_seconds,
        **{f"valid_{k}": v for k, v in valid.items()},
    }
    stop.result.history.append(record)
    score = valid[cfg.valid_metric]
    improved = stop.update(epoch, score, valid, enc.module)
    writes = checkpoint is not None and distributed.is_main()  # one writer in a process group
    if improved and writes and stop.best_state is not None:
        atomic_save(stop.best_state, Path(checkpoint))  # update() has just set it
    if show_progress:
        logger.info(
            "pretrain epoch %d: loss_rec %.4f loss_ret %.4f | valid %s %.4f%s | %.1f s",
            epoch,
            losses[0],
            losses[1],
            cfg.valid_metric,
            score,
            " *" if improved else "",
            train_seconds,
        )
    return stop.bad_epochs >= cfg.patience


def _check_inputs(
    cfg: PretrainConfig,
    split: LeaveOneOutSplit,
    checkpoint: str | Path | None,
    state_path: str | Path | None,
) -> None:
    """Refuses settings that would fail (or mislead) only after an epoch of training."""
    if cfg.max_len != split.max_len:
        raise ValueError(
            f"PretrainConfig.max_len = {cfg.max_len} but the split truncates inputs to "
            f"{split.max_len}; leave PretrainConfig.max_len at None to take the split's, or "
            f"split with leave_one_out(sequences, max_len={cfg.max_len})"
        )
    if len(split.train) == 0:
        raise ValueError(
            "the split has no training pairs: every user's training part (all but the last two "
            "items) is shorter than two items; pre-training needs longer sequences"
        )
    for name, where in (("checkpoint", checkpoint), ("state_path", state_path)):
        if where is not None and Path(where).is_dir():
            raise ValueError(
                f"{name} = {where} is a directory; pass a file path such as "
                f"{Path(where) / ('encoder.pt' if name == 'checkpoint' else 'pretrain-state.pt')}"
            )
        if where is not None:  # atomic_save makes missing folders; a file in the way fails
            blocking = next((p for p in Path(where).parents if p.exists()), None)
            if blocking is not None and not blocking.is_dir():
                raise ValueError(
                    f"{name} = {where} cannot be written: {blocking} is a file, not a folder; "
                    "pass a path inside a folder"
                )


def evaluate_encoder(
    encoder: torch.nn.Module,
    split: LeaveOneOutSplit,
    which: str = "test",
    protocol: str = "full",
    device: torch.device | str = "cpu",
    batch_size: int = 1024,
) -> dict[str, float]:
    """Full-ranking HR/NDCG@5,10,20 of a plain (not augmented) encoder on ``valid`` or ``test``.

    The encoder is put in eval mode (dropout off) for the evaluation and restored afterwards.
    """
    require_split(split, "evaluate_encoder")
    check_device(device)
    enc = wrap_encoder(encoder)
    enc.check_max_len(split.max_len, "the split's max_len")
    was_training = enc.training
    enc.eval()
    try:
        with enc.trusted_inputs():  # batches of the validated split
            return evaluate_ranking(
                lambda b: enc(b.item_seq, b.lengths),
                enc.item_weights().detach(),
                split.sequences,
                split.eval_set(which),
                max_len=split.max_len,
                protocol=protocol,
                batch_size=batch_size,
                device=device,
            )
    finally:
        enc.train(was_training)
