"""Small Faiss measurements for the "Choosing a Faiss index" page.

Builds each index over ``--n`` synthetic unit vectors (a Gaussian mixture, so that clusters
exist as they do in real bank keys) with inner-product metric, as ``FaissMemoryBank`` does, and
records per index: build seconds (train + add), search seconds for ``--queries`` queries of
top-``--k``, recall@20 against exact search, and the serialized index size per vector.
The result is a JSON file that ``docs/hooks.py`` renders into the page.

    OMP_NUM_THREADS=1 python docs/faiss_bench.py            # writes docs/measurements/...
    python docs/faiss_bench.py --n 2000 --queries 50 --out /tmp/f.json   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from raserec_adapter.experiments.reporting import machine_info

HERE = Path(__file__).resolve().parent

# (factory string, nprobe for IVF indexes; 0 = leave the index's default search setting).
# FaissMemoryBank sets nprobe from BankConfig.nprobe and leaves HNSW's efSearch at its default.
INDEXES: list[tuple[str, int]] = [
    ("Flat", 0),
    ("IVF128,Flat", 1),
    ("IVF1024,Flat", 8),
    ("IVF256,PQ16", 8),
    ("IVF256,PQ16np", 8),
    ("HNSW32,Flat", 0),
]


def unit_vectors(n: int, d: int, centers: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` L2-normalised float32 vectors drawn around ``centers`` random centres."""
    c = rng.standard_normal((centers, d)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    faiss.normalize_L2(x)
    return x


def set_search_param(index: faiss.Index, nprobe: int) -> str:
    """Sets ``nprobe`` of an IVF index; describes the search setting in effect."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        ivf.nprobe = nprobe or ivf.nprobe
        return f"nprobe={ivf.nprobe}"
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None:
        return f"efSearch={hnsw.efSearch} (default)"
    return "-"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50_000, help="vectors in the index")
    p.add_argument("--d", type=int, default=64, help="dimension")
    p.add_argument("--queries", type=int, default=1000, help="queries timed")
    p.add_argument("--k", type=int, default=80, help="neighbours per query (K=20 x overfetch 4)")
    p.add_argument("--threads", type=int, default=1, help="Faiss OpenMP threads")
    p.add_argument(
        "--indexes",
        nargs="+",
        choices=[f for f, _ in INDEXES],
        default=[f for f, _ in INDEXES],
        help="which of the indexes to measure",
    )
    p.add_argument("--note", default="", help="a remark stored with the results")
    p.add_argument("--out", default=str(HERE / "measurements" / "faiss-indexes.json"))
    args = p.parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = unit_vectors(args.n + args.queries, args.d, 1000, rng)
    base, queries = x[: args.n], x[args.n :]
    exact = faiss.IndexFlatIP(args.d)
    exact.add(base)
    _, truth = exact.search(queries, 20)
    rows = []
    for factory, param in [(f, s) for f, s in INDEXES if f in args.indexes]:
        index = faiss.index_factory(args.d, factory, faiss.METRIC_INNER_PRODUCT)
        t0 = time.perf_counter()
        if not index.is_trained:
            index.train(base)
        index.add(base)
        build = time.perf_counter() - t0
        setting = set_search_param(index, param)
        t0 = time.perf_counter()
        _, found = index.search(queries, args.k)
        search = time.perf_counter() - t0
        recall = np.mean(
            [len(set(f[:20]) & set(t)) / 20 for f, t in zip(found, truth, strict=True)]
        )
        size = faiss.serialize_index(index).nbytes
        rows.append(
            {
                "index": factory,
                "search_setting": setting,
                "build_seconds": round(build, 3),
                "search_seconds": round(search, 4),
                "us_per_query": round(search / args.queries * 1e6, 1),
                "recall_at_20": round(float(recall), 3),
                "index_bytes_per_vector": round(size / args.n, 1),
            }
        )
        print(rows[-1], flush=True)
    record = {
        "what": "Faiss index build/search on synthetic unit vectors (inner product)",
        "n": args.n,
        "d": args.d,
        "queries": args.queries,
        "k": args.k,
        "threads": args.threads,
        "rows": rows,
        "note": args.note,
        "command": " ".join(
            shlex.quote(a) for a in ["python", "docs/faiss_bench.py", *sys.argv[1:]]
        ),
        "machine": {
            "cpu": machine_info()["cpu"],
            "cpu_cores": os.cpu_count(),
            "faiss": faiss.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
