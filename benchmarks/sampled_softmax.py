"""Step time and peak memory of SASRec's next-item loss at a large catalogue: full against
sampled softmax, in one run.

Each loss runs in a fresh process (so that its peak resident memory is its own): a SASRec
(d = 64, 50 positions) over --items synthetic items takes --steps Adam steps on batches of
--batch uniformly drawn sequences (lengths 1..50), the first one a warm-up. Reported: the
median step time, the process's peak resident memory, and their ratios against the full
softmax of the same run.

    python benchmarks/sampled_softmax.py [--items 1000000] [--batch 256] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from _common import median, peak_rss_mb, save

from raserec_adapter.models import SASRec
from raserec_adapter.training.sampled_softmax import SampledSoftmax

LOSSES = {
    "full": "full softmax over every item",
    "sampled-uniform": "sampled softmax, 256 uniform negatives",
    "sampled-mixed": "sampled softmax, in-batch + 256 uniform negatives",
}


def one(loss_name: str, items: int, batch: int, steps: int, threads: int) -> dict[str, float]:
    """Runs --steps steps of one loss in this process; returns its timings and peak memory."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = SASRec(num_items=items, hidden_size=64, max_len=50)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sampled = SampledSoftmax(items, negatives=256, in_batch=loss_name == "sampled-mixed")
    g = torch.Generator().manual_seed(0)
    before = peak_rss_mb()
    times = []
    for _ in range(steps):
        lengths = torch.randint(1, 51, (batch,), generator=g)
        seq = torch.randint(1, items + 1, (batch, 50), generator=g)
        seq[torch.arange(50)[None, :] >= lengths[:, None]] = 0
        targets = torch.randint(1, items + 1, (batch,), generator=g)
        t0 = time.perf_counter()
        h = model(seq, lengths)
        table = model.item_embedding.weight
        if loss_name == "full":
            loss = F.cross_entropy(h @ table[1:].t(), targets - 1)
        else:
            loss = sampled.loss(h, table, targets, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return {
        "step_seconds": round(median(times[1:]), 4),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_before_steps_mb": round(before, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=6, help="steps per loss (the first: warm-up)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="sampled-softmax-1m-items", help="results file name")
    p.add_argument("--one", choices=list(LOSSES), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.items, args.batch, args.steps, args.threads)))
        return
    t_start = time.perf_counter()
    record: dict[str, object] = {k: v for k, v in vars(args).items() if k != "one"}
    record["model"] = "SASRec, d = 64, 50 positions, 2 blocks (the library's defaults)"
    rows = {}
    for name, what in LOSSES.items():
        cmd = [sys.executable, __file__, "--one", name, "--items", str(args.items)]
        cmd += ["--batch", str(args.batch), "--steps", str(args.steps)]
        cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows[name] = {"loss": what, **json.loads(out.strip().splitlines()[-1])}
        print(name, rows[name], flush=True)
    full = rows["full"]
    for r in rows.values():
        r["step_vs_full"] = round(r["step_seconds"] / full["step_seconds"], 3)
        r["peak_rss_vs_full"] = round(r["peak_rss_mb"] / full["peak_rss_mb"], 3)
    record["losses"] = rows
    print(f"wrote {save(args.out, record, time.perf_counter() - t_start)}")


if __name__ == "__main__":
    main()
