"""What a stage-1 step encodes: anchors, their second dropout view, and same-target positives.

Causal encoders (``forward_all``) see all prefixes of a sequence in one pass; other encoders
encode each prefix pair; on an accelerator a step's encodings are one padded call (``fuse``).
The positive of an anchor is a randomly drawn other training prefix with the same target (the
anchor itself when it has none), as in the authors' released code.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from raserec_adapter.data import LeaveOneOutSplit
from raserec_adapter.data.batching import Batch, CausalWindows, gather_windows, window_pair_index
from raserec_adapter.encoder import WrappedEncoder

__all__ = ["PositiveSampler", "anchors", "encode_pairs", "fused_views"]


class PositiveSampler:
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


def _pair_windows(split: LeaveOneOutSplit, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """End offsets and input lengths (last ``max_len`` items) of training pairs' prefixes."""
    train = split.train
    lengths = np.minimum(train.lengths[pairs], split.max_len)
    ends = split.sequences.offsets[train.users[pairs]] + train.lengths[pairs]
    return ends, lengths


def encode_pairs(
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


def fused_views(
    encoder: WrappedEncoder,
    split: LeaveOneOutSplit,
    batch: Batch,
    host: Batch,
    windows: CausalWindows | None,
    causal: bool,
    need_h: bool,
    sampler: PositiveSampler | None,
) -> tuple[
    torch.Tensor | None, torch.Tensor, torch.Tensor | None, torch.Tensor | None, np.ndarray | None
]:
    """Anchor pass, second view and positives of a batch in one encoder call.

    The same quantities as :func:`_anchors` + :func:`encode_pairs` (the same distribution:
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


def anchors(
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
    (:func:`encode_pairs`) instead of all padded to the batch's longest: the same outputs,
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
            return encode_pairs(encoder, regroup, pair_rows, batch.item_seq.device)

    else:

        def encode() -> torch.Tensor:
            return encoder(batch.item_seq, batch.lengths)

    # the anchor pass only feeds the cross-entropy; a backbone's own rec_loss encodes the batch
    # itself, so it is skipped (the InfoNCE uses its own dropout view either way)
    return (encode() if need_h else None), batch.targets, pair_rows, encode
