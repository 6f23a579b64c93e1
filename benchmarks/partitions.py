"""Memory-bank partitions by prefix length: which memories the RAM needs (the paper's Fig. 6).

Stage 2 only, over finished runs of an example (``<run>/encoder.pt`` and ``<run>/augmenter``):
the memories are split by the length of their prefix into short (S), medium (M) and long (L)
parts, as the paper's appendix G does, and for every combination of parts (All, {S, M},
{S, L}, {M, L}, S, M, L) a bank holding only those memories is built, a fresh RAM head (same
seed for every combination) is trained by RAFT with early stopping on validation HR@10, and
the test split is ranked. Queries are never filtered: every training pair still trains the
RAM and every user is tested; only what they can retrieve changes (the test bank's
validation pairs are filtered by the same rule).

The paper's parts (Table 7): Beauty and Sports S = lengths 1-2, M = 3-6, L = 7 and more;
Clothing S = 1, M = 2-3, L = 4 and more. ``--parts`` sets others. Each combination records
its share of the training memories next to the paper's Table 7 shares, its best validation
metrics, its test metrics and the change against All in percent (the paper's line).

The file is rewritten after every combination; ``--resume`` skips the (run, combination)
pairs it holds already, and takes more ``--run`` folders than the file has (to add a seed).

    python benchmarks/partitions.py --backbone sasrec --dataset beauty \\
        --run runs/beauty-sasrec-raserec-seed0 \\
        --out benchmarks/results/partitions-beauty-sasrec.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    check_resume,
    earlier_invocations,
    fit_raft_and_test,
    load_finished_run,
    open_run_analysis,
    provenance,
    resume_settings,
    run_analysis_parser,
    run_provenance,
    write_json,
)

from raserec_adapter import BankConfig, RetrievalAugmenter
from raserec_adapter.experiments.options import prefix_length_ranges
from raserec_adapter.experiments.reporting import mean_metrics

METRICS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10")
PAPER_PARTS = {
    "beauty": "S=1-2,M=3-6,L=7-",
    "sports": "S=1-2,M=3-6,L=7-",
    "clothing": "S=1-1,M=2-3,L=4-",
}
# Table 7 of the paper: each part's share of the memory bank, in percent
PAPER_SHARES = {
    "beauty": {"S": 34.03, "M": 31.18, "L": 34.79},
    "sports": {"S": 37.56, "M": 33.98, "L": 28.46},
    "clothing": {"S": 24.54, "M": 39.38, "L": 36.08},
}


def parse_parts(text: str) -> dict[str, tuple[tuple[int, int | None], ...]]:
    """``"S=1-2,M=3-6,L=7-"`` -> ``{"S": ((1, 2),), ...}``; a part may hold several ranges.

    Example:
        >>> parse_parts("S=1-2,M=3-6,L=7-")
        {'S': ((1, 2),), 'M': ((3, 6),), 'L': ((7, None),)}
        >>> parse_parts("A=1-2;5-")
        {'A': ((1, 2), (5, None))}
    """
    parts: dict[str, tuple[tuple[int, int | None], ...]] = {}
    for piece in text.split(","):
        name, sep, ranges = piece.strip().partition("=")
        if not sep or not name.strip() or name.strip() in parts:
            raise ValueError(
                f"{piece!r}: parts look like 'S=1-2,M=3-6,L=7-' (distinct names, ranges of "
                "prefix lengths, several ranges of one part joined by ';')"
            )
        try:
            found = prefix_length_ranges(ranges.replace(";", ","))
        except argparse.ArgumentTypeError as e:
            raise ValueError(f"part {name.strip()!r}: {e}") from None
        parts[name.strip()] = BankConfig(prefix_lengths=found).prefix_lengths  # validated
    return parts


def combos(names: list[str]) -> list[tuple[str, ...]]:
    """All parts first, then every smaller combination, larger ones first, in part order.

    Example:
        >>> combos(["S", "M", "L"])
        [('S', 'M', 'L'), ('S', 'M'), ('S', 'L'), ('M', 'L'), ('S',), ('M',), ('L',)]
    """
    return [c for r in range(len(names), 0, -1) for c in combinations(names, r)]


# what shapes each row besides the run, the parts and the seed (checked by --resume)
ROW_SETTINGS = (
    "dataset",
    "backbone",
    "backbone_args",
    "protocol",
    "device",
    "raft_epochs",
    "patience",
    "valid_metric",
)


def _label(combo: tuple[str, ...], all_names: list[str]) -> str:
    return "All" if len(combo) == len(all_names) else "{" + ", ".join(combo) + "}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = run_analysis_parser(__doc__.splitlines()[0])
    p.add_argument("--parts", default=None, help="e.g. 'S=1-2,M=3-6,L=7-' (default: the paper's)")
    p.add_argument("--seed", type=int, default=0, help="RAFT seed and the RAM's init")
    p.add_argument("--raft-epochs", type=int, default=100)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--valid-metric", default="HR@10")
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip (run, combination) pairs already in --out; more --run folders may be given",
    )
    args = p.parse_args(argv)
    name = Path(args.dataset).stem.lower()
    text = args.parts or PAPER_PARTS.get(name)
    if text is None:
        raise SystemExit(f"--parts is needed for {args.dataset} (e.g. 'S=1-2,M=3-6,L=7-')")
    try:
        parts = parse_parts(text)
    except ValueError as e:
        raise SystemExit(f"--parts: {e}") from None
    out = Path(args.out)
    record: dict[str, Any] = {}
    row_settings = resume_settings(args, ROW_SETTINGS)
    if args.resume and out.exists():
        record = json.loads(out.read_text())
        same = record.get("parts") == text and record.get("seed") == args.seed
        if not same or not set(record.get("runs", [])) <= set(args.run):
            raise SystemExit(f"{out} holds other runs, parts or seed; use another --out")
        check_resume(record, row_settings, out)
        record["earlier_invocations"] = earlier_invocations(record)
    done = {(r["run"], r["combo"]): r for r in record.get("results", [])}
    wall_before = record.get("wall_seconds", 0.0)
    t0 = time.perf_counter()
    backbone, ex_args, split = open_run_analysis(args)
    names = list(parts)
    lengths = split.train.lengths
    shares = {}
    for n, ranges in parts.items():
        shares[n] = round(100 * float(BankConfig(prefix_lengths=ranges).keeps(lengths).mean()), 2)
    overlap = sum(shares.values()) - 100.0
    if abs(overlap) > 1e-6:
        logging.warning("the parts cover %.2f%% of the memories, not 100%%", 100 + overlap)
    record.update(
        {
            "what": "RaSeRec with memory banks restricted to partitions by prefix length "
            "(stage 2 only over frozen encoders)",
            "dataset": args.dataset,
            "backbone": args.backbone,
            "protocol": args.protocol,
            "parts": text,
            "part_share_percent": shares,
            "paper_part_share_percent": PAPER_SHARES.get(name),
            "runs": list(args.run),
            "run_provenance": run_provenance([str(r) for r in args.run]),
            "seed": args.seed,
            "selection_metric": f"valid {args.valid_metric}",
            "settings_of_rows": row_settings,
        }
    )
    results: list[dict[str, Any]] = []
    plain: dict[str, dict[str, dict[str, float]]] = record.get("plain", {})
    for run in args.run:
        base = load_finished_run(
            backbone, split.sequences.num_items, ex_args, Path(run), args.device
        )
        if run not in plain:
            plain[run] = {
                w: base.evaluate(
                    split, w, protocol=args.protocol, augmented=False, device=args.device
                )["plain"]
                for w in ("valid", "test")
            }
        for combo in combos(names):
            label = _label(combo, names)
            if (run, label) in done:
                results.append(done[(run, label)])
                continue
            ranges = tuple(r for n in combo for r in parts[n])
            bank_cfg = base.config.bank.replace(prefix_lengths=ranges)
            aug = RetrievalAugmenter(base.encoder, base.config.replace(bank=bank_cfg))
            aug.reset_ram(seed=args.seed)
            aug.build_bank(split, device=args.device, show_progress=False)
            res, test = fit_raft_and_test(aug, split, args, args.protocol)
            row = {
                "run": run,
                "combo": label,
                "parts": list(combo),
                "prefix_lengths": [list(r) for r in ranges],
                "train_memories": int(np.count_nonzero(bank_cfg.keeps(lengths))),
                "share_percent": round(sum(shares[n] for n in combo), 2),
                "best_epoch": res.best_epoch,
                "epochs_run": res.epochs_run,
                "seconds": round(res.seconds, 1),
                "valid": res.best_valid,
                "test": {k: test[k] for k in METRICS},
            }
            results.append(row)
            logging.info(
                "%s %s: valid %s %.4f | test %s",
                run,
                label,
                args.valid_metric,
                res.best_valid[args.valid_metric],
                {k: round(v, 4) for k, v in row["test"].items()},
            )
            record.update(
                {
                    "plain": plain,
                    "results": results,
                    **provenance(wall_before + time.perf_counter() - t0),
                }
            )
            write_json(out, record)
    summary = []
    for combo in combos(names):
        label = _label(combo, names)
        rows = [r for r in results if r["combo"] == label]
        summary.append(
            {
                "combo": label,
                "share_percent": rows[0]["share_percent"],
                "valid": {
                    args.valid_metric: statistics.fmean(r["valid"][args.valid_metric] for r in rows)
                },
                "test": mean_metrics([r["test"] for r in rows]),
            }
        )
    every = summary[0]["test"]
    for row in summary:
        row["change_vs_all_percent"] = {
            k: round(100 * (row["test"][k] / every[k] - 1), 1) if every[k] else None
            for k in METRICS
        }
    record.update(
        {
            "plain": plain,
            "plain_mean": {
                w: mean_metrics([plain[r][w] for r in args.run]) for w in ("valid", "test")
            },
            "results": results,
            "summary": summary,
            **provenance(wall_before + time.perf_counter() - t0),
        }
    )
    write_json(out, record)
    print(
        f"{'bank':<10} {'share %':>8} {'valid ' + args.valid_metric:>12} "
        + " ".join(f"{m:>8}" for m in METRICS)
        + "  change vs All (HR@5, NDCG@5)"
    )
    frozen = record["plain_mean"]
    print(
        f"{'frozen':<10} {'':>8} {frozen['valid'][args.valid_metric]:>12.4f} "
        + " ".join(f"{frozen['test'][m]:>8.4f}" for m in METRICS)
    )
    for row in summary:
        ch = row["change_vs_all_percent"]
        print(
            f"{row['combo']:<10} {row['share_percent']:>8.2f} "
            f"{row['valid'][args.valid_metric]:>12.4f} "
            + " ".join(f"{row['test'][m]:>8.4f}" for m in METRICS)
            + f"  {ch['HR@5']:+.1f}% {ch['NDCG@5']:+.1f}%"
        )
    return record


if __name__ == "__main__":
    main()
