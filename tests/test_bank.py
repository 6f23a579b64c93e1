"""Tests of the memory banks: exclusion rule, exactness, Faiss fallbacks, persistence, errors."""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raserec_adapter.memory.faiss_bank import FaissMemoryBank
from raserec_adapter.memory.milvus_bank import MilvusMemoryBank
from raserec_adapter.memory.protocol import (
    MemoryBank,
    MemoryBankFormatError,
    SearchResult,
    admissible,
)
from raserec_adapter.memory.torch_bank import TorchMemoryBank

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# Independent reference implementation (pure Python / numpy; does not call `admissible`).
# ----------------------------------------------------------------------------------------------


def allowed(q_user: int, q_len: int, m_user: int, m_len: int) -> bool:
    """Exclusion rule, written out: other users' memories, or the query user's strict past."""
    if m_user != q_user:
        return True
    return m_len < q_len


def cosine_matrix(q: np.ndarray, keys: np.ndarray) -> np.ndarray:
    def norm(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    return norm(q) @ norm(keys).T


def brute_force(
    q: np.ndarray,
    keys: np.ndarray,
    k: int,
    q_users: np.ndarray | None = None,
    q_lens: np.ndarray | None = None,
    users: np.ndarray | None = None,
    lens: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, ids) of admissible memories per query; ids as in argsort (ties arbitrary)."""
    sims = cosine_matrix(q, keys)
    out_s, out_i = [], []
    for r in range(q.shape[0]):
        cand = [
            (sims[r, j], j)
            for j in range(keys.shape[0])
            if q_users is None
            or allowed(int(q_users[r]), int(q_lens[r]), int(users[j]), int(lens[j]))
        ]
        cand.sort(key=lambda t: -t[0])
        out_s.append([s for s, _ in cand[:k]])
        out_i.append([j for _, j in cand[:k]])
    return np.array(out_s), np.array(out_i)


def admissible_counts(q_users, q_lens, users, lens) -> list[int]:
    return [
        sum(allowed(int(qu), int(ql), int(u), int(m)) for u, m in zip(users, lens, strict=True))
        for qu, ql in zip(q_users, q_lens, strict=True)
    ]


def check_result(
    res: SearchResult,
    k: int,
    keys: np.ndarray,
    q: np.ndarray,
    q_users: np.ndarray | None,
    q_lens: np.ndarray | None,
    users: np.ndarray,
    lens: np.ndarray,
    exact: bool,
) -> None:
    """Validity of every id (+ exact top-k scores when ``exact``)."""
    ids, scores = res.ids.numpy(), res.scores.numpy()
    n = keys.shape[0]
    assert res.ids.dtype == torch.int64
    assert ids.shape == (q.shape[0], k) and scores.shape == (q.shape[0], k)
    assert ((ids >= 0) & (ids < n)).all()
    sims = cosine_matrix(q, keys)
    for r in range(q.shape[0]):
        assert len(set(ids[r].tolist())) == k, "duplicate ids in a row"
        if q_users is not None:
            for j in ids[r]:
                assert allowed(int(q_users[r]), int(q_lens[r]), int(users[j]), int(lens[j]))
        # each score is the true cosine of its id, and rows are sorted descending
        np.testing.assert_allclose(scores[r], sims[r, ids[r]], atol=1e-5)
        assert (np.diff(scores[r]) <= 1e-6).all()
    if exact:
        ref_scores, _ = brute_force(q, keys, k, q_users, q_lens, users, lens)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def make_data(n: int, dim: int, n_users: int, seed: int = 0, max_len: int = 10):
    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((n, dim)).astype(np.float32)
    values = rng.standard_normal((n, dim)).astype(np.float32)
    users = rng.integers(0, n_users, n)
    lens = rng.integers(1, max_len + 1, n)
    return keys, values, users, lens


def fill(bank: MemoryBank, keys, values, users, lens) -> MemoryBank:
    bank.add(
        torch.from_numpy(keys),
        torch.from_numpy(values),
        torch.from_numpy(users),
        torch.from_numpy(lens),
    )
    return bank


_MILVUS: dict[str, Any] = {"count": itertools.count()}


@pytest.fixture(scope="session", autouse=True)
def _milvus_db(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One Milvus Lite database (one in-process server) for the session's Milvus banks."""
    _MILVUS["db"] = str(tmp_path_factory.mktemp("milvus") / "banks.db")


def milvus_bank(dim: int, **kwargs: Any) -> MilvusMemoryBank:
    """A Milvus Lite bank in a new collection of the session's database (exact FLAT index)."""
    name = f"bank_{next(_MILVUS['count'])}"
    return MilvusMemoryBank(dim, uri=_MILVUS["db"], collection=name, **kwargs)


BANK_FACTORIES = {
    "torch": lambda dim: TorchMemoryBank(dim, query_chunk=3),
    "faiss_flat": lambda dim: FaissMemoryBank(dim, index_factory="Flat"),
    "faiss_ivf": lambda dim: FaissMemoryBank(dim, index_factory="IVF4,Flat", overfetch=2),
    # overfetch=2: more queries fall back to the engine's filtered search
    "milvus": lambda dim: milvus_bank(dim, overfetch=2),
    "milvus_filter": lambda dim: milvus_bank(dim, exclusion="filter"),
}


# ----------------------------------------------------------------------------------------------
# Property test over random banks and queries.
# ----------------------------------------------------------------------------------------------


@st.composite
def bank_cases(draw):
    n = draw(st.integers(1, 40))
    dim = draw(st.integers(1, 6))
    n_users = draw(st.integers(1, 4))  # few users: many memories of the query's own user
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):  # coarse integer keys: ties and zero vectors
        keys = rng.integers(-2, 3, (n, dim)).astype(np.float32)
    else:
        keys = rng.standard_normal((n, dim)).astype(np.float32)
    values = rng.standard_normal((n, dim)).astype(np.float32)
    users = rng.integers(0, n_users, n)
    lens = rng.integers(1, 7, n)
    nq = draw(st.integers(1, 6))
    q = rng.standard_normal((nq, dim)).astype(np.float32)
    if draw(st.booleans()):  # queries that are bank keys: their own pair is the top hit
        pick = rng.integers(0, n, nq)
        q = keys[pick].copy()
        q_users, q_lens = users[pick].copy(), lens[pick].copy()
    else:
        q_users = rng.integers(0, n_users + 1, nq)
        q_lens = rng.integers(1, 9, nq)
    use_rule = draw(st.booleans())
    k = draw(st.integers(1, n))
    return keys, values, users, lens, q, q_users, q_lens, use_rule, k


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=bank_cases())
def test_search_property(case) -> None:
    keys, values, users, lens, q, q_users, q_lens, use_rule, k = case
    dim = keys.shape[1]
    qu = torch.from_numpy(q_users) if use_rule else None
    ql = torch.from_numpy(q_lens) if use_rule else None
    enough = (not use_rule) or min(admissible_counts(q_users, q_lens, users, lens)) >= k
    for name, factory in BANK_FACTORIES.items():
        bank = fill(factory(dim), keys, values, users, lens)
        if not enough:
            with pytest.raises(ValueError, match=r"admissible memories.*lower k or add memories"):
                bank.search(torch.from_numpy(q), k, users=qu, lengths=ql)
            continue
        res = bank.search(torch.from_numpy(q), k, users=qu, lengths=ql)
        check_result(
            res,
            k,
            keys,
            q,
            q_users if use_rule else None,
            q_lens if use_rule else None,
            users,
            lens,
            exact=name != "faiss_ivf",
        )
        # fetch returns the raw stored tensors, shape ids.shape + (dim,)
        fk, fv = bank.fetch(res.ids)
        assert fk.shape == (*res.ids.shape, dim)
        np.testing.assert_array_equal(fk.numpy(), keys[res.ids.numpy()])
        np.testing.assert_array_equal(fv.numpy(), values[res.ids.numpy()])


def test_admissible_matches_reference_and_broadcasts() -> None:
    qu, ql = torch.tensor([0, 0, 1]), torch.tensor([3, 1, 2])
    mu, ml = torch.tensor([0, 0, 0, 1, 2]), torch.tensor([1, 3, 5, 2, 9])
    mask = admissible(qu[:, None], ql[:, None], mu[None, :], ml[None, :])
    assert mask.shape == (3, 5) and mask.dtype == torch.bool
    for r in range(3):
        for j in range(5):
            assert bool(mask[r, j]) == allowed(int(qu[r]), int(ql[r]), int(mu[j]), int(ml[j]))


def test_banks_satisfy_protocol() -> None:
    assert isinstance(TorchMemoryBank(4), MemoryBank)
    assert isinstance(FaissMemoryBank(4), MemoryBank)
    assert isinstance(milvus_bank(4), MemoryBank)


def test_incremental_adds_equal_one_add() -> None:
    keys, values, users, lens = make_data(30, 5, 4, seed=1)
    one = fill(TorchMemoryBank(5), keys, values, users, lens)
    many = TorchMemoryBank(5)
    for s in (slice(0, 7), slice(7, 7), slice(7, 30)):
        fill(many, keys[s], values[s], users[s], lens[s])
    q = torch.from_numpy(keys[:6])
    a = one.search(q, 4, torch.from_numpy(users[:6]), torch.from_numpy(lens[:6]))
    b = many.search(q, 4, torch.from_numpy(users[:6]), torch.from_numpy(lens[:6]))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.scores, b.scores)
    fk, fv = many.fetch(torch.arange(30).view(5, 6))
    assert fk.shape == (5, 6, 5)
    np.testing.assert_array_equal(fv.reshape(30, 5).numpy(), values)


def test_faiss_adds_to_a_built_index_without_retraining(tmp_path: Path) -> None:
    keys, values, users, lens = make_data(6000, 16, 300, seed=3, max_len=40)
    q, qu, ql = keys[:80], users[:80], lens[:80]
    # exact Flat: memories added after the index was built are searched like the others
    flat = fill(
        FaissMemoryBank(16, index_factory="Flat"),
        keys[:4000],
        values[:4000],
        users[:4000],
        lens[:4000],
    )
    flat.search(torch.from_numpy(q), 3)  # builds the index
    fill(flat, keys[4000:], values[4000:], users[4000:], lens[4000:])
    res = flat.search(torch.from_numpy(q), 10, torch.from_numpy(qu), torch.from_numpy(ql))
    check_result(res, 10, keys, q, qu, ql, users, lens, exact=True)
    # IVF: a few new memories are filed under the trained lists (no retraining); each is found
    # by a query equal to its key, as the best match of its own list
    ivf = fill(FaissMemoryBank(16), keys[:5000], values[:5000], users[:5000], lens[:5000])
    before = ivf.search(torch.from_numpy(q), 5)
    fill(ivf, keys[5000:5010], values[5000:5010], users[5000:5010], lens[5000:5010])
    found = ivf.search(torch.from_numpy(keys[5000:5010]), 1).ids[:, 0]
    assert found.tolist() == list(range(5000, 5010))
    # the trained lists did not change: old queries see the same old memories (or new ones)
    after = ivf.search(torch.from_numpy(q), 5)
    old = after.ids < 5000
    assert torch.equal(after.ids[old.all(1)], before.ids[old.all(1)])
    # saved and loaded with the added memories
    ivf.save(tmp_path / "bank")
    loaded = FaissMemoryBank.load(tmp_path / "bank")
    assert torch.equal(loaded.search(torch.from_numpy(q), 5).ids, after.ids)
    # once the bank has doubled since training, the index is trained again on everything:
    # then it answers as a bank built from all memories at once
    small = fill(FaissMemoryBank(16), keys[:2000], values[:2000], users[:2000], lens[:2000])
    small.search(torch.from_numpy(q), 1)
    fill(small, keys[2000:], values[2000:], users[2000:], lens[2000:])
    whole = fill(FaissMemoryBank(16), keys, values, users, lens)
    assert torch.equal(
        small.search(torch.from_numpy(q), 5).ids, whole.search(torch.from_numpy(q), 5).ids
    )


def test_faiss_saved_bank_remembers_what_its_index_was_trained_on(tmp_path: Path) -> None:
    keys, values, users, lens = make_data(4020, 8, 100, seed=4)
    q = torch.from_numpy(keys[:50])
    bank = fill(
        FaissMemoryBank(8, "IVF16,Flat"), keys[:2000], values[:2000], users[:2000], lens[:2000]
    )
    bank.search(q, 1)  # trained on 2000
    fill(bank, keys[2000:2010], values[2000:2010], users[2000:2010], lens[2000:2010])
    bank.save(tmp_path / "bank")
    meta = json.loads((tmp_path / "bank" / "bank.json").read_text())
    assert meta["config"]["trained_on"] == 2000
    loaded = FaissMemoryBank.load(tmp_path / "bank")
    # 4010 > 2 x 2000: trained again on all of them, so it answers like a bank built at once
    fill(loaded, keys[2010:4010], values[2010:4010], users[2010:4010], lens[2010:4010])
    whole = fill(
        FaissMemoryBank(8, "IVF16,Flat"), keys[:4010], values[:4010], users[:4010], lens[:4010]
    )
    assert torch.equal(loaded.search(q, 5).ids, whole.search(q, 5).ids)


# ----------------------------------------------------------------------------------------------
# Faiss IVF: recall, fallbacks, determinism.
# ----------------------------------------------------------------------------------------------


def test_faiss_ivf_recall_exact_with_full_nprobe() -> None:
    keys, values, users, lens = make_data(6000, 16, 300, seed=2, max_len=40)
    q, qu, ql = keys[:60], users[:60], lens[:60]
    k = 10
    _, ref_ids = brute_force(q, keys, k, qu, ql, users, lens)
    full = fill(FaissMemoryBank(16, nprobe=128), keys, values, users, lens)
    res = full.search(torch.from_numpy(q), k, torch.from_numpy(qu), torch.from_numpy(ql))
    assert full.index_description == "IVF128,Flat"
    recall = np.mean(
        [len(set(a) & set(b)) / k for a, b in zip(res.ids.numpy(), ref_ids, strict=True)]
    )
    assert recall >= 0.99
    check_result(res, k, keys, q, qu, ql, users, lens, exact=True)
    # nprobe=1 is approximate but every id still obeys the rule
    approx = fill(FaissMemoryBank(16, nprobe=1), keys, values, users, lens)
    res1 = approx.search(torch.from_numpy(q), k, torch.from_numpy(qu), torch.from_numpy(ql))
    check_result(res1, k, keys, q, qu, ql, users, lens, exact=False)


def test_faiss_fallback_when_overfetched_candidates_are_own_future(monkeypatch) -> None:
    rng = np.random.default_rng(3)
    dim = 16
    base = np.zeros(dim, dtype=np.float32)
    base[0] = 1.0
    # user 0: 200 memories (lengths 2..201) tightly around `base`; the query is user 0 at
    # length 1, so all of them are its future and inadmissible
    own = base + 0.01 * rng.standard_normal((200, dim)).astype(np.float32)
    others = rng.standard_normal((400, dim)).astype(np.float32)
    others[:, 0] = -np.abs(others[:, 0])  # others point away from the query
    keys = np.concatenate([own, others])
    values = rng.standard_normal(keys.shape).astype(np.float32)
    users = np.concatenate([np.zeros(200, dtype=np.int64), rng.integers(1, 50, 400)])
    lens = np.concatenate([np.arange(2, 202), rng.integers(1, 20, 400)])
    bank = fill(FaissMemoryBank(dim, nprobe=1), keys, values, users, lens)

    calls: list[int] = []
    original = FaissMemoryBank._search_exact_rows

    def spy(self, qn, k, qu, ql, rows):
        calls.append(int(rows.numel()))
        return original(self, qn, k, qu, ql, rows)

    monkeypatch.setattr(FaissMemoryBank, "_search_exact_rows", spy)
    q = np.stack([base, base])
    q_users, q_lens = np.array([0, 0]), np.array([1, 500])
    res = bank.search(torch.from_numpy(q), 5, torch.from_numpy(q_users), torch.from_numpy(q_lens))
    assert calls == [1], "only the query whose candidates were all filtered falls back"
    check_result(res, 5, keys, q, q_users, q_lens, users, lens, exact=False)
    assert (res.ids[0] >= 200).all()  # other users only
    assert (res.ids[1] < 200).all()  # user 0 at length 500 sees its own past
    ref_scores, _ = brute_force(q[:1], keys, 5, q_users[:1], q_lens[:1], users, lens)
    np.testing.assert_allclose(res.scores[:1].numpy(), ref_scores, atol=1e-5)


def test_faiss_small_bank_falls_back_to_flat(caplog) -> None:
    keys, values, users, lens = make_data(50, 8, 5, seed=4)
    bank = fill(FaissMemoryBank(8), keys, values, users, lens)  # 50 < nlist 128
    with caplog.at_level(logging.WARNING, logger="raserec_adapter.memory.faiss_bank"):
        res = bank.search(torch.from_numpy(keys[:5]), 3)
    assert bank.index_description == "Flat"
    assert "using an exact 'Flat' index" in caplog.text
    check_result(res, 3, keys, keys[:5], None, None, users, lens, exact=True)


def test_faiss_training_failure_falls_back_to_flat(caplog) -> None:
    keys, values, users, lens = make_data(60, 8, 5, seed=5)
    bank = fill(FaissMemoryBank(8, index_factory="IVF2,PQ4"), keys, values, users, lens)
    with caplog.at_level(logging.WARNING, logger="raserec_adapter.memory.faiss_bank"):
        bank.search(torch.from_numpy(keys[:2]), 2)
    assert bank.index_description == "Flat"
    assert "training failed" in caplog.text


def test_faiss_build_is_deterministic_and_num_threads() -> None:
    keys, values, users, lens = make_data(3000, 8, 100, seed=6)
    a = fill(FaissMemoryBank(8, index_factory="IVF32,Flat", seed=7), keys, values, users, lens)
    b = fill(FaissMemoryBank(8, index_factory="IVF32,Flat", seed=7), keys, values, users, lens)
    q = torch.from_numpy(keys[:40])
    import faiss

    threads = faiss.omp_get_max_threads()
    try:
        ra, rb = a.search(q, 5), b.search(q, 5, num_threads=1)
    finally:
        faiss.omp_set_num_threads(threads)
    assert torch.equal(ra.ids, rb.ids) and torch.equal(ra.scores, rb.scores)


# ----------------------------------------------------------------------------------------------
# save / load
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory",
    [
        lambda: TorchMemoryBank(6),
        lambda: FaissMemoryBank(6, index_factory="Flat"),
        lambda: FaissMemoryBank(6, index_factory="IVF16,Flat", nprobe=2, overfetch=3),
        lambda: milvus_bank(6, overfetch=3),
    ],
    ids=["torch", "faiss_flat", "faiss_ivf", "milvus"],
)
def test_save_load_roundtrip(tmp_path: Path, factory) -> None:
    keys, values, users, lens = make_data(800, 6, 40, seed=8)
    bank = fill(factory(), keys, values, users, lens)
    q, qu, ql = (torch.from_numpy(x[:30]) for x in (keys, users, lens))
    before = bank.search(q, 7, qu, ql)
    bank.save(tmp_path / "bank")
    assert {p.name for p in (tmp_path / "bank").iterdir()} >= {"bank.json", "arrays.npz"}
    meta = json.loads((tmp_path / "bank" / "bank.json").read_text())
    assert meta["class"] == type(bank).__name__ and meta["dim"] == 6 and meta["count"] == 800
    loaded = type(bank).load(tmp_path / "bank")
    after = loaded.search(q, 7, qu, ql)
    assert len(loaded) == len(bank)
    assert torch.equal(before.ids, after.ids) and torch.equal(before.scores, after.scores)
    for a, b in zip(bank.fetch(torch.arange(800)), loaded.fetch(torch.arange(800)), strict=True):
        assert torch.equal(a, b)
    if isinstance(bank, MilvusMemoryBank):  # filled from arrays.npz into a temporary .db
        assert meta["config"]["collection"] == bank.collection == loaded.collection
        assert meta["config"]["uri"] == bank.uri != loaded.uri
        assert meta["config"]["overfetch"] == loaded.overfetch == 3
    if isinstance(bank, FaissMemoryBank):
        assert meta["config"]["nprobe"] == bank.nprobe
        assert meta["config"]["index_factory"] == bank.index_factory
        assert (tmp_path / "bank" / "index.faiss").is_file()
    # saving over an existing bank replaces it and leaves no temporary directories
    bank.remove(torch.tensor([0, 1]))
    bank.save(tmp_path / "bank")
    assert len(type(bank).load(tmp_path / "bank")) == len(bank)
    assert [p.name for p in tmp_path.iterdir()] == ["bank"]


NEW_BANKS = {
    "torch": TorchMemoryBank,
    "faiss": lambda dim: FaissMemoryBank(dim, index_factory="Flat"),
    "milvus": milvus_bank,
}


@pytest.mark.parametrize("name", list(NEW_BANKS))
def test_failed_save_keeps_existing_bank(tmp_path: Path, monkeypatch, name: str) -> None:
    keys, values, users, lens = make_data(40, 4, 5, seed=9)
    old = fill(NEW_BANKS[name](4), keys, values, users, lens)
    cls = type(old)
    old.save(tmp_path / "bank")
    new = fill(NEW_BANKS[name](4), keys[:10] * 2, values[:10], users[:10], lens[:10])

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        new.save(tmp_path / "bank")
    monkeypatch.undo()
    loaded = cls.load(tmp_path / "bank")
    assert len(loaded) == 40
    np.testing.assert_array_equal(loaded.fetch(torch.arange(40))[0].numpy(), keys)
    assert [p.name for p in tmp_path.iterdir()] == ["bank"]


def _edit_json(path: Path, **changes) -> None:
    meta = json.loads((path / "bank.json").read_text())
    meta.update(changes)
    (path / "bank.json").write_text(json.dumps(meta))


def test_load_errors(tmp_path: Path) -> None:
    keys, values, users, lens = make_data(20, 4, 3, seed=10)
    bank = fill(TorchMemoryBank(4), keys, values, users, lens)
    path = tmp_path / "bank"
    bank.save(path)
    with pytest.raises(MemoryBankFormatError, match="holds a 'TorchMemoryBank'"):
        FaissMemoryBank.load(path)
    with pytest.raises(MemoryBankFormatError, match="bank of dim 4, expected dim 8"):
        TorchMemoryBank.load(path, dim=8)
    with pytest.raises(MemoryBankFormatError, match="not a saved memory bank"):
        TorchMemoryBank.load(tmp_path / "nowhere")
    _edit_json(path, dim=8)
    with pytest.raises(
        MemoryBankFormatError, match=r"keys has shape \(20, 4\), expected \(20, 8\)"
    ):
        TorchMemoryBank.load(path)
    _edit_json(path, dim=4, count=21)
    with pytest.raises(MemoryBankFormatError, match="expected"):
        TorchMemoryBank.load(path)
    _edit_json(path, count=20, format_version=99)
    with pytest.raises(MemoryBankFormatError, match="format version 99"):
        TorchMemoryBank.load(path)
    (path / "bank.json").write_text("{not json")
    with pytest.raises(MemoryBankFormatError, match="not valid JSON"):
        TorchMemoryBank.load(path)
    bank.save(path)
    for count in (-1, True, "20"):
        _edit_json(path, count=count)
        with pytest.raises(MemoryBankFormatError, match=r"count must be an integer >= 0"):
            TorchMemoryBank.load(path)
    _edit_json(path, count=20)
    arrays = dict(np.load(path / "arrays.npz"))
    for change, says in (
        ({"users": None}, r"lacks arrays \['users'\]"),
        ({"keys": arrays["keys"].astype(np.int64)}, "keys must be float, got int64"),
        ({"lengths": arrays["lengths"].astype(np.float32)}, "lengths must be integer"),
        ({"lengths": arrays["lengths"] * 0}, r"npz: memory lengths must be >= 1 .*rebuild"),
        ({"values": arrays["values"] * np.nan}, "npz: values contain NaN or inf in 20 of 20 rows"),
    ):
        edited = {k: v for k, v in {**arrays, **change}.items() if v is not None}
        np.savez(path / "arrays.npz", **edited)
        with pytest.raises(MemoryBankFormatError, match=says):
            TorchMemoryBank.load(path)
    (path / "arrays.npz").write_bytes(b"garbage")
    with pytest.raises(MemoryBankFormatError, match="cannot read .*arrays.npz"):
        TorchMemoryBank.load(path)
    (path / "arrays.npz").unlink()
    with pytest.raises(MemoryBankFormatError, match="is missing arrays.npz"):
        TorchMemoryBank.load(path)
    # refuse to overwrite a directory that is not a bank
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        bank.save(other)
    assert (other / "notes.txt").read_text() == "keep me"


def test_faiss_load_rejects_gpu_device_and_mismatched_index(tmp_path: Path) -> None:
    keys, values, users, lens = make_data(20, 4, 3, seed=11)
    bank = fill(FaissMemoryBank(4, index_factory="Flat"), keys, values, users, lens)
    bank.save(tmp_path / "a")
    with pytest.raises(ValueError, match="lives on the CPU"):
        FaissMemoryBank.load(tmp_path / "a", device="cuda")
    small = fill(
        FaissMemoryBank(4, index_factory="Flat"), keys[:5], values[:5], users[:5], lens[:5]
    )
    small.save(tmp_path / "b")
    os.replace(tmp_path / "b" / "index.faiss", tmp_path / "a" / "index.faiss")
    with pytest.raises(MemoryBankFormatError, match="holds 5 vectors"):
        FaissMemoryBank.load(tmp_path / "a")


# ----------------------------------------------------------------------------------------------
# remove
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BANK_FACTORIES))
def test_remove_users(name: str) -> None:
    keys, values, users, lens = make_data(60, 5, 6, seed=12)
    bank = fill(BANK_FACTORIES[name](5), keys, values, users, lens)
    bank.search(torch.from_numpy(keys[:3]), 2)  # build the index before removing
    gone = np.isin(users, [1, 3])
    assert bank.remove(torch.tensor([1, 3])) == int(gone.sum())
    assert bank.remove(torch.tensor([1, 3])) == 0
    assert len(bank) == int((~gone).sum())
    # survivors keep their order and are renumbered 0..len-1
    np.testing.assert_array_equal(bank.fetch(torch.arange(len(bank)))[0].numpy(), keys[~gone])
    kept_users = users[~gone]
    res = bank.search(torch.from_numpy(keys), len(bank))
    assert not np.isin(kept_users[res.ids.numpy()], [1, 3]).any()
    assert bank.remove(5) == int((users == 5).sum())
    size = len(bank)
    with pytest.raises(ValueError, match="user ids are integers >= 0"):
        bank.remove(torch.tensor([0, -2]))
    assert len(bank) == size  # nothing removed, not even user 0


# ----------------------------------------------------------------------------------------------
# Error messages
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(NEW_BANKS))
def test_error_messages(name: str) -> None:
    new = NEW_BANKS[name]
    bank = new(4)
    ones, ids = torch.ones(5, 4), torch.arange(5)
    with pytest.raises(ValueError, match="empty memory bank"):
        bank.search(torch.ones(1, 4), 1)
    with pytest.raises(ValueError, match=r"expected dim 4, got shape \(5, 3\)"):
        bank.add(torch.ones(5, 3), ones, ids, ids)
    with pytest.raises(ValueError, match=r"values must have shape \(n, 4\)"):
        bank.add(ones, torch.ones(5, 6), ids, ids)
    bad = ones.clone()
    bad[1, 2], bad[3, 0] = float("nan"), float("inf")
    with pytest.raises(ValueError, match="keys contain NaN or inf in 2 of 5 rows"):
        bank.add(bad, ones, ids, ids)
    with pytest.raises(ValueError, match="values contain NaN or inf in 2 of 5 rows"):
        bank.add(ones, bad, ids, ids)
    with pytest.raises(ValueError, match="same number of rows, got 5, 5, 4 and 5"):
        bank.add(ones, ones, ids[:4], ids)
    with pytest.raises(TypeError, match="lengths must be an integer tensor"):
        bank.add(ones, ones, ids, ones[:, 0])
    with pytest.raises(ValueError, match=r"memory lengths must be >= 1 .* got 0 in 1 of 5 rows"):
        bank.add(ones, ones, ids, ids)  # 0-based positions instead of prefix lengths
    assert len(bank) == 0  # failed adds add nothing
    bank.add(torch.randn(5, 4), ones, torch.tensor([0, 0, 0, 1, 1]), torch.tensor([1, 2, 3, 1, 2]))
    q = torch.randn(2, 4)
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        bank.search(q, 0)
    with pytest.raises(ValueError, match=r"k=6 exceeds the number of memories in the bank \(5\)"):
        bank.search(q, 6)
    with pytest.raises(ValueError, match=r"queries must have shape \(n, 4\): expected dim 4"):
        bank.search(torch.ones(2, 5), 1)
    with pytest.raises(ValueError, match="queries contain NaN or inf in 1 of 2 rows"):
        bank.search(torch.tensor([[1.0, 0, 0, 0], [float("nan"), 0, 0, 0]]), 1)
    with pytest.raises(ValueError, match="pass both users and lengths"):
        bank.search(q, 1, users=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="queries, users and lengths must have the same"):
        bank.search(q, 1, users=torch.tensor([0]), lengths=torch.tensor([1]))
    with pytest.raises(ValueError, match=r"query lengths must be >= 1 .* got -1 in 1 of 2"):
        bank.search(q, 1, users=torch.tensor([0, 1]), lengths=torch.tensor([-1, 2]))
    # user 0 at length 2 may see (0, 1) and both memories of user 1: 3 admissible
    qu, ql = torch.tensor([1, 0]), torch.tensor([1, 2])
    assert bank.search(q, 3, qu, ql).ids.shape == (2, 3)
    with pytest.raises(
        ValueError,
        match=r"query 0 \(user 1, prefix length 1\) has only 3 admissible memories.*k=4; "
        "lower k or add memories",
    ):
        bank.search(q, 4, qu, ql)
    with pytest.raises(IndexError, match=r"ids must lie in \[0, 5\)"):
        bank.fetch(torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        new(0)


def test_faiss_constructor_errors() -> None:
    with pytest.raises(ValueError, match="Faiss cannot build index_factory='Bogus'"):
        FaissMemoryBank(4, index_factory="Bogus")
    for factory, fix in (("IDMap,Flat", "'Flat'"), ("IDMap2,HNSW32", "'HNSW32'")):
        with pytest.raises(ValueError, match=rf"asks for an IDMap; .*index_factory={fix}"):
            FaissMemoryBank(4, index_factory=factory)
    with pytest.raises(ValueError, match="nprobe must be a positive integer"):
        FaissMemoryBank(4, nprobe=0)
    with pytest.raises(ValueError, match="overfetch must be a positive integer"):
        FaissMemoryBank(4, overfetch=0)


def test_missing_faiss_gives_install_hint(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        FaissMemoryBank(4)


def test_importing_bank_does_not_import_faiss() -> None:
    code = (
        "import sys, raserec_adapter.memory.protocol, raserec_adapter.memory.faiss_bank; "
        "assert 'faiss' not in sys.modules, 'faiss imported'"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env, timeout=120)
