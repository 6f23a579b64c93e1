"""``TorchMemoryBank``: an exact memory bank in PyTorch (CPU or GPU), brute-force search.

Examples:
    >>> import torch
    >>> bank = TorchMemoryBank(dim=2)
    >>> keys = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    >>> bank.add(keys, keys, users=torch.tensor([0, 0, 1]), lengths=torch.tensor([1, 2, 1]))
    >>> q = torch.tensor([[1.0, 0.0]])
    >>> bank.search(q, k=2).ids.tolist()
    [[0, 1]]
    >>> # user 0 at prefix length 2 may see its own past (length 1), not its pair of length 2
    >>> bank.search(q, k=2, users=torch.tensor([0]), lengths=torch.tensor([2])).ids.tolist()
    [[0, 2]]
"""

from __future__ import annotations

import os

import torch

from raserec_adapter._checks import check_device
from raserec_adapter.memory.format import (
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
    _users_to_remove,
    _validate_add,
    _validate_search,
    gather_rows,
)

__all__ = ["TorchMemoryBank"]


class _TensorStore:
    """Raw keys/values/users/lengths plus the L2-normalised keys (for the search), in buffers
    that grow by a quarter when full: an append costs amortised O(new memories), not O(bank),
    and the buffers hold at most 25% spare rows (a split's test-phase bank, built as training
    pairs then validation pairs, about 7% on Beauty)."""

    _FLOAT = ("keys", "values", "normed")
    _INT = ("users", "lengths")

    def __init__(self, dim: int, device: torch.device) -> None:
        self.dim = dim
        self.device = device
        self._size = 0
        self._cols = self._alloc(0)
        self._user_order: tuple[torch.Tensor, torch.Tensor] | None = None

    def _alloc(self, capacity: int) -> dict[str, torch.Tensor]:
        f32 = torch.float32
        cols = {
            c: torch.empty((capacity, self.dim), dtype=f32, device=self.device) for c in self._FLOAT
        }
        for c in self._INT:
            cols[c] = torch.empty((capacity,), dtype=torch.int64, device=self.device)
        return cols

    def append(self, k: torch.Tensor, v: torch.Tensor, u: torch.Tensor, n: torch.Tensor) -> None:
        m = k.shape[0]
        if not m:
            return
        end = self._size + m
        capacity = self._cols["keys"].shape[0]
        if end > capacity:
            grown = self._alloc(max(end, capacity + capacity // 4))
            for c, t in self._cols.items():
                grown[c][: self._size] = t[: self._size]
            self._cols = grown
        new = {"keys": k, "values": v, "normed": _normalize(k), "users": u, "lengths": n}
        for c, t in new.items():
            self._cols[c][self._size : end] = t
        self._size = end
        self._user_order = None

    def __len__(self) -> int:
        return self._size

    def fetch(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw ``(keys, values)`` of checked ids."""
        return gather_rows(self.keys, ids), gather_rows(self.values, ids)

    def _col(self, name: str) -> torch.Tensor:
        return self._cols[name][: self._size]

    @property
    def keys(self) -> torch.Tensor:
        return self._col("keys")

    @property
    def values(self) -> torch.Tensor:
        return self._col("values")

    @property
    def normed(self) -> torch.Tensor:
        """``(n, dim)`` L2-normalised keys."""
        return self._col("normed")

    @property
    def users(self) -> torch.Tensor:
        return self._col("users")

    @property
    def lengths(self) -> torch.Tensor:
        return self._col("lengths")

    @property
    def user_order(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Memories' users sorted stably, and the permutation (cached until the next change)."""
        if self._user_order is None:
            res = torch.sort(self.users, stable=True)
            self._user_order = (res.values, res.indices)
        return self._user_order

    def keep(self, mask: torch.Tensor) -> None:
        self._cols = {c: self._col(c)[mask] for c in self._cols}
        self._size = self._cols["keys"].shape[0]
        self._user_order = None


# --------------------------------------------------------------------------------------------
# Exact PyTorch bank.
# --------------------------------------------------------------------------------------------


class TorchMemoryBank:
    """Exact cosine-similarity memory bank in PyTorch (CPU or GPU).

    Search computes ``normalised queries @ normalised keys^T`` in chunks of queries (at most
    ``query_chunk`` queries and ``max_chunk_elements`` similarity entries per chunk, so memory
    stays bounded), sets inadmissible entries to ``-inf`` and takes the top-k.

    Args:
        dim: Dimension of keys, values and queries.
        device: Where memories are stored and searched (``"cuda"`` searches on the GPU).
        query_chunk: Largest number of queries scored at once.
        max_chunk_elements: Largest ``queries x memories`` similarity block computed at once
            (default 2**27 float32 entries = 512 MiB); lowers the chunk for very large banks.

    Examples:
        >>> bank = TorchMemoryBank(dim=4)
        >>> g = torch.Generator().manual_seed(0)
        >>> keys = torch.randn(10, 4, generator=g)
        >>> users, lengths = torch.arange(10), torch.ones(10, dtype=torch.long)
        >>> bank.add(keys, torch.randn(10, 4, generator=g), users, lengths)
        >>> res = bank.search(keys[:2], k=3, users=torch.tensor([0, 1]),
        ...                   lengths=torch.tensor([1, 1]))
        >>> res.ids.shape, bool((res.ids[:, 0] != torch.tensor([0, 1])).all())
        (torch.Size([2, 3]), True)
        >>> k_raw, v_raw = bank.fetch(res.ids)
        >>> tuple(k_raw.shape)
        (2, 3, 4)
    """

    def __init__(
        self,
        dim: int,
        device: str | torch.device = "cpu",
        query_chunk: int = 4096,
        max_chunk_elements: int = 2**27,
    ) -> None:
        self.dim = _check_dim(dim)
        if isinstance(query_chunk, bool) or not isinstance(query_chunk, int) or query_chunk < 1:
            raise ValueError(f"query_chunk must be a positive integer, got {query_chunk!r}")
        if (
            isinstance(max_chunk_elements, bool)
            or not isinstance(max_chunk_elements, int)
            or max_chunk_elements < 1
        ):
            raise ValueError(
                f"max_chunk_elements must be a positive integer, got {max_chunk_elements!r}"
            )
        self.query_chunk = query_chunk
        self.max_chunk_elements = max_chunk_elements
        self._device = check_device(device)
        self._store = _TensorStore(self.dim, self._device)

    @property
    def device(self) -> torch.device:
        """Device of the stored memories and of all returned tensors."""
        return self._device

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        return f"TorchMemoryBank(dim={self.dim}, size={len(self)}, device='{self._device}')"

    def add(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        users: torch.Tensor,
        lengths: torch.Tensor,
    ) -> None:
        """Append memories.

        Args:
            keys: ``(n, dim)`` raw sequence representations ``h_k``.
            values: ``(n, dim)`` raw target item embeddings ``v_k``.
            users: ``(n,)`` integer user ids.
            lengths: ``(n,)`` integer prefix lengths of the pairs.

        Raises:
            ValueError: on wrong shapes, NaN/inf rows, lengths below 1 or mismatched row
                counts.

        Examples:
            >>> bank = TorchMemoryBank(dim=2)
            >>> ones = torch.ones(3, 2)
            >>> bank.add(ones, ones, torch.arange(3), torch.ones(3, dtype=torch.long))
            >>> len(bank)
            3
        """
        k, v, u, n = _validate_add(keys, values, users, lengths, self.dim, self._device)
        self._store.append(k, v, u, n)

    def search(
        self,
        queries: torch.Tensor,
        k: int,
        users: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
    ) -> SearchResult:
        """Exact top-``k`` memories by cosine similarity.

        Args:
            queries: ``(q, dim)`` raw query representations (normalised internally).
            k: Memories per query.
            users: ``(q,)`` user ids of the queries; with ``lengths`` enables the exclusion rule.
            lengths: ``(q,)`` prefix lengths of the queries.

        Returns:
            :class:`SearchResult` with ``(q, k)`` ids and scores on :attr:`device`.

        Raises:
            ValueError: on bad input, ``k < 1``, ``k > len(bank)``, an empty bank, or when a
                query has fewer than ``k`` admissible memories.

        Examples:
            >>> bank = TorchMemoryBank(dim=2)
            >>> bank.add(torch.eye(2), torch.eye(2), torch.tensor([0, 1]), torch.tensor([1, 1]))
            >>> bank.search(torch.tensor([[0.0, 2.0]]), k=1).ids.tolist()
            [[1]]
        """
        q, qu, ql = _validate_search(queries, k, users, lengths, self.dim, len(self), self._device)
        keys_normed = self._store.normed
        chunk = max(1, min(self.query_chunk, self.max_chunk_elements // max(1, len(self))))
        scores, ids = _exact_search(
            _normalize(q),
            keys_normed,
            int(k),
            qu,
            ql,
            self._store.users,
            self._store.lengths,
            chunk,
            user_order=self._store.user_order if qu is not None else None,
        )
        return SearchResult(ids=ids, scores=scores)

    def fetch(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw stored keys and values of the given ids.

        Args:
            ids: Integer tensor of any shape with positions in ``[0, len(bank))``.

        Returns:
            ``(keys, values)``, each of shape ``ids.shape + (dim,)`` on :attr:`device`.

        Examples:
            >>> bank = TorchMemoryBank(dim=2)
            >>> bank.add(2 * torch.eye(2), torch.eye(2), torch.tensor([0, 1]), torch.tensor([1, 1]))
            >>> bank.fetch(torch.tensor([[1]]))[0].tolist()  # raw, not normalised
            [[[0.0, 2.0]]]
        """
        t = _check_ids(ids, len(self), self._device)
        return self._store.fetch(t)

    def remove(self, users: torch.Tensor) -> int:
        """Remove all memories of the given users.

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
            >>> bank = TorchMemoryBank(dim=2)
            >>> ones = torch.ones(3, 2)
            >>> bank.add(ones, ones, torch.tensor([0, 1, 0]), torch.tensor([1, 1, 2]))
            >>> bank.remove(torch.tensor([0])), len(bank)
            (2, 1)
        """
        u = _users_to_remove(users, self._device)
        if len(self) == 0 or u.numel() == 0:
            return 0
        drop = torch.isin(self._store.users, u)
        removed = int(drop.sum())
        if removed:
            self._store.keep(~drop)
        return removed

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save to directory ``path`` (``bank.json`` + ``arrays.npz``), atomically.

        Examples:
            >>> import tempfile, os
            >>> bank = TorchMemoryBank(dim=2)
            >>> bank.add(torch.eye(2), torch.eye(2), torch.tensor([0, 1]), torch.tensor([1, 1]))
            >>> with tempfile.TemporaryDirectory() as d:
            ...     bank.save(os.path.join(d, "bank"))
            ...     len(TorchMemoryBank.load(os.path.join(d, "bank")))
            2
        """
        s = self._store
        meta = bank_meta(
            type(self).__name__,
            self.dim,
            len(s),
            {"query_chunk": self.query_chunk, "max_chunk_elements": self.max_chunk_elements},
        )
        write_bank_dir(path, meta, bank_arrays(s.keys, s.values, s.users, s.lengths))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        dim: int | None = None,
    ) -> TorchMemoryBank:
        """Load a bank saved by :meth:`save`.

        Args:
            path: The saved directory.
            device: Where to put the memories.
            dim: If given, the expected dimension; another saved dim raises.

        Raises:
            MemoryBankFormatError: missing files, another class/version/dim, bad shapes.
        """
        meta, arrays = read_bank_dir(path, cls.__name__, dim)
        config = meta.get("config", {})
        bank = cls(
            meta["dim"],
            device=device,
            query_chunk=int(config.get("query_chunk", 4096)),
            max_chunk_elements=int(config.get("max_chunk_elements", 2**27)),
        )
        add_saved(bank, arrays, path)
        return bank
