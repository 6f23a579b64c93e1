"""Does masking same-target in-batch "negatives" help the contrastive pre-training?

Trains SASRec on Beauty with L_rec + 0.1 * L_ret for --epochs epochs twice from the same seed,
once as the released code does (same-target sequences stay negatives) and once with them masked,
and records the validation metrics after every epoch. A short-schedule probe: it compares the
learning curves, not converged models.

    python benchmarks/false_negatives.py [--epochs 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import save

from examples.models import SASRec
from raserec_adapter import PretrainConfig, leave_one_out, load_dataset, pretrain


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="folder with Beauty.txt")
    p.add_argument("--epochs", type=int, default=8, help="pre-training epochs per variant")
    p.add_argument("--seed", type=int, default=0, help="seed of both runs")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    split = leave_one_out(load_dataset("beauty", data_dir=args.data_dir))
    curves = {}
    for mask in (False, True):
        torch.manual_seed(args.seed)
        model = SASRec(split.sequences.num_items)
        cfg = PretrainConfig(
            epochs=args.epochs, patience=args.epochs + 1, mask_false_negatives=mask, seed=args.seed
        )
        res = pretrain(model, split, cfg, show_progress=False)
        curves["masked" if mask else "released"] = res.history
        last = res.history[-1]
        print(
            f"mask_false_negatives={mask}: valid HR@10 by epoch "
            f"{[round(h['valid_HR@10'], 4) for h in res.history]}; "
            f"last NDCG@10 {last['valid_NDCG@10']:.4f}"
        )
    save(
        "false-negatives-probe",
        {
            "benchmark": "false-negatives-probe",
            "dataset": "beauty",
            "split": "valid",
            "protocol": "full",
            "seeds": [args.seed],
            "epochs": args.epochs,
            "curves": curves,
        },
        time.perf_counter() - t_start,
    )


if __name__ == "__main__":
    main()
