"""Retrieval-augmented fine-tuning (RAFT): the training loop of the RAM head.

With the encoder frozen, everything RAFT reads is fixed before the first epoch: the query
representations of the training pairs, their K neighbours in the memory bank, the bank's keys
and values, and the item table that scores use. :func:`fit_raft` takes those tensors and trains
only the RAM (paper Eq. 12: softmax cross-entropy of ``h~ . v_i`` over all items), with early
stopping on the validation users. :meth:`RetrievalAugmenter.fit_raft
<raserec_adapter.RetrievalAugmenter.fit_raft>` computes the inputs from its encoder and bank
(the no-leakage rule applied by the bank's search) and calls it; call it directly to train a
RAM over representations and neighbours of your own.

Examples:
    >>> import torch
    >>> from raserec_adapter import RAFTConfig, RAMConfig, Sequences, TorchMemoryBank, leave_one_out
    >>> from raserec_adapter.ram import RetrievalAugmentedModule
    >>> split = leave_one_out(Sequences.from_lists([[1, 2, 3, 4, 5], [2, 3, 4, 5, 1]] * 3))
    >>> train, valid, d, k = split.train, split.valid, 8, 2
    >>> g = torch.Generator().manual_seed(0)
    >>> h = torch.randn(len(train), d, generator=g)  # an encoder's representations
    >>> table = torch.randn(6, d, generator=g)  # its item table, row 0 = padding
    >>> users, lengths = torch.from_numpy(train.users), torch.from_numpy(train.lengths)
    >>> bank = TorchMemoryBank(dim=d)
    >>> bank.add(h, table[torch.from_numpy(train.targets)], users, lengths)
    >>> valid_h = torch.randn(len(valid), d, generator=g)
    >>> res = fit_raft(
    ...     RetrievalAugmentedModule(d, RAMConfig(k=k)), split, RAFTConfig(epochs=2),
    ...     queries=h, neighbours=search_neighbours(bank, h, k, users, lengths),
    ...     valid_queries=valid_h,
    ...     valid_neighbours=search_neighbours(bank, valid_h, k, torch.from_numpy(valid.users),
    ...                                        torch.from_numpy(valid.lengths)),
    ...     memories=bank.fetch(torch.arange(len(bank))), item_table=table, show_progress=False)
    >>> res.epochs_run, sorted(res.history[0])[:3]
    (2, ['epoch', 'loss', 'train_seconds'])
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from raserec_adapter import distributed
from raserec_adapter._checks import check_device
from raserec_adapter._modes import eval_mode
from raserec_adapter._progress import progress
from raserec_adapter.config import RAFTConfig
from raserec_adapter.data import LeaveOneOutSplit
from raserec_adapter.distributed import build_phased_bank, encode_prefixes_sharded
from raserec_adapter.evaluation import evaluate_ranking
from raserec_adapter.memory.protocol import MemoryBank, gather_rows
from raserec_adapter.memory.state import PhasedBank
from raserec_adapter.ram import RetrievalAugmentedModule
from raserec_adapter.training.losses import attention_kernel_available, frozen_table_cross_entropy
from raserec_adapter.training.ram_validation import choose_alpha, evaluate_ram
from raserec_adapter.training.sampled_softmax import SampledSoftmax
from raserec_adapter.training.sharding import wrap_ddp
from raserec_adapter.training.state import (
    EarlyStopping,
    RunningMean,
    TrainResult,
    gives_back_best,
    seed_everything,
)

__all__ = [
    "build_phased_bank",
    "evaluate_ram",
    "fit_raft",
    "fit_raft_frozen",
    "fit_raft_on_bank",
    "search_neighbours",
]

logger = logging.getLogger("raserec_adapter")


def search_neighbours(
    bank: MemoryBank,
    queries: torch.Tensor,
    k: int,
    users: torch.Tensor,
    lengths: torch.Tensor,
    *,
    step: int = 16384,
    show_progress: bool = False,
) -> torch.Tensor:
    """``(Q, k)`` bank ids of each query's K memories, searched ``step`` queries at a time.

    ``users`` and ``lengths`` (the query's user and prefix length) let the bank apply the
    no-leakage rule: a query never gets its own pair or its user's future.

    Examples:
        >>> from raserec_adapter import TorchMemoryBank
        >>> bank = TorchMemoryBank(dim=4)
        >>> keys = torch.eye(4)
        >>> bank.add(keys, keys, torch.tensor([0, 0, 1, 1]), torch.tensor([1, 2, 1, 2]))
        >>> query = torch.tensor([[1.0, 0.9, 0.5, 0.0]])  # closest to memories 0, 1, 2, 3
        >>> search_neighbours(bank, query, 2, torch.tensor([0]), torch.tensor([2])).tolist()
        [[0, 2]]

        Memory 1 (user 0's pair of prefix length 2, the query's own) is never returned.
    """
    out = torch.empty(len(queries), k, dtype=torch.long)
    for s in progress(
        range(0, len(queries), step), math.ceil(len(queries) / step), "retrieve", show_progress
    ):
        out[s : s + step] = bank.search(
            queries[s : s + step], k, users[s : s + step], lengths[s : s + step]
        ).ids
    return out


@torch.no_grad()
def _check_inputs(
    ram: RetrievalAugmentedModule,
    split: LeaveOneOutSplit,
    memories: tuple[torch.Tensor, torch.Tensor],
    item_table: torch.Tensor,
    query_sets: tuple[tuple[str, torch.Tensor, torch.Tensor, int, str], ...],
) -> None:
    """Clear errors for inputs that do not fit each other (before any training)."""
    d = ram.hidden_size
    keys, values = memories
    floats = (
        *((q[0], q[1]) for q in query_sets),
        ("memories' keys", keys),
        ("memories' values", values),
        ("item_table", item_table),
    )
    for name, t in floats:
        if not t.is_floating_point():
            raise ValueError(
                f"{name} must be a floating-point tensor (representations or embeddings), got "
                f"{t.dtype}"
            )
    if keys.ndim != 2 or keys.shape != values.shape or keys.shape[1] != d:
        raise ValueError(
            f"memories must be (keys, values) of shape (M, {d}) each (the RAM's size), got "
            f"{tuple(keys.shape)} and {tuple(values.shape)}"
        )
    n_items = split.sequences.num_items
    if item_table.ndim != 2 or item_table.shape[0] <= n_items or item_table.shape[1] != d:
        raise ValueError(
            f"item_table must be (N + 1, {d}) with N >= {n_items} (the split's items): rows "
            f"0..N of the item embeddings, row 0 = padding; got {tuple(item_table.shape)}"
        )
    for name, h, nb, rows, what in query_sets:
        nb_name = name.replace("queries", "neighbours")
        if tuple(h.shape) != (rows, d):
            raise ValueError(
                f"{name} must be ({rows}, {d}): one representation per row of {what}, got "
                f"{tuple(h.shape)}"
            )
        if tuple(nb.shape) != (rows, ram.config.k) or nb.dtype != torch.long:
            raise ValueError(
                f"{nb_name} must be a long tensor of shape ({rows}, {ram.config.k}) (K = the "
                f"RAM's RAMConfig.k), got {nb.dtype} of shape {tuple(nb.shape)}"
            )
        if nb.numel() and (int(nb.min()) < 0 or int(nb.max()) >= len(keys)):
            raise ValueError(
                f"{nb_name} holds ids outside 0..{len(keys) - 1} (the rows of memories), "
                f"e.g. {int(nb.min()) if int(nb.min()) < 0 else int(nb.max())}; a search that "
                "found fewer than K memories must not be passed on with -1 padding"
            )
    for name, t in floats:
        if not bool(torch.isfinite(t).all()):
            raise ValueError(
                f"{name} holds NaN or infinite values: check the encoder (or the item table) "
                "that produced them"
            )


def fit_raft(
    ram: RetrievalAugmentedModule,
    split: LeaveOneOutSplit,
    config: RAFTConfig,
    *,
    queries: torch.Tensor,
    neighbours: torch.Tensor,
    valid_queries: torch.Tensor,
    valid_neighbours: torch.Tensor,
    memories: tuple[torch.Tensor, torch.Tensor],
    item_table: torch.Tensor,
    device: torch.device | str = "cpu",
    show_progress: bool = True,
) -> TrainResult:
    """Trains the RAM on fixed inputs, early stopping on validation; keeps the best epoch.

    Args:
        ram: The head to train (moved to ``device``).
        split: Its ``train`` pairs are the training examples (their targets the labels), its
            ``valid`` users the validation set.
        config: Epochs, batch size, learning rate, patience, validation metric, precision, seed.
        queries: ``(P, d)`` frozen representations of ``split.train``'s pairs, in its order.
        neighbours: ``(P, K)`` ids (rows of ``memories``) of each pair's retrieved memories.
        valid_queries: ``(U, d)`` representations of ``split.valid``'s inputs.
        valid_neighbours: ``(U, K)`` their memories.
        memories: ``(keys, values)``, ``(M, d)`` each: the bank's representations of the
            stored prefixes and embeddings of their next items.
        item_table: ``(N + 1, d)`` item embeddings that scores use (row 0 = padding).
        device: Where to train; every input moves there once, detached from any autograd
            graph (only the RAM receives gradients) and as float32.
        show_progress: Per-batch progress and a log line per epoch.

    Batch order and the RAM's dropout are drawn from ``config.seed`` (the global random state
    is left as it was), so two calls with the same inputs, config and initial RAM weights
    train the same RAM. If training stops with an error (or is interrupted), the RAM gets back
    the best epoch's weights so far, or its weights from before the call.
    In a process group (:mod:`raserec_adapter.distributed`) each process trains on its part of
    every global batch and rank 0 validates; every process ends with the same RAM.

    Returns:
        A :class:`~raserec_adapter.TrainResult` whose ``baseline_valid`` holds the metrics of
        ``valid_queries`` alone (the frozen encoder without the RAM). Where the RAM's best epoch
        does not beat them, a warning says so and, with ``config.fallback``, the RAM is marked
        not served (:attr:`~raserec_adapter.ram.RetrievalAugmentedModule.serves`). The RAM holds
        the best epoch's weights, in eval mode.

    Raises:
        ValueError: Inputs whose shapes do not fit the RAM, the split or each other,
            neighbour ids outside the memories, tensors that are not floating point where
            representations are expected, or NaN / infinite values.
    """
    _check_inputs(
        ram,
        split,
        memories,
        item_table,
        (
            ("queries", queries, neighbours, len(split.train), "split.train's pairs"),
            ("valid_queries", valid_queries, valid_neighbours, len(split.valid), "split.valid"),
        ),
    )
    t_start = time.perf_counter()
    dev = distributed.local_device(check_device(device))
    ram.to(dev)
    shared = distributed.active()  # a process group: each process trains on its part of a batch
    show_progress = show_progress and distributed.is_main()

    def fixed(t: torch.Tensor) -> torch.Tensor:  # an input: no gradient, float32, on dev
        return t.detach().to(dev, torch.float32)

    table = fixed(item_table)
    dtype = torch.bfloat16 if config.precision == "bfloat16" else torch.float32
    # (d, N), items 1..N: the transposed view of a contiguous (N, d) table, the layout both the
    # CPU attention kernel of the cross-entropy and a plain matrix product read without a copy
    scores_t = table[1:].contiguous().to(dtype).t()
    # the CPU: the frozen-table kernel (float32 anywhere there; bfloat16 where the attention
    # kernel takes it). A GPU holds the (batch, items) score matrix easily, and there one product
    # and F.cross_entropy are about 8x faster than the chunked loop (speed_kernels.py --device cuda)
    sampled = None
    if config.loss == "sampled":
        counts = np.bincount(split.train.targets, minlength=len(table))
        sampled = SampledSoftmax(
            len(table) - 1, config.negatives, config.in_batch_negatives, counts
        )
    fused_ce = dev.type == "cpu" and (
        dtype == torch.float32 or attention_kernel_available(scores_t)
    )
    # what every step reads moves to the device once: a step then gathers its memories there
    mem_k, mem_v = (fixed(t) for t in memories)
    queries, neighbours = fixed(queries), neighbours.to(dev)
    targets = torch.from_numpy(split.train.targets).to(dev)
    valid_h, valid_nb = fixed(valid_queries), valid_neighbours.to(dev)
    result = TrainResult()
    result.baseline_valid = distributed.from_main(  # the score the RAM has to beat
        lambda: evaluate_ranking(
            lambda b: valid_h[b.index.to(dev)],
            table,
            split.sequences,
            split.valid,
            max_len=split.max_len,
            device=dev,
        )
    )
    model = wrap_ddp(ram, find_unused=True) if shared else ram  # beta = 1: channel 2 unused
    optimizer = torch.optim.Adam(
        ram.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=dev.type == "cuda"
    )
    gen = torch.Generator().manual_seed(config.seed)
    n_pairs = len(split.train)
    n_steps = math.ceil(n_pairs / config.batch_size)

    def step(rows: torch.Tensor) -> torch.Tensor:
        share = None
        if shared:  # this process's part; its mean weighted by its share, for DDP's average
            rows, share = _part(rows)
        nb = neighbours[rows]
        h_aug = model(queries[rows], gather_rows(mem_k, nb), gather_rows(mem_v, nb))
        y = targets[rows] - 1
        if sampled is not None:  # candidates from the RNG seeded below: the same on a rerun
            loss = sampled.loss(h_aug, table, targets[rows])
        elif fused_ce:
            loss = frozen_table_cross_entropy(h_aug.to(dtype), scores_t, y).float()
        else:  # off the CPU (or bfloat16 without the attention kernel): one product, torch's CE
            loss = F.cross_entropy(h_aug.to(dtype) @ scores_t, y).float()
        optimizer.zero_grad(set_to_none=True)
        (loss if share is None else loss * (distributed.world_size() * share)).backward()
        optimizer.step()
        return loss.detach() if share is None else loss.detach() * share

    stop = EarlyStopping(result=result)
    cuda: list[int] = []  # the CUDA device whose random state dropout draws from
    if dev.type == "cuda":
        cuda = [dev.index if dev.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda), gives_back_best(ram, stop):
        torch.manual_seed(distributed.rank_seed(config.seed))  # the RAM's dropout (per process)
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            ram.train()
            order = torch.randperm(n_pairs, generator=gen).to(dev)
            batches = range(0, n_pairs, config.batch_size)
            losses = RunningMean(dev)  # read from the device once per epoch
            for s in progress(batches, n_steps, f"RAFT epoch {epoch}", show_progress):
                losses.add(step(order[s : s + config.batch_size]))
            if shared:  # each process added its share of every step's mean
                distributed.sum_(losses.total)
            mean_loss = losses.value()
            seconds = time.perf_counter() - t0
            valid = distributed.from_main(  # validated on rank 0, the same numbers everywhere
                lambda: evaluate_ram(ram, split, valid_h, valid_nb, (mem_k, mem_v), table)
            )
            score = valid[config.valid_metric]
            result.history.append(
                {
                    "epoch": epoch,
                    "loss": mean_loss,
                    "train_seconds": seconds,
                    **{f"valid_{m}": v for m, v in valid.items()},
                }
            )
            improved = stop.update(epoch, score, valid, ram)
            if show_progress:
                logger.info(
                    "RAFT epoch %d: loss %.4f | valid %s %.4f%s | %.1f s",
                    epoch,
                    mean_loss,
                    config.valid_metric,
                    score,
                    " *" if improved else "",
                    seconds,
                )
            if stop.bad_epochs >= config.patience:
                break
    ram.eval()
    if config.alpha_grid:
        tables = ((valid_h, valid_nb), (mem_k, mem_v), table)
        chosen = distributed.from_main(lambda: choose_alpha(ram, split, *tables, config))
        result.best_valid, result.alpha_selection = chosen
        if shared:  # rank 0 set it
            ram.config = ram.config.replace(alpha=result.alpha_selection["chosen"])
    plain = result.baseline_valid[config.valid_metric]
    best = result.best_valid.get(config.valid_metric, stop.best_score)
    ram.serve(best > plain or not config.fallback)
    result.seconds = time.perf_counter() - t_start
    if best <= plain and distributed.is_main():
        logger.warning(
            "RAFT: the RAM's best validation %s (%.4f) does not beat the frozen encoder "
            "alone (%.4f); %s%s",
            config.valid_metric,
            best,
            plain,
            "the augmenter serves the encoder's representation (RAFTConfig.fallback); "
            "augmenter.ram.serve(True) forces the RAM"
            if config.fallback
            else "the RAM is served anyway (RAFTConfig.fallback=False)",
            ". A larger RAMConfig.alpha puts more weight on the encoder's own representation"
            if ram.config.alpha < 1
            else " (alpha 1, chosen on validation, is the encoder itself)",
        )
    return result


def _part(rows: torch.Tensor) -> tuple[torch.Tensor, float]:
    """This process's contiguous part of a global batch's rows and its share of them (one row
    of weight 0 where a small last batch leaves it none)."""
    lo, hi = distributed.bounds(len(rows), distributed.world_size())[distributed.rank()]
    share = (hi - lo) / len(rows)
    return (rows[lo:hi] if hi > lo else rows[:1]), share


def fit_raft_on_bank(
    ram: RetrievalAugmentedModule,
    split: LeaveOneOutSplit,
    config: RAFTConfig,
    bank: MemoryBank,
    *,
    train_keys: torch.Tensor,
    valid_queries: torch.Tensor,
    item_table: torch.Tensor,
    device: torch.device | str = "cpu",
    show_progress: bool = True,
) -> TrainResult:
    """RAFT's inputs from a frozen bank (each query's K neighbours, once), then :func:`fit_raft`.

    Args:
        ram: The head to train; its ``config.k`` memories per query.
        split: The split the bank was built from (training phase: training pairs only).
        config: RAFT settings.
        bank: The memory bank; unchanged during RAFT.
        train_keys: ``(P, d)`` the bank's keys of ``split.train``'s pairs = the training queries.
        valid_queries: ``(U, d)`` frozen representations of ``split.valid``'s inputs.
        item_table: ``(N + 1, d)`` the encoder's item table.
        device: Where to train.
        show_progress: Show progress bars.
    """
    t_start = time.perf_counter()
    k = ram.config.k
    train, valid = split.train, split.valid
    users, lengths = torch.from_numpy(train.users), torch.from_numpy(train.lengths)
    show = show_progress and distributed.is_main()
    # in a process group each process searches its share of the queries; all get all neighbours
    neighbours = distributed.sharded_rows(
        len(train_keys),
        lambda lo, hi: search_neighbours(
            bank, train_keys[lo:hi], k, users[lo:hi], lengths[lo:hi], show_progress=show
        ),
    )
    v_users, v_lengths = torch.from_numpy(valid.users), torch.from_numpy(valid.lengths)
    valid_nb = distributed.sharded_rows(
        len(valid_queries),
        lambda lo, hi: bank.search(valid_queries[lo:hi], k, v_users[lo:hi], v_lengths[lo:hi]).ids,
    )
    logger.info("RAFT: queries and neighbours ready in %.1f s", time.perf_counter() - t_start)
    result = fit_raft(
        ram,
        split,
        config,
        queries=train_keys,
        neighbours=neighbours,
        valid_queries=valid_queries,
        valid_neighbours=valid_nb,
        memories=bank.fetch(torch.arange(len(bank))),  # the bank is frozen during RAFT
        item_table=item_table,
        device=device,
        show_progress=show_progress,
    )
    result.seconds = time.perf_counter() - t_start
    return result


def fit_raft_frozen(
    ram: RetrievalAugmentedModule,
    memory: PhasedBank,
    split: LeaveOneOutSplit,
    config: RAFTConfig,
    device: torch.device | str = "cpu",
    show_progress: bool = True,
) -> TrainResult:
    """RAFT over an augmenter's bank: the encoder frozen (dropout off, no gradients) meanwhile.

    The bank must have been built from ``split``; it is switched to the training phase (the
    training pairs only), its cached keys are the training queries.
    """
    memory.require("fit_raft")
    if memory.split is None or memory.train_keys is None:
        raise RuntimeError(
            "fit_raft needs the bank built from the same split: call "
            "augmenter.build_bank(split) with this split first"
        )
    memory.use_phase(split, "valid", device)
    bank = memory.require("fit_raft")
    seed_everything(config.seed)
    encoder = memory.encoder
    eval_mode(encoder)
    trainable = [p.requires_grad for p in encoder.parameters()]
    for p in encoder.parameters():
        p.requires_grad_(False)
    try:
        valid_h = encode_prefixes_sharded(  # each process a share, in a process group
            encoder, split.sequences, split.valid, memory.max_len, device=device
        )
        return fit_raft_on_bank(
            ram,
            split,
            config,
            bank,
            train_keys=memory.train_keys,
            valid_queries=valid_h,
            item_table=memory.table(),
            device=device,
            show_progress=show_progress,
        )
    finally:  # give the user back their encoder as it was, even if training fails
        for p, flag in zip(encoder.parameters(), trainable, strict=True):
            p.requires_grad_(flag)
