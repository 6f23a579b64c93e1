"""Milvus memory bank: the search runs in Milvus Lite (a local ``.db``) or a Milvus server.

Each memory is a row of a Milvus collection (``pk``, the L2-normalised ``key`` searched by inner
product = cosine, ``raw_key``, ``value``, ``user``, ``length``); a CPU copy of the raw keys,
values, users and lengths serves ``fetch`` and the no-leakage rule. Ids are positions in
insertion order; primary keys only grow, so ``remove`` renumbers ids without rewriting rows.

The rule is enforced against the engine. ``exclusion="postfilter"`` (default): one batched
search asks for ``overfetch * k`` candidates, inadmissible ones are dropped, and queries left
with fewer than ``k`` are searched again with the filter ``user != u or length < n``;
``exclusion="filter"`` searches every ``(user, length)`` group with that filter. Rows the engine
still leaves short (an approximate index under a filter) are searched exactly on the CPU copy,
so every query gets ``k`` valid memories, or the other banks' ``ValueError``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import weakref
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
from torch import Tensor

import raserec_adapter.memory.format as fmt
import raserec_adapter.memory.protocol as proto
from raserec_adapter import _atomic
from raserec_adapter.memory.protocol import SearchResult, admissible
from raserec_adapter.memory.torch_bank import _TensorStore

__all__ = ["MilvusMemoryBank"]

logger = logging.getLogger(__name__)

_CPU = torch.device("cpu")
_HINT = 'MilvusMemoryBank needs pymilvus and milvus-lite: pip install "raserec-adapter[milvus]"'
_TOPK_MAX = 16384  # Milvus's largest limit (offset + limit) of a search or a query
_MSG_BYTES = 16 << 20  # rows per insert request: about 16 MiB of vectors
_COLUMNS = ("keys", "values", "users", "lengths")
_SAVED = ("index_type", "index_params", "search_params", "overfetch", "exclusion")
_QUERY_BATCH = 1024  # queries per search request


def _parse_uri(uri: Any) -> tuple[str, bool]:
    """``(uri, is_lite)``: a ``.db`` path made absolute (parents created), or a server URI."""
    text = os.fspath(uri) if isinstance(uri, (str, os.PathLike)) else None
    if isinstance(text, str) and text.endswith(".db"):
        path = Path(text).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(path), True
    parts = urlsplit(text) if isinstance(text, str) else None
    if parts is not None and parts.username is not None:
        raise ValueError("pass the server's credentials as token=, not in the uri (it is saved)")
    if parts is not None and (parts.scheme in ("http", "https", "tcp") and parts.netloc):
        return str(text), False
    raise ValueError(
        "uri must be a Milvus Lite file ending in '.db' (e.g. './memories.db') or a Milvus "
        f"server address such as 'http://localhost:19530', got {uri!r}"
    )


def _digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of a bank's keys, values, users and lengths (dtype, shape and bytes)."""
    h = hashlib.sha256()
    for name in _COLUMNS:
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode() + a.tobytes())
    return h.hexdigest()


def _remove_temp(client: Any, db: str, tmpdir: str) -> None:
    """Stops the Milvus Lite server of a temporary ``.db`` and deletes its directory."""
    with contextlib.suppress(Exception):  # best effort, at garbage collection or exit
        client.close()
        sys.modules["milvus_lite"].server_manager_instance.release_server(db)
    shutil.rmtree(tmpdir, ignore_errors=True)


class MilvusMemoryBank:
    """Cosine-similarity memory bank whose search runs in Milvus (Lite or a server).

    Args:
        dim: Dimension of keys, values and queries.
        uri: A path ending in ``.db`` runs Milvus Lite in this process on that database;
            ``"http://host:19530"`` (or ``https``, ``tcp``; ``.../mydb``) is a server.
        collection: Name of the collection the constructor creates (letters, digits, ``_``).
        token: Server credentials (``"user:password"`` or an API key); never saved.
        index_type: Index of the keys: ``"FLAT"`` (exact, default), ``"HNSW"``, ``"IVF_FLAT"``...
        index_params: Build parameters of the index (e.g. ``{"M": 16}`` for HNSW).
        search_params: Search parameters (e.g. ``{"ef": 64}`` for HNSW).
        overfetch: ``"postfilter"`` asks for ``overfetch * k`` candidates per query.
        exclusion: ``"postfilter"`` or ``"filter"`` (see the module docstring).
        overwrite: Drop an existing collection of that name instead of refusing it.

    Raises:
        ImportError: If pymilvus (or, for a ``.db`` uri, milvus-lite) is not installed.
        ValueError: On a bad argument, or an existing collection without ``overwrite``.
        ConnectionError: If Milvus cannot be reached or the ``.db`` cannot be opened.

    Examples:
        >>> import tempfile
        >>> bank = MilvusMemoryBank(2, uri=tempfile.mkdtemp() + "/m.db", collection="c")
        >>> bank.add(torch.eye(2), 3 * torch.eye(2), torch.tensor([0, 1]), torch.tensor([1, 1]))
        >>> res = bank.search(torch.tensor([[0.1, 1.0]]), k=1)
        >>> res.ids.tolist(), bank.fetch(res.ids)[1].tolist()
        ([[1]], [[[0.0, 3.0]]])
        >>> bank.remove(torch.tensor([1])), len(bank)
        (1, 1)
    """

    _attaching = False  # set by load: open an existing server collection, create nothing

    def __init__(
        self,
        dim: int,
        uri: str | os.PathLike[str] = "./memories.db",
        collection: str = "raserec_memories",
        *,
        token: str = "",
        index_type: str = "FLAT",
        index_params: dict[str, Any] | None = None,
        search_params: dict[str, Any] | None = None,
        overfetch: int = 4,
        exclusion: str = "postfilter",
        overwrite: bool = False,
    ) -> None:
        self.dim = proto._check_dim(dim)
        self.uri, self.is_lite = _parse_uri(uri)
        name_ok = isinstance(collection, str) and collection.isidentifier() and collection.isascii()
        if not name_ok or len(collection) > 255:
            what = "a letter or '_' then at most 254 letters, digits or '_'"
            raise ValueError(f"collection must be a Milvus name: {what}, got {collection!r}")
        if exclusion not in ("postfilter", "filter"):
            raise ValueError(f"exclusion must be 'postfilter' or 'filter', got {exclusion!r}")
        for name, params in (("index_params", index_params), ("search_params", search_params)):
            if params is not None and not isinstance(params, dict):
                raise ValueError(f"{name} must be a dict or None, got {params!r}")
        self.collection, self.index_type, self.exclusion = collection, str(index_type), exclusion
        self.index_params, self.search_params = dict(index_params or {}), dict(search_params or {})
        self.overfetch = proto._positive_int(overfetch, "overfetch")
        self._store = _TensorStore(self.dim, _CPU)
        self._pks = torch.empty(0, dtype=torch.int64)  # primary key of each id, ascending
        self._next_pk, self._unflushed = 0, False
        try:
            import pymilvus

            if self.is_lite:
                import milvus_lite  # noqa: F401  (pymilvus starts it for a .db uri)
        except ImportError as err:
            raise ImportError(_HINT) from err
        try:
            self._client = pymilvus.MilvusClient(uri=self.uri, token=token)
        except Exception as err:
            hint = "is the server running, and are its address and token right?"
            if self.is_lite:
                hint = (
                    "a Milvus Lite .db is used by one process at a time: is another one using it?"
                )
            raise ConnectionError(f"cannot open Milvus at {self.uri}: {err}; {hint}") from err
        if not self._attaching:
            self._create(overwrite)

    def _create(self, overwrite: bool) -> None:
        from pymilvus import DataType

        c, name = self._client, self.collection
        if c.has_collection(name):
            if not overwrite:
                raise ValueError(
                    f"collection {name!r} already exists in {self.uri}; pass overwrite=True to "
                    "replace it, choose another collection, or reopen a saved bank with load"
                )
            c.drop_collection(name)
        schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.INT64, is_primary=True)
        for field in ("key", "raw_key", "value"):
            schema.add_field(field, DataType.FLOAT_VECTOR, dim=self.dim)
        for field in ("user", "length"):
            schema.add_field(field, DataType.INT64)
        c.create_collection(name, schema=schema, consistency_level="Strong")
        index = c.prepare_index_params()
        index.add_index("key", index_type=self.index_type, metric_type="IP", **self.index_params)
        for field in ("raw_key", "value"):  # Milvus loads only indexed vector fields
            index.add_index(field, index_type="FLAT", metric_type="L2")
        c.create_index(name, index, sync=False)  # an empty collection: nothing to wait for
        c.load_collection(name)

    @property
    def client(self) -> Any:
        """The bank's ``pymilvus.MilvusClient`` (e.g. to inspect or drop the collection)."""
        return self._client

    @property
    def device(self) -> torch.device:
        """Always CPU: returned tensors live there."""
        return _CPU

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        where = f"uri={self.uri!r}, collection={self.collection!r}"
        return f"MilvusMemoryBank(dim={self.dim}, size={len(self)}, {where})"

    def add(self, keys: Tensor, values: Tensor, users: Tensor, lengths: Tensor) -> None:
        """Append memories (raw ``(n, dim)`` keys and values, ``(n,)`` users and prefix lengths):
        inserted into the collection, then into the CPU copy.

        Raises:
            ValueError: on wrong shapes, NaN/inf rows, lengths below 1 or mismatched rows.
        """
        k, v, u, n = proto._validate_add(keys, values, users, lengths, self.dim, _CPU)
        m, first = k.shape[0], self._next_pk
        if not m:
            return
        self._next_pk += m  # primary keys are never reused, even after a failed insert
        pks = torch.arange(first, first + m)
        normed = proto._normalize(k).numpy()
        cols = (pks.tolist(), normed, k.numpy(), v.numpy(), u.tolist(), n.tolist())
        step = max(1, _MSG_BYTES // (12 * self.dim + 24))
        try:
            for s in range(0, m, step):
                rows = [
                    {"pk": p, "key": a, "raw_key": b, "value": c, "user": x, "length": y}
                    for p, a, b, c, x, y in zip(*(col[s : s + step] for col in cols), strict=True)
                ]
                self._client.insert(self.collection, rows)
        except Exception:
            with contextlib.suppress(Exception):  # undo what went in (the error says why)
                self._client.delete(self.collection, filter=f"pk >= {first} and pk < {first + m}")
            raise
        self._store.append(k, v, u, n)
        self._pks = torch.cat([self._pks, pks])
        self._unflushed = True

    def remove(self, users: Tensor) -> int:
        """Remove all memories of the given user ids (>= 0, any shape or an int); return how
        many. Their rows are deleted in Milvus; survivors keep their order, renumbered.
        """
        u = proto._users_to_remove(users, _CPU)
        if len(self) == 0 or u.numel() == 0:
            return 0
        drop = torch.isin(self._store.users, u)
        gone = self._pks[drop].tolist()
        for s in range(0, len(gone), _TOPK_MAX):
            self._client.delete(self.collection, ids=gone[s : s + _TOPK_MAX])
        if gone:
            self._store.keep(~drop)
            self._pks = self._pks[~drop]
            self._unflushed = True
        return len(gone)

    def search(
        self, queries: Tensor, k: int, users: Tensor | None = None, lengths: Tensor | None = None
    ) -> SearchResult:
        """Top-``k`` memories by cosine similarity: ``(q, k)`` CPU ids and scores, all valid.

        Args:
            queries: ``(q, dim)`` raw query representations (normalised internally).
            k: Memories per query (at most 16384, Milvus's limit).
            users: ``(q,)`` user ids of the queries; with ``lengths`` enables the exclusion rule.
            lengths: ``(q,)`` prefix lengths of the queries.

        Raises:
            ValueError: on bad input, ``k < 1``, ``k > len(bank)``, an empty bank, or a query
                with fewer than ``k`` admissible memories.
        """
        q, qu, ql = proto._validate_search(queries, k, users, lengths, self.dim, len(self), _CPU)
        k = int(k)
        if k > _TOPK_MAX:
            raise ValueError(f"k={k} exceeds {_TOPK_MAX}, the most results Milvus returns")
        qn, nq, s = proto._normalize(q), q.shape[0], self._store
        ids = torch.full((nq, k), -1, dtype=torch.int64)
        scores = torch.full((nq, k), float("-inf"), dtype=torch.float32)
        todo = torch.ones(nq, dtype=torch.bool)

        def take(rows: Tensor, limit: int, expr: str = "") -> None:
            """The best ``k`` admissible of Milvus's ``limit`` candidates, where there are k."""
            cand_ids, cand_scores = self._engine_search(qn[rows], limit, expr)
            valid = cand_ids >= 0
            if qu is not None and ql is not None:  # checked again after a filtered search
                c = cand_ids.clamp(min=0)
                valid &= admissible(qu[rows, None], ql[rows, None], s.users[c], s.lengths[c])
            enough = valid.sum(dim=1) >= k
            keep = (valid & (valid.cumsum(dim=1) <= k))[enough]
            done = rows[enough]
            ids[done] = cand_ids[enough][keep].view(-1, k)
            scores[done] = cand_scores[enough][keep].view(-1, k)
            todo[done] = False

        if qu is not None and ql is not None:
            self._check_enough(qn, k, qu, ql)
        if self._unflushed and self.is_lite:  # Lite searches sealed segments much faster
            self._client.flush(self.collection)
            self._unflushed = False
        if qu is None or self.exclusion == "postfilter":
            take(torch.arange(nq), k if qu is None else min(len(self), self.overfetch * k))
        if qu is not None and ql is not None and bool(todo.any()):
            rows = torch.nonzero(todo).squeeze(1)
            pairs = torch.stack([qu[rows], ql[rows]], dim=1)
            groups, inverse = torch.unique(pairs, dim=0, return_inverse=True)
            for g, (user, length) in enumerate(groups.tolist()):
                take(rows[inverse == g], k, f"user != {user} or length < {length}")
        if bool(todo.any()):  # an approximate index left rows short: exact on the CPU copy
            rows = torch.nonzero(todo).squeeze(1)
            logger.debug("MilvusMemoryBank: %d queries searched exactly", rows.numel())
            scores[rows], ids[rows] = self._exact_rows(qn, k, qu, ql, rows)
        return SearchResult(ids=ids, scores=scores)

    def _check_enough(self, qn: Tensor, k: int, qu: Tensor, ql: Tensor) -> None:
        """Raises the other banks' error when a query has fewer than ``k`` admissible ones."""
        s = self._store
        rows, mems = proto._own_user_pairs(qu, *s.user_order)
        bad = ~admissible(qu[rows], ql[rows], s.users[mems], s.lengths[mems])
        counts = len(self) - torch.bincount(rows[bad], minlength=qu.shape[0])
        short = torch.nonzero(counts < k).squeeze(1)
        if short.numel():
            self._exact_rows(qn, k, qu, ql, short[:1])  # raises, naming the query

    def _exact_rows(
        self, qn: Tensor, k: int, qu: Tensor | None, ql: Tensor | None, rows: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Exact ``(scores, ids)`` of the given query rows on the CPU copy."""
        s, rule = self._store, qu is not None and ql is not None
        sub_u, sub_l = (qu[rows], ql[rows]) if rule else (None, None)
        order = s.user_order if rule else None
        return proto._exact_search(
            qn[rows], s.normed, k, sub_u, sub_l, s.users, s.lengths, 1024, order, rows
        )

    def _engine_search(self, qn: Tensor, limit: int, expr: str) -> tuple[Tensor, Tensor]:
        """Milvus's top-``limit`` of each query as ``(ids, scores)``, ``-1``/``-inf`` padded."""
        nq = qn.shape[0]
        ids = torch.full((nq, limit), -1, dtype=torch.int64)
        scores = torch.full((nq, limit), float("-inf"), dtype=torch.float32)
        params = {"metric_type": "IP", "params": self.search_params}
        data = qn.numpy()
        for start in range(0, nq, _QUERY_BATCH):
            hits = self._client.search(
                self.collection, data=list(data[start : start + _QUERY_BATCH]), limit=limit,
                filter=expr, anns_field="key", search_params=params, output_fields=["pk"],
            )  # fmt: skip
            for r, row in enumerate(hits, start=start):
                if len(row):
                    ids[r, : len(row)] = torch.tensor([h["pk"] for h in row], dtype=torch.int64)
                    scores[r, : len(row)] = torch.tensor([h["distance"] for h in row])
        pos = torch.searchsorted(self._pks, ids).clamp(max=len(self) - 1)  # len >= 1 here
        known = (ids >= 0) & (self._pks[pos] == ids)  # a row unknown to the copy is dropped
        return torch.where(known, pos, -1), scores

    def fetch(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Raw stored keys and values of ``ids`` (any shape), each ``ids.shape + (dim,)``."""
        return self._store.fetch(proto._check_ids(ids, len(self), _CPU))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save to directory ``path``, atomically: a Milvus Lite bank as ``bank.json`` and
        ``arrays.npz`` (its data, checksummed; the directory can be moved anywhere), a server
        bank as ``bank.json`` only: URI, collection, count and SHA-256 of the data.
        """
        s, target = self._store, Path(path)
        arrays = fmt.bank_arrays(s.keys, s.values, s.users, s.lengths)
        config = {"uri": self.uri, "lite": self.is_lite, "collection": self.collection}
        config.update({k: getattr(self, k) for k in _SAVED})
        if not self.is_lite:
            config.update(next_pk=self._next_pk, data_sha256=_digest(arrays))
        meta = fmt.bank_meta(type(self).__name__, self.dim, len(s), config)
        if self.is_lite:
            return fmt.write_bank_dir(path, meta, arrays)
        _atomic.settle(target, fmt.bank_incomplete)
        other = target.is_dir() and any(target.iterdir()) and not (target / "bank.json").exists()
        if target.is_file() or other:
            raise FileExistsError(f"refusing to overwrite {target}: it is not a saved memory bank")
        tmp = _atomic.new_dir(target)
        try:
            sealed = _atomic.seal({**meta, "files": {}})
            (tmp / "bank.json").write_text(json.dumps(sealed, indent=2, sort_keys=True) + "\n")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _atomic.install_dir(tmp, target, "bank")

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        dim: int | None = None,
        *,
        uri: str | os.PathLike[str] | None = None,
        collection: str | None = None,
        token: str = "",
        overwrite: bool = False,
    ) -> MilvusMemoryBank:
        """Load a bank saved by :meth:`save`.

        A server bank reconnects to its collection (``uri``/``collection`` override the saved
        ones), whose rows must match the saved count and SHA-256. A Milvus Lite bank is filled
        from ``arrays.npz`` into a new collection at ``uri``, by default a temporary ``.db``
        deleted with the bank.

        Raises:
            MemoryBankFormatError: missing files, another class/version/dim, or a collection
                that is gone or differs from the save.
        """
        if torch.device(device).type != "cpu":
            raise ValueError(f"MilvusMemoryBank lives on the CPU; got device={device!r}")
        root = Path(path)
        _atomic.settle(root, fmt.bank_incomplete)
        meta, arrays = _server_meta(root, cls.__name__, dim), None
        if meta is None:  # a Milvus Lite bank (or no bank: read_bank_dir says what is wrong)
            meta, arrays = fmt.read_bank_dir(root, cls.__name__, dim)
        lite = arrays is not None
        config, tmpdir = meta["config"], None
        if uri is None and lite:
            tmpdir = tempfile.mkdtemp(prefix="raserec-milvus-")
            uri = os.path.join(tmpdir, "memories.db")
        kwargs = {k: config[k] for k in ("uri", "collection", *_SAVED) if k in config}
        kwargs.update({"uri": uri} if uri is not None else {})
        kwargs.update({"collection": collection} if collection is not None else {})
        bank = cls.__new__(cls)
        bank._attaching = not lite
        try:
            bank.__init__(meta["dim"], token=token, overwrite=overwrite, **kwargs)
        except (ValueError, TypeError, KeyError) as err:
            raise fmt.MemoryBankFormatError(f"{root}: cannot open the saved bank: {err}") from err
        finally:
            bank._attaching = False
        if tmpdir is not None:
            weakref.finalize(bank, _remove_temp, bank._client, bank.uri, tmpdir)
        if arrays is not None:
            fmt.add_saved(bank, arrays, root)
        else:
            bank._attach(root, meta)
        return bank

    def _attach(self, root: Path, meta: dict[str, Any]) -> None:
        """Fills the CPU copy from the existing server collection, checked against the save."""
        c, name, where = self._client, self.collection, self.uri
        if not c.has_collection(name):
            raise fmt.MemoryBankFormatError(
                f"{root}: collection {name!r} is not in {where} (dropped, or another server or "
                "database); pass load(..., uri=, collection=) or rebuild the bank"
            )
        c.load_collection(name)
        next_pk, fields = int(meta["config"].get("next_pk", 0)), ["pk", "raw_key", "value"]
        rows: list[dict[str, Any]] = []
        for s in range(0, next_pk, _TOPK_MAX):
            expr = f"pk >= {s} and pk < {s + _TOPK_MAX}"
            rows += c.query(name, filter=expr, output_fields=[*fields, "user", "length"],
                            limit=_TOPK_MAX)  # fmt: skip
        rows.sort(key=lambda r: r["pk"])
        arrays = {
            "keys": np.asarray([r["raw_key"] for r in rows], np.float32).reshape(-1, self.dim),
            "values": np.asarray([r["value"] for r in rows], np.float32).reshape(-1, self.dim),
            "users": np.asarray([r["user"] for r in rows], np.int64),
            "lengths": np.asarray([r["length"] for r in rows], np.int64),
        }
        total = c.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"]
        saved = meta["config"].get("data_sha256")
        if total != meta["count"] or len(rows) != total or _digest(arrays) != saved:
            raise fmt.MemoryBankDamagedError(
                f"{root}: collection {name!r} in {where} holds {total} rows that differ from "
                f"the {meta['count']} memories saved (it was changed after the save); save the "
                "bank again, or rebuild it"
            )
        columns = (torch.from_numpy(arrays[f]) for f in _COLUMNS)
        self._store.append(*proto._validate_add(*columns, self.dim, _CPU))  # rows: in Milvus
        self._pks = torch.tensor([r["pk"] for r in rows], dtype=torch.int64)
        self._next_pk = next_pk


def _server_meta(root: Path, cls_name: str, dim: int | None) -> dict[str, Any] | None:
    """``bank.json`` of a saved server bank (it has no ``arrays.npz``), checked, else ``None``."""
    try:
        meta = json.loads((root / "bank.json").read_text(encoding="utf-8"))
        if meta["config"]["lite"] is not False:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if damaged := _atomic.unsealed(meta):
        raise fmt.MemoryBankDamagedError(f"{root / 'bank.json'}: {damaged}; save the bank again")
    version = (fmt.BANK_FORMAT, fmt.BANK_FORMAT_VERSION)
    if (meta.get("format"), meta.get("format_version")) != version:
        raise fmt.MemoryBankFormatError(f"{root}: not a {version[0]} of version {version[1]}")
    if meta.get("class") != cls_name:
        raise fmt.MemoryBankFormatError(f"{root} holds a {meta.get('class')!r}, not a {cls_name!r}")
    if dim is not None and meta.get("dim") != dim:
        raise fmt.MemoryBankFormatError(f"{root} holds a bank of dim {meta['dim']}, not {dim}")
    return meta
