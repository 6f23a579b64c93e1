"""Cost of adding memories to a built bank (``RetrievalAugmenter.add_memories``' bank side).

A bank of Beauty's size (131,413 memories, d = 64, seeded random keys) answers one query; then
memories arrive a few at a time, each addition followed by a query. Medians over --repeats
rounds, in one run:

* ``search``: one query, nothing added (the baseline);
* ``add + search``: add --batch memories, then one query. A Faiss IVF bank files them under its
  trained lists; the exact PyTorch bank appends them;
* ``add + retrain + search`` (Faiss): the same with the index trained again from scratch before
  the query, what every addition cost before incremental adds.

    python benchmarks/speed_add_memories.py [--repeats 20] [--batch 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from _common import median, save

from raserec_adapter import FaissMemoryBank, TorchMemoryBank

SIZE, DIM = 131_413, 64


def rounds(bank, extra: torch.Tensor, batch: int, repeats: int, before: Callable[[], None]):
    """Median seconds of [add `batch` memories, `before()`, search one query] over `repeats`."""
    q = torch.randn(1, DIM, generator=torch.Generator().manual_seed(1))
    out = []
    for r in range(repeats):
        rows = slice(r * batch, (r + 1) * batch)
        users = torch.arange(rows.start, rows.stop) + SIZE
        t0 = time.perf_counter()
        if batch:
            bank.add(extra[rows], extra[rows], users, torch.ones(batch, dtype=torch.long))
        before()
        bank.search(q, 20)
        out.append(time.perf_counter() - t0)
    return median(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--batch", type=int, default=2, help="memories per addition")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--note", default="", help="free text recorded with the results (load, ...)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(SIZE, DIM, generator=g)
    extra = torch.randn(args.repeats * args.batch, DIM, generator=g)
    users, lengths = torch.arange(SIZE), torch.ones(SIZE, dtype=torch.long)
    record: dict[str, object] = {"bank_size": SIZE, "dim": DIM, **vars(args)}
    if not args.note:
        del record["note"]
    for name, make in (
        ("faiss_ivf", lambda: FaissMemoryBank(DIM, num_threads=args.threads)),
        ("torch_exact", lambda: TorchMemoryBank(DIM)),
    ):
        bank = make()
        bank.add(keys, keys, users, lengths)
        bank.search(keys[:1], 20)  # builds the index
        timings = {
            "search_ms": rounds(bank, extra, 0, args.repeats, lambda: None),
            "add_search_ms": rounds(bank, extra, args.batch, args.repeats, lambda: None),
        }
        if isinstance(bank, FaissMemoryBank):
            fresh = make()
            fresh.add(keys, keys, users, lengths)
            fresh.search(keys[:1], 20)
            timings["add_retrain_search_ms"] = rounds(
                fresh, extra, args.batch, args.repeats, fresh._invalidate
            )
        timings = {k: round(v * 1000, 3) for k, v in timings.items()}
        ratios = {
            k.replace("_ms", "_vs_search"): round(v / timings["search_ms"], 1)
            for k, v in timings.items()
            if k != "search_ms"
        }
        record[name] = {**timings, **ratios}
        print(name, timings, ratios)
    print(f"wrote {save('bank-add-speed', record, time.perf_counter() - t_start)}")


if __name__ == "__main__":
    main()
