"""Memory banks for retrieval-augmented fine-tuning (RaSeRec paper, section 3).

A memory bank holds one entry per training pair ``<prefix, next item>`` of a frozen encoder:

* key ``h_k``: the encoder's representation of the prefix (raw, as stored),
* value ``v_k``: the embedding of the target item (raw, as stored),
* metadata: the pair's user id and prefix length, needed for the exclusion rule.

Retrieval is cosine similarity: keys and queries are L2-normalised for the search only, while
:meth:`MemoryBank.fetch` returns the raw stored tensors.

Exclusion rule (no leakage, see :func:`admissible`): a query of user ``u`` with prefix length
``n`` may return memory ``(user v, length m)`` iff ``v != u or m < n``. A training query thus
never retrieves its own pair or its user's future, and a validation query of ``u`` sees ``u``'s
past training pairs. Both banks enforce the rule inside ``search`` whenever the query users and
lengths are given, and always return exactly ``k`` valid memories per query, or raise a
``ValueError`` when fewer than ``k`` admissible memories exist.

Ids are positions in the bank (``0 <= id < len(bank)``), in insertion order. ``remove``
compacts the bank: the surviving memories keep their relative order and are renumbered, so ids
from an earlier search must not be reused after a ``remove``.

Banks are saved as a directory with ``bank.json`` (format version, class, dim, count, config) and
``arrays.npz`` (keys, values, users, lengths); nothing is pickled. A save is written to a
temporary directory and renamed into place, so a failed save never corrupts an existing bank.

Examples:
    >>> import torch
    >>> # user 0 at prefix length 2 may see its own past (length 1), not its own pair (length 2)
    >>> admissible(torch.tensor([0]), torch.tensor([2]), torch.tensor([0, 0]),
    ...            torch.tensor([1, 2])).tolist()
    [True, False]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from raserec_adapter.memory.format import BANK_FORMAT, BANK_FORMAT_VERSION, MemoryBankFormatError

__all__ = [
    "BANK_FORMAT",
    "BANK_FORMAT_VERSION",
    "MemoryBank",
    "MemoryBankFormatError",
    "SearchResult",
    "admissible",
    "gather_rows",
]


@dataclass(frozen=True)
class SearchResult:
    """Top-k memories of each query.

    Attributes:
        ids: ``(q, k)`` long tensor of positions in the bank; always valid, never ``-1``.
        scores: ``(q, k)`` float tensor of cosine similarities, descending along each row.

    Examples:
        >>> r = SearchResult(ids=torch.tensor([[2, 0]]), scores=torch.tensor([[0.9, 0.1]]))
        >>> r.ids.shape
        torch.Size([1, 2])
    """

    ids: torch.Tensor
    scores: torch.Tensor


@runtime_checkable
class MemoryBank(Protocol):
    """What the retrieval-augmented head needs from a memory bank.

    Implementations: :class:`TorchMemoryBank` (exact, CPU or GPU) and
    :class:`raserec_adapter.memory.faiss_bank.FaissMemoryBank` (Faiss, approximate or exact).

    Examples:
        >>> from raserec_adapter.memory import TorchMemoryBank
        >>> isinstance(TorchMemoryBank(dim=8), MemoryBank)
        True
    """

    dim: int

    @property
    def device(self) -> torch.device:
        """Device of the tensors returned by ``search`` and ``fetch``."""
        ...

    def add(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        users: torch.Tensor,
        lengths: torch.Tensor,
    ) -> None:
        """Append ``n`` memories: keys/values ``(n, dim)``, users/lengths ``(n,)`` integers."""
        ...

    def search(
        self,
        queries: torch.Tensor,
        k: int,
        users: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
    ) -> SearchResult:
        """Top-``k`` memories by cosine similarity, obeying the exclusion rule if users/lengths."""
        ...

    def fetch(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw keys and values for an any-shaped id tensor (shape ``ids.shape + (dim,)``)."""
        ...

    def remove(self, users: torch.Tensor) -> int:
        """Remove all memories of the given users; return how many were removed."""
        ...

    def __len__(self) -> int:
        """Number of memories."""
        ...

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save to a directory (written atomically)."""
        ...

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Any:
        """Load a bank saved by :meth:`save`."""
        ...


def admissible(
    query_users: torch.Tensor,
    query_lengths: torch.Tensor,
    mem_users: torch.Tensor,
    mem_lengths: torch.Tensor,
) -> torch.Tensor:
    """Exclusion rule: may a query ``(u, n)`` retrieve memory ``(v, m)``? Iff ``v != u or m < n``.

    All arguments broadcast against each other (e.g. queries as ``(q, 1)`` and memories as
    ``(1, n)`` give a ``(q, n)`` mask).

    Args:
        query_users: User ids of the queries.
        query_lengths: Prefix lengths of the queries.
        mem_users: User ids of the memories.
        mem_lengths: Prefix lengths of the memories.

    Returns:
        Bool tensor of the broadcast shape; ``True`` where the memory may be returned.

    Examples:
        >>> import torch
        >>> admissible(torch.tensor([[0]]), torch.tensor([[3]]),
        ...            torch.tensor([[0, 0, 0, 1]]), torch.tensor([[2, 3, 4, 9]])).tolist()
        [[True, False, False, True]]
    """
    return (mem_users != query_users) | (mem_lengths < query_lengths)


# --------------------------------------------------------------------------------------------
# Shared validation and search helpers (used by TorchMemoryBank and FaissMemoryBank).
# --------------------------------------------------------------------------------------------


def _check_dim(dim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    return int(dim)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _as_float_matrix(x: Any, name: str, dim: int, device: torch.device) -> torch.Tensor:
    """Validate a ``(n, dim)`` finite float matrix and return it as float32 on ``device``."""
    t = torch.as_tensor(x)
    if t.dim() != 2 or t.shape[1] != dim:
        got = tuple(t.shape)
        raise ValueError(
            f"{name} must have shape (n, {dim}): expected dim {dim}, got shape {got}"
            if t.dim() == 2
            else f"{name} must be a 2-D tensor of shape (n, {dim}), got shape {got}"
        )
    if not (t.is_floating_point() or t.dtype in _INT_DTYPES):
        raise TypeError(f"{name} must be a float tensor, got dtype {t.dtype}")
    t = t.detach().to(device=device, dtype=torch.float32)
    if t.numel():
        bad = int((~torch.isfinite(t)).any(dim=1).sum())
        if bad:
            raise ValueError(f"{name} contain NaN or inf in {bad} of {t.shape[0]} rows")
    return t.contiguous()


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _as_int_vector(x: Any, name: str, device: torch.device) -> torch.Tensor:
    """Validate a 1-D integer tensor and return it as int64 on ``device``."""
    t = torch.as_tensor(x)
    if t.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor, got shape {tuple(t.shape)}")
    if t.dtype not in _INT_DTYPES and not (t.numel() == 0 and t.is_floating_point()):
        raise TypeError(f"{name} must be an integer tensor, got dtype {t.dtype}")
    return t.detach().to(device=device, dtype=torch.int64).contiguous()


def _validate_add(
    keys: Any, values: Any, users: Any, lengths: Any, dim: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    k = _as_float_matrix(keys, "keys", dim, device)
    v = _as_float_matrix(values, "values", dim, device)
    u = _as_int_vector(users, "users", device)
    n = _as_int_vector(lengths, "lengths", device)
    rows = (k.shape[0], v.shape[0], u.shape[0], n.shape[0])
    if len(set(rows)) != 1:
        raise ValueError(
            "keys, values, users and lengths must have the same number of rows, got "
            f"{rows[0]}, {rows[1]}, {rows[2]} and {rows[3]}"
        )
    _check_lengths(n, "memory")
    return k, v, u, n


def _check_lengths(n: torch.Tensor, what: str) -> None:
    """Prefix lengths count the items before a target (a memory) or in a query: >= 1."""
    if n.numel() and int(n.min()) < 1:
        bad = int((n < 1).sum())
        raise ValueError(
            f"{what} lengths must be >= 1 (the number of items in the prefix), got "
            f"{int(n.min())} in {bad} of {n.numel()} rows; pass each pair's prefix length, "
            "not a 0-based position"
        )


def _validate_search(
    queries: Any,
    k: int,
    users: Any,
    lengths: Any,
    dim: int,
    size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {k!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if size == 0:
        raise ValueError("cannot search an empty memory bank; add memories first")
    if k > size:
        raise ValueError(f"k={k} exceeds the number of memories in the bank ({size})")
    q = _as_float_matrix(queries, "queries", dim, device)
    if (users is None) != (lengths is None):
        raise ValueError(
            "pass both users and lengths of the queries (for the exclusion rule) or neither"
        )
    if users is None:
        return q, None, None
    u = _as_int_vector(users, "users", device)
    n = _as_int_vector(lengths, "lengths", device)
    if u.shape[0] != q.shape[0] or n.shape[0] != q.shape[0]:
        raise ValueError(
            "queries, users and lengths must have the same number of rows, got "
            f"{q.shape[0]}, {u.shape[0]} and {n.shape[0]}"
        )
    _check_lengths(n, "query")
    return q, u, n


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows (zero rows stay zero)."""
    return F.normalize(x, p=2.0, dim=-1)


def _own_user_pairs(
    q_users: torch.Tensor, sorted_users: torch.Tensor, order: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """All (query row, memory id) pairs where the memory belongs to the query's user.

    ``sorted_users``/``order`` are the memories' users sorted (stably) and the sorting
    permutation. Only these pairs can be inadmissible, so the rule never needs a dense
    ``queries x memories`` mask.
    """
    starts = torch.searchsorted(sorted_users, q_users)
    counts = torch.searchsorted(sorted_users, q_users, right=True) - starts
    rows = torch.repeat_interleave(torch.arange(q_users.shape[0], device=q_users.device), counts)
    first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    offsets = torch.arange(rows.shape[0], device=q_users.device) - first
    return rows, order[starts[rows] + offsets]


def _exact_search(
    q_normed: torch.Tensor,
    keys_normed: torch.Tensor,
    k: int,
    q_users: torch.Tensor | None,
    q_lengths: torch.Tensor | None,
    mem_users: torch.Tensor,
    mem_lengths: torch.Tensor,
    chunk: int,
    user_order: tuple[torch.Tensor, torch.Tensor] | None = None,
    row_labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k cosine search, chunked over queries, inadmissible entries set to ``-inf``.

    Args:
        q_normed: ``(q, d)`` normalised queries.
        keys_normed: ``(n, d)`` normalised keys.
        k: Results per query.
        q_users: Query users (``None``: no exclusion rule).
        q_lengths: Query prefix lengths.
        mem_users: ``(n,)`` memory users.
        mem_lengths: ``(n,)`` memory prefix lengths.
        chunk: Queries per similarity block.
        user_order: ``torch.sort(mem_users, stable=True)`` (values, indices), if cached.
        row_labels: Query numbers to name in error messages (default: row positions).

    Raises:
        ValueError: if some query has fewer than ``k`` admissible memories.
    """
    nq, n = q_normed.shape[0], keys_normed.shape[0]
    ids = torch.empty((nq, k), dtype=torch.int64, device=q_normed.device)
    scores = torch.empty((nq, k), dtype=q_normed.dtype, device=q_normed.device)
    use_rule = q_users is not None and q_lengths is not None
    if use_rule and user_order is None:
        user_order = torch.sort(mem_users, stable=True)
    for start in range(0, nq, chunk):
        stop = min(start + chunk, nq)
        sims = q_normed[start:stop] @ keys_normed.T
        if use_rule:
            qu, ql = q_users[start:stop], q_lengths[start:stop]
            rows, mems = _own_user_pairs(qu, user_order[0], user_order[1])
            bad = ~admissible(qu[rows], ql[rows], mem_users[mems], mem_lengths[mems])
            rows, mems = rows[bad], mems[bad]
            counts = n - torch.bincount(rows, minlength=stop - start)
            short = counts < k
            if bool(short.any()):
                row = int(torch.nonzero(short)[0, 0])
                label = start + row if row_labels is None else int(row_labels[start + row])
                raise ValueError(
                    f"query {label} (user {int(qu[row])}, prefix length {int(ql[row])}) has "
                    f"only {int(counts[row])} admissible memories in the bank of {n}, fewer "
                    f"than k={k}; lower k or add memories"
                )
            sims[rows, mems] = float("-inf")
        top = torch.topk(sims, k, dim=1, largest=True, sorted=True)
        scores[start:stop] = top.values
        ids[start:stop] = top.indices
    return scores, ids


def _check_ids(ids: Any, size: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(ids)
    if t.dtype not in _INT_DTYPES:
        raise TypeError(f"ids must be an integer tensor, got dtype {t.dtype}")
    t = t.to(device=device, dtype=torch.int64)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= size):
        raise IndexError(
            f"ids must lie in [0, {size}) (positions in the bank), got values from "
            f"{int(t.min())} to {int(t.max())}"
        )
    return t


def _users_to_remove(users: Any, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(users)
    if t.dim() == 0:
        t = t.reshape(1)
    t = _as_int_vector(t.reshape(-1), "users", device)
    if t.numel() and int(t.min()) < 0:
        raise ValueError(
            f"user ids are integers >= 0 (as add takes them), got {int(t.min())}; "
            "unknown ids >= 0 remove nothing"
        )
    return t


def gather_rows(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``table[ids]`` for a 2-D ``table`` and integer ``ids`` of any shape.

    The same values as advanced indexing, through ``index_select`` (about 5x faster on a CPU
    for RAFT's ``(1024, 20)`` neighbour ids into Beauty's bank).

    Examples:
        >>> gather_rows(torch.eye(3), torch.tensor([[2], [0]])).tolist()
        [[[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]]]
    """
    return table.index_select(0, ids.reshape(-1)).view(*ids.shape, table.shape[1])
