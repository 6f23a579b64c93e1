"""Speed of SASRec training and full-ranking evaluation on Beauty (issue "Foundation").

Measures, in one run on the same machine:

* one training epoch (cross-entropy, batch 256) with this library's pipeline: causal one-pass
  encoding of all prefixes, length-bucketed batches with padding trimmed (median of --epochs);
* the same epoch as a plain padded PyTorch loop: one prefix per row, every row padded to 50
  (timed on --baseline-batches batches, repeated 3 times, scaled to a whole epoch);
* one full-ranking evaluation of all test users (median of --eval-repeats).

    python benchmarks/speed_sasrec.py [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from _common import median, save, timed

from examples.models import SASRec
from raserec_adapter import PretrainConfig, evaluate_encoder, leave_one_out, load_dataset, pretrain
from raserec_adapter.data import gather_windows


def padded_epoch_seconds(model, split, batches: int, batch_size: int = 256) -> float:
    """Seconds for ``batches`` steps of the padded per-prefix loop."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    seqs, train = split.sequences, split.train
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train), generator=gen).numpy()
    model.train()
    t0 = time.perf_counter()
    for b in range(batches):
        rows = order[b * batch_size : (b + 1) * batch_size]
        lengths = train.lengths[rows].clip(max=50)
        ends = seqs.offsets[train.users[rows]] + train.lengths[rows]
        seq, lens = gather_windows(seqs, ends, lengths)
        seq = F.pad(seq, (0, 50 - seq.shape[1]))  # every input padded to 50
        h = model(seq, lens)
        loss = F.cross_entropy(
            h @ model.item_embedding.weight[1:].t(), torch.from_numpy(train.targets[rows]) - 1
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="folder with Beauty.txt")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs of the library pipeline")
    p.add_argument("--baseline-batches", type=int, default=30, help="timed padded-loop batches")
    p.add_argument("--eval-repeats", type=int, default=5, help="timed full evaluations")
    args = p.parse_args()
    t_start = time.perf_counter()
    split = leave_one_out(load_dataset("beauty", data_dir=args.data_dir))
    n_batches = math.ceil(len(split.train) / 256)

    torch.manual_seed(0)
    model = SASRec(split.sequences.num_items)
    res = pretrain(
        model,
        split,
        PretrainConfig(epochs=args.epochs, patience=args.epochs + 1, retrieval_weight=0.0),
        show_progress=False,
    )
    ours = [h["train_seconds"] for h in res.history]

    torch.manual_seed(0)
    base_model = SASRec(split.sequences.num_items)
    base_parts = [padded_epoch_seconds(base_model, split, args.baseline_batches) for _ in range(3)]
    base = [s * n_batches / args.baseline_batches for s in base_parts]

    model.eval()
    evals = timed(lambda: evaluate_encoder(model, split, "test"), args.eval_repeats)

    rec = {
        "benchmark": "speed-sasrec",
        "dataset": "beauty",
        "train_pairs": len(split.train),
        "epoch_seconds_ours": ours,
        "epoch_seconds_ours_median": median(ours),
        "epoch_seconds_padded_loop_extrapolated": base,
        "epoch_seconds_padded_loop_median": median(base),
        "padded_loop_timed_batches": args.baseline_batches,
        "speedup_vs_padded_loop": median(base) / median(ours),
        "eval_seconds_all_users": evals,
        "eval_seconds_median": median(evals),
        "eval_users": len(split.test),
        "targets": {"epoch_seconds": 25.0, "eval_seconds": 5.0},
    }
    path = save("speed-sasrec", rec, time.perf_counter() - t_start)
    print(f"one training epoch (median of {len(ours)}): {median(ours):.1f} s  [target <= 25 s]")
    print(
        f"padded per-prefix loop, same run (median, {args.baseline_batches} of {n_batches} "
        f"batches timed, scaled): {median(base):.1f} s"
    )
    print(f"speed-up vs padded loop: {median(base) / median(ours):.1f}x")
    print(
        f"full-ranking evaluation of {len(split.test)} users (median of {len(evals)}): "
        f"{median(evals):.2f} s  [target <= 5 s]"
    )
    print(f"written to {path}")


if __name__ == "__main__":
    main()
