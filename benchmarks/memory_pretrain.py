"""Peak resident memory of one stage-1 epoch: per-step loss tensors kept vs a running mean.

Stage 1 (and RAFT) read their losses from the device once per epoch. Up to this script's
commit they kept every step's loss tensor in a list until the epoch ended; on a CPU resident
memory then grows by about a step's activations per step (most likely each kept scalar sits in
a hole that a freed activation left in glibc's heap, so the next step's activations take fresh
memory). :class:`raserec_adapter.training.state.RunningMean` adds the losses in place instead.

Each arm runs in its own process (the allocator's state is per process), ``--repeats`` times,
alternating: ``list`` patches ``RunningMean.add`` to also keep every step's loss tensor in a
list, as the earlier code did; ``running`` is the library as it is. Every run trains one epoch
of an example backbone (default BERT4Rec with ``--objective next-item``, the example's
settings) on the first ``--users`` users of a dataset, scoring against the whole item table,
and reports its peak resident memory (``ru_maxrss``, Linux's ``VmHWM``) above the memory it
had before training, and the epoch's wall time.

Example:
    python benchmarks/memory_pretrain.py --dataset sports --data-dir ../shared/data --users 8000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, median, peak_rss_mb, save


def _current_rss_mb() -> float:
    """Resident memory now (``peak_rss_mb`` gives only the high-water mark); Linux only."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("/proc/self/status has no VmRSS: this script needs Linux")


def child(args: argparse.Namespace) -> None:
    """One measured epoch in this process; prints one JSON line."""
    import torch

    from raserec_adapter import PretrainConfig, Sequences, leave_one_out, load_dataset
    from raserec_adapter.training import pretrain
    from raserec_adapter.training import state as pt

    torch.set_num_threads(args.threads)
    from raserec_adapter.experiments import BACKBONES, parse_args

    ex_args = parse_args(args.backbone, [])
    full = load_dataset(args.dataset, data_dir=args.data_dir)
    users = [full[u].tolist() for u in range(min(args.users, full.num_users))]
    seqs = Sequences.from_lists(users, num_items=full.num_items)
    split = leave_one_out(seqs, ex_args.max_len)
    torch.manual_seed(0)
    encoder = BACKBONES[args.backbone].build(full.num_items, ex_args)
    kept: list[torch.Tensor] = []
    if args.arm == "list":
        add = pt.RunningMean.add

        def add_and_keep(self: pt.RunningMean, loss: torch.Tensor) -> None:
            kept.append(loss.detach())  # what the list of per-step losses held
            add(self, loss)

        pt.RunningMean.add = add_and_keep  # type: ignore[method-assign]
    cfg = PretrainConfig(epochs=1, max_len=ex_args.max_len, seed=0, batching=args.batching)
    before = _current_rss_mb()
    t0 = time.perf_counter()
    pretrain(encoder, split, cfg, show_progress=False)  # next-item cross-entropy
    seconds = time.perf_counter() - t0
    peak = peak_rss_mb()
    print(
        json.dumps(
            {
                "arm": args.arm,
                "rss_before_mb": before,
                "peak_mb": peak,
                "growth_mb": peak - before,
                "epoch_seconds": seconds,
                "train_pairs": len(split.train),
                "steps_kept": len(kept),
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="sports")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--backbone", choices=["sasrec", "gru4rec", "bert4rec"], default="bert4rec")
    p.add_argument("--batching", choices=["windows", "random"], default="windows")
    p.add_argument("--users", type=int, default=8000, help="first users of the dataset trained on")
    p.add_argument("--repeats", type=int, default=3, help="runs per arm, alternating")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="results name (default derived from the options)")
    p.add_argument("--arm", choices=["list", "running"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.users < 1 or args.repeats < 1 or args.threads < 1:
        p.error("--users, --repeats and --threads must be positive")
    if args.arm:
        child(args)
        return
    t_start = time.perf_counter()
    rows: dict[str, list[dict[str, float]]] = {"list": [], "running": []}
    for r in range(args.repeats):
        for arm in ("list", "running"):
            cmd = [sys.executable, __file__, *sys.argv[1:], "--arm", arm]
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"the {arm} run failed:\n{out.stderr[-3000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows[arm].append(row)
            print(
                f"repeat {r} {arm:8s} peak growth {row['growth_mb']:8.0f} MB, "
                f"epoch {row['epoch_seconds']:.1f} s",
                flush=True,
            )
    summary = {
        arm: {
            "growth_mb_median": median([x["growth_mb"] for x in rs]),
            "peak_mb_median": median([x["peak_mb"] for x in rs]),
            "epoch_seconds_median": median([x["epoch_seconds"] for x in rs]),
        }
        for arm, rs in rows.items()
    }
    ratio = summary["list"]["growth_mb_median"] / max(summary["running"]["growth_mb_median"], 1.0)
    speed = summary["list"]["epoch_seconds_median"] / summary["running"]["epoch_seconds_median"]
    print(
        f"median peak growth: list {summary['list']['growth_mb_median']:.0f} MB, running mean "
        f"{summary['running']['growth_mb_median']:.0f} MB ({ratio:.1f}x less); epoch "
        f"{summary['list']['epoch_seconds_median']:.1f} s vs "
        f"{summary['running']['epoch_seconds_median']:.1f} s ({speed:.2f}x)"
    )
    name = args.out or f"memory-pretrain-{args.dataset}-{args.backbone}"
    record = {
        "benchmark": "memory_pretrain",
        "dataset": args.dataset,
        "backbone": args.backbone,
        "batching": args.batching,
        "users": args.users,
        "repeats": args.repeats,
        "threads": args.threads,
        "rows": rows,
        "summary": summary,
        "growth_ratio_list_over_running": ratio,
        "epoch_speedup_running_over_list": speed,
    }
    print(save(name, record, time.perf_counter() - t_start))


if __name__ == "__main__":
    main()
