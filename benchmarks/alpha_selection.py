"""Does choosing the RAM's alpha on validation beat the paper's fixed alpha = 0.5?

Reads finished runs of an example made with ``--raft.alpha-grid`` (``<run>/encoder.pt`` and the
augmenter saved in ``<run>/augmenter``, whose alpha is the one chosen on validation after RAFT;
the run's results file, ``<run>.json``, records the trained alpha and each value's validation
score). For each run it ranks the validation and test targets with the frozen encoder, with the
RAM at the trained alpha and with the RAM at the chosen alpha (the same trained RAM, the same
bank) and reports, per split, the metrics and each RAM arm's lift over the frozen encoder with
a paired bootstrap interval over users (:func:`raserec_adapter.evaluation.lift.lift_record`),
pooled over the runs (their users' ranks averaged per user).

    for s in 0 1 2; do  # one process per seed: each run folder gets its own results file
        python examples/sasrec.py --dataset ../shared/data/ml-100k.inter --seed $s --threads 1 \\
            --raft.alpha-grid 0.1,0.3,0.7,0.9,1 --protocols full --out runs/alpha
    done
    python benchmarks/alpha_selection.py --dataset ../shared/data/ml-100k.inter \\
        --run runs/alpha/ml-100k-sasrec-raserec-seed0 --run ... \\
        --out benchmarks/results/alpha-selection-ml-100k-sasrec.json

Runs made without the grid (the Table 2 runs, for example) are analysed with ``--alpha-grid``:
the script then makes the same choice itself, on the same validation users with the bank of
training pairs and the rule RAFT uses (the best ``--valid-metric``; ties keep the trained alpha,
then the larger), so no run has to be trained again.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from _common import (
    each_run,
    open_run_analysis,
    provenance,
    run_analysis_parser,
    run_provenance,
    write_json,
)

from raserec_adapter import RankingMetrics
from raserec_adapter.evaluation.lift import lift_record
from raserec_adapter.training.ram_validation import best_alpha

ARMS = ("frozen", "trained_alpha", "chosen_alpha")
METRICS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10")

OVER = {"valid": "validation users", "test": "test users"}  # what a lift is paired over


def trained_alpha(run: Path) -> float:
    """The alpha RAFT trained with, from the run's results file (``<run>.json``)."""
    path = Path(str(run).rstrip("/") + ".json")
    try:
        details = json.loads(path.read_text())["per_seed_details"][0]["raft"]
        return float(details["alpha_selection"]["trained"])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise SystemExit(
            f"{path}: no RAFT alpha selection recorded ({e!r}); --run takes runs made with "
            "--raft.alpha-grid, next to their results file, or pass --alpha-grid"
        ) from None


def parse_grid(text: str) -> tuple[float, ...]:
    """``"0.1,0.3,1"`` -> ``(0.1, 0.3, 1.0)``, every value in [0, 1]."""
    try:
        grid = tuple(float(a) for a in text.split(","))
    except ValueError:
        grid = ()
    if not grid or not all(0.0 <= a <= 1.0 for a in grid):
        raise SystemExit(f"--alpha-grid takes comma-separated values in [0, 1], got {text!r}")
    return grid


def _metrics(ranks: torch.Tensor, all_metrics: bool = False) -> dict[str, float]:
    m = RankingMetrics()
    m.update(ranks)
    return {k: v for k, v in m.compute().items() if all_metrics or k in METRICS}


def analyse(aug: Any, split: Any, run: Path, args: Any) -> dict[str, Any]:
    """Ranks of both splits for the three arms of one run (``args``: protocol, device,
    alpha_grid, valid_metric)."""
    protocol, device = args.protocol, args.device

    def ranks(which: str, alpha: float | None = None) -> torch.Tensor:
        """The frozen encoder's ranks (``alpha`` None) or the RAM's at ``alpha``."""
        if alpha is not None:
            aug.ram.config = aug.ram.config.replace(alpha=alpha)
        out = aug.ranks(split, which, protocol=protocol, augmented=alpha is not None,
                        device=device, show_progress=True)  # fmt: skip
        return out["plain" if alpha is None else "raserec"]

    # the protocol's bank of each phase: training pairs for validation, plus the validation
    # pairs for the test (the saved bank is the test phase's); each alpha's ranks once
    aug.build_bank(split, "train", device=device)
    if args.alpha_grid:  # the choice RAFT's --raft.alpha-grid makes, made here
        trained = aug.ram.config.alpha
        grid = {a: ranks("valid", a) for a in sorted({trained, *args.alpha_grid})}
        score = {a: _metrics(r, all_metrics=True)[args.valid_metric] for a, r in grid.items()}
        chosen = best_alpha(score, trained)
        selection = {f"{a:g}": s for a, s in score.items()}
    else:
        chosen, trained, selection = aug.ram.config.alpha, trained_alpha(run), None
        grid = {a: ranks("valid", a) for a in {trained, chosen}}
    valid = {"frozen": ranks("valid"), "trained_alpha": grid[trained], "chosen_alpha": grid[chosen]}
    aug.build_bank(split, "test", device=device)
    at = {a: ranks("test", a) for a in {trained, chosen}}
    test = {"frozen": ranks("test"), "trained_alpha": at[trained], "chosen_alpha": at[chosen]}
    aug.ram.config = aug.ram.config.replace(alpha=chosen)
    return {
        "trained_alpha": trained,
        "chosen_alpha": chosen,
        "valid_scores": selection,
        "ranks": {"valid": valid, "test": test},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = run_analysis_parser(__doc__.splitlines()[0])
    p.add_argument(
        "--alpha-grid",
        type=parse_grid,
        default=None,
        help="choose alpha among these on validation here (runs made without --raft.alpha-grid)",
    )
    p.add_argument("--valid-metric", default="HR@10", help="the choice's metric (RAFT's default)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    backbone, ex_args, split = open_run_analysis(args)
    per_run = []
    for run, aug in each_run(args, backbone, ex_args, split):
        per_run.append(analyse(aug, split, run, args))
        logging.info(
            "%s: alpha %g -> %g", run, per_run[-1]["trained_alpha"], per_run[-1]["chosen_alpha"]
        )
    splits: dict[str, Any] = {}
    for which in ("valid", "test"):
        stacked = {a: torch.stack([r["ranks"][which][a] for r in per_run]) for a in ARMS}
        splits[which] = {
            "per_run": [{a: _metrics(r["ranks"][which][a]) for a in ARMS} for r in per_run],
            "lift": {a: lift_record(stacked["frozen"], stacked[a], OVER[which]) for a in ARMS[1:]},
        }
    record: dict[str, Any] = {
        "what": "the RAM at the alpha chosen on validation after RAFT (--raft.alpha-grid) "
        "against the same RAM at its trained alpha, each against the frozen encoder",
        "dataset": args.dataset,
        "backbone": args.backbone,
        "protocol": args.protocol,
        "runs": [str(r) for r in args.run],
        "run_provenance": run_provenance([str(r) for r in args.run]),
        "chosen_by": "RAFT (--raft.alpha-grid)"
        if args.alpha_grid is None
        else f"this script: --alpha-grid {','.join(f'{a:g}' for a in args.alpha_grid)}, "
        f"best validation {args.valid_metric} with the bank of training pairs",
        "alphas": [
            {"trained": r["trained_alpha"], "chosen": r["chosen_alpha"]}
            | ({"valid": r["valid_scores"]} if r["valid_scores"] else {})
            for r in per_run
        ],
        "splits": splits,
    }
    record.update(provenance(time.perf_counter() - t0))
    write_json(Path(args.out), record)
    print(f"alphas (trained -> chosen): {record['alphas']}")
    for which, rec in splits.items():
        for arm, lift in rec["lift"].items():
            row = lift["metrics"]["NDCG@10"]
            print(
                f"{which:>5} {arm:>13}: NDCG@10 {row['new']:.4f} vs frozen {row['base']:.4f}, "
                f"lift {row['diff']:+.4f} [{row['low']:+.4f}, {row['high']:+.4f}]"
            )
    return record


if __name__ == "__main__":
    main()
