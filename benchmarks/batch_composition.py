"""Who shares a pre-training batch under each ``PretrainConfig.batching``?

For one epoch of stage-1 batches on a dataset (no training), counts per batch: training pairs,
distinct users, and for an average anchor how many other anchors of the batch belong to the
same user or have the same target. Those others are the anchor's in-batch InfoNCE negatives
(the same-target ones are false negatives), so this is what the batching changes about the
contrastive loss.

    python benchmarks/batch_composition.py [--dataset beauty] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import numpy as np
from _common import save

from raserec_adapter import leave_one_out, load_dataset
from raserec_adapter.config import BATCHING
from raserec_adapter.data import (
    LeaveOneOutSplit,
    causal_windows,
    iter_batches,
    iter_windows,
    window_pair_index,
)


def batch_pairs(
    split: LeaveOneOutSplit, batching: str, size: int, seed: int
) -> Iterator[np.ndarray]:
    """Rows of ``split.train`` in each batch of one epoch, as ``pretrain`` draws them."""
    if batching == "windows":
        w = causal_windows(split)
        for b in iter_windows(split.sequences, w, size, True, seed):
            rp = (b.targets > 0).nonzero().numpy()
            yield window_pair_index(w, b.index.numpy()[rp[:, 0]], rp[:, 1])
        return
    bucket = batching == "bucketed"
    for b in iter_batches(split.sequences, split.train, size, split.max_len, True, seed, bucket):
        yield b.index.numpy()


def others(keys: np.ndarray) -> float:
    """Mean over anchors of the number of other anchors with the same key."""
    _, counts = np.unique(keys, return_counts=True)
    return float((counts * (counts - 1)).sum() / len(keys))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="folder with the dataset files")
    p.add_argument("--dataset", default="beauty")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=1, help="batch-order seed (pretrain: seed + epoch)")
    args = p.parse_args()
    t_start = time.perf_counter()
    split = leave_one_out(load_dataset(args.dataset, data_dir=args.data_dir))
    train = split.train
    rows = {}
    for batching in BATCHING:
        stats = [
            (
                len(b),
                len(np.unique(train.users[b])),
                others(train.users[b]),
                others(train.targets[b]),
            )
            for b in batch_pairs(split, batching, args.batch_size, args.seed)
        ]
        pairs, users, same_user, same_target = np.mean(stats, axis=0)
        rows[batching] = {
            "batches": len(stats),
            "pairs_per_batch": pairs,
            "users_per_batch": users,
            "same_user_others_per_anchor": same_user,
            "same_target_others_per_anchor": same_target,
        }
        print(
            f"{batching:9s} {len(stats)} batches: {pairs:.1f} pairs and {users:.1f} users per "
            f"batch; per anchor {same_user:.2f} other anchors of its user, {same_target:.3f} with "
            "its target"
        )
    rec = {
        "benchmark": "batch-composition",
        "dataset": args.dataset,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "batching": rows,
    }
    path = save(f"batch-composition-{args.dataset}", rec, time.perf_counter() - t_start)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
