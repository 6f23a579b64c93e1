"""Multi-process training under ``torchrun``: the process group, ranks, and the collectives.

Launch a script with ``torchrun --nproc_per_node N script.py`` and call :func:`init` at its
start: it joins the process group that ``torchrun`` describes in the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``), over gloo on a CPU or NCCL on CUDA (one GPU per process,
``cuda:LOCAL_RANK``). While a group of more than one process is initialised,
:func:`~raserec_adapter.training.pretrain`, :meth:`~raserec_adapter.RetrievalAugmenter.build_bank`
and :func:`~raserec_adapter.training.fit_raft` share their work between the processes
(``docs/distributed.md`` says how, and how closely it matches one process); without a group, or
with a single process, they run in this one process alone.

Collectives on a CPU tensor go through the communication device (the GPU under NCCL) and come
back to the tensor's own device. Nothing here pickles: :func:`broadcast_json` sends JSON text.

Examples:
    >>> init()  # not launched by torchrun: nothing to join, one process
    False
    >>> rank(), world_size(), is_main(), active()
    (0, 1, True, False)
    >>> bounds(5, 2)
    [(0, 2), (2, 5)]
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from raserec_adapter.data import Batch, LeaveOneOutSplit, PrefixSet, Sequences
from raserec_adapter.encoder import Shard, WrappedEncoder, encode_prefixes
from raserec_adapter.memory.state import PhasedBank

__all__ = [
    "active",
    "barrier",
    "bounds",
    "broadcast_json",
    "build_phased_bank",
    "encode_prefixes_sharded",
    "finish",
    "from_main",
    "gather_live",
    "gather_rows",
    "init",
    "is_main",
    "launched",
    "local_device",
    "local_rank",
    "rank",
    "rank_seed",
    "sharded_rows",
    "sum_",
    "weighted_bounds",
    "world_size",
]

logger = logging.getLogger("raserec_adapter")

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
"""What ``torchrun`` sets in each process's environment."""


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or anything setting :data:`ENV`)."""
    return all(os.environ.get(name, "").isdigit() for name in ENV)


def init(device: torch.device | str | None = None) -> bool:
    """Joins the process group of a ``torchrun`` launch; ``False`` when not launched.

    Args:
        device: Where this process trains: a CUDA device selects NCCL (and makes
            ``cuda:LOCAL_RANK`` the current device), anything else gloo. ``None``: CUDA when
            available.

    Returns:
        Whether a process group is initialised now (also when it already was).

    Raises:
        RuntimeError: CUDA asked for but unavailable, or fewer GPUs than local processes.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    if not launched():
        return False
    if not dist.is_available():
        raise RuntimeError(
            "this PyTorch build has no torch.distributed; install a build with it (the "
            "standard wheels from pytorch.org have it) or run one process"
        )
    cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if cuda:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if local_rank() >= count:
            raise RuntimeError(
                f"process {rank()} (LOCAL_RANK {local_rank()}) needs a GPU of its own but "
                f"{count} are visible; launch at most {count} processes per node "
                "(--nproc_per_node) or train on the CPU (--device cpu)"
            )
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if cuda else "gloo")
    logger.info(
        "process %d of %d (%s) joined the process group",
        dist.get_rank(),
        dist.get_world_size(),
        dist.get_backend(),
    )
    return True


def active() -> bool:
    """Whether a process group of more than one process is initialised (work is sharded)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Processes in the group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``; 0 when not launched)."""
    return int(os.environ["LOCAL_RANK"]) if launched() else 0


def is_main() -> bool:
    """Whether this is rank 0: the process that writes files and logs progress."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """``device`` with a CUDA device that names no index made this process's own GPU."""
    if device.type == "cuda" and device.index is None and active():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def rank_seed(seed: int) -> int:
    """``seed`` on rank 0; a distinct seed on every other rank (their own dropout draws).

    Examples:
        >>> rank_seed(7)  # one process
        7
    """
    return seed if rank() == 0 else (seed + 1_000_003 * rank()) % 2**63


def barrier() -> None:
    """Waits for every process of the group (nothing without one)."""
    if active():
        dist.barrier()


def finish() -> None:
    """Leaves the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_json(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` has it, on every rank (sent as JSON text: NaN and inf survive).

    Without a group, ``obj`` itself.
    """
    if not active():
        return obj
    dev = _comm_device()
    data = json.dumps(obj).encode() if rank() == src else b""
    size = torch.tensor([len(data)], dtype=torch.long, device=dev)
    dist.broadcast(size, src)
    buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=dev)
    if rank() == src:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, src)
    return obj if rank() == src else json.loads(bytes(buf.cpu().numpy()).decode())


def from_main(compute: Callable[[], Any]) -> Any:
    """``compute()`` on rank 0, its JSON-able result sent to every rank (a validation, a choice).

    Without a group, ``compute()`` itself.
    """
    if not active():
        return compute()
    return broadcast_json(compute() if is_main() else None)


def sum_(t: torch.Tensor) -> torch.Tensor:
    """Sums ``t`` over the ranks, in place; returns it (unchanged without a group)."""
    if active():
        on = t.to(_comm_device())
        dist.all_reduce(on)
        if on is not t:
            t.copy_(on)
    return t


def bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous ``[lo, hi)`` row ranges that cut ``n`` rows into ``parts`` near-equal ones."""
    cuts = [n * p // parts for p in range(parts + 1)]
    return list(itertools.pairwise(cuts))


def weighted_bounds(weights: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """Contiguous row ranges holding about equal sums of ``weights`` (e.g. pairs per window).

    Examples:
        >>> weighted_bounds(np.array([5, 1, 1, 1, 1, 1]), 2)
        [(0, 1), (1, 6)]
    """
    total = np.cumsum(weights)
    if not len(total):
        return [(0, 0)] * parts
    goals = total[-1] * np.arange(1, parts) / parts
    cuts = [0, *np.searchsorted(total, goals, side="right").tolist(), len(weights)]
    return list(itertools.pairwise(cuts))


def _gather(local: torch.Tensor, counts: Sequence[int]) -> list[torch.Tensor]:
    """Every rank's ``local`` (``counts[r]`` rows on rank ``r``), detached, on its device."""
    dev, width = _comm_device(), max(max(counts), 1)
    padded = torch.zeros(width, *local.shape[1:], dtype=local.dtype, device=dev)
    padded[: len(local)] = local.detach().to(dev)
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return [p[:c].to(local.device) for p, c in zip(parts, counts, strict=True)]


def gather_rows(local: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """The ranks' rows concatenated in rank order (no gradient); rank ``r`` holds ``counts[r]``.

    Without a group, ``local``.
    """
    if not active():
        return local
    return torch.cat(_gather(local, counts))


def gather_live(local: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """As :func:`gather_rows`, but this rank's own rows are ``local`` itself (gradients flow).

    A loss of the whole gathered batch then sends each rank the gradient through its own rows;
    summed over the ranks, that is the gradient of the loss of one process holding it all.
    """
    if not active():
        return local
    parts = _gather(local, counts)
    parts[rank()] = local
    return torch.cat(parts)


def sharded_rows(n: int, compute: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    """``compute(lo, hi)`` on each rank's contiguous share of ``n`` rows, gathered in order.

    Without a group, ``compute(0, n)``.
    """
    if not active():
        return compute(0, n)
    parts = bounds(n, world_size())
    lo, hi = parts[rank()]
    return gather_rows(compute(lo, hi), [b - a for a, b in parts])


def shard() -> Shard:
    """This process's share of the encoding batches (all of them without a group)."""
    return Shard(rank(), world_size(), sum_) if active() else Shard()


def encode_prefixes_sharded(
    encoder: WrappedEncoder,
    sequences: Sequences,
    prefixes: PrefixSet,
    max_len: int,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """:func:`~raserec_adapter.encoder.encode_prefixes`, its batches dealt out to the ranks.

    Each rank encodes every ``world_size``-th of the very batches one process encodes, so each
    row is computed from the same batch as there; a sum over the ranks (each row filled by one
    rank, zeros elsewhere) then gives every rank the same ``(n, d)`` representations.
    """
    return encode_prefixes(encoder, sequences, prefixes, max_len, batch_size, device, shard())


def build_phased_bank(
    memory: PhasedBank,
    source: LeaveOneOutSplit | Iterable[Batch],
    phase: str,
    device: torch.device | str,
    show_progress: bool,
) -> None:
    """``memory.build(...)`` (a :class:`~raserec_adapter.memory.state.PhasedBank`), sharded.

    In a group, a split's training pairs (and, for ``phase="test"``, validation pairs) are
    encoded in shares (causal encoders: their one-pass windows dealt out alike), the keys
    summed over the ranks, and every rank builds the same index from them: the bank one
    process builds. Batches of the user's own, and a run without a group, are built as they are.
    """
    if not active() or not isinstance(source, LeaveOneOutSplit):
        memory.build(source, phase, device, show_progress)
        return
    dev = local_device(torch.device(device))
    memory.build(source, phase, dev, show_progress and is_main(), shard())
