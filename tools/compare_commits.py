"""RAFT, recommend or stage-1 epoch time of two versions of the library, in one run.

Timings from different runs of a noisy machine are not comparable, so this script measures an
older commit (``--old``, checked out into a temporary folder with ``git archive``) and the
working tree one after the other, ``--rounds`` times alternating, each in a fresh process, with
the same data, encoder weights, settings and seed. It prints the medians and their ratios and
writes ``benchmarks/results/compare-commits.json``.

    python tools/compare_commits.py --old c48e607 --data-dir ../shared/data \\
        --encoder-checkpoint runs/.../encoder.pt

Each process builds the default (Faiss IVF) bank of Beauty's training pairs, trains the RAM for
``--epochs`` epochs (``RAFTConfig`` defaults otherwise) and times ``--requests`` single-user
``recommend`` calls over the test users' histories.

``--stage pretrain`` times stage-1 epochs instead: each process trains a fresh example encoder
(``--backbone sasrec``, ``gru4rec`` or ``bert4rec``, seed 0) with ``pretrain`` and the
``PretrainConfig`` defaults (cross-entropy + contrastive retrieval loss; ``--batching`` sets
how pairs form batches) for ``--epochs`` epochs, and the results go to
``compare-commits-pretrain-<backbone>.json``:

    python tools/compare_commits.py --old c6c3ff4 --stage pretrain --epochs 1 \
        --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "benchmarks"))  # for _common (the parent only)


def _check_tree(package: ModuleType, tree: str) -> None:
    """Refuses to time a package imported from anywhere but ``tree``."""
    # a path test, not a string prefix: /tmp/wt must not accept /tmp/wt_old
    if not Path(str(package.__file__)).resolve().is_relative_to(Path(tree).resolve()):
        raise RuntimeError(f"imported {package.__file__}, not the tree {tree}")


def _layout() -> tuple[ModuleType, Any]:
    """The imported tree's backbones module and stage-1 function, wherever that commit keeps
    them: ``raserec_adapter.models`` and ``raserec_adapter.training.pretrain`` since the
    backbones ship in the wheel, ``examples.models`` and ``raserec_adapter.pretrain`` before."""
    import raserec_adapter

    try:
        models = importlib.import_module("raserec_adapter.models")
        pretrain = importlib.import_module("raserec_adapter.training").pretrain
    except (ImportError, AttributeError):
        models = importlib.import_module("examples.models")
        pretrain = raserec_adapter.pretrain
    return models, pretrain


def child_pretrain(
    tree: str, data_dir: str | None, backbone: str, epochs: int, batching: str
) -> None:
    """Stage-1 epochs of a fresh example encoder, in a process importing from ``tree``."""
    sys.path.insert(0, tree)
    import torch

    import raserec_adapter
    from raserec_adapter import PretrainConfig, leave_one_out, load_dataset

    models, pretrain = _layout()

    _check_tree(raserec_adapter, tree)
    split = leave_one_out(load_dataset("beauty", data_dir=data_dir))
    torch.manual_seed(0)
    cls = {"sasrec": models.SASRec, "gru4rec": models.GRU4Rec, "bert4rec": models.BERT4Rec}
    model = cls[backbone](split.sequences.num_items)
    cfg = PretrainConfig(epochs=epochs, patience=epochs + 1, batching=batching)
    res = pretrain(model, split, cfg, show_progress=False)
    print(
        json.dumps(
            {
                "pretrain_epoch_seconds": [e["train_seconds"] for e in res.history],
                "loss_rec": [e["loss_rec"] for e in res.history],
                "loss_ret": [e["loss_ret"] for e in res.history],
                "best_valid": res.best_valid,
            }
        )
    )


def child(tree: str, data_dir: str | None, checkpoint: str | None, epochs: int, requests: int):
    """Runs in a fresh process whose imports come from ``tree``; prints one JSON line."""
    sys.path.insert(0, tree)
    import numpy as np
    import torch

    import raserec_adapter
    from raserec_adapter import (
        AugmenterConfig,
        RAFTConfig,
        RetrievalAugmenter,
        leave_one_out,
        load_dataset,
    )

    SASRec = _layout()[0].SASRec
    _check_tree(raserec_adapter, tree)
    split = leave_one_out(load_dataset("beauty", data_dir=data_dir))
    torch.manual_seed(0)
    model = SASRec(split.sequences.num_items)
    if checkpoint:
        model.load_state_dict(torch.load(checkpoint, weights_only=True))
    model.eval()
    aug = RetrievalAugmenter(model, AugmenterConfig())
    aug.build_bank(split, show_progress=False)
    res = aug.fit_raft(split, RAFTConfig(epochs=epochs, patience=epochs + 1), show_progress=False)
    if hasattr(aug.ram, "serve"):  # since do no harm: time the RAM, whatever RAFT chose
        aug.ram.serve(True)
    aug.eval()
    users = np.random.default_rng(0).choice(len(split.test), requests, replace=False)
    histories = [split.sequences[u][:-1].tolist() for u in users]
    aug.recommend([histories[0]], k=10)  # warm-up (index build)
    times = []
    for h in histories:
        t0 = time.perf_counter()
        aug.recommend([h], k=10)
        times.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "raft_epoch_seconds": [e["train_seconds"] for e in res.history],
                "recommend_ms_p50": 1000 * statistics.median(times),
                "best_valid": res.best_valid,
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", help="git revision to compare the working tree with (required)")
    p.add_argument("--data-dir", default=None, help="folder with Beauty.txt")
    p.add_argument("--encoder-checkpoint", default=None, help="trained SASRec state_dict")
    p.add_argument("--rounds", type=int, default=2, help="old/new pairs of processes")
    p.add_argument("--epochs", type=int, default=3, help="RAFT epochs timed per process")
    p.add_argument("--requests", type=int, default=300, help="recommend calls per process")
    p.add_argument(
        "--stage",
        choices=["raft", "pretrain"],
        default="raft",
        help="raft: bank, RAFT epochs and recommend; pretrain: stage-1 epochs",
    )
    p.add_argument(
        "--backbone",
        choices=["sasrec", "gru4rec", "bert4rec"],
        default="sasrec",
        help="example encoder trained by --stage pretrain",
    )
    p.add_argument(
        "--batching",
        choices=["windows", "bucketed", "random"],
        default="windows",
        help="PretrainConfig.batching of --stage pretrain",
    )
    p.add_argument(
        "--tag", default=None, help="results file compare-commits[-pretrain-BACKBONE]-TAG.json"
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        if args.stage == "pretrain":
            child_pretrain(args.child, args.data_dir, args.backbone, args.epochs, args.batching)
        else:
            child(args.child, args.data_dir, args.encoder_checkpoint, args.epochs, args.requests)
        return
    if not args.old:
        p.error("--old REVISION is required")

    from _common import ROOT, median, save

    t_start = time.perf_counter()
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = Path(tmp) / "old"
        old_tree.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.old], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(old_tree)], input=archive, check=True)
        trees = {"old": old_tree, "new": ROOT}
        for r in range(args.rounds):
            for name, tree in trees.items():
                cmd = [sys.executable, str(HERE), "--child", str(tree)]
                cmd += ["--epochs", str(args.epochs), "--requests", str(args.requests)]
                cmd += ["--stage", args.stage, "--backbone", args.backbone]
                cmd += ["--batching", args.batching]
                # the children run inside their trees: relative paths are the caller's
                if args.data_dir:
                    cmd += ["--data-dir", str(Path(args.data_dir).resolve())]
                if args.encoder_checkpoint:
                    cmd += ["--encoder-checkpoint", str(Path(args.encoder_checkpoint).resolve())]
                out = subprocess.run(cmd, capture_output=True, text=True, cwd=tree)
                if out.returncode:
                    sys.exit(f"the {name} tree's run failed:\n{out.stderr[-3000:]}")
                run = json.loads(out.stdout.strip().splitlines()[-1])
                runs[name].append(run)
                if args.stage == "pretrain":
                    print(
                        f"round {r + 1} {name}: stage-1 epoch median "
                        f"{median(run['pretrain_epoch_seconds']):.2f} s"
                    )
                    continue
                print(
                    f"round {r + 1} {name}: RAFT epoch median "
                    f"{median(run['raft_epoch_seconds']):.2f} s, recommend p50 "
                    f"{run['recommend_ms_p50']:.2f} ms"
                )
    if args.stage == "pretrain":
        save_pretrain(args, runs, time.perf_counter() - t_start)
        return
    summary = {}
    for name, rs in runs.items():
        summary[name] = {
            "raft_epoch_seconds_median": median([e for r in rs for e in r["raft_epoch_seconds"]]),
            "recommend_ms_p50_median": median([r["recommend_ms_p50"] for r in rs]),
        }
    old, new = summary["old"], summary["new"]
    ratio_raft = old["raft_epoch_seconds_median"] / new["raft_epoch_seconds_median"]
    ratio_rec = old["recommend_ms_p50_median"] / new["recommend_ms_p50_median"]
    record = {
        "benchmark": "compare-commits",
        "old": args.old,
        "new": "the working tree",
        "runs": runs,
        "summary": summary,
        "raft_epoch_speedup_old_over_new": ratio_raft,
        "recommend_speedup_old_over_new": ratio_rec,
        "encoder": "trained checkpoint" if args.encoder_checkpoint else "random init",
    }
    name = "compare-commits" + (f"-{args.tag}" if args.tag else "")
    path = save(name, record, time.perf_counter() - t_start)
    print(
        f"RAFT epoch: old {summary['old']['raft_epoch_seconds_median']:.2f} s, new "
        f"{summary['new']['raft_epoch_seconds_median']:.2f} s ({ratio_raft:.2f}x); recommend p50: "
        f"old {summary['old']['recommend_ms_p50_median']:.2f} ms, new "
        f"{summary['new']['recommend_ms_p50_median']:.2f} ms ({ratio_rec:.2f}x)"
    )
    print(f"written to {path}")


def save_pretrain(args: argparse.Namespace, runs: dict[str, list[dict]], wall: float) -> None:
    from _common import median, save

    summary = {
        name: {
            "pretrain_epoch_seconds_median": median(
                [e for r in rs for e in r["pretrain_epoch_seconds"]]
            )
        }
        for name, rs in runs.items()
    }
    old = summary["old"]["pretrain_epoch_seconds_median"]
    new = summary["new"]["pretrain_epoch_seconds_median"]
    record = {
        "benchmark": "compare-commits",
        "stage": "pretrain",
        "backbone": args.backbone,
        "batching": args.batching,
        "old": args.old,
        "new": "the working tree",
        "epochs_per_process": args.epochs,
        "runs": runs,
        "summary": summary,
        "pretrain_epoch_speedup_old_over_new": old / new,
    }
    name = f"compare-commits-pretrain-{args.backbone}" + (f"-{args.tag}" if args.tag else "")
    path = save(name, record, wall)
    print(f"stage-1 epoch ({args.backbone}): old {old:.2f} s, new {new:.2f} s ({old / new:.2f}x)")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
