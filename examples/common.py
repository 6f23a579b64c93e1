"""The command line and the two-stage pipeline shared by every example backbone.

Each example script only says how to build its encoder (and, for BERT4Rec, its own
recommendation loss); everything else -- data, pre-training, memory bank, RAFT, evaluation, the
result table and the results files -- is here, so no training code is copied between them.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raserec_adapter import (
    AugmenterConfig,
    BankConfig,
    PretrainConfig,
    RAFTConfig,
    RAMConfig,
    RetrievalAugmenter,
    leave_one_out,
    load_dataset,
)
from raserec_adapter.config import BATCHING
from raserec_adapter.reporting import (
    command_line,
    format_table,
    git_commit,
    mean_metrics,
    write_results,
)
from raserec_adapter.training.pretraining import RecLoss, evaluate_encoder, seed_everything

logger = logging.getLogger("raserec_adapter")

BuildEncoder = Callable[[int, argparse.Namespace], nn.Module]


@dataclass
class Backbone:
    """What an example contributes: a name, an encoder factory, optional loss and defaults.

    ``wrap`` maps the built encoder to keyword arguments of
    :class:`~raserec_adapter.RetrievalAugmenter` (``encode=``, ``item_weights=``,
    ``encode_all=``) for encoders that do not follow the RecBole contract.
    """

    name: str
    build: BuildEncoder
    rec_loss: RecLoss | None = None
    wrap: Callable[[nn.Module], dict[str, Any]] | None = None
    settings: dict[str, object] | None = None  # recorded in the results files


def encoder_record(encoder: nn.Module, args: argparse.Namespace) -> dict[str, object]:
    """What a results file records of the encoder, so that merged seeds can be checked to have
    run the same model (``benchmarks/merge_seeds.py`` compares all but the checkpoint)."""
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


def seed_arg(text: str) -> int:
    """A seed from the command line: an int in 0 .. 2**63 - 1 (``--seed``, ``--seeds``).

    Example:
        >>> seed_arg("3")
        3
    """
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed is an integer, got {text!r}") from None
    if not 0 <= seed < 2**63:
        raise argparse.ArgumentTypeError(f"a seed must lie in 0 .. 2**63 - 1, got {seed}")
    return seed


def prefix_length_ranges(text: str) -> tuple[tuple[int, int | None], ...]:
    """Parses ``"1-2,7-"`` into ``((1, 2), (7, None))`` (``--bank-lengths``).

    Example:
        >>> prefix_length_ranges("1-6"), prefix_length_ranges("1-2,7-")
        (((1, 6),), ((1, 2), (7, None)))
    """
    ranges = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            if not sep:
                raise ValueError
            ranges.append((int(lo), int(hi) if hi.strip() else None))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not a range like '1-6' or '7-' (comma-separated)"
            ) from None
    return tuple(ranges)


def probability(text: str) -> float:
    """Parses a dropout probability in ``[0, 1)`` (``--dropout``, ``--attn-dropout``)."""
    try:
        p = float(text)
    except ValueError:
        p = float("nan")
    if not 0.0 <= p < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability in [0, 1)")
    return p


def dropout_kwargs(args: argparse.Namespace, attention: bool = True) -> dict[str, float]:
    """``dropout=`` / ``attn_dropout=`` for a model's constructor, only those given (a
    namespace without these attributes, e.g. built by hand, gives none).

    Raises:
        SystemExit: ``--attn-dropout`` for a model without attention (``attention=False``).
    """
    kwargs = {}
    dropout, attn_dropout = getattr(args, "dropout", None), getattr(args, "attn_dropout", None)
    if dropout is not None:
        kwargs["dropout"] = dropout
    if attn_dropout is not None:
        if not attention:
            raise SystemExit("--attn-dropout: this backbone has no attention layers")
        kwargs["attn_dropout"] = attn_dropout
    return kwargs


def build_parser(backbone: str, description: str) -> argparse.ArgumentParser:
    """The command-line options every example shares."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    g = p.add_argument_group("data and run")
    g.add_argument(
        "--dataset",
        default="beauty",
        help="registered name (beauty, sports, clothing) or a path to a data file",
    )
    g.add_argument(
        "--data-dir",
        default=None,
        help="folder holding the dataset files (else $RASEREC_DATA_DIR, ../shared/data, "
        "the cache, then download)",
    )
    g.add_argument(
        "--seeds",
        type=seed_arg,
        nargs="+",
        default=[0],
        help="seeds to run; results report each and their mean",
    )
    g.add_argument("--seed", type=seed_arg, default=None, help="a single seed (overrides --seeds)")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    g.add_argument("--out", default="runs", help="folder for checkpoints and results files")
    g.add_argument(
        "--tag",
        default="",
        help="added to results file names: --tag x -> <dataset>-<backbone>-x-<variant>.json",
    )
    g.add_argument(
        "--results-dir",
        default=None,
        help="also write the results JSON files here (e.g. benchmarks/results)",
    )
    g.add_argument(
        "--protocols",
        nargs="+",
        choices=["full", "seen_removed"],
        default=["full", "seen_removed"],
        help="evaluation protocols: seen items kept (full, the paper's) and/or removed",
    )
    g.add_argument(
        "--demo",
        action="store_true",
        help="short schedule for a first run (a few minutes on a laptop CPU)",
    )
    g.add_argument(
        "--plain",
        action="store_true",
        help="stage 1 only, cross-entropy without the retrieval loss (a plain "
        f"{backbone}); no memory bank, no RAFT",
    )
    g = p.add_argument_group("stage 1: pre-training")
    g.add_argument("--epochs", type=int, default=100, help="maximum pre-training epochs")
    g.add_argument("--batch-size", type=int, default=256, help="pre-training batch size")
    g.add_argument("--lr", type=float, default=1e-3, help="pre-training learning rate")
    g.add_argument("--patience", type=int, default=10, help="early-stopping patience (epochs)")
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted stage 1 from <out>/<run>/pretrain-state.pt (written every "
        "epoch); same settings required, --epochs may grow",
    )
    g.add_argument(
        "--valid-metric",
        default="MRR@10",
        help="validation metric for early stopping and the kept epoch (released code: MRR@10)",
    )
    g.add_argument(
        "--lambda",
        dest="retrieval_weight",
        type=float,
        default=0.1,
        help="weight of the contrastive retrieval loss",
    )
    g.add_argument("--temperature", type=float, default=1.0, help="InfoNCE temperature")
    g.add_argument(
        "--mask-false-negatives",
        action="store_true",
        help="drop in-batch negatives that share the anchor's target",
    )
    g.add_argument(
        "--mask-same-user-negatives",
        action="store_true",
        help="drop in-batch negatives from the anchor's own user (its other prefixes)",
    )
    g.add_argument(
        "--batching",
        choices=BATCHING,
        default="windows",
        help="how training pairs form batches (see PretrainConfig.batching)",
    )
    g.add_argument("--max-len", type=int, default=50, help="inputs keep the last max-len items")
    g.add_argument("--hidden-size", type=int, default=64, help="encoder hidden size")
    g.add_argument(
        "--dropout",
        type=probability,
        default=None,
        help="encoder dropout on embeddings and hidden states (default: the backbone's own: "
        "SASRec 0.5, BERT4Rec 0.2, GRU4Rec 0.3, custom 0.2)",
    )
    g.add_argument(
        "--attn-dropout",
        type=probability,
        default=None,
        help="Transformer encoders' dropout on attention weights (default: the backbone's own)",
    )
    g.add_argument(
        "--encoder-checkpoint",
        default=None,
        help="load a trained encoder state_dict instead of pre-training (with stage 2, copied "
        "into the run folder as encoder.pt)",
    )
    g = p.add_argument_group("stage 2: memory bank and RAFT")
    g.add_argument(
        "--bank",
        choices=["faiss", "torch"],
        default="faiss",
        help="Faiss index or exact PyTorch bank",
    )
    g.add_argument("--index", default="IVF128,Flat", help="Faiss index factory string")
    g.add_argument("--nprobe", type=int, default=1, help="IVF lists probed per query")
    g.add_argument(
        "--bank-lengths",
        type=prefix_length_ranges,
        default=None,
        help="keep only memories with these prefix lengths, e.g. '1-6' (short and medium) or "
        "'1-2,7-' (short and long); default: all",
    )
    g.add_argument("--alpha", type=float, default=0.5, help="weight of the encoder's own h")
    g.add_argument("--beta", type=float, default=1.0, help="weight of RAM channel 1 vs 2")
    g.add_argument("--k", type=int, default=20, help="memories retrieved per query")
    g.add_argument("--raft-epochs", type=int, default=100, help="maximum RAFT epochs")
    g.add_argument("--raft-batch-size", type=int, default=1024, help="RAFT batch size")
    g.add_argument("--raft-lr", type=float, default=1e-3, help="RAFT learning rate")
    g.add_argument(
        "--raft-precision",
        choices=["float32", "bfloat16"],
        default="float32",
        help="dtype of the RAFT training step's item scores (bfloat16: ~4x faster on CPUs "
        "with AVX512-BF16 and on GPUs; evaluation is always float32)",
    )
    return p


def _demo_overrides(args: argparse.Namespace) -> None:
    if args.demo:
        args.epochs = min(args.epochs, 4)
        args.raft_epochs = min(args.raft_epochs, 3)


def run(backbone: Backbone, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Runs stage 1 (and stage 2 unless ``--plain``) for every seed; prints and saves results."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its CPU-feature probing is noise here
    if args.threads:
        torch.set_num_threads(args.threads)
    _demo_overrides(args)
    seeds = [args.seed] if args.seed is not None else args.seeds
    t_start = time.perf_counter()
    commit = git_commit()  # the code this run imports, before later edits move HEAD
    sequences = load_dataset(args.dataset, data_dir=args.data_dir)
    split = leave_one_out(sequences, max_len=args.max_len)
    name = Path(args.dataset).stem.lower() if "/" in args.dataset else args.dataset.lower()
    logger.info("%s: %s", name, sequences.describe())
    per_variant: dict[str, list[dict[str, float]]] = {}
    extra: dict[str, object] = {"per_seed_details": []}
    settings = {**(backbone.settings or {}), **dropout_kwargs(args)}  # overrides only
    if settings:
        extra["backbone_settings"] = settings
    out = Path(args.out)
    tag = f"-{args.tag}" if args.tag else ""
    stage = "plain" if args.plain else "raserec"
    for seed in seeds:
        seed_everything(seed)
        encoder = backbone.build(sequences.num_items, args)
        pcfg = PretrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            patience=args.patience,
            valid_metric=args.valid_metric,
            retrieval_weight=0.0 if args.plain else args.retrieval_weight,
            temperature=args.temperature,
            mask_false_negatives=args.mask_false_negatives,
            mask_same_user_negatives=args.mask_same_user_negatives,
            max_len=args.max_len,
            seed=seed,
            batching=args.batching,
        )
        acfg = AugmenterConfig(
            max_len=args.max_len,
            bank=BankConfig(
                kind=args.bank,
                index_factory=args.index,
                nprobe=args.nprobe,
                prefix_lengths=args.bank_lengths,
            ),
            ram=RAMConfig(alpha=args.alpha, beta=args.beta, k=args.k),
        )
        aug = RetrievalAugmenter(encoder, acfg, **(backbone.wrap(encoder) if backbone.wrap else {}))
        run_dir = out / f"{name}-{backbone.name}{tag}-{stage}-seed{seed}"
        details: dict[str, object] = {"seed": seed, "encoder": encoder_record(encoder, args)}
        if args.encoder_checkpoint:
            state = torch.load(args.encoder_checkpoint, map_location="cpu", weights_only=True)
            encoder.load_state_dict(state)
            encoder.to(args.device)  # where stage 1 would have left it
        else:
            state_path = run_dir / "pretrain-state.pt"
            resumed = args.resume and state_path.exists()  # else --resume starts at epoch 1
            res = aug.pretrain(
                split,
                pcfg,
                rec_loss=backbone.rec_loss,
                device=args.device,
                checkpoint=run_dir / "encoder.pt",
                state_path=state_path,
                resume=args.resume,
                run_info={"command": command_line(), "git_commit": commit},
            )
            details["pretrain"] = {
                "best_epoch": res.best_epoch,
                "epochs_run": res.epochs_run,
                "seconds": round(res.seconds, 1),
                "best_valid": res.best_valid,
                "config": pcfg.to_dict(),
                "resumed": resumed,
                "invocations": res.invocations,  # every call that trained it, when resumed
            }
        plain_variant = "plain" if args.plain else "pretrained-plain"
        if args.plain:
            tests = {
                p: {"plain": evaluate_encoder(aug.encoder, split, "test", p, args.device)}
                for p in args.protocols
            }
        else:
            aug.build_bank(split, device=args.device)
            rcfg = RAFTConfig(
                epochs=args.raft_epochs,
                batch_size=args.raft_batch_size,
                lr=args.raft_lr,
                precision=args.raft_precision,
                patience=args.patience,
                seed=seed,
            )
            raft = aug.fit_raft(split, rcfg, device=args.device)
            details["raft"] = {
                "best_epoch": raft.best_epoch,
                "epochs_run": raft.epochs_run,
                "seconds": round(raft.seconds, 1),
                "best_valid": raft.best_valid,
                "baseline_valid": raft.baseline_valid,  # the frozen encoder alone
                "config": rcfg.to_dict(),
                "augmenter_config": acfg.to_dict(),
            }
            tests = {
                p: aug.evaluate(split, "test", protocol=p, device=args.device)
                for p in args.protocols
            }
            aug.save(run_dir / "augmenter")
            # the folder holds what the analyses reload (benchmarks/), as after stage 1
            if args.encoder_checkpoint:
                torch.save(encoder.state_dict(), run_dir / "encoder.pt")
        for p, test in tests.items():
            for variant, metrics in test.items():
                key = (p, plain_variant if variant == "plain" else variant)
                per_variant.setdefault(key, []).append(metrics)
            print(f"\n{name} / {backbone.name} / seed {seed} / test / protocol {p}")
            print(
                format_table({(plain_variant if k == "plain" else k): v for k, v in test.items()})
            )
        extra["per_seed_details"].append(details)  # type: ignore[union-attr]
    wall = time.perf_counter() - t_start
    means = {key: mean_metrics(rows) for key, rows in per_variant.items()}
    for p in args.protocols:
        print(f"\n{name} / {backbone.name} / mean of seeds {seeds} / test / protocol {p}")
        print(format_table({v: m for (q, v), m in means.items() if q == p}))
    # the --out copy names its seeds, so runs of other seeds sharing --out (parallel processes)
    # never overwrite it; merge them with benchmarks/merge_seeds.py
    seed_label = ("seed" if len(seeds) == 1 else "seeds") + "-".join(map(str, seeds))
    for (p, variant), rows in per_variant.items():
        suffix = "" if p == "full" else f"-{p}"
        stem = f"{name}-{backbone.name}{tag}-{variant}{suffix}"
        paths = [out / f"{stem}-{seed_label}.json"]
        if args.results_dir:
            paths.append(Path(args.results_dir) / f"{stem}.json")
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
                extra=extra,
                commit=commit,
            )
    return {v: m for (p, v), m in means.items() if p == args.protocols[0]}
