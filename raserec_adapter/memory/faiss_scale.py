"""Faiss banks at scale: a compact store, re-ranking, sampled training, shards and HNSW.

Options of :class:`~raserec_adapter.memory.faiss_bank.FaissMemoryBank` (and
:class:`~raserec_adapter.BankConfig`) for millions of memories (docs: "Choosing a Faiss index"):

* ``store="compact"``: raw keys in float16 (normalised chunk by chunk for the index, per
  candidate for re-ranking) and each distinct value row once (the augmenter's values are
  item-table rows) with int32 references: 148 bytes per memory at d = 64 plus the distinct rows,
  against 784. Values come back exactly, keys rounded to float16; keys above 65504 are refused.
* ``refine=True``: the index's ``overfetch * k`` candidates are scored again with the stored
  keys (exact cosines and order) before the exclusion rule, for lossy indexes (``SQ8``, ``PQ``).
* ``train_size``: train on a seeded sample of at most this many memories, then add in chunks.
* ``shards``: an IVF index as shards of one trained quantizer searched in parallel threads
  (``faiss.IndexShards``), saved as one merged index.
* ``ef_search``: HNSW's search depth. HNSW cannot remove entries: after a ``remove`` the graph
  is rebuilt from the stored keys at the next search (a warning says so).

Examples:
    >>> import torch
    >>> from raserec_adapter.memory.faiss_bank import FaissMemoryBank
    >>> bank = FaissMemoryBank(dim=4, index_factory="Flat", store="compact", refine=True)
    >>> g = torch.Generator().manual_seed(0)
    >>> keys, table = torch.randn(30, 4, generator=g), torch.randn(5, 4, generator=g)
    >>> bank.add(keys, table[torch.arange(30) % 5], torch.arange(30) % 6, torch.ones(30).long())
    >>> bank._store.distinct_values  # five item rows, stored once each
    5
    >>> bank.search(keys[:2], k=3).ids[:, 0].tolist()
    [0, 1]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from raserec_adapter.memory.compact_store import CompactStore
from raserec_adapter.memory.protocol import _normalize, _positive_int, gather_rows

__all__ = ["STORES", "CompactStore", "ScaleOptions", "check_bank_config"]

logger = logging.getLogger("raserec_adapter.memory.faiss_bank")

STORES = ("full", "compact")
_CHUNK = 1 << 18  # memories normalised (and added to the index) at a time


def ivf_of(index: Any) -> Any:
    """The IVF part of ``index`` (a shard's for ``IndexShards``), or ``None``."""
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def hnsw_of(index: Any) -> Any:
    """The ``faiss.HNSW`` graph of an HNSW index, or ``None``."""
    import faiss

    return getattr(faiss.downcast_index(index), "hnsw", None)


@dataclass(frozen=True)
class ScaleOptions:
    """The scale options of a :class:`FaissMemoryBank`, validated (see the module's doc).

    Examples:
        >>> ScaleOptions(store="compact", train_size=100_000).config()
        {'store': 'compact', 'train_size': 100000}
        >>> ScaleOptions(store="half")
        Traceback (most recent call last):
        ...
        ValueError: store must be 'full' or 'compact', got 'half'
    """

    store: str = "full"
    refine: bool = False
    train_size: int | None = None
    shards: int = 1
    ef_search: int | None = None

    def __post_init__(self) -> None:
        if self.store not in STORES:
            raise ValueError(f"store must be 'full' or 'compact', got {self.store!r}")
        if not isinstance(self.refine, (bool, np.bool_)):
            raise ValueError(f"refine must be True or False, got {self.refine!r}")
        object.__setattr__(self, "refine", bool(self.refine))
        for name in ("train_size", "shards", "ef_search"):  # None: all memories, Faiss's
            if (value := getattr(self, name)) is not None or name == "shards":
                object.__setattr__(self, name, _positive_int(value, name))

    def check_index(self, probe: Any, factory: str) -> None:
        """Refuses options that ``factory``'s index (an untrained ``probe``) cannot use."""
        import faiss

        ivf = ivf_of(probe)
        if self.shards > 1 and not isinstance(faiss.downcast_index(probe), faiss.IndexIVF):
            raise ValueError(
                f"shards={self.shards} splits an IVF index; index_factory={factory!r} is not a "
                "plain IVF index: use e.g. 'IVF1024,SQ8' or shards=1"
            )
        if self.ef_search is not None and hnsw_of(probe) is None:
            raise ValueError(
                f"ef_search sets an HNSW index's search depth; index_factory={factory!r} has "
                "none: use e.g. 'HNSW32,Flat' or ef_search=None"
            )
        if ivf is not None and self.train_size is not None and self.train_size < ivf.nlist:
            raise ValueError(
                f"train_size={self.train_size} is below the index's nlist {ivf.nlist}: k-means "
                f"needs at least one point per list (Faiss asks for 39); use train_size >= "
                f"{39 * ivf.nlist} or None (all memories)"
            )

    def config(self) -> dict[str, Any]:
        """The options that differ from the defaults (what ``bank.json`` records)."""
        return {k: v for k, v in vars(self).items() if v != getattr(ScaleOptions, k)}

    @staticmethod
    def config_names() -> tuple[str, ...]:
        """The option names, as ``bank.json`` and ``FaissMemoryBank`` spell them."""
        return tuple(f.name for f in fields(ScaleOptions))


def make_store(store: str, dim: int) -> Any:
    """An empty store of the given kind."""
    from raserec_adapter.memory.torch_bank import _TensorStore

    return CompactStore(dim) if store == "compact" else _TensorStore(dim, torch.device("cpu"))


def normed_rows(store: Any, lo: int, hi: int) -> np.ndarray:
    """Normalised keys ``lo..hi-1`` of either store, as a float32 array for Faiss."""
    if isinstance(store, CompactStore):
        return store.normed(lo, hi).numpy()
    return np.ascontiguousarray(store.normed[lo:hi].numpy(), dtype=np.float32)


def normed_of(store: Any, ids: torch.Tensor) -> torch.Tensor:
    """Normalised keys of any-shaped valid ids, float32, shape ``ids.shape + (dim,)``."""
    if isinstance(store, CompactStore):
        return _normalize(gather_rows(store.keys, ids).float())
    return gather_rows(store.normed, ids)


def _training_rows(store: Any, size: int | None, seed: int) -> np.ndarray:
    n = len(store)
    if size is None or size >= n:
        return normed_rows(store, 0, n)
    ids = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    return normed_of(store, torch.from_numpy(ids)).numpy()


def build_index(
    store: Any, dim: int, factory: str, seed: int, opts: ScaleOptions
) -> tuple[Any, str]:
    """Trains (on ``opts.train_size`` memories at most) and fills an index over ``store``.

    Falls back to an exact ``"Flat"`` index, with a warning, when the index cannot be trained.

    Returns:
        ``(index, description)``: the index and the factory string actually built.
    """
    import faiss

    if isinstance(store, CompactStore):
        store.trim()
    n = len(store)
    description = factory
    index = faiss.index_factory(dim, description, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        reason = None
        ivf = ivf_of(index)
        if ivf is not None:
            ivf.cp.seed = seed
            if n < ivf.nlist:
                reason = f"{n} entries < nlist {ivf.nlist}"
        if reason is None:
            try:
                index.train(_training_rows(store, opts.train_size, seed))
            except RuntimeError as err:
                reason = f"training failed: {str(err).strip().splitlines()[-1]}"
        if reason is not None:
            logger.warning(
                "FaissMemoryBank: cannot train %r on %d entries (%s); using an exact "
                "'Flat' index instead",
                factory,
                n,
                reason,
            )
            description = "Flat"
            index = faiss.index_factory(dim, description, faiss.METRIC_INNER_PRODUCT)
    if opts.shards > 1 and description != "Flat":
        index = _sharded([faiss.clone_index(index) for _ in range(opts.shards)])
    if isinstance(store, CompactStore):
        for lo in range(0, n, _CHUNK):
            index.add(normed_rows(store, lo, min(n, lo + _CHUNK)))
    else:
        index.add(normed_rows(store, 0, n))
    return index, description


def _sharded(parts: list[Any]) -> Any:
    import faiss

    shards = faiss.IndexShards(parts[0].d, True, False)  # threaded; the ids are the bank's
    for part in parts:
        shards.add_shard(part)  # Faiss's wrapper keeps a reference to each part
    return shards


def _parts(index: Any) -> list[Any]:
    """The shards of an ``IndexShards``, or ``[index]``."""
    import faiss

    if not isinstance(index, faiss.IndexShards):
        return [index]
    return [faiss.downcast_index(index.at(i)) for i in range(index.count())]


def set_search_params(index: Any, nprobe: int, ef_search: int | None) -> None:
    """``nprobe`` on (every shard of) an IVF index; ``efSearch`` on an HNSW index."""
    for part in _parts(index):
        if (ivf := ivf_of(part)) is not None:
            ivf.nprobe = min(nprobe, ivf.nlist)
        elif ef_search is not None and (hnsw := hnsw_of(part)) is not None:
            hnsw.efSearch = ef_search


def refine(
    store: Any, qn: torch.Tensor, ids: torch.Tensor, scores: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates re-scored with the stored keys and sorted; ``-1`` padding stays last.

    In numpy: a single query's few operations cost microseconds there, tens in torch."""
    idx = ids.numpy()
    safe = np.maximum(idx, 0)
    if isinstance(store, CompactStore):
        rows = store.keys.numpy()[safe].astype(np.float32)  # (q, candidates, dim)
        norms = np.maximum(np.sqrt(np.einsum("qcd,qcd->qc", rows, rows)), 1e-12)
    else:
        rows, norms = store.normed.numpy()[safe], np.float32(1.0)
    sims = np.matmul(rows, qn.numpy()[:, :, None])[:, :, 0] / norms
    sims[idx < 0] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")
    top = np.take_along_axis(sims, order, axis=1).astype(np.float32)
    return torch.from_numpy(top), torch.from_numpy(np.take_along_axis(idx, order, axis=1))


def warn_remove(n: int) -> None:
    """HNSW cannot remove entries: say that the graph is rebuilt (from ``n`` stored keys)."""
    logger.warning(
        "FaissMemoryBank: HNSW indexes cannot remove entries; the graph is rebuilt from "
        "the %d stored keys at the next search (an IVF or Flat index rebuilds faster)",
        n,
    )


def saved_index(index: Any) -> Any:
    """The index to write: one IVF index holding every shard's entries."""
    import faiss

    parts = _parts(index)
    if len(parts) == 1:
        return parts[0]
    merged = faiss.clone_index(parts[0])
    for part in parts[1:]:
        part.copy_subset_to(merged, 0, 0, 2**62)  # every id
    return merged


def loaded_index(index: Any, shards: int) -> Any:
    """A read index split into ``shards`` shards (by id modulo ``shards``)."""
    import faiss

    if shards == 1 or not isinstance(faiss.downcast_index(index), faiss.IndexIVF):
        return index
    index = faiss.downcast_index(index)
    parts = []
    for i in range(shards):
        part = faiss.clone_index(index)
        part.reset()
        index.copy_subset_to(part, 1, shards, i)
        parts.append(part)
    return _sharded(parts)


def check_bank_config(cfg: Any) -> None:
    """:class:`~raserec_adapter.BankConfig`'s checks of every field but ``prefix_lengths``
    (here, beside the Faiss options they check, so that ``config.py`` stays small).

    Raises:
        ValueError: ``BankConfig.<field> must be ..., got ...``.

    Examples:
        >>> from raserec_adapter import BankConfig
        >>> BankConfig(kind="torch", store="compact")
        Traceback (most recent call last):
        ...
        ValueError: BankConfig.store must be 'full' with kind 'torch' (the options for large banks are FaissMemoryBank's), got 'compact'
    """  # noqa: E501

    def check(ok: bool, name: str, want: str) -> None:
        if not ok:
            raise ValueError(f"BankConfig.{name} must be {want}, got {getattr(cfg, name)!r}")

    check(cfg.kind in ("faiss", "torch", "milvus"), "kind", "'faiss', 'torch' or 'milvus'")
    name = cfg.milvus_collection
    ok = isinstance(name, str) and name.isidentifier() and name.isascii() and len(name) < 200
    check(ok, "milvus_collection", "a Milvus name (letters, digits, '_')")
    check(cfg.nprobe >= 1, "nprobe", ">= 1")
    check(cfg.overfetch >= 1, "overfetch", ">= 1")
    check(cfg.store in STORES, "store", "'full' or 'compact'")
    check(cfg.shards >= 1, "shards", ">= 1")
    size = cfg.train_size
    ok = size is None or (isinstance(size, (int, np.integer)) and not isinstance(size, bool))
    check(ok and (size is None or size >= 1), "train_size", "None or an int >= 1")
    object.__setattr__(cfg, "train_size", None if size is None else int(size))
    if cfg.kind != "faiss":
        for field, default in vars(ScaleOptions()).items():
            if hasattr(cfg, field):
                check(
                    getattr(cfg, field) == default,
                    field,
                    f"{default!r} with kind {cfg.kind!r} (the options for large banks are "
                    "FaissMemoryBank's)",
                )
