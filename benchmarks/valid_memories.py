"""What the validation pairs in the test bank carry: the RAM's test metrics with and without them.

The protocol (SPEC section 3) tests with a bank of every training pair plus every user's
validation pair (``<training part, validation item>``). The validation pair is the most
recent interaction of each user, one step before the test target. This script reads finished
runs of an example (``<run>/encoder.pt`` and the augmenter saved in ``<run>/augmenter``) and,
with the trained RAM left as it is, ranks the test targets:

* ``protocol``: the protocol's test bank (training + validation pairs);
* ``train_only``: a bank of the training pairs alone, as RAFT's training and validation saw it;

and the frozen encoder alone ("plain") for reference. It also reports the share of the K
memories retrieved for the test queries that are validation pairs (``valid_share``), the
share that are the test user's own validation pair (``own_valid_share``: admissible, since
its prefix is shorter than the test query's; its value is the embedding of the last item of
the test input, not of the target) and the share of test users who retrieve their own.

    python benchmarks/valid_memories.py --backbone sasrec --dataset beauty \\
        --run runs/beauty-sasrec-raserec-seed0 \\
        --out benchmarks/results/valid-memories-beauty-sasrec.json
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (
    each_run,
    open_run_analysis,
    provenance,
    run_analysis_parser,
    run_provenance,
    write_json,
)

from raserec_adapter import RetrievalAugmenter
from raserec_adapter.data import LeaveOneOutSplit
from raserec_adapter.evaluation import RankingMetrics

METRICS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10")


def metrics_of(ranks: torch.Tensor) -> dict[str, float]:
    m = RankingMetrics()
    m.update(ranks)
    return {k: v for k, v in m.compute().items() if k in METRICS}


def retrieved_shares(aug: RetrievalAugmenter, split: LeaveOneOutSplit) -> dict[str, float]:
    """Shares of the test queries' K memories that are validation pairs (any user's, and the
    query user's own), under the protocol's test bank (validation pairs after training pairs)."""
    bank = aug.bank
    n_train = len(split.train)
    if len(bank) != n_train + len(split.valid):
        raise SystemExit(
            f"the test bank holds {len(bank)} memories, not the {n_train} training + "
            f"{len(split.valid)} validation pairs (BankConfig.prefix_lengths?): they cannot be "
            "told apart"
        )
    h = aug.encode(split.sequences, split.test)
    users = torch.from_numpy(split.test.users)
    found = bank.search(h, aug.config.ram.k, users, torch.from_numpy(split.test.lengths))
    ids = found.ids
    is_valid = ids >= n_train
    # validation pair j (bank id n_train + j) belongs to split.valid.users[j]
    valid_users = torch.from_numpy(split.valid.users)
    own = is_valid & (valid_users[(ids - n_train).clamp(min=0)] == users[:, None])
    return {
        "valid_share": float(is_valid.float().mean()),
        "own_valid_share": float(own.float().mean()),
        "users_with_own_valid": float(own.any(1).float().mean()),
    }


def analyse(
    aug: RetrievalAugmenter, split: LeaveOneOutSplit, args: Any, backbone: Any
) -> dict[str, Any]:
    """Test metrics of one finished run: plain, the protocol's bank, the training pairs alone.

    ``aug`` holds the protocol's test bank. The training-pairs bank is the one RAFT trained and
    validated with (``build_bank(split)``, the same keys in the same order), saved and loaded
    back: a loaded bank is used as it is, so the test then retrieves from it alone (the library
    logs a warning that this is not the protocol, which is the point here).
    """
    protocol = aug.ranks(split, "test", protocol=args.protocol, device=args.device)
    shares = retrieved_shares(aug, split)
    aug.build_bank(split, device=args.device, show_progress=False)
    assert len(aug.bank) == len(split.train)
    with tempfile.TemporaryDirectory() as tmp:
        aug.save(Path(tmp) / "train-bank")
        model = aug.encoder.module
        wrap = backbone.augmenter_kwargs(model)
        train_bank = RetrievalAugmenter.load(
            model, Path(tmp) / "train-bank", device=args.device, **wrap
        )
    train_only = train_bank.ranks(
        split, "test", protocol=args.protocol, augmented=True, device=args.device
    )["raserec"]
    return {
        "plain": metrics_of(protocol["plain"]),
        "protocol": metrics_of(protocol["raserec"]),
        "train_only": metrics_of(train_only),
        "retrieved": shares,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = run_analysis_parser(__doc__.splitlines()[0]).parse_args(argv)
    t0 = time.perf_counter()
    backbone, ex_args, split = open_run_analysis(args)
    per_run = []
    for run, aug in each_run(args, backbone, ex_args, split):
        aug.build_bank(split, "test", device=args.device, show_progress=False)
        per_run.append(analyse(aug, split, args, backbone))
        logging.info("%s: %s", run, per_run[-1])
    mean = {
        v: {k: statistics.fmean(r[v][k] for r in per_run) for k in per_run[0][v]}
        for v in per_run[0]
    }
    record: dict[str, Any] = {
        "what": "test metrics with the protocol's bank (training + validation pairs) and with "
        "the training pairs alone, the same trained RAM; the frozen encoder for reference",
        "dataset": args.dataset,
        "backbone": args.backbone,
        "protocol": args.protocol,
        "runs": [str(r) for r in args.run],
        "run_provenance": run_provenance([str(r) for r in args.run]),
        "per_run": per_run,
        "mean": mean,
    }
    record.update(provenance(time.perf_counter() - t0))
    write_json(Path(args.out), record)
    print(f"{'bank':>12}  " + "  ".join(f"{m:>8}" for m in METRICS))
    for v in ("plain", "protocol", "train_only"):
        print(f"{v:>12}  " + "  ".join(f"{mean[v][m]:8.4f}" for m in METRICS))
    r = mean["retrieved"]
    print(
        f"test queries' memories that are validation pairs: {r['valid_share']:.1%} (the user's "
        f"own: {r['own_valid_share']:.1%}; users retrieving their own: "
        f"{r['users_with_own_valid']:.1%})"
    )
    return record


if __name__ == "__main__":
    main()
