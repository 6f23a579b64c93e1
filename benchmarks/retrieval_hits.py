"""How often the retrieved memories hold the query's own next item (retrieval recall).

The RAM can only borrow what retrieval brings: for every validation user (bank: the training
pairs, the no-leakage rule on, as in RAFT's validation), this script retrieves K memories for
the frozen encoder's representation and counts the queries for which at least one memory's
target item is the user's validation target, for each K given. The encoder's own HR@K on the
same users is printed next to it for scale.

    python benchmarks/retrieval_hits.py --backbone sasrec --dataset beauty \\
        --encoder runs/beauty-sasrec-raserec-seed0/encoder.pt \\
        --out benchmarks/results/retrieval-hits-beauty-sasrec.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import provenance

from raserec_adapter import (
    AugmenterConfig,
    BankConfig,
    RetrievalAugmenter,
    leave_one_out,
    load_dataset,
)


def retrieval_hits(memory_targets: np.ndarray, targets: np.ndarray, ks: list[int]) -> dict:
    """Share of queries whose first ``k`` memories hold their target, for every ``k``.

    Args:
        memory_targets: ``(Q, K)`` target item of each retrieved memory, best first.
        targets: ``(Q,)`` each query's own target.
        ks: Cut-offs, each at most ``K``.

    Example:
        >>> retrieval_hits(np.array([[3, 1], [2, 2]]), np.array([1, 4]), [1, 2])
        {'hit@1': 0.0, 'hit@2': 0.5}
    """
    hit = memory_targets == targets[:, None]
    return {f"hit@{k}": float(hit[:, :k].any(axis=1).mean()) for k in ks}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", choices=["sasrec", "gru4rec", "bert4rec"], default="sasrec")
    p.add_argument("--backbone-args", default="", help="model options the encoder was made with")
    p.add_argument("--encoder", action="append", required=True, help="encoder.pt (repeatable)")
    p.add_argument("--dataset", default="beauty")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--ks", default="5,10,20,40", help="comma-separated numbers of memories")
    p.add_argument("--index", default="IVF128,Flat")
    p.add_argument("--nprobe", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ks = sorted({int(k) for k in args.ks.split(",") if k.strip()})
    example = importlib.import_module(f"examples.{args.backbone}")
    ex_args = example.parser().parse_args(shlex.split(args.backbone_args))
    split = leave_one_out(load_dataset(args.dataset, data_dir=args.data_dir), ex_args.max_len)
    valid = split.valid
    rows = []
    for path in args.encoder:
        encoder = example.BACKBONE.build(split.sequences.num_items, ex_args)
        encoder.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        wrap = example.BACKBONE.wrap(encoder) if example.BACKBONE.wrap else {}
        bank = BankConfig(index_factory=args.index, nprobe=args.nprobe)
        cfg = AugmenterConfig(max_len=ex_args.max_len, bank=bank)
        aug = RetrievalAugmenter(encoder, cfg, **wrap)
        aug.build_bank(split, show_progress=False)
        assert aug.bank is not None and len(aug.bank) == len(split.train)  # ids = training rows
        h = aug.encode(split.sequences, valid)
        found = aug.bank.search(
            h, max(ks), torch.from_numpy(valid.users), torch.from_numpy(valid.lengths)
        )
        hits = retrieval_hits(split.train.targets[found.ids.numpy()], valid.targets, ks)
        own = aug.evaluate(split, "valid", augmented=(False,))["plain"]
        rows.append(
            {
                "encoder": str(path),
                **hits,
                **{f"encoder_HR@{k}": own[f"HR@{k}"] for k in ks if f"HR@{k}" in own},
            }
        )
        print(path, " ".join(f"{k} {v:.4f}" for k, v in rows[-1].items() if k != "encoder"))
    record = {
        "what": "share of validation users whose K retrieved memories hold their target item",
        "dataset": args.dataset,
        "backbone": args.backbone,
        "index": args.index,
        "split": "valid",
        "encoders": rows,
        "mean": {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "encoder"},
        **provenance(time.perf_counter() - t0),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
