"""Stage 1: collaborative pre-training (paper Eq. 5-8, settings of the released code).

``L = L_rec + lambda * L_ret``: softmax cross-entropy of ``h . v_i`` over all items, plus an
InfoNCE loss that pulls together two sequences with the same next item. As in the authors'
released code, the two views of an anchor are a second, dropout-perturbed encoding of the anchor
and the encoding of a randomly drawn other training prefix with the same target (the anchor
itself when it has no such partner); the other 2B - 2 encodings of the batch are negatives.
``mask_false_negatives`` removes negatives that share the anchor's target,
``mask_same_user_negatives`` those that come from the anchor's own user (other prefixes of the
same sequence, which ``"windows"`` batches hold many of).

Causal encoders (``forward_all``) see all prefixes of a sequence in one pass; other encoders, or
any encoder with ``PretrainConfig.batching`` ``"bucketed"`` or ``"random"``, are trained on the
prefix pairs one by one. On an accelerator a step's encodings are one padded call (``fuse``).
A backbone-specific recommendation loss (e.g. BERT4Rec's cloze task) can replace the
cross-entropy without editing this module: pass ``rec_loss``.

Example:
    >>> import torch
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

import json
import logging
import math
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raserec_adapter._checks import check_device, require_config
from raserec_adapter._progress import progress
from raserec_adapter.config import PretrainConfig
from raserec_adapter.data import LeaveOneOutSplit
from raserec_adapter.data.batching import (
    Batch,
    CausalWindows,
    causal_windows,
    gather_windows,
    iter_batches,
    iter_windows,
    window_pair_index,
)
from raserec_adapter.data.validation import require_split
from raserec_adapter.encoder import WrappedEncoder, wrap_encoder
from raserec_adapter.evaluation import evaluate_ranking
from raserec_adapter.training.state import (
    EarlyStopping,
    TrainingRun,
    TrainResult,
    atomic_save,
    gives_back_best,
)

__all__ = ["RecLoss", "TrainResult", "info_nce", "next_item_loss", "pretrain", "seed_everything"]

logger = logging.getLogger("raserec_adapter")

RecLoss = Callable[[WrappedEncoder, Batch], torch.Tensor]
"""A backbone's own recommendation loss: ``(encoder, batch of training prefixes) -> scalar``."""


def seed_everything(seed: int) -> None:
    """Seeds torch (CPU and CUDA) and numpy's legacy global generator."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def next_item_loss(
    h: torch.Tensor, item_weights: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Softmax cross-entropy of ``h . v_i`` over items 1..N (never the padding row 0)."""
    return F.cross_entropy(h @ item_weights[1:].t(), targets - 1)


def info_nce(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 1.0,
    targets: torch.Tensor | None = None,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE over ``2B`` views, dot-product similarity; ``z1[i]`` and ``z2[i]`` are positives.

    Args:
        z1: ``(B, d)`` first views.
        z2: ``(B, d)`` second views.
        temperature: Similarities are divided by it.
        targets: If given, ``(B,)`` targets of the anchors: negatives with the same target as the
            anchor (false negatives) are masked out.
        groups: If given, ``(2B,)`` group of each view (``z1`` rows first, then ``z2``), e.g.
            its user: a view's negatives from its own group are masked out (never its
            positive).

    Example:
        >>> z = torch.eye(3)
        >>> float(info_nce(z * 10, z * 10)) < 1e-3
        True
    """
    b = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)
    sim = (z @ z.t()) / temperature
    eye = torch.eye(2 * b, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    pos = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    same = None
    if targets is not None:
        t = torch.cat([targets, targets])
        same = t[:, None] == t[None, :]
    if groups is not None:
        if groups.shape != (2 * b,):
            raise ValueError(
                f"groups must have shape ({2 * b},) (z1's views, then z2's), got "
                f"{tuple(groups.shape)}"
            )
        own = groups[:, None] == groups[None, :]
        same = own if same is None else same | own
    if same is not None:
        same = same & ~eye
        same[torch.arange(2 * b, device=z.device), pos] = False
        sim = sim.masked_fill(same, float("-inf"))
    return F.cross_entropy(sim, pos)


class _PositiveSampler:
    """Draws, for a training pair, another training pair with the same target."""

    def __init__(self, targets: np.ndarray, seed: int) -> None:
        self.order = np.argsort(targets, kind="stable")
        sorted_t = targets[self.order]
        self.rank = np.empty(len(targets), dtype=np.int64)
        self.rank[self.order] = np.arange(len(targets))
        self.start = np.searchsorted(sorted_t, targets, side="left")
        self.size = np.searchsorted(sorted_t, targets, side="right") - self.start
        self.rng = np.random.default_rng(seed)

    def sample(self, pairs: np.ndarray) -> np.ndarray:
        size = self.size[pairs]
        start = self.start[pairs]
        own = self.rank[pairs] - start
        r = (self.rng.random(len(pairs)) * np.maximum(size - 1, 1)).astype(np.int64)
        r = np.where(size > 1, r + (r >= own), own)  # skip the anchor itself
        return self.order[start + r]


class RunningMean:
    """Mean of one scalar loss per step, kept on the device and read once (0.0 for none).

    Each step adds in place to one tensor allocated up front, so a step never waits for the
    device and nothing of a step outlives it. Keeping every step's loss tensor until the epoch
    ends (a list) gives the same mean but, on a CPU, costs memory: resident memory grows by
    about a step's activations per step (from 1 to over 10 GB within one BERT4Rec epoch on
    Sports; ``benchmarks/memory_pretrain.py``), most likely because glibc places each kept
    scalar in a hole that a freed large activation left in the heap and the next step's
    activations, no longer fitting there, take fresh memory.

    Example:
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


def _pair_windows(split: LeaveOneOutSplit, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """End offsets and input lengths (last ``max_len`` items) of training pairs' prefixes."""
    train = split.train
    lengths = np.minimum(train.lengths[pairs], split.max_len)
    ends = split.sequences.offsets[train.users[pairs]] + train.lengths[pairs]
    return ends, lengths


def _encode_pairs(
    encoder: WrappedEncoder, split: LeaveOneOutSplit, pairs: np.ndarray, device: torch.device
) -> torch.Tensor:
    """Encodes training pairs one prefix each, grouped by length (padding at most doubles)."""
    ends, lengths = _pair_windows(split, pairs)
    group = np.ceil(np.log2(lengths)).astype(np.int64)  # lengths in (2^(g-1), 2^g]
    out = torch.empty(len(pairs), encoder.hidden_size, device=device)
    for g in np.unique(group):
        rows = np.flatnonzero(group == g)
        seq, lens = gather_windows(split.sequences, ends[rows], lengths[rows])
        out[torch.from_numpy(rows).to(device)] = encoder(seq.to(device), lens.to(device))
    return out


def _window_pairs(host: Batch, windows: CausalWindows) -> tuple[np.ndarray, np.ndarray]:
    """``(row, position)`` of each loss position of a host window batch, and its pair row."""
    rows_pos = (host.targets > 0).nonzero().numpy()
    pair_rows = window_pair_index(windows, host.index.numpy()[rows_pos[:, 0]], rows_pos[:, 1])
    return rows_pos, pair_rows


def _pad_to(seq: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(seq, (0, width - seq.shape[1]))


def _fused_views(
    encoder: WrappedEncoder,
    split: LeaveOneOutSplit,
    batch: Batch,
    host: Batch,
    windows: CausalWindows | None,
    causal: bool,
    need_h: bool,
    sampler: _PositiveSampler | None,
) -> tuple[
    torch.Tensor | None, torch.Tensor, torch.Tensor | None, torch.Tensor | None, np.ndarray | None
]:
    """Anchor pass, second view and positives of a batch in one encoder call.

    The same quantities as :func:`_anchors` + :func:`_encode_pairs` (the same distribution:
    each row of the stacked input draws its own dropout), with every input padded to one width.
    On an accelerator, where a step costs kernel launches rather than arithmetic, one large call
    is several times faster than the separate calls; on a CPU the padding costs more than it
    saves.
    Padding never changes an output: causal encoders' position ``t`` sees items ``<= t`` only,
    and other encoders receive the true lengths.

    Returns:
        ``(h, targets, z1, z2, view_pairs)``; ``h`` is ``None`` when ``need_h`` is false (a
        backbone's own rec_loss), ``z1`` and ``z2`` are ``None`` without a sampler (no
        retrieval loss); ``view_pairs`` are the training pairs of ``z1``'s rows, then
        ``z2``'s (``None`` without a sampler).
    """
    device = batch.item_seq.device
    if causal:
        assert windows is not None
        rows_pos, pair_rows = _window_pairs(host, windows)
        r = torch.from_numpy(rows_pos[:, 0]).to(device)
        c = torch.from_numpy(rows_pos[:, 1]).to(device)
        targets = batch.targets[r, c]
    else:
        pair_rows = host.index.numpy()
        targets = batch.targets
    parts = [batch.item_seq] if need_h else []  # (causal implies need_h: no own rec_loss)
    lens = [batch.lengths] if need_h else []
    view_pairs = None
    if sampler is not None:
        pos_rows = sampler.sample(pair_rows)
        view_pairs = np.concatenate([pair_rows, pos_rows])
        ends, lengths = _pair_windows(split, pos_rows)
        pos_seq, pos_len = gather_windows(split.sequences, ends, lengths)
        parts += [batch.item_seq, pos_seq.to(device)]
        lens += [batch.lengths, pos_len.to(device)]
    if not parts:  # a backbone's own rec_loss and no retrieval loss: nothing to encode here
        return None, targets, None, None, None
    width = max(p.shape[1] for p in parts)
    seq = torch.cat([_pad_to(p, width) for p in parts])
    n = batch.item_seq.shape[0]
    h = z1 = z2 = None
    if causal:
        out = encoder.forward_all(seq, torch.cat(lens))
        h = out[r, c]
        if sampler is not None:
            z1 = out[n + r, c]
            z2 = out[2 * n + torch.arange(len(pos_len), device=device), lens[-1] - 1]
        return h, targets, z1, z2, view_pairs
    out = encoder(seq, torch.cat(lens))
    first = n if need_h else 0
    if need_h:
        h = out[:n]
    if sampler is not None:
        z1, z2 = out[first : first + n], out[first + n :]
    return h, targets, z1, z2, view_pairs


def _anchors(
    encoder: WrappedEncoder,
    batch: Batch,
    host: Batch,
    windows: CausalWindows | None,
    causal: bool,
    need_h: bool = True,
    regroup: LeaveOneOutSplit | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor, np.ndarray, Callable[[], torch.Tensor]]:
    """Encodes a batch: anchor representations, targets, pair rows, and a second-view encoder.

    ``batch`` is on the training device, ``host`` the same batch on the CPU: every index is
    computed from ``host``, so a step never waits for the device (no ``.cpu()``, no boolean
    masks on device tensors). ``need_h=False`` (a backbone-specific rec_loss) skips the anchor
    pass of a non-causal encoder and returns ``None`` for it. With ``regroup`` (the split of a
    ``"random"`` batch on a CPU) the prefixes are encoded grouped by length
    (:func:`_encode_pairs`) instead of all padded to the batch's longest: the same outputs,
    and half the time of a SASRec epoch on Beauty with the padded batches.
    """
    if causal:
        assert windows is not None
        rows_pos, pair_rows = _window_pairs(host, windows)
        width = host.targets.shape[1]
        flat = torch.from_numpy(rows_pos[:, 0] * width + rows_pos[:, 1]).to(batch.item_seq.device)

        def view() -> torch.Tensor:
            out = encoder.forward_all(batch.item_seq, batch.lengths)
            return out.flatten(0, 1).index_select(0, flat)

        return view(), batch.targets.flatten().index_select(0, flat), pair_rows, view

    pair_rows = host.index.numpy()
    if regroup is not None:

        def encode() -> torch.Tensor:
            return _encode_pairs(encoder, regroup, pair_rows, batch.item_seq.device)

    else:

        def encode() -> torch.Tensor:
            return encoder(batch.item_seq, batch.lengths)

    # the anchor pass only feeds the cross-entropy; a backbone's own rec_loss encodes the batch
    # itself, so it is skipped (the InfoNCE uses its own dropout view either way)
    return (encode() if need_h else None), batch.targets, pair_rows, encode


def pretrain(
    encoder: torch.nn.Module,
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
        fuse: Encode a step's anchor pass, second view and positives in one padded call
            (default: on an accelerator, not on a CPU). Same losses in distribution; a CPU
            prefers small length-grouped calls, a GPU few large ones.
        state_path: If given, the whole training state (weights, optimizer, early-stopping
            counters, random states, history) is written there after every epoch, atomically,
            so that an interrupted run can continue (see ``resume``).
        resume: Continue from ``state_path`` when that file exists (start from epoch 1 when it
            does not). On the same device the resumed run draws the same batches, dropout masks
            and positives as an uninterrupted one. Every setting but ``epochs`` must equal the
            saved run's (a larger ``epochs`` extends a run that reached its limit); a run that
            had stopped early returns its result without training.
        run_info: JSON-able facts about this call (say the command line and the code's
            commit), recorded with its epochs, time, device and thread count in
            :attr:`TrainResult.invocations`; the state file keeps them, so a resumed run's
            result lists every call that trained it.

    Returns:
        A :class:`TrainResult`; the model holds the best epoch's weights afterwards, also when
        training stops by an error or an interrupt (then the weights it came with if no epoch
        finished), so a run that diverges after good epochs keeps them.

    Raises:
        ValueError: The encoder's item table is too small for the data; ``resume`` without
            ``state_path``; a state file from other settings, another model, or not a state;
            ``run_info`` that JSON cannot hold.

    Example:
        >>> import tempfile
        >>> from raserec_adapter import Sequences, leave_one_out
        >>> from raserec_adapter.models import SASRec
        >>> seqs = Sequences.from_lists([[1, 2, 3, 4, 5], [2, 3, 4, 5, 1], [3, 4, 5, 1, 2]] * 4)
        >>> split = leave_one_out(seqs, max_len=5)
        >>> state = Path(tempfile.mkdtemp()) / "state.pt"
        >>> for epochs in (1, 2):  # as if the first call had been interrupted after epoch 1
        ...     model = SASRec(num_items=5, hidden_size=16, max_len=5)
        ...     res = pretrain(model, split, PretrainConfig(epochs=epochs, max_len=5),
        ...                    state_path=state, resume=True, show_progress=False)
        >>> res.epochs_run, len(res.history)
        (2, 2)
        >>> [(c["first_epoch"], c["last_epoch"]) for c in res.invocations]
        [(1, 1), (2, 2)]
    """
    require_split(split, "pretrain")
    if config is not None:
        require_config(config, PretrainConfig, "pretrain")
    if resume and state_path is None:
        raise ValueError("resume=True needs state_path: the file the interrupted run wrote")
    info = _json_info(run_info)
    cfg = config or PretrainConfig()
    if cfg.max_len is None:  # recorded (results, state files) as the length actually used
        cfg = cfg.replace(max_len=split.max_len)
    _check_inputs(cfg, split, checkpoint, state_path)
    enc = wrap_encoder(encoder)
    check_item_count(enc.num_items, split)
    enc.check_max_len(split.max_len, "the split's max_len")
    device = check_device(device)
    fuse = device.type != "cpu" if fuse is None else fuse
    enc.to(device)
    seed_everything(cfg.seed)
    causal = enc.is_causal and rec_loss is None and cfg.batching == "windows"
    windows = causal_windows(split) if causal else None
    # uniformly drawn batches span all lengths: on a CPU encode them length-grouped, not padded
    regroup = split if cfg.batching == "random" and not fuse else None
    sampler = _PositiveSampler(split.train.targets, cfg.seed) if cfg.retrieval_weight > 0 else None
    optimizer = torch.optim.Adam(
        enc.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda"
    )
    stop = EarlyStopping()
    run = TrainingRun(
        json.loads(json.dumps(cfg.to_dict())),  # as the saved JSON has it (tuples -> lists)
        enc.module,
        optimizer,
        sampler.rng if sampler is not None else None,
        device,
        data=_data_fingerprint(split),
    )
    first_epoch = 1
    if resume and state_path is not None and Path(state_path).exists():
        stop = run.restore(Path(state_path))
        first_epoch = stop.result.epochs_run + 1
        if stop.bad_epochs >= cfg.patience:
            first_epoch = cfg.epochs + 1  # the saved run had stopped early: nothing left to do
        logger.info("resuming pre-training from %s after epoch %d", state_path, first_epoch - 1)
    elif resume:
        logger.info("no training state at %s yet: starting from epoch 1", state_path)
    result, seconds_before = stop.result, stop.result.seconds
    start = time.perf_counter()
    call: dict[str, Any] = {
        "first_epoch": result.epochs_run + 1,
        "last_epoch": result.epochs_run,
        "seconds": 0.0,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        **info,
    }
    result.invocations.append(call)
    with gives_back_best(enc.module, stop):  # an error or interrupt too: the best weights
        for epoch in range(first_epoch, cfg.epochs + 1):
            enc.train()
            t0 = time.perf_counter()
            if windows is not None:
                batches = iter_windows(
                    split.sequences, windows, cfg.batch_size, True, cfg.seed + epoch
                )
                n_batches = math.ceil(windows.num_pairs / cfg.batch_size)
            else:
                batches = iter_batches(
                    split.sequences,
                    split.train,
                    cfg.batch_size,
                    split.max_len,
                    True,
                    cfg.seed + epoch,
                    bucket=cfg.batching != "random",
                )
                n_batches = math.ceil(len(split.train) / cfg.batch_size)
            # losses stay on the device until the epoch ends: reading one every step stalls a GPU
            rec_losses, ret_losses = RunningMean(device), RunningMean(device)
            for host in progress(batches, n_batches, f"pretrain epoch {epoch}", show_progress):
                batch = host.to(device)
                with enc.trusted_inputs():  # batches of the validated split
                    if fuse:
                        h, targets, z1, z2, view_pairs = _fused_views(
                            enc, split, batch, host, windows, causal, rec_loss is None, sampler
                        )
                    else:
                        h, targets, pair_rows, second_view = _anchors(
                            enc, batch, host, windows, causal, rec_loss is None, regroup
                        )
                if rec_loss is None:
                    assert h is not None
                    loss_rec = next_item_loss(h, enc.item_weights(), targets)
                else:  # the user's code builds its own inputs: its encoder calls stay checked
                    loss_rec = rec_loss(enc, batch)
                loss = loss_rec
                if sampler is not None:
                    if not fuse:
                        with enc.trusted_inputs():
                            z1 = second_view()
                            pos_rows = sampler.sample(pair_rows)
                            view_pairs = np.concatenate([pair_rows, pos_rows])
                            z2 = _encode_pairs(enc, split, pos_rows, device)
                    assert z1 is not None and z2 is not None and view_pairs is not None
                    mask_t = targets if cfg.mask_false_negatives else None
                    groups = None
                    if cfg.mask_same_user_negatives:
                        groups = torch.from_numpy(split.train.users[view_pairs]).to(device)
                    loss_ret = info_nce(z1, z2, cfg.temperature, mask_t, groups)
                    loss = loss + cfg.retrieval_weight * loss_ret
                    ret_losses.add(loss_ret)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                rec_losses.add(loss_rec)
            mean_rec, mean_ret = rec_losses.value(), ret_losses.value()
            train_seconds = time.perf_counter() - t0
            valid = evaluate_encoder(enc, split, "valid", device=device)
            record = {
                "epoch": epoch,
                "loss_rec": mean_rec,
                "loss_ret": mean_ret,
                "train_seconds": train_seconds,
                **{f"valid_{k}": v for k, v in valid.items()},
            }
            result.history.append(record)
            score = valid[cfg.valid_metric]
            improved = stop.update(epoch, score, valid, enc.module)
            if improved and checkpoint is not None and stop.best_state is not None:
                atomic_save(stop.best_state, Path(checkpoint))  # update() has just set it
            if show_progress:
                logger.info(
                    "pretrain epoch %d: loss_rec %.4f loss_ret %.4f | valid %s %.4f%s | %.1f s",
                    epoch,
                    record["loss_rec"],
                    record["loss_ret"],
                    cfg.valid_metric,
                    score,
                    " *" if improved else "",
                    train_seconds,
                )
            result.seconds = seconds_before + time.perf_counter() - start
            call["last_epoch"], call["seconds"] = epoch, round(time.perf_counter() - start, 1)
            if state_path is not None and stop.best_state is not None:
                run.save(Path(state_path), stop)
            if stop.bad_epochs >= cfg.patience:
                break
    enc.eval()
    result.seconds = seconds_before + time.perf_counter() - start
    call["seconds"] = round(time.perf_counter() - start, 1)
    return result


def _json_info(run_info: Mapping[str, Any] | None) -> dict[str, Any]:
    """``run_info`` as a plain dict after checking that the state file's JSON can hold it."""
    if run_info is None:
        return {}
    if not isinstance(run_info, Mapping):
        raise ValueError(
            f"run_info must be a mapping such as {{'command': ...}}, got {type(run_info).__name__}"
        )
    taken = sorted(set(run_info) & _CALL_KEYS)
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
_CALL_KEYS = {
    "first_epoch",
    "last_epoch",
    "seconds",
    "started_at",
    "device",
    "torch_threads",
    "note",
}


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


def check_item_count(num_items: int, split: LeaveOneOutSplit) -> None:
    """Refuses data with items beyond the encoder's table (on CUDA that would be a device
    assert deep inside the embedding lookup)."""
    if split.sequences.num_items > num_items:
        raise ValueError(
            f"the encoder's item table covers items 1..{num_items} but the data has items up to "
            f"{split.sequences.num_items}; build the model with num_items="
            f"{split.sequences.num_items}"
        )


def _data_fingerprint(split: LeaveOneOutSplit) -> dict[str, int]:
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
