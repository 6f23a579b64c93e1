"""Where the RAM helps: test metrics by target popularity and by user length (Figs. 4 and 7).

Reads finished runs of an example (``<run>/encoder.pt`` and the augmenter saved in
``<run>/augmenter``), ranks every test user's target with and without the RAM
(:meth:`~raserec_adapter.RetrievalAugmenter.ranks`) and splits the test users into groups of
equal size, as the paper does:

* ``popularity``: 10 groups by the target item's number of interactions in the dataset file
  (group 1: the rarest targets; the paper's Fig. 4, long-tail recommendation);
* ``length``: 8 groups by the length of the user's sequence (group 1: the shortest; the
  paper's Fig. 7).

Ties are broken by user order, so the groups are the same for every model. Each group reports
HR@5 / NDCG@5 / HR@10 / NDCG@10 of the frozen encoder ("plain") and with the RAM, means over
the given runs (seeds), and the RAM's relative change.

    python benchmarks/groups.py --backbone sasrec --dataset beauty \\
        --run runs/beauty-sasrec-raserec-seed0 --run runs/beauty-sasrec-raserec-seed1 \\
        --out benchmarks/results/groups-beauty-sasrec.json
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import load_finished_run, open_run_analysis, provenance, run_analysis_parser

from raserec_adapter.data import LeaveOneOutSplit
from raserec_adapter.evaluation import RankingMetrics

METRICS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10")
GROUPINGS = {"popularity": 10, "length": 8}


def group_of_users(split: LeaveOneOutSplit, by: str, n_groups: int) -> np.ndarray:
    """Group (0-based) of every test user, in the order of ``split.test``; equal sizes (+-1).

    Example:
        >>> from raserec_adapter import Sequences, leave_one_out
        >>> seqs = Sequences.from_lists([[1, 2, 3], [1, 3, 2, 4], [2, 1, 3, 1, 4]])
        >>> group_of_users(leave_one_out(seqs), "length", 3).tolist()
        [0, 1, 2]
    """
    seqs = split.sequences
    users = split.test.users
    if by == "popularity":
        counts = np.bincount(seqs.items, minlength=seqs.num_items + 1)
        key = counts[seqs.items[seqs.offsets[users] + split.test.lengths]]
    elif by == "length":
        key = seqs.offsets[users + 1] - seqs.offsets[users]
    else:
        raise ValueError(f"by must be one of {sorted(GROUPINGS)}, got {by!r}")
    order = np.argsort(key, kind="stable")
    groups = np.empty(len(users), dtype=np.int64)
    for g, part in enumerate(np.array_split(order, n_groups)):
        groups[part] = g
    return groups


def group_metrics(ranks: torch.Tensor, groups: np.ndarray, n_groups: int) -> list[dict[str, float]]:
    """Metrics of the ranks of each group."""
    out = []
    for g in range(n_groups):
        m = RankingMetrics()
        m.update(ranks[torch.from_numpy(groups == g)])
        out.append({k: v for k, v in m.compute().items() if k in METRICS})
    return out


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = run_analysis_parser(__doc__.splitlines()[0]).parse_args(argv)
    t0 = time.perf_counter()
    backbone, ex_args, split = open_run_analysis(args)
    groups = {by: group_of_users(split, by, n) for by, n in GROUPINGS.items()}
    per_run: dict[str, dict[str, list[list[dict[str, float]]]]] = {
        by: {"plain": [], "raserec": []} for by in GROUPINGS
    }
    for run in map(Path, args.run):
        aug = load_finished_run(backbone, split.sequences.num_items, ex_args, run, args.device)
        ranks = aug.ranks(split, "test", protocol=args.protocol, device=args.device)
        for by, n in GROUPINGS.items():
            for variant, r in ranks.items():
                per_run[by][variant].append(group_metrics(r, groups[by], n))
        logging.info("%s: ranked %d test users", run, len(split.test))
    record: dict[str, Any] = {
        "what": "test metrics per group of test users, frozen encoder vs with the RAM",
        "dataset": args.dataset,
        "backbone": args.backbone,
        "protocol": args.protocol,
        "runs": [str(r) for r in args.run],
        "groupings": {},
    }
    for by, n in GROUPINGS.items():
        rows = []
        for g in range(n):
            plain = _mean([run[g] for run in per_run[by]["plain"]])
            aug_m = _mean([run[g] for run in per_run[by]["raserec"]])
            rows.append(
                {
                    "group": g + 1,
                    "users": int((groups[by] == g).sum()),
                    "plain": plain,
                    "raserec": aug_m,
                    "change_percent": {
                        k: round(100 * (aug_m[k] / plain[k] - 1), 1) if plain[k] else None
                        for k in METRICS
                    },
                }
            )
        record["groupings"][by] = rows
    record.update(provenance(time.perf_counter() - t0))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    for by, rows in record["groupings"].items():
        print(f"\nby {by} (group 1 = {'rarest targets' if by == 'popularity' else 'shortest'})")
        print(f"{'group':>5} {'users':>6}  " + "  ".join(f"{m:>17}" for m in METRICS))
        for row in rows:
            cells = [f"{row['plain'][m]:.4f}->{row['raserec'][m]:.4f}".rjust(17) for m in METRICS]
            print(f"{row['group']:>5} {row['users']:>6}  " + "  ".join(cells))
    return record


if __name__ == "__main__":
    main()
