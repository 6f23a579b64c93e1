"""The compact store of a Faiss bank (``store="compact"``): float16 keys, distinct values once.

Raw keys are kept in float16 (relative error below 2**-11; keys above float16's largest value,
65504, are refused) and normalised on demand; each distinct value row is kept once (rows equal
bit for bit, found by a hash and checked), with an int32 reference per memory. The augmenter's
values are rows of the item table, so a bank of ten million memories of a million items keeps a
million value rows. ``fetch`` gives float32 keys and the exact values.

Examples:
    >>> import torch
    >>> store = CompactStore(dim=2)
    >>> table = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    >>> store.append(torch.ones(3, 2), table[[0, 1, 0]], torch.arange(3), torch.ones(3).long())
    >>> len(store), store.distinct_values
    (3, 2)
    >>> store.fetch(torch.tensor([2]))[1].tolist()
    [[1.0, 2.0]]
"""

from __future__ import annotations

import numpy as np
import torch

from raserec_adapter.memory.protocol import _normalize, _own_user_pairs, admissible, gather_rows

__all__ = ["CompactStore"]

_F16_MAX = 65504.0
_BLOCK = 1 << 16  # memories scored at a time by the exact search
_HASH_ROWS = 1 << 15  # value rows hashed at a time


def _grown(t: torch.Tensor, size: int, need: int) -> torch.Tensor:
    """``t`` with room for ``need`` rows (a quarter more than needed when it must grow)."""
    if need <= t.shape[0]:
        return t
    out = torch.empty((max(need, t.shape[0] + t.shape[0] // 4), *t.shape[1:]), dtype=t.dtype)
    out[:size] = t[:size]
    return out


class CompactStore:
    """Float16 raw keys, distinct value rows with int32 references, int64 users and lengths.

    The same interface as the full store (``append``, ``fetch``, ``keep``, ``users``, ...), plus
    normalised rows on demand and an exact search over blocks of memories.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._size = 0
        self._keys = torch.empty((0, dim), dtype=torch.float16)
        self._users = torch.empty((0,), dtype=torch.int64)
        self._lengths = torch.empty((0,), dtype=torch.int64)
        self._refs = torch.empty((0,), dtype=torch.int32)
        self._table = torch.empty((0, dim), dtype=torch.float32)
        self._distinct = 0
        self._mult = np.random.default_rng(0x5EED).integers(1, 2**63, dim, dtype=np.uint64) | 1
        self._hashes = np.empty(0, dtype=np.uint64)  # sorted; with the table row of each
        self._rows = np.empty(0, dtype=np.int64)
        self._user_order: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self._size

    @property
    def distinct_values(self) -> int:
        """Value rows stored (each distinct row once)."""
        return self._distinct

    def nbytes(self) -> int:
        """Bytes of the stored arrays (spare rows of the growing buffers included)."""
        cols = (self._keys, self._users, self._lengths, self._refs, self._table)
        return sum(t.element_size() * t.numel() for t in cols) + self._hashes.nbytes * 2

    def _hash(self, bits: np.ndarray) -> np.ndarray:
        """A 64-bit hash of each row of ``(m, dim)`` uint32 bits (its 64-bit words times odd
        multipliers, summed modulo 2**64)."""
        words = bits.view(np.uint64) if bits.shape[1] % 2 == 0 else bits.astype(np.uint64)
        mult = self._mult[: words.shape[1]]
        out = np.empty(bits.shape[0], dtype=np.uint64)
        for lo in range(0, bits.shape[0], _HASH_ROWS):
            out[lo : lo + _HASH_ROWS] = (words[lo : lo + _HASH_ROWS] * mult).sum(1, dtype=np.uint64)
        return out

    def _new_rows(self, rows: torch.Tensor) -> np.ndarray:
        """Appends value rows to the table; their row numbers."""
        m = rows.shape[0]
        self._table = _grown(self._table, self._distinct, self._distinct + m)
        self._table[self._distinct : self._distinct + m] = rows
        self._distinct += m
        return np.arange(self._distinct - m, self._distinct, dtype=np.int64)

    def _value_refs(self, v: torch.Tensor) -> np.ndarray:
        """Table rows of the values ``v`` (new distinct rows appended), bit for bit."""
        bits = v.numpy().view(np.uint32)
        hashed, first, inverse = np.unique(self._hash(bits), return_index=True, return_inverse=True)
        pos = np.searchsorted(self._hashes, hashed)
        at = np.minimum(pos, max(len(self._hashes) - 1, 0))
        found = (self._hashes[at] == hashed) if len(self._hashes) else np.zeros(len(hashed), bool)
        row_of = np.empty(len(hashed), dtype=np.int64)
        row_of[found] = self._rows[at[found]]
        new = ~found
        fresh = np.flatnonzero(new)
        fresh = fresh[np.argsort(first[fresh])]  # in order of first appearance
        row_of[fresh] = self._new_rows(v[torch.from_numpy(first[fresh])])
        self._hashes = np.insert(self._hashes, pos[new], hashed[new])
        self._rows = np.insert(self._rows, pos[new], row_of[new])
        refs = row_of[inverse.reshape(-1)]
        stored = self._table.index_select(0, torch.from_numpy(refs)).view(torch.int32)
        clash = (stored != v.view(torch.int32)).any(dim=1).numpy()  # equal hashes, other rows
        if clash.any():
            refs[clash] = self._new_rows(v[torch.from_numpy(np.flatnonzero(clash))])
        return refs

    def append(self, k: torch.Tensor, v: torch.Tensor, u: torch.Tensor, n: torch.Tensor) -> None:
        m = k.shape[0]
        if not m:
            return
        low, high = torch.aminmax(k)
        top = max(-float(low), float(high))
        if top > _F16_MAX:
            raise ValueError(
                f"store='compact' keeps keys in float16, whose largest value is 65504, but these "
                f"keys reach {top:.4g}: scale them down (the search is by cosine, so scaling "
                "changes no result) or use store='full'"
            )
        refs = torch.from_numpy(self._value_refs(v).astype(np.int32))
        end = self._size + m
        for name, new in (("_keys", k), ("_users", u), ("_lengths", n), ("_refs", refs)):
            col = _grown(getattr(self, name), self._size, end)
            col[self._size : end] = new
            setattr(self, name, col)
        self._size = end
        self._user_order = None

    def trim(self) -> None:
        """Drops the spare rows of the growing buffers (before a build: resident memory)."""
        for name in ("_keys", "_users", "_lengths", "_refs"):
            col = getattr(self, name)
            if col.shape[0] > self._size:
                setattr(self, name, col[: self._size].clone())
        if self._table.shape[0] > self._distinct:
            self._table = self._table[: self._distinct].clone()

    @property
    def keys(self) -> torch.Tensor:
        """``(n, dim)`` float16 raw keys."""
        return self._keys[: self._size]

    @property
    def values(self) -> torch.Tensor:
        """``(n, dim)`` float32 values (a new tensor: the table's rows, expanded)."""
        return gather_rows(self._table[: self._distinct], self.refs.long())

    @property
    def refs(self) -> torch.Tensor:
        return self._refs[: self._size]

    @property
    def users(self) -> torch.Tensor:
        return self._users[: self._size]

    @property
    def lengths(self) -> torch.Tensor:
        return self._lengths[: self._size]

    @property
    def user_order(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._user_order is None:
            res = torch.sort(self.users, stable=True)
            self._user_order = (res.values, res.indices)
        return self._user_order

    def fetch(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw ``(keys, values)`` of checked ids, float32."""
        keys = gather_rows(self.keys, ids).float()
        refs = self.refs.index_select(0, ids.reshape(-1)).long()
        return keys, gather_rows(self._table[: self._distinct], refs).view(*ids.shape, self.dim)

    def normed(self, lo: int, hi: int) -> torch.Tensor:
        """Normalised keys of memories ``lo..hi-1``, float32."""
        return _normalize(self._keys[lo:hi].float())

    def keep(self, mask: torch.Tensor) -> None:
        refs = self.refs[mask].numpy()
        used, refs = np.unique(refs, return_inverse=True)
        self._keys, self._users = self.keys[mask], self.users[mask]
        self._lengths = self.lengths[mask]
        self._refs = torch.from_numpy(refs.reshape(-1).astype(np.int32))
        self._table = self._table[torch.from_numpy(used.astype(np.int64))]
        self._distinct, self._size = len(used), int(mask.sum())
        hashed = self._hash(self._table.numpy().view(np.uint32))
        self._rows = np.argsort(hashed, kind="stable")
        self._hashes = hashed[self._rows]
        self._user_order = None

    def exact_search(
        self,
        qn: torch.Tensor,
        k: int,
        qu: torch.Tensor | None,
        ql: torch.Tensor | None,
        row_labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-``k`` (scores, ids) of normalised queries, block by block of memories.

        Raises:
            ValueError: If a query has fewer than ``k`` admissible memories (the message of
                the exact banks).
        """
        nq, n = qn.shape[0], self._size
        best_s = torch.full((nq, 0), float("-inf"))
        best_i = torch.empty((nq, 0), dtype=torch.int64)
        rule = qu is not None and ql is not None
        if rule:
            rows, mems = _own_user_pairs(qu, *self.user_order)
            bad = ~admissible(qu[rows], ql[rows], self.users[mems], self.lengths[mems])
            counts = n - torch.bincount(rows[bad], minlength=nq)
            if bool((short := counts < k).any()):
                r = int(torch.nonzero(short)[0, 0])
                raise ValueError(
                    f"query {int(row_labels[r])} (user {int(qu[r])}, prefix length {int(ql[r])}) "
                    f"has only {int(counts[r])} admissible memories in the bank of {n}, fewer "
                    f"than k={k}; lower k or add memories"
                )
        for lo in range(0, n, _BLOCK):
            hi = min(n, lo + _BLOCK)
            sims = qn @ self.normed(lo, hi).T
            if rule:
                sims[
                    ~admissible(qu[:, None], ql[:, None], self.users[lo:hi], self.lengths[lo:hi])
                ] = float("-inf")
            top = torch.topk(sims, min(k, hi - lo), dim=1)
            best_s = torch.cat([best_s, top.values], dim=1)
            best_i = torch.cat([best_i, top.indices + lo], dim=1)
            top = torch.topk(best_s, min(k, best_s.shape[1]), dim=1)
            best_s, best_i = top.values, best_i.gather(1, top.indices)
        return best_s, best_i
