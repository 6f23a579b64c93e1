"""The Faiss bank's options for large banks (``raserec_adapter.memory.faiss_scale``) against
brute force, the full store and themselves; and a tiny run of ``benchmarks/scale_bank.py``."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raserec_adapter import BankConfig
from raserec_adapter.memory.compact_store import CompactStore
from raserec_adapter.memory.faiss_bank import FaissMemoryBank

REPO = Path(__file__).resolve().parents[1]


def reference(q, keys, k, qu=None, ql=None, users=None, lens=None):
    """Exact top-k (ids, cosines) in float64 with the rule written out; ``None`` rows when a
    query has fewer than ``k`` admissible memories."""
    kn = keys.astype(np.float64)
    kn = kn / np.maximum(np.linalg.norm(kn, axis=1, keepdims=True), 1e-300)
    qn = q.astype(np.float64)
    qn = qn / np.maximum(np.linalg.norm(qn, axis=1, keepdims=True), 1e-300)
    sims = qn @ kn.T
    out = []
    for r in range(q.shape[0]):
        ok = [
            j
            for j in range(keys.shape[0])
            if qu is None or users[j] != qu[r] or lens[j] < ql[r]  # other users, or the past
        ]
        order = sorted(ok, key=lambda j: -sims[r, j])
        out.append((order[:k], sims[r, order[:k]]) if len(ok) >= k else None)
    return out, sims


def data(n: int, dim: int, n_users: int, n_values: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    keys = rng.standard_normal((n, dim)).astype(np.float32)
    table = rng.standard_normal((n_values, dim)).astype(np.float32)
    values = table[rng.integers(0, n_values, n)]
    return keys, values, rng.integers(0, n_users, n), rng.integers(1, 12, n)


def fill(bank, keys, values, users, lens, chunk: int | None = None):
    step = chunk or len(keys)
    for lo in range(0, len(keys), step):
        sl = slice(lo, lo + step)
        bank.add(*(torch.from_numpy(x[sl]) for x in (keys, values, users, lens)))
    return bank


def search(bank, keys, users, lens, rows, k):
    t = (torch.from_numpy(x[rows]) for x in (keys, users, lens))
    return bank.search(next(t), k, next(t), next(t))


def half(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def test_ivf_flat_compact_with_every_list_probed_is_exact() -> None:
    keys, values, users, lens = data(3000, 16, 200, 50, seed=1)
    bank = fill(
        FaissMemoryBank(16, "IVF32,Flat", nprobe=32, store="compact", train_size=1500),
        keys, values, users, lens, chunk=700,
    )  # fmt: skip
    rows = np.arange(0, 3000, 50)
    res = search(bank, keys, users, lens, rows, 10)
    ref, _ = reference(keys[rows], half(keys), 10, users[rows], lens[rows], users, lens)
    assert bank.index_description == "IVF32,Flat"
    for got, scores, (ids, cos) in zip(res.ids.numpy(), res.scores.numpy(), ref, strict=True):
        assert len(set(got) & set(ids)) == 10  # recall 1
        np.testing.assert_allclose(scores, cos, atol=2e-5)


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "HNSW8,Flat"])
def test_compact_store_answers_as_the_full_store_of_float16_keys(factory: str) -> None:
    keys, values, users, lens = data(1500, 8, 40, 30, seed=2)
    compact = fill(
        FaissMemoryBank(8, factory, nprobe=4, store="compact"), keys, values, users, lens
    )
    full = fill(FaissMemoryBank(8, factory, nprobe=4), half(keys), values, users, lens)
    rows = np.arange(0, 1500, 7)
    a, b = (search(x, keys, users, lens, rows, 12) for x in (compact, full))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.scores, b.scores)
    ka, va = compact.fetch(a.ids)
    kb, vb = full.fetch(a.ids)
    assert torch.equal(ka, kb) and torch.equal(va, vb)  # values exact, keys float16-rounded
    assert torch.equal(va, torch.from_numpy(values)[a.ids])
    assert compact._store.distinct_values == len(np.unique(values, axis=0))


def test_refine_gives_exact_cosines_in_order() -> None:
    keys, values, users, lens = data(2000, 16, 100, 40, seed=3)
    bank = FaissMemoryBank(16, "IVF16,SQ8", nprobe=16, overfetch=8, refine=True, store="compact")
    fill(bank, keys, values, users, lens)
    plain = fill(
        FaissMemoryBank(16, "IVF16,SQ8", nprobe=16, overfetch=8), keys, values, users, lens
    )
    rows = np.arange(0, 2000, 40)
    res = search(bank, keys, users, lens, rows, 10)
    ref, sims = reference(keys[rows], half(keys), 10, users[rows], lens[rows], users, lens)
    found = np.mean(
        [len(set(g) & set(r[0])) / 10 for g, r in zip(res.ids.numpy(), ref, strict=True)]
    )
    assert found >= 0.98
    for r, (got, scores) in enumerate(zip(res.ids.numpy(), res.scores.numpy(), strict=True)):
        np.testing.assert_allclose(scores, sims[r, got], atol=2e-5)  # exact, not SQ8's
        assert (np.diff(scores) <= 0).all()
    lossy = search(plain, keys, users, lens, rows, 10)  # SQ8's own scores are approximate
    exact = np.take_along_axis(sims, lossy.ids.numpy(), axis=1)
    assert np.abs(lossy.scores.numpy() - exact).max() > 1e-4


OPTIONS = [
    {"index_factory": "Flat", "store": "compact"},
    {"index_factory": "IVF4,Flat", "store": "compact", "overfetch": 1, "train_size": 20},
    {"index_factory": "IVF4,SQ8", "refine": True, "overfetch": 1},
    {"index_factory": "IVF4,Flat", "shards": 2, "store": "compact", "refine": True},
    {"index_factory": "HNSW4,Flat", "store": "compact", "ef_search": 8, "overfetch": 1},
]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(5, 60),
    n_users=st.integers(1, 3),
    seed=st.integers(0, 2**31),
    k=st.integers(1, 8),
    option=st.sampled_from(range(len(OPTIONS))),
)
def test_the_exclusion_rule_always_holds(n, n_users, seed, k, option) -> None:
    """Few users: many candidates are the query's own future, so the exact fallback runs."""
    k = min(k, n)
    keys, values, users, lens = data(n, 4, n_users, 3, seed=seed)
    bank = fill(FaissMemoryBank(4, **OPTIONS[option]), keys, values, users, lens)
    rows = np.arange(min(n, 6))
    ref, _ = reference(keys[rows], half(keys), k, users[rows], lens[rows], users, lens)
    if any(r is None for r in ref):
        with pytest.raises(ValueError, match="admissible memories"):
            search(bank, keys, users, lens, rows, k)
        return
    res = search(bank, keys, users, lens, rows, k)
    for r, got in zip(rows, res.ids.numpy(), strict=True):
        assert len(set(got)) == k
        assert all(users[j] != users[r] or lens[j] < lens[r] for j in got)


def test_streaming_build_equals_one_shot_and_is_seeded() -> None:
    keys, values, users, lens = data(4000, 8, 300, 60, seed=4)
    opts = {"index_factory": "IVF32,SQ8", "nprobe": 4, "store": "compact", "train_size": 2000}
    one = fill(FaissMemoryBank(8, **opts, refine=True), keys, values, users, lens)
    chunked = fill(FaissMemoryBank(8, **opts, refine=True), keys, values, users, lens, chunk=333)
    rows = np.arange(0, 4000, 13)
    a, b = (search(x, keys, users, lens, rows, 10) for x in (one, chunked))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.scores, b.scores)
    assert torch.equal(one._store.refs, chunked._store.refs)
    assert torch.equal(one._store.keys, torch.from_numpy(keys).half())


def test_values_are_kept_once_bit_for_bit_even_when_hashes_clash(monkeypatch) -> None:
    table = torch.tensor([[0.0, 1.0], [-0.0, 1.0], [2.0, 3.0]])  # 0.0 and -0.0 differ in bits
    values = table[torch.tensor([0, 1, 2, 0, 1, 2, 2])]
    store = CompactStore(2)
    store.append(torch.ones(7, 2), values, torch.arange(7), torch.ones(7, dtype=torch.long))
    assert store.distinct_values == 3
    got = store.fetch(torch.arange(7))[1]
    assert torch.equal(got.view(torch.int32), values.view(torch.int32))
    clash = CompactStore(2)
    monkeypatch.setattr(clash, "_hash", lambda bits: np.zeros(len(bits), dtype=np.uint64))
    clash.append(torch.ones(7, 2), values, torch.arange(7), torch.ones(7, dtype=torch.long))
    clash.append(torch.ones(2, 2), values[:2], torch.arange(2), torch.ones(2, dtype=torch.long))
    assert torch.equal(
        clash.fetch(torch.arange(9))[1].view(torch.int32)[:7], values.view(torch.int32)
    )
    clash.keep(torch.arange(9) % 2 == 0)  # the table is compacted and hashed again
    assert torch.equal(clash.fetch(torch.arange(5))[1], torch.cat([values, values[:2]])[::2])


@pytest.mark.parametrize(
    "opts",
    [
        {"index_factory": "IVF8,SQ8", "store": "compact", "refine": True, "train_size": 400},
        {"index_factory": "IVF8,Flat", "store": "compact", "shards": 3, "nprobe": 3},
        {"index_factory": "HNSW8,Flat", "store": "compact", "ef_search": 40},
    ],
    ids=["sq8-refine", "shards", "hnsw"],
)
def test_save_load_round_trip(tmp_path: Path, opts) -> None:
    keys, values, users, lens = data(1200, 8, 90, 20, seed=5)
    bank = fill(FaissMemoryBank(8, **opts), keys, values, users, lens, chunk=500)
    rows = np.arange(0, 1200, 11)
    before = search(bank, keys, users, lens, rows, 9)
    bank.save(tmp_path / "bank")
    meta = json.loads((tmp_path / "bank" / "bank.json").read_text())
    assert {k: meta["config"][k] for k in opts} == opts
    with np.load(tmp_path / "bank" / "arrays.npz") as saved:
        assert saved["keys"].dtype == np.float16
    loaded = FaissMemoryBank.load(tmp_path / "bank")
    assert loaded.scale == bank.scale and type(loaded._index) is type(bank._index)
    after = search(loaded, keys, users, lens, rows, 9)
    assert torch.equal(before.ids, after.ids) and torch.equal(before.scores, after.scores)
    for x, y in zip(bank.fetch(before.ids), loaded.fetch(before.ids), strict=True):
        assert torch.equal(x, y)


def test_shards_answer_as_one_index() -> None:
    keys, values, users, lens = data(3000, 8, 200, 40, seed=6)
    opts = {"index_factory": "IVF16,Flat", "nprobe": 5, "store": "compact"}
    one = fill(FaissMemoryBank(8, **opts), keys, values, users, lens)
    three = fill(FaissMemoryBank(8, **opts, shards=3), keys, values, users, lens)
    rows = np.arange(0, 3000, 9)
    for bank in (one, three):  # adds into the built indexes too
        search(bank, keys, users, lens, rows[:1], 5)
        fill(bank, keys[:50] + 0.01, values[:50], users[:50] + 1000, lens[:50])
    a, b = (search(x, keys, users, lens, rows, 10) for x in (one, three))
    assert three._index.ntotal == len(three) == 3050
    assert torch.equal(a.ids, b.ids)
    torch.testing.assert_close(a.scores, b.scores)


def test_hnsw_remove_rebuilds_the_graph_and_says_so(caplog) -> None:
    keys, values, users, lens = data(600, 8, 30, 10, seed=7)
    bank = fill(
        FaissMemoryBank(8, "HNSW16,Flat", store="compact", ef_search=200), keys, values, users, lens
    )
    rows = np.arange(0, 600, 17)
    search(bank, keys, users, lens, rows, 5)
    with caplog.at_level(logging.WARNING):
        removed = bank.remove(torch.tensor([0, 1, 2]))
    assert removed == int(np.isin(users, [0, 1, 2]).sum())
    assert "HNSW indexes cannot remove entries" in caplog.text
    keep = ~np.isin(users, [0, 1, 2])
    k2, u2, l2 = keys[keep], users[keep], lens[keep]
    res = search(bank, k2, u2, l2, np.arange(0, len(k2), 17), 5)
    assert bank._index.ntotal == len(bank) == int(keep.sum())
    ref, _ = reference(k2[::17], half(k2), 5, u2[::17], l2[::17], u2, l2)
    found = np.mean(
        [len(set(g) & set(r[0])) / 5 for g, r in zip(res.ids.numpy(), ref, strict=True)]
    )
    assert found >= 0.95  # efSearch 200 over 540 memories: about exact


def test_options_are_checked_with_clear_errors() -> None:
    bad = [
        ({"store": "half"}, "store must be 'full' or 'compact'"),
        ({"refine": 1}, "refine must be True or False"),
        ({"index_factory": "IVF64,Flat", "train_size": 10}, "train_size=10 is below"),
        ({"train_size": 0}, "train_size must be a positive integer"),
        ({"index_factory": "HNSW8,Flat", "shards": 2}, "not a plain IVF index"),
        ({"index_factory": "IVF8,Flat", "ef_search": 16}, "has none"),
        ({"shards": 0}, "shards must be a positive integer"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            FaissMemoryBank(4, **kwargs)
    bank = FaissMemoryBank(2, "Flat", store="compact")
    with pytest.raises(ValueError, match="float16, whose largest value is 65504"):
        bank.add(torch.tensor([[7e4, 0.0]]), torch.ones(1, 2), torch.tensor([0]), torch.tensor([1]))
    assert len(bank) == 0
    with pytest.raises(ValueError, match="BankConfig.store must be 'full' or 'compact'"):
        BankConfig(store="half")
    with pytest.raises(ValueError, match="BankConfig.train_size must be None or an int >= 1"):
        BankConfig(train_size=0)
    with pytest.raises(ValueError, match="BankConfig.shards must be 1 with kind 'torch'"):
        BankConfig(kind="torch", shards=2)
    cfg = BankConfig(index_factory="IVF8,SQ8", store="compact", refine=True, train_size=64)
    assert BankConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_bank_config_options_reach_the_bank() -> None:
    from raserec_adapter import Sequences, leave_one_out, wrap_encoder
    from raserec_adapter.memory.state import PhasedBank
    from raserec_adapter.models import GRU4Rec

    split = leave_one_out(Sequences.from_lists([[1, 2, 3, 4, 1], [2, 3, 1, 4, 2]]))
    cfg = BankConfig(index_factory="Flat", store="compact", refine=True, train_size=5)
    state = PhasedBank(cfg, wrap_encoder(GRU4Rec(4)), max_len=50)
    state.build(split, "train", device="cpu", show_progress=False)
    assert isinstance(state.bank._store, CompactStore)
    assert state.bank.scale.refine and state.bank.scale.train_size == 5


def test_scale_bank_benchmark_runs(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    cmd = [sys.executable, "benchmarks/scale_bank.py", "--sizes", "2000", "--queries-small"]
    cmd += ["--configs", "torch-exact", "ivf-sq8", "--threads", "1", "--out", str(out)]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=120)
    rec = json.loads(out.read_text())
    rows = {r["config"]: r for r in rec["rows"]}
    assert rows["torch-exact"]["recall_at_20"] == 1.0  # the script's brute force = the exact bank
    assert rows["ivf-sq8"]["built_index"] == "IVF1024,SQ8"
    for row in rows.values():
        assert row["rule_violations"] == 0 and 0 < row["recall_at_20"] <= 1
        assert row["p50_single_ms"] > 0 and row["build_seconds"] >= 0
    assert rec["command"].startswith("python benchmarks/scale_bank.py")
    assert rec["targets"][0]["by_config"][0]["config"] == "ivf-sq8"
