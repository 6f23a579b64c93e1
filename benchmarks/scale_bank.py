"""Memory banks at 1 and 10 million memories: build time, memory, latency and recall.

Each configuration runs in a fresh process that streams synthetic memories (d = 64) into the
bank in chunks of 2**18 and then measures:

* ``build_seconds``: the ``add`` calls plus the first search (which trains and fills a Faiss
  index), without the time spent drawing the synthetic data;
* ``rss_delta_mb``: resident memory after the build minus before it (the bank's store plus
  its index; the data being drawn are transient); ``peak_rss_delta_mb``: the peak during the
  build minus the same baseline; ``store_mb``: the bank's own arrays (so the index is about
  the difference). 1 MB = 10**6 bytes;
* p50 and p99 wall latency of one query (``--single`` queries, one at a time, after 20 warm-up
  queries) and of a batch of ``--batch`` queries (``--batch-repeats`` times; Milvus: 50 single
  queries, 3 batches), top-``--k``, with the exclusion rule on;
* ``recall_at_20``: the share of the exact top-20 (brute force over all memories with the
  exclusion rule, computed once per size) found by the bank, over ``--recall-queries`` queries;
  ``rule_violations``: returned memories the exclusion rule forbids (must be 0).

The synthetic memories imitate a SASRec bank of Amazon Beauty. Users contribute the training
pairs of leave-one-out (prefix lengths 1 .. L - 3 for a user of L items), with L drawn from
Beauty's user lengths (``--beauty``: ``Beauty.txt`` from ``$RASEREC_DATA_DIR`` or
``../shared/data``; without it, 5 + a geometric count of mean 3.88, Beauty's mean 8.88). Items:
one per 10.86 memories (Beauty's 131,413 training pairs over 12,101 items), popularity drawn
from Beauty's item counts (without the file: a Zipf law of exponent 1), each user's items drawn
by popularity. A memory's key is ``1.7 * mu + (g[last] + 0.3 * g[first] + 0.5 * eps) @ P``:
``mu`` a unit mean direction, ``g`` a standard normal latent per item, ``last`` the prefix's
last item, ``first`` the user's first item, ``eps`` noise, and ``P`` a random rotation scaled by
eigenvalues proportional to ``j**-2``. These constants were chosen so that at Beauty's size
(153,776 memories) the keys resemble the bank of a SASRec trained on Beauty by
``python examples/sasrec.py --dataset beauty --demo`` (its values in brackets; over 300 random
memories, neighbours other than the memory itself): median cosine of two memories 0.765
[0.755], mean cosine of the 20th neighbour 0.974 [0.989], first principal component 54% of the
variance [47%], recall@20 of ``IVF1024,Flat`` at ``nprobe=8`` 0.816 [0.846] and of
``IVF128,Flat`` at ``nprobe=1`` 0.516 [0.622]: a little harder to search than the real keys.
A value is the target item's row of a random float32 item table. Queries are memories of the
bank with their own user and prefix length, as RAFT's queries are, so the rule drops each
query's own pair (its top hit).

    python benchmarks/scale_bank.py --sizes 1000000 --out benchmarks/results/scale-bank.json
    python benchmarks/scale_bank.py --sizes 10000000 --configs ivf-sq8 --resume
    python benchmarks/scale_bank.py --sizes 2000 --queries-small --out /tmp/s.json  # a check
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import RESULTS, check_resume, earlier_invocations, provenance, write_json

CHUNK = 1 << 18
D = 64
TARGETS = {"p50_single_ms": 1.0, "recall_at_20": 0.95, "build_seconds": 60.0, "rss_mb": 3000.0}

# name: (bank class, keyword arguments, the largest size it runs at, why not above)
IVF = {"nprobe": 16, "train_size": 100_000, "store": "compact"}
SQ8 = {"index_factory": "IVF1024,SQ8", "refine": True, "overfetch": 8, **IVF}
ALL = 10**12
HNSW_WHY = "its graph and float32 vectors need 528 B per memory, the build about 10x its 1M time"
MILVUS_WHY = "MilvusMemoryBank keeps its full store beside Milvus's three vectors per memory"
CONFIGS: dict[str, tuple[str, dict[str, Any], int, str]] = {
    "torch-exact": ("torch", {}, 10**6, "its store alone needs 784 B per memory (7.8 GB)"),
    "faiss-default": ("faiss", {}, 10**6, "the full store needs 784 B per memory (7.8 GB)"),
    "ivf-flat": ("faiss", {"index_factory": "IVF1024,Flat", **IVF}, ALL, ""),
    "ivf-sq8": ("faiss", SQ8, ALL, ""),
    "ivf-sq8-nprobe8": ("faiss", {**SQ8, "nprobe": 8}, ALL, ""),
    "ivf-sq8-2shards": ("faiss", {**SQ8, "shards": 2}, ALL, ""),
    "ivf2048-sq8": ("faiss", {**SQ8, "index_factory": "IVF2048,SQ8"}, ALL, ""),
    "ivf2048-sq8-2shards": ("faiss", {**SQ8, "index_factory": "IVF2048,SQ8", "shards": 2}, ALL, ""),
    "ivf-pq": ("faiss", {**SQ8, "index_factory": "IVF1024,PQ64x4fsr"}, ALL, ""),
    "ivf2048-pq": ("faiss", {**SQ8, "index_factory": "IVF2048,PQ64x4fsr"}, ALL, ""),
    "hnsw": ("faiss", {"index_factory": "HNSW32,Flat", "store": "compact"}, 10**6, HNSW_WHY),
    "milvus-ivf": ("milvus", {"index_type": "IVF_FLAT", "index_params": {"nlist": 1024},
                              "search_params": {"nprobe": 16}}, 10**6, MILVUS_WHY),
}  # fmt: skip


def beauty_path(arg: str | None) -> Path | None:
    if arg:
        return Path(arg)
    for root in (os.environ.get("RASEREC_DATA_DIR"), Path(__file__).parents[2] / "shared/data"):
        if root and (Path(root) / "Beauty.txt").is_file():
            return Path(root) / "Beauty.txt"
    return None


class Synthetic:
    """The memories of the module's docstring, drawn chunk by chunk (seeded per chunk)."""

    def __init__(self, n: int, seed: int, beauty: Path | None) -> None:
        rng = np.random.default_rng([seed, 0])
        if beauty is not None:
            from raserec_adapter.data import read_sequences_txt

            seqs = read_sequences_txt(beauty)
            user_lengths = np.diff(seqs.offsets)
            counts = np.bincount(seqs.items)[1:]
        else:
            user_lengths = 5 + rng.geometric(1 / 4.88, 22_363) - 1
            counts = 1.0 / np.arange(1, 12_102)
        pairs = np.maximum(rng.choice(user_lengths, n + 1) - 3, 1)  # >= 1 pair per user
        nu = int(np.searchsorted(np.cumsum(pairs), n)) + 1
        pairs = pairs[:nu]
        pairs[-1] -= int(pairs.sum()) - n
        self.n_items = max(100, round(n / 10.86))
        weights = rng.choice(counts, self.n_items).astype(np.float64)
        first = np.cumsum(pairs) - pairs
        self.users = np.repeat(np.arange(nu), pairs).astype(np.int64)
        self.lengths = (np.arange(n) - np.repeat(first, pairs) + 1).astype(np.int64)
        seq = rng.choice(self.n_items, int(n + nu), p=weights / weights.sum()).astype(np.int32)
        start = np.repeat(first + np.arange(nu), pairs)  # s_1 of each memory's user
        self.last, self.target = seq[start + self.lengths - 1], seq[start + self.lengths]
        self.first = seq[start]
        lam = np.arange(1, D + 1, dtype=np.float64) ** -2.0
        rot, _ = np.linalg.qr(rng.standard_normal((D, D)))
        self.proj = (np.sqrt(lam / lam.sum())[:, None] * rot).astype(np.float32)
        mu = rng.standard_normal(D)
        self.mu = (1.7 * mu / np.linalg.norm(mu)).astype(np.float32)
        self.g = rng.standard_normal((self.n_items, D), dtype=np.float32)
        self.table = rng.standard_normal((self.n_items, D), dtype=np.float32)
        self.n, self.seed = n, seed
        self.chunks = (n + CHUNK - 1) // CHUNK

    def chunk(self, c: int) -> tuple[np.ndarray, np.ndarray, slice]:
        """Keys, values and the rows of chunk ``c``."""
        rows = slice(c * CHUNK, min(self.n, (c + 1) * CHUNK))
        rng = np.random.default_rng([self.seed, 1, c])
        z = self.g[self.last[rows]] + 0.3 * self.g[self.first[rows]]
        z += 0.5 * rng.standard_normal(z.shape, dtype=np.float32)
        return self.mu + z @ self.proj, self.table[self.target[rows]], rows


def prepare(spec: dict[str, Any]) -> dict[str, Any]:
    """Queries (memories of the bank) and their exact top-k with the exclusion rule."""
    n, k = spec["n"], spec["k"]
    data = Synthetic(n, spec["seed"], beauty_path(spec["beauty"]))
    pool = max(spec["batch"], spec["single"], spec["recall"])
    ids = np.random.default_rng([spec["seed"], 2]).choice(n, min(pool, n), replace=False)
    qkeys = np.zeros((len(ids), D), dtype=np.float32)
    for c in range(data.chunks):
        keys, _, rows = data.chunk(c)
        inside = (ids >= rows.start) & (ids < rows.stop)
        qkeys[inside] = keys[ids[inside] - rows.start]
    qu, ql = torch.from_numpy(data.users[ids]), torch.from_numpy(data.lengths[ids])
    nr = min(spec["recall"], len(ids))
    qn = torch.nn.functional.normalize(torch.from_numpy(qkeys[:nr]), dim=1)
    best_s = torch.full((nr, 0), float("-inf"))
    best_i = torch.empty((nr, 0), dtype=torch.int64)
    for c in range(data.chunks):
        keys, _, rows = data.chunk(c)
        kn = torch.nn.functional.normalize(torch.from_numpy(keys), dim=1)
        sims = qn @ kn.T
        mu, ml = torch.from_numpy(data.users[rows]), torch.from_numpy(data.lengths[rows])
        sims[(mu[None, :] == qu[:nr, None]) & (ml[None, :] >= ql[:nr, None])] = float("-inf")
        top = torch.topk(sims, min(k, sims.shape[1]), dim=1)
        best_s = torch.cat([best_s, top.values], 1)
        best_i = torch.cat([best_i, top.indices + rows.start], 1)
        top = torch.topk(best_s, min(k, best_s.shape[1]), dim=1)
        best_s, best_i = top.values, best_i.gather(1, top.indices)
    np.savez(spec["truth"], ids=ids, keys=qkeys, truth=best_i.numpy())
    return {"users": int(data.users[-1]) + 1, "items": data.n_items}


def _rss() -> tuple[float, float]:
    """Current and peak resident memory of this process, MB."""
    status = Path("/proc/self/status").read_text()
    get = {ln.split(":")[0]: ln.split()[1] for ln in status.splitlines() if ln.startswith("Vm")}
    return int(get["VmRSS"]) * 1024 / 1e6, int(get["VmHWM"]) * 1024 / 1e6


def _store_mb(bank: Any) -> float | None:
    store = getattr(bank, "_store", None)
    if hasattr(store, "nbytes"):
        return store.nbytes() / 1e6
    cols = getattr(store, "_cols", None)
    return None if cols is None else sum(t.numel() * t.element_size() for t in cols.values()) / 1e6


def make_bank(kind: str, kwargs: dict[str, Any], tmp: str) -> Any:
    if kind == "torch":
        from raserec_adapter.memory import TorchMemoryBank

        return TorchMemoryBank(D)
    if kind == "milvus":
        from raserec_adapter.memory.milvus_bank import MilvusMemoryBank

        return MilvusMemoryBank(D, uri=f"{tmp}/bench.db", collection="bench", **kwargs)
    from raserec_adapter.memory import FaissMemoryBank

    return FaissMemoryBank(D, **kwargs)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration at one size, in this (fresh) process."""
    import faiss

    faiss.omp_set_num_threads(spec["threads"])
    torch.set_num_threads(spec["threads"])
    kind, kwargs = spec["kind"], spec["kwargs"]
    data = Synthetic(spec["n"], spec["seed"], beauty_path(spec["beauty"]))
    saved = np.load(spec["truth"])
    ids, truth = saved["ids"], torch.from_numpy(saved["truth"])
    q = torch.from_numpy(saved["keys"])
    qu, ql = torch.from_numpy(data.users[ids]), torch.from_numpy(data.lengths[ids])
    tmp = tempfile.mkdtemp(prefix="scale-bank-")
    bank = make_bank(kind, kwargs, tmp)
    rss0, _ = _rss()
    with contextlib.suppress(OSError):  # else the peak counts from the process's start
        Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from here
    adding = drawing = 0.0
    for c in range(data.chunks):
        t0 = time.perf_counter()
        keys, values, rows = data.chunk(c)
        t1 = time.perf_counter()
        users, lengths = torch.from_numpy(data.users[rows]), torch.from_numpy(data.lengths[rows])
        bank.add(torch.from_numpy(keys), torch.from_numpy(values), users, lengths)
        adding += time.perf_counter() - t1
        drawing += t1 - t0
        del keys, values
    t0 = time.perf_counter()
    bank.search(q[:1], spec["k"], qu[:1], ql[:1])
    first_search = time.perf_counter() - t0
    rss1, peak = _rss()
    k = spec["k"]

    def search(lo: int, hi: int) -> Any:
        return bank.search(q[lo:hi], k, qu[lo:hi], ql[lo:hi])

    for i in range(20):
        search(i, i + 1)
    single = []
    for i in range(spec["single"]):
        t0 = time.perf_counter()
        search(i, i + 1)
        single.append(time.perf_counter() - t0)
    batch = []
    for _ in range(spec["batch_repeats"]):
        t0 = time.perf_counter()
        search(0, spec["batch"])
        batch.append(time.perf_counter() - t0)
    nr = truth.shape[0]
    res = search(0, nr).ids
    hits = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(res, truth, strict=True)]
    mu, ml = torch.from_numpy(data.users)[res], torch.from_numpy(data.lengths)[res]
    violations = int(((mu == qu[:nr, None]) & (ml >= ql[:nr, None])).sum())
    ms = 1e3
    return {
        "config": spec["name"],
        "size": spec["n"],
        "bank": kind,
        "options": kwargs,
        "built_index": getattr(bank, "index_description", None),
        "build_seconds": round(adding + first_search, 2),
        "add_seconds": round(adding, 2),
        "first_search_seconds": round(first_search, 2),
        "data_drawing_seconds": round(drawing, 2),
        "rss_delta_mb": round(rss1 - rss0, 1),
        "peak_rss_delta_mb": round(peak - rss0, 1),
        "store_mb": None if (s := _store_mb(bank)) is None else round(s, 1),
        "p50_single_ms": round(float(np.percentile(single, 50)) * ms, 3),
        "p99_single_ms": round(float(np.percentile(single, 99)) * ms, 3),
        "p50_batch_ms": round(float(np.percentile(batch, 50)) * ms, 1),
        "p99_batch_ms": round(float(np.percentile(batch, 99)) * ms, 1),
        "recall_at_20": round(float(np.mean(hits)) / truth.shape[1], 4),
        "single_queries": spec["single"],
        "batch_repeats": spec["batch_repeats"],
        "rule_violations": violations,
    }


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs ``prepare`` or ``measure`` in a new process; its result."""
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not lines:
        raise SystemExit(f"{spec.get('name', 'prepare')} at {spec['n']} failed:\n{out.stderr}")
    return json.loads(lines[-1][7:])


def targets_of(rows: list[dict[str, Any]], size: int) -> dict[str, Any]:
    """The targets at ``size``, met by which Faiss configurations."""
    met = []
    for r in rows:
        if r["size"] == size and r["bank"] == "faiss" and "skipped" not in r:
            checks = {
                "p50_single_ms": r["p50_single_ms"] <= TARGETS["p50_single_ms"],
                "recall_at_20": r["recall_at_20"] >= TARGETS["recall_at_20"],
                "build_seconds": r["build_seconds"] <= TARGETS["build_seconds"],
                "rss_mb": r["rss_delta_mb"] <= TARGETS["rss_mb"],
            }
            met.append({"config": r["config"], **checks, "all_met": all(checks.values())})
    return {"size": size, "targets": TARGETS, "by_config": met}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--single", type=int, default=300, help="queries timed one at a time")
    p.add_argument("--batch", type=int, default=1024, help="queries of the timed batch")
    p.add_argument("--batch-repeats", type=int, default=10)
    p.add_argument("--recall-queries", type=int, default=500)
    p.add_argument("--queries-small", action="store_true", help="50 queries of each kind")
    p.add_argument("--threads", type=int, default=2, help="Faiss and torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--beauty", default=None, help="Beauty.txt (default: found as documented)")
    p.add_argument("--cache", default=None, help="folder for the exact results (default: temp)")
    p.add_argument("--note", default="", help="a remark stored with the results")
    p.add_argument("--out", default=str(RESULTS / "scale-bank.json"))
    p.add_argument("--resume", action="store_true", help="add rows to --out (same settings)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        spec = json.loads(args.child)
        print("RESULT " + json.dumps(prepare(spec) if spec["name"] is None else measure(spec)))
        return
    if args.queries_small:
        args.single = args.batch = args.recall_queries = 50
        args.batch_repeats = 3
    t_start = time.perf_counter()
    out = Path(args.out)
    names = ("k", "single", "batch", "batch_repeats", "recall_queries", "threads", "seed")
    settings = {name: getattr(args, name) for name in names}
    record: dict[str, Any] = {"benchmark": "scale-bank", "rows": [], "prepared": {}}
    if args.resume and out.is_file():
        record = json.loads(out.read_text())
        check_resume(record, settings, out)
        record["earlier_invocations"] = earlier_invocations(record)
    record["settings_of_rows"] = settings
    load = os.getloadavg()
    beauty = beauty_path(args.beauty)
    cache = Path(args.cache or tempfile.mkdtemp(prefix="scale-bank-truth-"))
    cache.mkdir(parents=True, exist_ok=True)
    base = {"k": args.k, "seed": args.seed, "beauty": str(beauty) if beauty else None}
    base |= {"batch": args.batch, "single": args.single, "recall": args.recall_queries}
    base["threads"] = args.threads
    for n in args.sizes:
        tag = hashlib.sha256(json.dumps({**base, "n": n}, sort_keys=True).encode()).hexdigest()
        truth = cache / f"truth-n{n}-{tag[:12]}.npz"
        if not truth.is_file():
            t0 = time.perf_counter()
            info = child({**base, "n": n, "name": None, "truth": str(truth)})
            info["seconds"] = round(time.perf_counter() - t0, 1)
            record["prepared"][str(n)] = info
            print(f"n={n:,}: exact top-{args.k} of {args.recall_queries} queries", info)
        for name in args.configs:
            kind, kwargs, largest, why = CONFIGS[name]
            row: dict[str, Any]
            if n > largest:
                row = {"config": name, "size": n, "bank": kind, "skipped": f"not run: {why}"}
            elif kind == "milvus" and (why := _no_milvus()):
                row = {"config": name, "size": n, "bank": kind, "skipped": why}
                print(why)
            else:
                spec = {**base, "n": n, "name": name, "kind": kind, "kwargs": kwargs}
                spec |= {"batch_repeats": args.batch_repeats, "truth": str(truth)}
                if kind == "milvus":  # about 100x slower per query: fewer timed queries
                    spec |= {"single": min(args.single, 50), "batch_repeats": 3}
                row = child(spec)
            row["load_average_at_start"] = [round(x, 2) for x in load]
            print(json.dumps(row))
            key = (row["config"], row["size"])
            record["rows"] = [r for r in record["rows"] if (r["config"], r["size"]) != key]
            record["rows"].append(row)
            record["rows"].sort(key=lambda r: (r["size"], list(CONFIGS).index(r["config"])))
            _write(out, record, args, load, beauty, time.perf_counter() - t_start)
    _write(out, record, args, load, beauty, time.perf_counter() - t_start)


def _no_milvus() -> str:
    """Why Milvus Lite cannot be measured here (``""``: it can)."""
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401

        from raserec_adapter.memory.milvus_bank import MilvusMemoryBank  # noqa: F401
    except ImportError as err:
        return f"not run: MilvusMemoryBank cannot be used here ({err})"
    return ""


def _write(
    out: Path, record: dict[str, Any], args: Any, load: Any, beauty: Any, wall: float
) -> None:
    sizes = sorted({r["size"] for r in record["rows"]})
    record["targets"] = [targets_of(record["rows"], n) for n in sizes]
    record["this_invocation"] = {
        "load_average_at_start": [round(x, 2) for x in load],
        "beauty": str(beauty) if beauty else "not found: the documented fallback distributions",
        "note": args.note,
    }
    write_json(out, {**record, **provenance(wall)})


if __name__ == "__main__":
    main()
