"""The two-stage pipeline behind the example scripts: data, stage 1, stage 2, results.

:func:`main` parses a command line for a backbone and calls :func:`run`, which, for every seed,
pre-trains the encoder (stage 1), builds the memory bank and fits the RAM (stage 2, unless
``--plain``), evaluates on the test split, then prints one result table per protocol and writes
the results files with their provenance. Under ``torchrun --nproc_per_node N`` the processes
share both stages (:mod:`raserec_adapter.distributed`); rank 0 alone logs, prints and writes.

Files written under ``--out`` (``runs`` by default):

- ``<dataset>-<backbone>[-<tag>]-<stage>-seed<N>/``: ``encoder.pt`` (the kept encoder's state
  dict), ``pretrain-state.pt`` (the resumable stage-1 state) and ``augmenter/`` (the RAM and
  the bank, see :meth:`~raserec_adapter.RetrievalAugmenter.save`);
- ``<dataset>-<backbone>[-<tag>]-<variant>[-seen_removed]-seed<N>.json``: the results, with
  ``--results-dir`` also as ``<dataset>-<backbone>[-<tag>]-<variant>[-seen_removed].json``
  there; variants ``pretrained-plain`` (the frozen encoder) and ``raserec`` (with the RAM), or
  ``plain`` with ``--plain``. Files of the ``raserec`` variant carry ``lift``: the RAM's
  per-metric difference from the frozen encoder with a paired bootstrap interval over test
  users (:func:`~raserec_adapter.evaluation.lift.lift_record`), over the seeds of the process;
- ``<run folder>/test-ranks.npz``: every test user's rank of the target, per protocol and
  variant (``full.plain``, ``full.raserec``, ...), for pooling the lift of separate processes.

Examples:
    >>> main("sasrec", ["--dataset", "beauty", "--demo"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raserec_adapter import (
    AugmenterConfig,
    LeaveOneOutSplit,
    RetrievalAugmenter,
    RunOptions,
    distributed,
    leave_one_out,
    load_dataset,
)
from raserec_adapter.data.datasets import DATASETS
from raserec_adapter.evaluation import RankingMetrics
from raserec_adapter.evaluation.lift import lift_record
from raserec_adapter.experiments.backbones import Backbone, dropout_kwargs
from raserec_adapter.experiments.cli import PROTOCOLS, choose_threads, parse_args, resolve
from raserec_adapter.experiments.options import config_from_args
from raserec_adapter.experiments.reporting import (
    code_version,
    command_line,
    format_table,
    mean_metrics,
    write_results,
)
from raserec_adapter.training.state import seed_everything

__all__ = ["dataset_name", "encoder_record", "main", "run"]

logger = logging.getLogger("raserec_adapter")

TABLE_METRICS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10")
LABELS = {
    "pretrained-plain": "frozen encoder",
    "raserec": "with the RAM",
    "plain": "plain encoder",
}
"""How the result table names each variant of the results files."""

Metrics = dict[str, float]
Ranks = dict[str, dict[str, torch.Tensor]]  # protocol -> variant -> (U,) ranks
LIFT_METRICS = ("HR@10", "NDCG@10")


def main(
    backbone: str | Backbone, argv: list[str] | None = None, description: str | None = None
) -> dict[str, Metrics]:
    """Parses ``argv`` (default ``sys.argv[1:]``) for ``backbone`` and runs it.

    Returns:
        The mean test metrics over seeds of each variant, for the first protocol.

    Examples:
        >>> main("gru4rec", ["--dataset", "beauty", "--plain"])  # doctest: +SKIP
    """
    backbone = resolve(backbone)
    return run(backbone, parse_args(backbone, argv, description))


def dataset_name(dataset: str) -> str:
    """The name results files use: a registered name, or a data file's stem (lower case).

    Examples:
        >>> dataset_name("Beauty"), dataset_name("data/toy.txt"), dataset_name("Toy.txt")
        ('beauty', 'toy', 'toy')
    """
    return dataset.lower() if dataset.lower() in DATASETS else Path(dataset).stem.lower()


def encoder_record(encoder: torch.nn.Module, args: argparse.Namespace) -> dict[str, object]:
    """What a results file records of the encoder, so that merged seeds can be checked to have
    run the same model (``tools/merge_seeds.py`` compares all but the checkpoint)."""
    record: dict[str, object] = {
        "class": type(encoder).__name__,
        "hidden_size": args.hidden_size,
        "parameters": sum(p.numel() for p in encoder.parameters()),
    }
    if args.encoder_checkpoint:
        data = Path(args.encoder_checkpoint).read_bytes()
        record["checkpoint"] = {
            "path": str(args.encoder_checkpoint),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    return record


def _stage1(
    aug: RetrievalAugmenter,
    backbone: Backbone,
    split: LeaveOneOutSplit,
    args: argparse.Namespace,
    seed: int,
    run_dir: Path,
    run: RunOptions,
) -> dict[str, Any]:
    """Pre-trains ``aug``'s encoder; what the results files record of it."""
    pcfg = config_from_args(
        args,
        "pretrain",
        seed=seed,
        max_len=args.max_len,
        **({"retrieval_weight": 0.0} if args.plain else {}),
    )
    resumed = args.resume and run_dir.joinpath("pretrain-state.pt").exists()
    res = aug.pretrain(
        split,
        pcfg,
        rec_loss=backbone.rec_loss(args),
        device=args.device,
        checkpoint=run_dir / "encoder.pt",
        run=run,
    )
    return {
        "best_epoch": res.best_epoch,
        "epochs_run": res.epochs_run,
        "seconds": round(res.seconds, 1),
        "best_valid": res.best_valid,
        "config": pcfg.to_dict(),
        "resumed": resumed,  # else --resume started at epoch 1
        "invocations": res.invocations,  # every call that trained it, when resumed
    }


def _stage2(
    aug: RetrievalAugmenter,
    acfg: AugmenterConfig,
    split: LeaveOneOutSplit,
    args: argparse.Namespace,
    seed: int,
) -> tuple[dict[str, Any], dict[str, dict[str, Metrics]]]:
    """Builds the bank, fits the RAM and ranks the test targets; the record and the ranks."""
    aug.build_bank(split, device=args.device)
    rcfg = config_from_args(args, "raft", seed=seed)
    raft = aug.fit_raft(split, rcfg, device=args.device)
    record = {
        "best_epoch": raft.best_epoch,
        "epochs_run": raft.epochs_run,
        "seconds": round(raft.seconds, 1),
        "best_valid": raft.best_valid,
        "baseline_valid": raft.baseline_valid,  # the frozen encoder alone
        "alpha_selection": raft.alpha_selection,  # with --raft.alpha-grid
        "config": rcfg.to_dict(),
        "augmenter_config": acfg.to_dict(),  # as given (hidden_size 0: the encoder's)
        # do no harm: what the augmenter serves after RAFT's validation comparison
        "serving": "ram" if aug.ram.serves else "encoder",
    }
    served = aug.ram.serves
    aug.ram.serve(True)  # the results measure the RAM itself, whatever RAFT chose to serve
    ranks = _test_ranks(aug, split, args, augmented=(False, True))
    aug.ram.serve(served)  # saved with the augmenter as RAFT chose
    return record, ranks


def _test_ranks(
    aug: RetrievalAugmenter, split: LeaveOneOutSplit, args: argparse.Namespace, augmented: Any
) -> Ranks:
    """Each protocol's test ranks of the variants asked for."""
    return {
        p: aug.ranks(
            split,
            "test",
            protocol=p,
            augmented=augmented,
            device=args.device,
            show_progress=distributed.is_main(),
        )
        for p in args.protocols
    }


def _metrics(ranks: Ranks) -> dict[str, dict[str, Metrics]]:
    """``{protocol: {variant: metrics}}`` from the ranks."""
    out: dict[str, dict[str, Metrics]] = {}
    for p, by_variant in ranks.items():
        out[p] = {}
        for variant, r in by_variant.items():
            m = RankingMetrics()
            m.update(r)
            out[p][variant] = m.compute()
    return out


def _lifts(ranks: list[Ranks]) -> dict[str, dict[str, Any]]:
    """Per protocol, the RAM's lift over the frozen encoder from one or more seeds' ranks."""
    return {
        p: lift_record(
            torch.stack([r[p]["plain"] for r in ranks]),
            torch.stack([r[p]["raserec"] for r in ranks]),
        )
        for p in ranks[0]
        if "raserec" in ranks[0][p]
    }


def _lift_line(lift: dict[str, Any]) -> str:
    """One line: the RAM's lift on HR@10 and NDCG@10 with its interval, and what it means."""
    parts = []
    for name in LIFT_METRICS:
        row = lift["metrics"][name]
        verdict = "" if row["excludes_zero"] else ", contains 0"
        parts.append(f"{name} {row['diff']:+.4f} [{row['low']:+.4f}, {row['high']:+.4f}{verdict}]")
    return (
        f"lift with the RAM, {lift['level']:.0%} interval (paired bootstrap over "
        f"{lift['users']:,} test users): " + "; ".join(parts)
    )


def _run_seed(
    backbone: Backbone,
    args: argparse.Namespace,
    split: LeaveOneOutSplit,
    num_items: int,
    seed: int,
    run_dir: Path,
    run_info: dict[str, Any],
) -> tuple[dict[str, Any], Ranks]:
    """Both stages (or stage 1 alone) for one seed: its record and its test ranks (also
    saved as ``run_dir/test-ranks.npz``)."""
    seed_everything(seed)
    encoder = backbone.build(num_items, args)
    acfg = AugmenterConfig(
        max_len=args.max_len,
        bank=config_from_args(args, "bank"),
        ram=config_from_args(args, "ram"),
    )
    aug = RetrievalAugmenter(encoder, acfg, **backbone.augmenter_kwargs(encoder))
    details: dict[str, Any] = {"seed": seed, "encoder": encoder_record(encoder, args)}
    if args.encoder_checkpoint:
        state = torch.load(args.encoder_checkpoint, map_location="cpu", weights_only=True)
        encoder.load_state_dict(state)
        encoder.to(args.device)  # where stage 1 would have left it
    else:
        run = RunOptions(
            threads=run_info["threads"],
            state_path=run_dir / "pretrain-state.pt",
            resume=args.resume,
            run_info={"command": run_info["command"], "git_commit": run_info["git_commit"]},
        )
        details["pretrain"] = _stage1(aug, backbone, split, args, seed, run_dir, run)
    if args.plain:
        ranks = _test_ranks(aug, split, args, augmented=False)
    else:
        details["raft"], ranks = _stage2(aug, acfg, split, args, seed)
        details["lift"] = _lifts([ranks])
        if distributed.is_main():  # under torchrun: rank 0 alone writes
            aug.save(run_dir / "augmenter")
        if args.encoder_checkpoint and distributed.is_main():  # what the analyses reload
            torch.save(encoder.state_dict(), run_dir / "encoder.pt")
    if not distributed.is_main():
        return details, ranks
    run_dir.mkdir(parents=True, exist_ok=True)
    arrays = {
        f"{p}.{v}": r.numpy().astype(np.int32) for p, rs in ranks.items() for v, r in rs.items()
    }
    np.savez(run_dir / "test-ranks.npz", **arrays)
    return details, ranks


def _size(paths: list[Path]) -> tuple[int, int]:
    """Files and bytes under ``paths`` (files or folders)."""
    files = [f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    return len(files), sum(f.stat().st_size for f in files)


def _where(path: Path) -> str:
    """``path`` relative to the working directory when under it, else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def run(backbone: Backbone, args: argparse.Namespace) -> dict[str, Metrics]:
    """Runs stage 1 (and stage 2 unless ``--plain``) for every seed; prints and saves results.

    Args:
        backbone: What to train (see :data:`~.backbones.BACKBONES`).
        args: Parsed options (:func:`~.cli.parse_args`).

    Returns:
        The mean test metrics over seeds of each variant, for the first protocol.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its CPU-feature probing is noise here
    shared = distributed.init(args.device)  # under torchrun: join its process group
    if not distributed.is_main():  # one log of a shared run
        logging.getLogger().setLevel(logging.WARNING)
    threads, why = choose_threads(args.threads)
    if shared and args.threads is None:  # this node's processes share its cores
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        threads, why = max(1, threads // local), f"{why}; shared by {local} processes"
    torch.set_num_threads(threads)
    logger.info(why)
    seeds = [args.seed] if args.seed is not None else args.seeds
    t_start = time.perf_counter()
    commit = code_version()  # the code this run imports, before later edits move HEAD
    run_info = {"threads": threads, "command": command_line(), "git_commit": commit}
    sequences = load_dataset(args.dataset, data_dir=args.data_dir)
    split = leave_one_out(sequences, max_len=args.max_len)
    name = dataset_name(args.dataset)
    logger.info("%s: %s", name, sequences.describe())
    extra: dict[str, Any] = {"per_seed_details": []}
    settings = {**backbone.settings(args), **dropout_kwargs(args)}  # overrides only
    if settings:
        extra["backbone_settings"] = settings
    out = Path(args.out)
    stem = f"{name}-{backbone.name}" + (f"-{args.tag}" if args.tag else "")
    stage = "plain" if args.plain else "raserec"
    per_variant: dict[tuple[str, str], list[Metrics]] = {}
    written: list[Path] = []
    seed_ranks: list[Ranks] = []
    for seed in seeds:
        run_dir = out / f"{stem}-{stage}-seed{seed}"
        details, ranks = _run_seed(
            backbone, args, split, sequences.num_items, seed, run_dir, run_info
        )
        written.append(run_dir)
        seed_ranks.append(ranks)
        extra["per_seed_details"].append(details)
        for p, test in _metrics(ranks).items():
            for variant, metrics in test.items():
                key = (
                    "plain" if args.plain else "pretrained-plain" if variant == "plain" else variant
                )
                per_variant.setdefault((p, key), []).append(metrics)
    wall = time.perf_counter() - t_start
    means = {key: mean_metrics(rows) for key, rows in per_variant.items()}
    if not distributed.is_main():  # rank 0 prints and writes the results
        return {v: m for (p, v), m in means.items() if p == args.protocols[0]}
    if args.plain:
        lifts: dict[str, dict[str, Any]] = {}
    else:  # one seed: its own lift, not bootstrapped again
        lifts = extra["per_seed_details"][0]["lift"] if len(seeds) == 1 else _lifts(seed_ranks)
    label = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean of seeds {seeds}"
    for p in args.protocols:
        print(f"\n{name} / {backbone.name} / {label} / test split / protocol {p} ({PROTOCOLS[p]})")
        rows = {LABELS[v]: m for (q, v), m in means.items() if q == p}
        print(format_table(rows, TABLE_METRICS))
        if p in lifts:
            print(_lift_line(lifts[p]))
    # the --out copy names its seeds, so runs of other seeds sharing --out (parallel processes)
    # never overwrite it; merge them with tools/merge_seeds.py
    seed_label = ("seed" if len(seeds) == 1 else "seeds") + "-".join(map(str, seeds))
    for (p, variant), rows in per_variant.items():
        file_stem = f"{stem}-{variant}" + ("" if p == "full" else f"-{p}")
        paths = [out / f"{file_stem}-{seed_label}.json"]
        if args.results_dir:
            paths.append(Path(args.results_dir) / f"{file_stem}.json")
        for path in paths:
            write_results(
                path,
                dataset=name,
                backbone=backbone.name,
                variant=variant,
                protocol=p,
                seeds=seeds,
                per_seed=rows,
                wall_seconds=wall,
                extra={**extra, "lift": lifts[p]} if variant == "raserec" else extra,
                commit=commit,
            )
        written.append(paths[0])  # the --results-dir copies are not counted below
    unserved = [
        d["seed"]
        for d in extra["per_seed_details"]
        if d.get("raft", {}).get("serving") == "encoder"
    ]
    if unserved:
        print(
            f"Seeds {unserved}: the RAM did not beat the frozen encoder on validation, so the "
            "saved augmenter serves the encoder's representation (RAFTConfig.fallback); the "
            "rows above are the RAM's own."
        )
    if args.demo and name in backbone.converged:
        print(f"\nThis was a short demo schedule; {backbone.converged[name]}.")
    files, size = _size(written)
    took = f"{wall:.0f} s" if wall < 120 else f"{wall / 60:.1f} min"
    print(f"Wrote {files} files ({size / 1e6:.1f} MB) to {_where(out)}/; the run took {took}.")
    return {v: m for (p, v), m in means.items() if p == args.protocols[0]}
