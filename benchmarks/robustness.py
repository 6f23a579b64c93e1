"""Robustness to noise in the test inputs: frozen encoder vs with the RAM (the paper's Fig. 8).

Reads finished runs of an example (``<run>/encoder.pt`` and the augmenter saved in
``<run>/augmenter``), inserts noise into every test user's input and ranks the test targets
with and without the RAM, as the paper's appendix I does ("randomly add a certain ratio of
negative items into each test user sequence"; the models are trained on clean data):

* a user whose input (training part + validation item) has ``n`` items gets
  ``floor(ratio * n)`` noise items, plus one more with probability ``ratio * n - floor(ratio * n)``,
  so that the expected share of inserted items is ``ratio`` for every length;
* a noise item is drawn uniformly among the items the user never interacted with (the test
  target included), distinct within a user, and goes to a uniformly drawn position; the
  user's own items keep their order;
* the bank, the RAM and the no-leakage rule stay as they are: a query keeps its user and its
  clean prefix length (:meth:`~raserec_adapter.RetrievalAugmenter.ranks` with ``inputs=``).

Each ratio reports HR@5 / NDCG@5 / HR@10 / NDCG@10 of both variants, means over the runs and
the draws of the noise (``--noise-seeds``), and each variant's change against its own clean
input (ratio 0, always evaluated).

    python benchmarks/robustness.py --backbone sasrec --dataset beauty \\
        --run runs/beauty-sasrec-raserec-seed0 \\
        --out benchmarks/results/robustness-beauty-sasrec.json
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (
    load_finished_run,
    open_run_analysis,
    provenance,
    run_analysis_parser,
    run_provenance,
)

from raserec_adapter import Sequences
from raserec_adapter.data import LeaveOneOutSplit

METRICS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10")


def noisy_inputs(split: LeaveOneOutSplit, which: str, ratio: float, seed: int) -> Sequences:
    """Every user's ``which`` input with noise items inserted (see the module docstring).

    Returns one sequence per user of ``split.sequences``, in user order, for
    ``RetrievalAugmenter.ranks(split, which, inputs=...)``.

    Example:
        >>> from raserec_adapter import leave_one_out
        >>> seqs = Sequences.from_lists([[1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]], num_items=9)
        >>> split = leave_one_out(seqs)
        >>> noisy_inputs(split, "test", 0.0, seed=0)[0].tolist()
        [1, 2, 3, 4, 5]
        >>> noisy = noisy_inputs(split, "test", 0.4, seed=0)[0].tolist()
        >>> [i for i in noisy if i <= 6], all(i in (7, 8, 9) for i in noisy if i > 6), len(noisy)
        ([1, 2, 3, 4, 5], True, 7)
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must lie in [0, 1], got {ratio}")
    seqs = split.sequences
    queries = split.eval_set(which)
    if not np.array_equal(queries.users, np.arange(seqs.num_users)):
        raise ValueError("the evaluated set must hold every user once, in user order")
    rng = np.random.default_rng(seed)
    rows: list[np.ndarray] = []
    for u, n in zip(queries.users, queries.lengths, strict=True):
        clean = seqs[int(u)][: int(n)]
        whole = int(n) * ratio
        m = math.floor(whole) + int(rng.random() < whole - math.floor(whole))
        if m == 0:
            rows.append(clean)
            continue
        own = set(seqs[int(u)].tolist())
        if seqs.num_items - len(own) < m:
            raise ValueError(f"user {int(u)} has too few unseen items for {m} noise items")
        noise: list[int] = []
        while len(noise) < m:
            for item in rng.integers(1, seqs.num_items + 1, size=2 * m).tolist():
                if item not in own and item not in noise and len(noise) < m:
                    noise.append(item)
        out = np.empty(int(n) + m, dtype=np.int64)
        at = np.zeros(len(out), dtype=bool)
        at[rng.choice(len(out), size=m, replace=False)] = True
        out[at] = noise
        out[~at] = clean
        rows.append(out)
    return Sequences.from_lists(rows, num_items=seqs.num_items)


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.fmean(r[k] for r in rows) for k in METRICS}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = run_analysis_parser(__doc__.splitlines()[0])
    p.add_argument(
        "--ratios", default="0.1,0.2,0.3", help="noise ratios (comma-separated; 0 always runs)"
    )
    p.add_argument(
        "--noise-seeds",
        default="0",
        help="seeds of the inserted noise, comma-separated: each is one draw, and every figure is "
        "the mean over runs and draws",
    )
    args = p.parse_args(argv)
    try:
        ratios = sorted({0.0, *(float(r) for r in args.ratios.split(",") if r.strip())})
    except ValueError as e:
        raise SystemExit(f"--ratios takes numbers separated by commas: {e}") from None
    if not all(0.0 <= r <= 1.0 for r in ratios):
        raise SystemExit(f"--ratios must lie in [0, 1], got {args.ratios}")
    try:
        seeds = list(dict.fromkeys(int(x) for x in args.noise_seeds.split(",") if x.strip()))
    except ValueError as e:
        raise SystemExit(f"--noise-seeds takes integers separated by commas: {e}") from None
    if not seeds:
        raise SystemExit("--noise-seeds needs at least one seed")
    t0 = time.perf_counter()
    backbone, ex_args, split = open_run_analysis(args)
    # the clean input (ratio 0) is the same for every seed: drawn once
    draws = {r: seeds if r > 0 else seeds[:1] for r in ratios}
    inputs = {(r, s): noisy_inputs(split, "test", r, s) for r in ratios for s in draws[r]}
    clean_lengths = split.test.lengths
    inserted = {
        r: statistics.fmean(
            float((inputs[(r, s)].lengths - clean_lengths).sum() / clean_lengths.sum())
            for s in draws[r]
        )
        for r in ratios
    }
    per_run: dict[float, dict[str, list[dict[str, float]]]] = {
        r: {"plain": [], "raserec": []} for r in ratios
    }
    for run in map(Path, args.run):
        aug = load_finished_run(backbone, split.sequences.num_items, ex_args, run, args.device)
        for r in ratios:
            for s in draws[r]:
                m = aug.evaluate(
                    split, "test", protocol=args.protocol, device=args.device, inputs=inputs[(r, s)]
                )
                for variant in ("plain", "raserec"):
                    per_run[r][variant].append({k: m[variant][k] for k in METRICS})
                logging.info(
                    "%s: ratio %.2f, noise seed %d, %s",
                    run,
                    r,
                    s,
                    {k: round(v, 4) for k, v in m["raserec"].items() if k in METRICS},
                )
    clean = {v: _mean(per_run[0.0][v]) for v in ("plain", "raserec")}
    rows = []
    for r in ratios:
        row: dict[str, Any] = {"ratio": r, "inserted_share": round(inserted[r], 4)}
        for variant in ("plain", "raserec"):
            mean = _mean(per_run[r][variant])
            row[variant] = mean
            row[f"{variant}_change_percent"] = {
                k: round(100 * (mean[k] / clean[variant][k] - 1), 1) if clean[variant][k] else None
                for k in METRICS
            }
        rows.append(row)
    record: dict[str, Any] = {
        "what": "test metrics with noise items inserted into the test inputs, frozen encoder vs "
        "with the RAM",
        "dataset": args.dataset,
        "backbone": args.backbone,
        "protocol": args.protocol,
        "noise_seeds": seeds,
        "per_run_order": "per ratio and variant: one entry per run (in --run order) and noise "
        "seed (in --noise-seeds order), runs outer; ratio 0 (clean) once per run",
        "runs": [str(r) for r in args.run],
        "run_provenance": run_provenance([str(r) for r in args.run]),
        "per_run": {str(r): {v: per_run[r][v] for v in ("plain", "raserec")} for r in ratios},
        "ratios": rows,
    }
    record.update(provenance(time.perf_counter() - t0))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{'ratio':>5}  " + "  ".join(f"{m:>26}" for m in METRICS))
    for row in rows:
        cells = [
            f"{row['plain'][m]:.4f}->{row['raserec'][m]:.4f} "
            f"({row['plain_change_percent'][m]:+.1f}/{row['raserec_change_percent'][m]:+.1f}%)"
            for m in METRICS
        ]
        print(f"{row['ratio']:>5.2f}  " + "  ".join(c.rjust(26) for c in cells))
    return record


if __name__ == "__main__":
    main()
