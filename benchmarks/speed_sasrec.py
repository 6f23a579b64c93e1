"""Speed of SASRec training and full-ranking evaluation on Beauty (issue "Foundation").

Measures, in one run on the same machine:

* one training epoch (cross-entropy, batch 256) with this library's pipeline: causal one-pass
  encoding of all prefixes, length-bucketed batches with padding trimmed (median of --epochs);
* the same epoch as a plain padded PyTorch loop: one prefix per row, every row padded to 50
  (timed on --baseline-batches batches, repeated 3 times, scaled to a whole epoch);
* one full-ranking evaluation of all test users (median of --eval-repeats).

``--device cuda`` runs all three on a GPU (the clock is read after the device has finished);
there a step encodes its anchor pass, second view and positives in one padded call, and
``--compare-separate`` also times the same epochs with the separate, length-grouped calls that
a CPU uses (``pretrain(..., fuse=False)``), in the same run;
``--lambda 0.1`` times stage 1 as RaSeRec trains it (cross-entropy + contrastive retrieval
loss) instead of cross-entropy alone. Results files other than the default CPU / cross-entropy
one carry the setting in their name (``speed-sasrec-lambda0.1-cuda.json``).

    python benchmarks/speed_sasrec.py [--data-dir ../shared/data] [--device cuda] [--lambda 0.1]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from _common import median, save, timed

from raserec_adapter import PretrainConfig, RunOptions, leave_one_out, load_dataset
from raserec_adapter.data.batching import gather_windows
from raserec_adapter.models import SASRec
from raserec_adapter.training import pretrain
from raserec_adapter.training.pretraining import evaluate_encoder


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def padded_epoch_seconds(
    model, split, batches: int, device: torch.device, batch_size: int = 256
) -> float:
    """Seconds for ``batches`` steps of the padded per-prefix loop."""
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    seqs, train = split.sequences, split.train
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train), generator=gen).numpy()
    model.train()
    _sync(device)
    t0 = time.perf_counter()
    for b in range(batches):
        rows = order[b * batch_size : (b + 1) * batch_size]
        lengths = train.lengths[rows].clip(max=50)
        ends = seqs.offsets[train.users[rows]] + train.lengths[rows]
        seq, lens = gather_windows(seqs, ends, lengths)
        seq = F.pad(seq, (0, 50 - seq.shape[1]))  # every input padded to 50
        h = model(seq.to(device), lens.to(device))
        target = torch.from_numpy(train.targets[rows]).to(device) - 1
        loss = F.cross_entropy(h @ model.item_embedding.weight[1:].t(), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    _sync(device)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="folder with Beauty.txt")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs of the library pipeline")
    p.add_argument("--baseline-batches", type=int, default=30, help="timed padded-loop batches")
    p.add_argument("--eval-repeats", type=int, default=5, help="timed full evaluations")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument(
        "--lambda",
        dest="retrieval_weight",
        type=float,
        default=0.0,
        help="weight of the contrastive retrieval loss in the timed epochs (0: cross-entropy)",
    )
    p.add_argument(
        "--compare-separate",
        action="store_true",
        help="also time the epochs with separate encoder calls per step (fuse=False)",
    )
    args = p.parse_args()
    device = torch.device(args.device)
    t_start = time.perf_counter()
    split = leave_one_out(load_dataset("beauty", data_dir=args.data_dir))
    n_batches = math.ceil(len(split.train) / 256)

    def stage1_epochs(fuse: bool | None) -> tuple[list[float], SASRec]:
        torch.manual_seed(0)
        model = SASRec(split.sequences.num_items)
        res = pretrain(
            model,
            split,
            PretrainConfig(
                epochs=args.epochs,
                patience=args.epochs + 1,
                retrieval_weight=args.retrieval_weight,
            ),
            device=device,
            show_progress=False,
            run=RunOptions(fuse=fuse),
        )
        return [h["train_seconds"] for h in res.history], model

    ours, model = stage1_epochs(None)  # the default: fused steps on an accelerator
    separate = stage1_epochs(False)[0] if args.compare_separate else []

    torch.manual_seed(0)
    base_model = SASRec(split.sequences.num_items)
    base_parts = [
        padded_epoch_seconds(base_model, split, args.baseline_batches, device) for _ in range(3)
    ]
    base = [s * n_batches / args.baseline_batches for s in base_parts]

    model.eval()
    # evaluate_encoder returns Python floats, so each call ends after the device has finished
    evals = timed(lambda: evaluate_encoder(model, split, "test", device=device), args.eval_repeats)

    rec = {
        "benchmark": "speed-sasrec",
        "dataset": "beauty",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "retrieval_weight": args.retrieval_weight,
        "train_pairs": len(split.train),
        "epoch_seconds_ours": ours,
        "epoch_seconds_ours_median": median(ours),
        "fused_step": device.type != "cpu",
        "epoch_seconds_separate_calls": separate or None,
        "epoch_seconds_separate_calls_median": median(separate) if separate else None,
        "epoch_seconds_padded_loop_extrapolated": base,
        "epoch_seconds_padded_loop_median": median(base),
        "padded_loop_timed_batches": args.baseline_batches,
        "speedup_vs_padded_loop": median(base) / median(ours),
        "eval_seconds_all_users": evals,
        "eval_seconds_median": median(evals),
        "eval_users": len(split.test),
        "targets": {"epoch_seconds": 25.0, "eval_seconds": 5.0},
    }
    name = "speed-sasrec"
    if args.retrieval_weight > 0:
        name += f"-lambda{args.retrieval_weight:g}"
    if device.type != "cpu":
        name += f"-{device.type}"
    path = save(name, rec, time.perf_counter() - t_start)
    target = "  [target <= 25 s]" if args.retrieval_weight == 0 and device.type == "cpu" else ""
    loss = "cross-entropy" if args.retrieval_weight == 0 else "cross-entropy + retrieval loss"
    print(f"one training epoch, {loss} (median of {len(ours)}): {median(ours):.1f} s{target}")
    print(
        f"padded per-prefix loop, cross-entropy, same run (median, {args.baseline_batches} of "
        f"{n_batches} batches timed, scaled): {median(base):.1f} s"
    )
    print(f"speed-up vs padded loop: {median(base) / median(ours):.1f}x")
    if separate:
        print(
            f"same epochs with separate encoder calls per step (median of {len(separate)}): "
            f"{median(separate):.1f} s; one fused call is {median(separate) / median(ours):.1f}x "
            "faster"
        )
    print(
        f"full-ranking evaluation of {len(split.test)} users (median of {len(evals)}): "
        f"{median(evals):.2f} s  [target <= 5 s]"
    )
    print(f"written to {path}")


if __name__ == "__main__":
    main()
