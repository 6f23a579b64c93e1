"""Faiss memory bank: IVF-Flat (the paper's nlist 128, nprobe 1) or exact flat search.

:class:`FaissMemoryBank` keeps the raw keys, values, users and prefix lengths in CPU tensors
beside a Faiss index of the L2-normalised keys (inner product = cosine). The index is built
(trained + filled) lazily at the first search; later additions go into the built index as they
come, and the index is trained again (at the next search) after a ``remove`` or once the bank
has doubled since the last training.

Search over-fetches ``overfetch * k`` candidates, drops inadmissible ones (the exclusion rule of
:func:`~raserec_adapter.memory.admissible`) and Faiss's ``-1`` padding, and keeps the best ``k``.
Rows left with fewer than ``k`` candidates are re-searched exactly (brute force over the
admissible entries), so every query gets exactly ``k`` valid memories, or an error when the
whole bank holds fewer than ``k`` admissible ones. Faiss is imported lazily.

Examples:
    >>> import torch
    >>> bank = FaissMemoryBank(dim=4, index_factory="Flat")
    >>> g = torch.Generator().manual_seed(0)
    >>> keys = torch.randn(20, 4, generator=g)
    >>> users, lengths = torch.arange(20) % 5, torch.arange(20) // 5 + 1
    >>> bank.add(keys, torch.randn(20, 4, generator=g), users, lengths)
    >>> res = bank.search(keys[:3], k=4, users=users[:3], lengths=lengths[:3])
    >>> tuple(res.ids.shape), bool((res.ids != torch.arange(3)[:, None]).all())
    ((3, 4), True)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

import raserec_adapter.memory.faiss_scale as scale
from raserec_adapter.memory.format import (
    MemoryBankFormatError,
    add_saved,
    bank_arrays,
    bank_meta,
    read_bank_dir,
    write_bank_dir,
)
from raserec_adapter.memory.protocol import (
    SearchResult,
    _check_dim,
    _check_ids,
    _exact_search,
    _normalize,
    _positive_int,
    _users_to_remove,
    _validate_add,
    _validate_search,
    admissible,
)

__all__ = ["FaissMemoryBank"]

logger = logging.getLogger(__name__)

_INDEX_NAME = "index.faiss"
_CPU = torch.device("cpu")


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "FaissMemoryBank needs Faiss: pip install faiss-cpu (or faiss-gpu); "
            "TorchMemoryBank needs no extra package"
        ) from err
    return faiss


class FaissMemoryBank:
    """Cosine-similarity memory bank backed by a Faiss index (CPU).

    Args:
        dim: Dimension of keys, values and queries.
        index_factory: Faiss factory string; ``"IVF128,Flat"`` (default, the paper's setting)
            or ``"Flat"`` for exact search. Metric is always inner product on normalised
            vectors. If the bank has too few entries to train the index (fewer than ``nlist``
            for IVF, or training fails), an exact ``"Flat"`` index is used and a warning logged.
        nprobe: IVF lists visited per query (ignored by non-IVF indexes).
        overfetch: Candidates fetched per query are ``overfetch * k`` (before the exclusion
            rule filters them).
        seed: Seed of the index training (k-means), so builds are deterministic.
        num_threads: If given, calls ``faiss.omp_set_num_threads`` (a process-wide setting).
        exact_chunk: Queries scored at once by the exact fallback search.
        store, refine, train_size, shards, ef_search: Options for large banks
            (:mod:`~raserec_adapter.memory.faiss_scale`): ``store="compact"`` keeps float16
            keys and each distinct value once; ``refine`` re-scores the candidates with the
            stored keys; ``train_size`` trains on a seeded sample; ``shards`` splits an IVF
            index; ``ef_search`` is HNSW's search depth. The defaults change nothing.

    Attributes:
        index_description: Factory string of the index actually built (``"Flat"`` after a
            fallback), or ``None`` before the first build.
        scale: The large-bank options (:class:`~raserec_adapter.memory.faiss_scale.ScaleOptions`).

    Examples:
        >>> bank = FaissMemoryBank(dim=2, index_factory="Flat")
        >>> bank.add(torch.eye(2), torch.eye(2), torch.tensor([0, 1]), torch.tensor([1, 1]))
        >>> bank.search(torch.tensor([[0.1, 1.0]]), k=1).ids.tolist()
        [[1]]
    """

    def __init__(
        self,
        dim: int,
        index_factory: str = "IVF128,Flat",
        nprobe: int = 1,
        overfetch: int = 4,
        seed: int = 0,
        num_threads: int | None = None,
        exact_chunk: int = 1024,
        store: str = "full",
        refine: bool = False,
        train_size: int | None = None,
        shards: int = 1,
        ef_search: int | None = None,
    ) -> None:
        faiss = _import_faiss()
        self.dim = _check_dim(dim)
        if not isinstance(index_factory, str) or not index_factory.strip():
            raise ValueError(f"index_factory must be a non-empty string, got {index_factory!r}")
        try:
            probe = faiss.index_factory(self.dim, index_factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            raise ValueError(
                f"Faiss cannot build index_factory={index_factory!r} for dim {self.dim}: "
                f"{str(err).strip().splitlines()[-1]}"
            ) from err
        if isinstance(probe, (faiss.IndexIDMap, faiss.IndexIDMap2)):
            raise ValueError(
                f"index_factory={index_factory!r} asks for an IDMap; the bank numbers its "
                "memories itself (users and positions are kept beside the index): drop the "
                f"'IDMap' part, e.g. index_factory={index_factory.split(',', 1)[-1]!r}"
            )
        self.scale = scale.ScaleOptions(store, refine, train_size, shards, ef_search)
        self.scale.check_index(probe, index_factory)
        self._is_hnsw = scale.hnsw_of(probe) is not None  # HNSW cannot remove entries
        self.index_factory = index_factory
        self.nprobe = _positive_int(nprobe, "nprobe")
        self.overfetch = _positive_int(overfetch, "overfetch")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.seed = int(seed)
        self.exact_chunk = _positive_int(exact_chunk, "exact_chunk")
        self.num_threads = (
            None if num_threads is None else _positive_int(num_threads, "num_threads")
        )
        if self.num_threads is not None:
            faiss.omp_set_num_threads(self.num_threads)
        self._store = scale.make_store(self.scale.store, self.dim)
        self._index: Any = None
        self._trained_on = 0  # memories when the index was last built
        self.index_description: str | None = None

    @property
    def device(self) -> torch.device:
        """Always CPU: stored memories and returned tensors live there."""
        return _CPU

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self.scale.config().items())
        return (
            f"FaissMemoryBank(dim={self.dim}, size={len(self)}, "
            f"index_factory={self.index_factory!r}, nprobe={self.nprobe}, "
            f"overfetch={self.overfetch}{options})"
        )

    def add(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        users: torch.Tensor,
        lengths: torch.Tensor,
    ) -> None:
        """Append memories.

        A built index takes the new keys as they come (an IVF index files them under its
        trained lists, as Faiss does); it is trained again at the next search only when it is
        an exact fallback for too few entries, or once the bank has grown to twice the size it
        was trained on.

        Args:
            keys: ``(n, dim)`` raw sequence representations ``h_k``.
            values: ``(n, dim)`` raw target item embeddings ``v_k``.
            users: ``(n,)`` integer user ids.
            lengths: ``(n,)`` integer prefix lengths of the pairs.

        Examples:
            >>> bank = FaissMemoryBank(dim=2, index_factory="Flat")
            >>> bank.add(torch.eye(2), torch.eye(2), torch.tensor([0, 1]), torch.tensor([1, 1]))
            >>> len(bank)
            2
        """
        k, v, u, n = _validate_add(keys, values, users, lengths, self.dim, _CPU)
        if not k.shape[0]:
            return
        self._store.append(k, v, u, n)
        grown = len(self._store) > 2 * self._trained_on
        if self._index is None or self.index_description != self.index_factory or grown:
            self._invalidate()
            return
        self._index.add(scale.normed_rows(self._store, len(self) - k.shape[0], len(self)))

    def _invalidate(self) -> None:
        self._index = None
        self.index_description = None

    def _set_nprobe(self, index: Any) -> None:
        scale.set_search_params(index, self.nprobe, self.scale.ef_search)

    def _build(self) -> Any:
        """Train and fill the index over the normalised keys (falls back to exact Flat)."""
        n = len(self._store)
        index, description = scale.build_index(
            self._store, self.dim, self.index_factory, self.seed, self.scale
        )
        self._set_nprobe(index)
        self._index = index
        self._trained_on = n
        self.index_description = description
        return index

    def _get_index(self) -> Any:
        if self._index is None:
            return self._build()
        self._set_nprobe(self._index)  # picks up a changed ``self.nprobe``
        return self._index

    def search(
        self,
        queries: torch.Tensor,
        k: int,
        users: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
        num_threads: int | None = None,
    ) -> SearchResult:
        """Top-``k`` memories by cosine similarity, exactly ``k`` valid ids per query.

        Args:
            queries: ``(q, dim)`` raw query representations (normalised internally), any
                device.
            k: Memories per query.
            users: ``(q,)`` user ids of the queries; with ``lengths`` enables the exclusion rule.
            lengths: ``(q,)`` prefix lengths of the queries.
            num_threads: If given, calls ``faiss.omp_set_num_threads`` first.

        Returns:
            :class:`~raserec_adapter.memory.protocol.SearchResult` with ``(q, k)`` CPU tensors.

        Raises:
            ValueError: on bad input, ``k < 1``, ``k > len(bank)``, an empty bank, or when a
                query has fewer than ``k`` admissible memories.

        Examples:
            >>> bank = FaissMemoryBank(dim=2, index_factory="Flat")
            >>> bank.add(torch.eye(2), torch.eye(2), torch.tensor([0, 1]), torch.tensor([1, 1]))
            >>> res = bank.search(torch.tensor([[1.0, 0.0]]), k=1, users=torch.tensor([0]),
            ...                   lengths=torch.tensor([1]))
            >>> res.ids.tolist()  # own pair (user 0, length 1) is excluded
            [[1]]
        """
        faiss = _import_faiss()
        if num_threads is not None:
            faiss.omp_set_num_threads(_positive_int(num_threads, "num_threads"))
        q, qu, ql = _validate_search(queries, k, users, lengths, self.dim, len(self), _CPU)
        k = int(k)
        qn = _normalize(q)
        index = self._get_index()
        size = len(self)
        fetch = min(size, self.overfetch * k)
        dist, idx = index.search(np.ascontiguousarray(qn.numpy(), dtype=np.float32), fetch)
        cand_ids = torch.from_numpy(idx).to(torch.int64)
        cand_scores = torch.from_numpy(dist).to(torch.float32)
        if self.scale.refine:
            cand_scores, cand_ids = scale.refine(self._store, qn, cand_ids, cand_scores)
        valid = cand_ids >= 0
        if qu is not None and ql is not None:
            safe = cand_ids.clamp(min=0)
            valid &= admissible(
                qu[:, None], ql[:, None], self._store.users[safe], self._store.lengths[safe]
            )
        if bool(valid[:, :k].all()):  # the usual case: each query's first k candidates
            return SearchResult(
                ids=cand_ids[:, :k].contiguous(), scores=cand_scores[:, :k].contiguous()
            )
        keep = valid & (valid.cumsum(dim=1) <= k)
        enough = valid.sum(dim=1) >= k
        nq = q.shape[0]
        ids = torch.empty((nq, k), dtype=torch.int64)
        scores = torch.empty((nq, k), dtype=torch.float32)
        if bool(enough.any()):
            sel = keep[enough]
            ids[enough] = cand_ids[enough][sel].view(-1, k)
            scores[enough] = cand_scores[enough][sel].view(-1, k)
        if not bool(enough.all()):
            rows = torch.nonzero(~enough).squeeze(1)
            sub_scores, sub_ids = self._search_exact_rows(qn, k, qu, ql, rows)
            ids[rows] = sub_ids
            scores[rows] = sub_scores
        return SearchResult(ids=ids, scores=scores)

    def _search_exact_rows(
        self,
        qn: torch.Tensor,
        k: int,
        qu: torch.Tensor | None,
        ql: torch.Tensor | None,
        rows: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact fallback for the given query rows (normalised queries)."""
        if isinstance(self._store, scale.CompactStore):
            sub = (None, None) if qu is None or ql is None else (qu[rows], ql[rows])
            return self._store.exact_search(qn[rows], k, *sub, row_labels=rows)
        return _exact_search(
            qn[rows],
            self._store.normed,
            k,
            None if qu is None else qu[rows],
            None if ql is None else ql[rows],
            self._store.users,
            self._store.lengths,
            self.exact_chunk,
            user_order=self._store.user_order if qu is not None else None,
            row_labels=rows,
        )

    def fetch(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw stored keys and values of the given ids.

        Args:
            ids: Integer tensor of any shape with positions in ``[0, len(bank))``.

        Returns:
            ``(keys, values)``, each of shape ``ids.shape + (dim,)``, on the CPU.

        Examples:
            >>> bank = FaissMemoryBank(dim=2, index_factory="Flat")
            >>> bank.add(3 * torch.eye(2), torch.eye(2), torch.tensor([0, 1]), torch.tensor([1, 1]))
            >>> bank.fetch(torch.tensor([0]))[0].tolist()
            [[3.0, 0.0]]
        """
        t = _check_ids(ids, len(self), _CPU)
        return self._store.fetch(t)

    def remove(self, users: torch.Tensor) -> int:
        """Remove all memories of the given users (the index is rebuilt at the next search).

        Surviving memories keep their order and are renumbered ``0..len-1``.

        Args:
            users: Integer user ids >= 0 (any shape, or a single int); ids with no memories
                remove nothing.

        Returns:
            Number of memories removed.

        Raises:
            TypeError: If the ids are not integers.
            ValueError: If an id is negative.

        Examples:
            >>> bank = FaissMemoryBank(dim=2, index_factory="Flat")
            >>> bank.add(torch.eye(2), torch.eye(2), torch.tensor([0, 1]), torch.tensor([1, 1]))
            >>> bank.remove(torch.tensor([1])), len(bank)
            (1, 1)
        """
        u = _users_to_remove(users, _CPU)
        if len(self) == 0 or u.numel() == 0:
            return 0
        drop = torch.isin(self._store.users, u)
        removed = int(drop.sum())
        if removed:
            self._store.keep(~drop)
            self._invalidate()
            if self._is_hnsw:
                scale.warn_remove(len(self))
        return removed

    def _config(self) -> dict[str, Any]:
        return {
            "index_factory": self.index_factory,
            "nprobe": self.nprobe,
            "overfetch": self.overfetch,
            "seed": self.seed,
            "exact_chunk": self.exact_chunk,
            "index_description": self.index_description,
            "trained_on": self._trained_on,
            **self.scale.config(),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save to directory ``path`` (``bank.json``, ``arrays.npz``, ``index.faiss``), atomically.

        The index is built first if needed, so a loaded bank answers searches identically.

        Examples:
            >>> import tempfile, os
            >>> bank = FaissMemoryBank(dim=2, index_factory="Flat")
            >>> bank.add(torch.eye(2), torch.eye(2), torch.tensor([0, 1]), torch.tensor([1, 1]))
            >>> with tempfile.TemporaryDirectory() as d:
            ...     bank.save(os.path.join(d, "bank"))
            ...     len(FaissMemoryBank.load(os.path.join(d, "bank")))
            2
        """
        faiss = _import_faiss()
        index = self._get_index() if len(self) else None
        s = self._store
        meta = bank_meta(type(self).__name__, self.dim, len(s), self._config())

        def write_index(tmp: Path) -> None:
            if index is not None:
                faiss.write_index(scale.saved_index(index), str(tmp / _INDEX_NAME))

        write_bank_dir(
            path, meta, bank_arrays(s.keys, s.values, s.users, s.lengths), extra=write_index
        )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        dim: int | None = None,
    ) -> FaissMemoryBank:
        """Load a bank saved by :meth:`save`.

        Args:
            path: The saved directory.
            device: Must be the CPU (this bank lives there); accepted for API symmetry.
            dim: If given, the expected dimension; another saved dim raises.

        Raises:
            MemoryBankFormatError: missing files, another class/version/dim, bad shapes, or an
                index that does not match the arrays.
        """
        if torch.device(device).type != "cpu":
            raise ValueError(
                f"FaissMemoryBank lives on the CPU; got device={device!r}. Use "
                "TorchMemoryBank for GPU search"
            )
        faiss = _import_faiss()
        meta, arrays = read_bank_dir(path, cls.__name__, dim)
        config = meta.get("config", {})
        try:
            bank = cls(
                meta["dim"],
                index_factory=config.get("index_factory", "IVF128,Flat"),
                nprobe=config.get("nprobe", 1),
                overfetch=config.get("overfetch", 4),
                seed=config.get("seed", 0),
                exact_chunk=config.get("exact_chunk", 1024),
                **{k: config[k] for k in scale.ScaleOptions.config_names() if k in config},
            )
        except ValueError as err:
            raise MemoryBankFormatError(f"{path}: bad config in bank.json: {err}") from err
        add_saved(bank, arrays, path)
        index_path = Path(path) / _INDEX_NAME
        if len(bank) and index_path.is_file():
            try:
                index = faiss.read_index(str(index_path))
            except RuntimeError as err:
                raise MemoryBankFormatError(f"cannot read {index_path}: {err}") from err
            if index.d != bank.dim or index.ntotal != len(bank):
                raise MemoryBankFormatError(
                    f"{index_path} holds {index.ntotal} vectors of dim {index.d}, but the bank "
                    f"has {len(bank)} memories of dim {bank.dim}"
                )
            index = scale.loaded_index(index, bank.scale.shards)
            bank._set_nprobe(index)
            bank._index = index
            trained = config.get("trained_on")  # banks saved before it was recorded: all
            ok = isinstance(trained, int) and not isinstance(trained, bool)
            bank._trained_on = trained if ok and 0 < trained <= len(bank) else len(bank)
            desc = config.get("index_description")
            bank.index_description = desc if isinstance(desc, str) else bank.index_factory
        return bank
