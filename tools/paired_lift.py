"""Adds the RAM's paired lift over the frozen encoder to a ``raserec`` results file.

The example scripts write ``lift`` (per-metric difference with a paired bootstrap interval over
test users, :func:`raserec_adapter.evaluation.lift.lift_record`) over the seeds of one process.
Seeds run as separate processes and merged by ``tools/merge_seeds.py`` need it pooled over all
seeds; runs made before the scripts wrote it need it computed. This script takes a results
file of the ``raserec`` variant and, for each of its seeds in order, the run folder; it reads
each folder's ``test-ranks.npz`` or, where a run predates it, reloads the run (``encoder.pt``
and ``augmenter/``) and ranks the test split again. Before using the ranks it checks that they
give the file's own metrics for that seed (to 1e-6): ranks of another run or another protocol
are refused. It then writes ``lift`` into the file (through a temporary file) with this
command's provenance under ``lift.provenance``.

    python tools/paired_lift.py benchmarks/results/sports-sasrec-raserec.json \\
        --run runs/sports-sasrec-raserec-seed0 --run runs/sports-sasrec-raserec-seed1 \\
        --run runs/sports-sasrec-raserec-seed2 --backbone sasrec --dataset sports
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # for _common

from _common import backbone_options, load_finished_run, provenance, write_json

from raserec_adapter import RankingMetrics, leave_one_out, load_dataset
from raserec_adapter.evaluation.lift import lift_record


def saved_ranks(run: Path, protocol: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(plain, raserec)`` test ranks from ``run/test-ranks.npz``; ``None`` if it has none."""
    path = run / "test-ranks.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as f:
        keys = (f"{protocol}.plain", f"{protocol}.raserec")
        if not all(k in f for k in keys):
            raise SystemExit(f"{path} holds no {protocol} ranks of both variants: {list(f)}")
        return f[keys[0]], f[keys[1]]


def reranked(args: argparse.Namespace, run: Path, protocol: str, split: Any) -> tuple[Any, Any]:
    """``(plain, raserec)`` test ranks of a finished run, reloaded and ranked again."""
    backbone, ex_args = backbone_options(args.backbone, args.backbone_args)
    aug = load_finished_run(backbone, split.sequences.num_items, ex_args, run, args.device)
    r = aug.ranks(split, "test", protocol=protocol, device=args.device, show_progress=True)
    return r["plain"].numpy(), r["raserec"].numpy()


def check_metrics(ranks: np.ndarray, expected: dict[str, float], what: str) -> None:
    """Refuses ranks whose metrics are not the results file's (another run or protocol)."""
    m = RankingMetrics()
    m.update(torch.from_numpy(ranks.astype(np.int64)))
    got = m.compute()
    bad = {k: (got[k], v) for k, v in expected.items() if k in got and abs(got[k] - v) > 1e-6}
    if bad:
        raise SystemExit(
            f"{what}: its ranks give other metrics than the results file: {bad} (ranks, file); "
            "give the run folders of the file's seeds, in the file's seed order"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("results", help="a results file of the raserec variant (merged or not)")
    p.add_argument("--run", action="append", required=True, help="a seed's run folder, in order")
    p.add_argument("--plain-results", help="the frozen encoder's twin (default: found by name)")
    p.add_argument("--backbone", default="sasrec", choices=["sasrec", "gru4rec", "bert4rec"])
    p.add_argument("--backbone-args", default="", help="the runner's model options of the runs")
    p.add_argument("--dataset", default=None, help="to rank again (default: the file's)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    t0 = time.perf_counter()
    path = Path(args.results)
    rec = json.loads(path.read_text())
    if rec.get("variant") != "raserec":
        raise SystemExit(f"{path} is a {rec.get('variant')!r} file; give the raserec variant's")
    runs = [Path(r) for r in args.run]
    if len(runs) != len(rec["seeds"]):
        raise SystemExit(f"{path} has seeds {rec['seeds']} but {len(runs)} --run folders")
    plain_path = Path(args.plain_results or str(path).replace("-raserec", "-pretrained-plain"))
    plain_rec = json.loads(plain_path.read_text())
    protocol = rec["protocol"]
    split = None
    base, new = [], []
    for i, run in enumerate(runs):
        pair = saved_ranks(run, protocol)
        if pair is None:
            if split is None:
                seqs = load_dataset(args.dataset or rec["dataset"], data_dir=args.data_dir)
                max_len = backbone_options(args.backbone, args.backbone_args)[1].max_len
                split = leave_one_out(seqs, max_len)
            pair = reranked(args, run, protocol, split)
        check_metrics(pair[0], plain_rec["per_seed"][i], f"{run} (frozen encoder)")
        check_metrics(pair[1], rec["per_seed"][i], f"{run} (with the RAM)")
        base.append(pair[0])
        new.append(pair[1])
    lift = lift_record(np.stack(base), np.stack(new))
    lift["provenance"] = provenance(time.perf_counter() - t0)
    rec["lift"] = lift
    write_json(path, rec)
    for name in ("HR@10", "NDCG@10"):
        row = lift["metrics"][name]
        print(f"{name}: {row['diff']:+.4f} [{row['low']:+.4f}, {row['high']:+.4f}]")
    return lift


if __name__ == "__main__":
    main()
