"""Tests of what is Milvus's own in MilvusMemoryBank: URIs, a server-backed bank's save and load,
the engine's filtered re-search, the exact last resort, failed inserts, and lazy imports.

The shared protocol tests (the no-leakage property, exactness, remove, save/load, error messages)
run against MilvusMemoryBank in tests/test_bank.py. A "server" here is Milvus Lite's own gRPC
server started in this process, reached over http:// like any Milvus server.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from raserec_adapter.memory import MemoryBankFormatError, MilvusMemoryBank
from raserec_adapter.memory import milvus_bank as mb
from raserec_adapter.memory.format import MemoryBankDamagedError

REPO = Path(__file__).resolve().parents[1]


def data(n: int, dim: int, n_users: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    keys, values = torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g)
    users = torch.randint(0, n_users, (n,), generator=g)
    return keys, values, users, torch.randint(1, 10, (n,), generator=g)


def reference(q, keys, users, lengths, qu, ql, k) -> torch.Tensor:
    """Top-k cosine scores of the admissible memories, by brute force in float64 (rule written
    out: another user's memory, or the query user's strictly shorter prefix)."""
    sims = (
        torch.nn.functional.normalize(q.double(), dim=1)
        @ torch.nn.functional.normalize(keys.double(), dim=1).T
    )
    ok = (users[None, :] != qu[:, None]) | (lengths[None, :] < ql[:, None])
    return sims.masked_fill(~ok, float("-inf")).topk(k, dim=1).values


def check(res, keys, users, lengths, q, qu, ql, k) -> None:
    assert res.ids.shape == (q.shape[0], k) and res.ids.dtype == torch.int64
    assert ((users[res.ids] != qu[:, None]) | (lengths[res.ids] < ql[:, None])).all()
    assert all(len(set(row)) == k for row in res.ids.tolist())
    want = reference(q, keys, users, lengths, qu, ql, k)
    torch.testing.assert_close(res.scores.double(), want, atol=1e-5, rtol=0)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """The URI of a Milvus gRPC server (Milvus Lite's) on a free local port."""
    from milvus_lite.adapter.grpc.server import start_server_in_thread

    srv, db, port = start_server_in_thread(data_dir=str(tmp_path / "server"), port=0)
    yield f"http://127.0.0.1:{port}"
    srv.stop(grace=0)
    db.close()


def test_uris_names_and_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    bank = MilvusMemoryBank(3, uri="sub/dir/m.db", collection="c")  # parents are created
    assert bank.is_lite and bank.uri == str(tmp_path / "sub" / "dir" / "m.db")
    assert (tmp_path / "sub" / "dir" / "m.db").is_dir()
    assert MilvusMemoryBank(3, uri=tmp_path / "p.db", collection="c").uri == str(tmp_path / "p.db")
    for uri in ("memories.sqlite", "ftp://host/x", "http://", 42):
        with pytest.raises(ValueError, match=r"uri must be a Milvus Lite file ending in '\.db'"):
            MilvusMemoryBank(3, uri=uri)
    with pytest.raises(ValueError, match="credentials as token="):
        MilvusMemoryBank(3, uri="http://root:secret@localhost:19530")
    for name in ("1abc", "a-b", "", "x" * 256, "naïve"):
        with pytest.raises(ValueError, match="collection must be a Milvus name"):
            MilvusMemoryBank(3, uri="m.db", collection=name)
    with pytest.raises(ValueError, match="exclusion must be 'postfilter' or 'filter'"):
        MilvusMemoryBank(3, uri="m.db", exclusion="pre")
    with pytest.raises(ValueError, match="index_params must be a dict"):
        MilvusMemoryBank(3, uri="m.db", index_params="M=16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="overfetch must be a positive integer"):
        MilvusMemoryBank(3, uri="m.db", overfetch=0)
    # an existing collection is refused, or replaced on request
    keys, values, users, lengths = data(5, 3, 2, seed=0)
    bank.add(keys, values, users, lengths)
    with pytest.raises(ValueError, match="collection 'c' already exists in .*overwrite=True"):
        MilvusMemoryBank(3, uri="sub/dir/m.db", collection="c")
    again = MilvusMemoryBank(3, uri="sub/dir/m.db", collection="c", overwrite=True)
    assert len(again) == 0
    assert again.client.query("c", filter="", output_fields=["count(*)"])[0]["count(*)"] == 0
    assert "m.db" in repr(again) and "collection='c'" in repr(again)


def test_server_bank_saves_a_reference_and_reconnects(server: str, tmp_path: Path) -> None:
    keys, values, users, lengths = data(300, 8, 20, seed=1)
    bank = MilvusMemoryBank(8, uri=server, collection="srv", token="root:s3cr3t")
    assert not bank.is_lite
    bank.add(keys[:200], values[:200], users[:200], lengths[:200])
    bank.add(keys[200:], values[200:], users[200:], lengths[200:])
    gone = torch.isin(users, torch.tensor([3, 7]))
    assert bank.remove(torch.tensor([3, 7])) == int(gone.sum())
    keys, values, users, lengths = keys[~gone], values[~gone], users[~gone], lengths[~gone]
    q, qu, ql = keys[:40], users[:40], lengths[:40]
    before = bank.search(q, 6, qu, ql)
    check(before, keys, users, lengths, q, qu, ql, 6)
    bank.save(tmp_path / "bank")
    assert sorted(p.name for p in (tmp_path / "bank").iterdir()) == ["bank.json"]  # no data
    text = (tmp_path / "bank" / "bank.json").read_text()
    meta = json.loads(text)
    assert meta["count"] == len(keys) and len(text) < 4000 and "s3cr3t" not in text
    assert meta["config"]["uri"] == server and meta["config"]["collection"] == "srv"
    assert meta["config"]["lite"] is False and meta["config"]["next_pk"] == 300
    loaded = MilvusMemoryBank.load(tmp_path / "bank", token="root:s3cr3t")
    assert len(loaded) == len(keys) and loaded.uri == server
    after = loaded.search(q, 6, qu, ql)
    assert torch.equal(after.ids, before.ids)
    torch.testing.assert_close(after.scores, before.scores)
    fk, fv = loaded.fetch(torch.arange(len(keys)))
    assert torch.equal(fk, keys) and torch.equal(fv, values)
    # new memories continue the primary keys: ids stay consecutive, nothing is overwritten
    extra = data(5, 8, 3, seed=2)
    loaded.add(*extra)
    assert torch.equal(loaded.fetch(torch.arange(len(keys), len(keys) + 5))[1], extra[1])
    # the collection changed after the save: refused
    with pytest.raises(MemoryBankDamagedError, match="changed after the save"):
        MilvusMemoryBank.load(tmp_path / "bank")
    loaded.client.drop_collection("srv")
    with pytest.raises(MemoryBankFormatError, match="collection 'srv' is not in"):
        MilvusMemoryBank.load(tmp_path / "bank")
    with pytest.raises(MemoryBankFormatError, match=r"holds a bank of dim 8, not 4"):
        MilvusMemoryBank.load(tmp_path / "bank", dim=4)


def test_lite_save_survives_a_move_and_loads_where_asked(tmp_path: Path) -> None:
    keys, values, users, lengths = data(50, 4, 5, seed=3)
    bank = MilvusMemoryBank(4, uri=tmp_path / "a.db", collection="x", exclusion="filter")
    bank.add(keys, values, users, lengths)
    bank.save(tmp_path / "saved")
    shutil.move(tmp_path / "saved", tmp_path / "moved")
    there = MilvusMemoryBank.load(tmp_path / "moved", uri=tmp_path / "b.db")
    assert there.uri == str(tmp_path / "b.db") and there.exclusion == "filter"
    assert torch.equal(there.fetch(torch.arange(50))[0], keys)
    with pytest.raises(MemoryBankFormatError, match="collection 'x' already exists"):
        MilvusMemoryBank.load(tmp_path / "moved", uri=tmp_path / "a.db")
    replaced = MilvusMemoryBank.load(tmp_path / "moved", uri=tmp_path / "a.db", overwrite=True)
    assert len(replaced) == 50
    # by default a temporary database, deleted with the bank
    temp = MilvusMemoryBank.load(tmp_path / "moved")
    where = Path(temp.uri).parent
    assert where.is_dir() and not where.is_relative_to(tmp_path)
    del temp
    gc.collect()
    assert not where.exists()
    with pytest.raises(ValueError, match="lives on the CPU"):
        MilvusMemoryBank.load(tmp_path / "moved", device="meta")


def own_future_case(n_own: int = 60) -> tuple[torch.Tensor, ...]:
    """User 0's memories all lie near ``e0`` and are the future of a query (0, length 1)."""
    g = torch.Generator().manual_seed(4)
    own = torch.zeros(n_own, 8)
    own[:, 0] = 1.0
    own += 0.01 * torch.randn(n_own, 8, generator=g)
    others = torch.randn(120, 8, generator=g)
    others[:, 0] = -others[:, 0].abs()  # pointing away from e0
    keys = torch.cat([own, others])
    users = torch.cat([torch.zeros(n_own, dtype=torch.long), torch.randint(1, 30, (120,))])
    lengths = torch.cat([torch.arange(2, n_own + 2), torch.randint(1, 9, (120,))])
    return keys, torch.randn(keys.shape, generator=g), users, lengths


def test_short_rows_are_searched_again_with_the_engine_filter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys, values, users, lengths = own_future_case()
    q = torch.zeros(3, 8)
    q[:, 0] = 1.0
    qu, ql = torch.tensor([0, 0, 5]), torch.tensor([1, 500, 3])
    calls: list[tuple[int, str]] = []
    original = MilvusMemoryBank._engine_search

    def spy(self, qn, limit, expr):
        calls.append((qn.shape[0], expr))
        return original(self, qn, limit, expr)

    monkeypatch.setattr(MilvusMemoryBank, "_engine_search", spy)
    post = MilvusMemoryBank(8, uri=tmp_path / "m.db", collection="post", overfetch=2)
    post.add(keys, values, users, lengths)
    res = post.search(q, 5, qu, ql)
    # one batched search, then only the query whose 10 candidates were all its own future
    assert calls == [(3, ""), (1, "user != 0 or length < 1")]
    check(res, keys, users, lengths, q, qu, ql, 5)
    assert (res.ids[0] >= 60).all() and (res.ids[1] < 60).all()
    calls.clear()
    filt = MilvusMemoryBank(8, uri=tmp_path / "m.db", collection="filt", exclusion="filter")
    filt.add(keys, values, users, lengths)
    q4, qu4, ql4 = torch.cat([q, q[:1]]), torch.cat([qu, qu[:1]]), torch.cat([ql, ql[:1]])
    res = filt.search(q4, 5, qu4, ql4)
    assert sorted(calls) == [(1, "user != 0 or length < 500"), (1, "user != 5 or length < 3"),
                             (2, "user != 0 or length < 1")]  # fmt: skip
    check(res, keys, users, lengths, q4, qu4, ql4, 5)


def test_rows_the_engine_leaves_short_are_searched_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys, values, users, lengths = data(80, 6, 6, seed=5)
    bank = MilvusMemoryBank(6, uri=tmp_path / "m.db", collection="approx")
    bank.add(keys, values, users, lengths)
    original = MilvusMemoryBank._engine_search

    def lossy(self, qn, limit, expr):  # an approximate index: every 2nd query gets 1 result
        ids, scores = original(self, qn, limit, expr)
        ids[::2, 1:], scores[::2, 1:] = -1, float("-inf")
        return ids, scores

    monkeypatch.setattr(MilvusMemoryBank, "_engine_search", lossy)
    q, qu, ql = keys[:9], users[:9], lengths[:9]
    check(bank.search(q, 4, qu, ql), keys, users, lengths, q, qu, ql, 4)
    res = bank.search(q, 4)  # without the rule too
    no_rule = torch.full((9,), -1), torch.ones(9, dtype=torch.long)
    check(res, keys, users, lengths, q, *no_rule, 4)


def test_a_failed_insert_is_undone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys, values, users, lengths = data(30, 4, 3, seed=6)
    bank = MilvusMemoryBank(4, uri=tmp_path / "m.db", collection="f")
    bank.add(keys[:10], values[:10], users[:10], lengths[:10])
    monkeypatch.setattr(mb, "_MSG_BYTES", 500)  # a few rows per insert request
    real, sent = bank.client.insert, []

    def flaky(name, rows, **kwargs):
        if sent:
            raise ConnectionError("server went away")
        sent.append(len(rows))
        return real(name, rows, **kwargs)

    monkeypatch.setattr(bank.client, "insert", flaky)
    with pytest.raises(ConnectionError, match="server went away"):
        bank.add(keys[10:], values[10:], users[10:], lengths[10:])
    assert len(sent) == 1 and 0 < sent[0] < 20 and len(bank) == 10
    count = bank.client.query("f", filter="", output_fields=["count(*)"])[0]["count(*)"]
    assert count == 10  # the rows that went in were deleted again
    monkeypatch.setattr(bank.client, "insert", real)
    bank.add(keys[10:], values[10:], users[10:], lengths[10:])
    assert torch.equal(bank.fetch(torch.arange(30))[1], values)
    q, qu, ql = keys, users, lengths
    check(bank.search(q, 3, qu, ql), keys, users, lengths, q, qu, ql, 3)


def test_missing_pymilvus_gives_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hint = r'pip install "raserec-adapter\[milvus\]"'
    monkeypatch.setitem(sys.modules, "milvus_lite", None)  # `import milvus_lite` fails
    with pytest.raises(ImportError, match=hint):
        MilvusMemoryBank(4, uri=tmp_path / "m.db")
    monkeypatch.setitem(sys.modules, "pymilvus", None)
    with pytest.raises(ImportError, match=hint):
        MilvusMemoryBank(4, uri="http://localhost:19530")


def test_importing_the_package_does_not_import_pymilvus() -> None:
    code = (
        "import sys, raserec_adapter; from raserec_adapter.memory import MilvusMemoryBank; "
        "bad = [m for m in ('pymilvus', 'milvus_lite', 'grpc') if m in sys.modules]; "
        "assert not bad, bad"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env, timeout=120)


def test_memories_of_a_collection_are_not_shared_between_banks(tmp_path: Path) -> None:
    a = MilvusMemoryBank(2, uri=tmp_path / "m.db", collection="a")
    b = MilvusMemoryBank(2, uri=tmp_path / "m.db", collection="b")
    a.add(torch.eye(2), torch.eye(2), torch.tensor([0, 1]), torch.tensor([1, 1]))
    b.add(-torch.eye(2), torch.eye(2), torch.tensor([0, 1]), torch.tensor([1, 1]))
    assert a.search(torch.tensor([[1.0, 0.0]]), 1).scores.item() == pytest.approx(1.0)
    assert b.search(torch.tensor([[1.0, 0.0]]), 1).scores.item() == pytest.approx(0.0)
    assert np.isclose(b.search(torch.tensor([[1.0, 0.0]]), 2).scores[0, 1].item(), -1.0)


def test_the_augmenter_runs_on_a_milvus_bank_as_on_the_exact_one(tmp_path: Path) -> None:
    """BankConfig(kind="milvus"): the same memories, RAFT and test metrics as the torch bank,
    through a phase switch, a save and a load."""
    from conftest import pretrained_sasrec

    from raserec_adapter import (
        AugmenterConfig,
        BankConfig,
        RAFTConfig,
        RAMConfig,
        RetrievalAugmenter,
    )

    model, split = pretrained_sasrec(40, 15, seed=5, epochs=1, max_len=8)
    out = {}
    for kind in ("torch", "milvus"):
        bank = BankConfig(kind=kind, milvus_uri=str(tmp_path / f"{kind}.db"))
        aug = RetrievalAugmenter(model, AugmenterConfig(max_len=8, bank=bank, ram=RAMConfig(k=3)))
        aug.reset_ram(seed=0)
        aug.build_bank(split, show_progress=False)
        aug.fit_raft(split, RAFTConfig(epochs=2, fallback=False), show_progress=False)
        out[kind] = aug.evaluate(split, "test", show_progress=False)
        aug.save(tmp_path / kind)
        again = RetrievalAugmenter.load(model, tmp_path / kind)
        assert type(again.bank).__name__ == type(aug.bank).__name__
        assert len(again.bank) == len(aug.bank)
    for variant in ("plain", "raserec"):
        for metric, value in out["torch"][variant].items():
            assert out["milvus"][variant][metric] == pytest.approx(value, abs=1e-9), metric
