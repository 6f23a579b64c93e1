"""Scale of the data pipeline: memory and time for tens of millions of interactions.

Builds a synthetic dataset (default 2M users, ~20M interactions, 1M items), writes and re-reads
it as a ``user item item ...`` text file and as the compact ``.npz``, and times the leave-one-out
split, one epoch of causal-window batches and one pass of padding-free batches over the
validation prefixes.

    python benchmarks/scale_data.py [--users 2000000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import peak_rss_mb, save

from raserec_adapter import Sequences, leave_one_out
from raserec_adapter.data import iter_batches, read_sequences_txt
from raserec_adapter.data.batching import causal_windows, iter_windows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=2_000_000, help="synthetic users")
    p.add_argument("--items", type=int, default=1_000_000, help="synthetic items")
    p.add_argument("--mean-length", type=float, default=10.0, help="mean sequence length")
    args = p.parse_args()
    t_start = time.perf_counter()
    rng = np.random.default_rng(0)
    if args.mean_length <= 3:
        p.error(f"--mean-length must be above 3 (the shortest sequence), got {args.mean_length}")
    # 2 + geometric (which starts at 1): lengths from 3, mean --mean-length (before the cap)
    lengths = np.minimum(2 + rng.geometric(1 / (args.mean_length - 2), args.users), 500)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = rng.integers(1, args.items + 1, int(offsets[-1]), dtype=np.int64)
    seqs = Sequences(items, offsets, args.items)
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "data.npz"
        t = time.perf_counter()
        seqs.save(npz)
        timings["save_npz_s"] = time.perf_counter() - t
        t = time.perf_counter()
        seqs = Sequences.load(npz)
        timings["load_npz_s"] = time.perf_counter() - t
        txt = Path(tmp) / "data.txt"
        with txt.open("w") as f:
            for u in range(seqs.num_users):
                f.write(f"{u + 1} " + " ".join(map(str, seqs[u].tolist())) + "\n")
        t = time.perf_counter()
        seqs = read_sequences_txt(txt)
        timings["read_txt_s"] = time.perf_counter() - t
    t = time.perf_counter()
    split = leave_one_out(seqs)
    timings["leave_one_out_s"] = time.perf_counter() - t
    t = time.perf_counter()
    windows = causal_windows(split)
    timings["causal_windows_s"] = time.perf_counter() - t
    t = time.perf_counter()
    n_pad = n_real = 0
    for b in iter_windows(seqs, windows, 4096, shuffle=True, seed=0):
        n_pad += b.item_seq.numel()
        n_real += int(b.lengths.sum())
    timings["one_epoch_of_window_batches_s"] = time.perf_counter() - t
    t = time.perf_counter()
    n_prefix_pad = n_prefix_real = 0
    for b in iter_batches(seqs, split.valid, 4096):
        n_prefix_pad += b.item_seq.numel()
        n_prefix_real += int(b.lengths.sum())
    timings["one_pass_of_validation_batches_s"] = time.perf_counter() - t
    record = {
        "benchmark": "scale-data",
        "users": seqs.num_users,
        "items": seqs.num_items,
        "interactions": seqs.num_interactions,
        "train_pairs": len(split.train),
        "compact_storage_mb": (seqs.items.nbytes + seqs.offsets.nbytes) / 2**20,
        "padded_storage_mb_at_T50": seqs.num_users * 50 * 8 / 2**20,
        "window_tokens_real_share": n_real / n_pad,
        "validation_tokens_real_share": n_prefix_real / n_prefix_pad,
        "peak_rss_mb": peak_rss_mb(),
        **{k: round(v, 2) for k, v in timings.items()},
    }
    save("scale-data", record, time.perf_counter() - t_start)
    for k, v in record.items():
        print(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
    main()
