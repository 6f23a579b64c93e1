"""The runner's command line: its own options, the configs' generated ones, the demo schedule.

The runner's own options (data, seeds, threads, output, the model's size) are declared here,
once; every training setting comes from the configs (:mod:`.options`); each backbone adds its
own options and defaults (:class:`~.backbones.Backbone`).

Examples:
    >>> args = parse_args("sasrec", ["--dataset", "beauty", "--pretrain.lr", "0.002"])
    >>> args.seeds, vars(args)["pretrain.lr"], vars(args)["pretrain.batching"]
    ([0], 0.002, 'random')
    >>> args = parse_args("sasrec", ["--demo", "--raft.epochs", "1"])
    >>> vars(args)["pretrain.epochs"], vars(args)["raft.epochs"], args.out
    (5, 1, 'runs/demo')
"""

from __future__ import annotations

import argparse
import math
import os

from raserec_adapter.experiments.backbones import BACKBONES, Backbone
from raserec_adapter.experiments.options import SECTIONS, add_config_options, config_from_args

__all__ = ["DEMO", "build_parser", "choose_threads", "parse_args", "resolve"]

DEMO: dict[str, object] = {
    "pretrain.epochs": 5,
    "pretrain.batching": "windows",
    "raft.epochs": 3,
    "protocols": ["full"],
    "out": "runs/demo",
}
"""What ``--demo`` changes: parser defaults, so options given on the command line still win."""

PROTOCOLS = {"full": "seen items kept", "seen_removed": "seen items removed"}


def resolve(backbone: str | Backbone) -> Backbone:
    """A registered backbone by name (see :data:`~.backbones.BACKBONES`), or ``backbone``.

    Examples:
        >>> resolve("gru4rec").title
        'GRU4Rec'
    """
    if isinstance(backbone, Backbone):
        return backbone
    try:
        return BACKBONES[backbone]
    except KeyError:
        known = ", ".join(sorted(BACKBONES))
        raise ValueError(f"unknown backbone {backbone!r}; known: {known}") from None


def seed_arg(text: str) -> int:
    """A seed from the command line: an int in 0 .. 2**63 - 1 (``--seed``, ``--seeds``).

    Examples:
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


def probability(text: str) -> float:
    """A dropout probability in ``[0, 1)`` (``--dropout``, ``--attn-dropout``).

    Examples:
        >>> probability("0.25")
        0.25
    """
    try:
        p = float(text)
    except ValueError:
        p = float("nan")
    if not 0.0 <= p < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability in [0, 1)")
    return p


def positive_int(text: str) -> int:
    """An int >= 1 (``--threads``)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int >= 1")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: ...)`` to every option but on/off flags and help that names its own."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if isinstance(action, argparse._StoreTrueAction) or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _run_options(p: argparse.ArgumentParser, title: str) -> None:
    g = p.add_argument_group("data and run")
    g.add_argument(
        "--dataset",
        default="beauty",
        help="registered name (beauty, sports, clothing) or a path to a data file",
    )
    g.add_argument(
        "--data-dir",
        default=None,
        help="folder holding the dataset files (default: $RASEREC_DATA_DIR, in a checkout "
        "../shared/data next to it, the cache, then download)",
    )
    g.add_argument(
        "--seeds",
        type=seed_arg,
        nargs="+",
        default=[0],
        help="seeds to run, each setting PretrainConfig.seed and RAFTConfig.seed; results "
        "report each and their mean",
    )
    g.add_argument("--seed", type=seed_arg, default=None, help="a single seed (default: --seeds)")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    g.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: the cores free now, from the CPU affinity and the "
        "1-minute load average, at most $OMP_NUM_THREADS)",
    )
    g.add_argument("--out", default="runs", help="folder for run folders and results files")
    g.add_argument(
        "--tag",
        default="",
        help="added to results file names: --tag x -> <dataset>-<backbone>-x-<variant>.json "
        "(default: none)",
    )
    g.add_argument(
        "--results-dir",
        default=None,
        help="also write the results JSON files here, e.g. benchmarks/results (default: only "
        "under --out)",
    )
    g.add_argument(
        "--protocols",
        nargs="+",
        choices=list(PROTOCOLS),
        default=list(PROTOCOLS),
        help="evaluation protocols: seen items kept (full, the paper's) and/or removed",
    )
    demo = ", ".join(
        f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in DEMO.items()
    )
    g.add_argument(
        "--demo",
        action="store_true",
        help=f"a short first run, a few minutes on a 2-core CPU (sets {demo})",
    )
    g.add_argument(
        "--plain",
        action="store_true",
        help=f"stage 1 only, cross-entropy without the retrieval loss (a plain {title}); no "
        "memory bank, no RAFT",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted stage 1 from <out>/<run>/pretrain-state.pt (written every "
        "epoch); same settings required, --pretrain.epochs may grow",
    )
    g.add_argument(
        "--encoder-checkpoint",
        default=None,
        help="load a trained encoder state_dict instead of pre-training (with stage 2, copied "
        "into the run folder as encoder.pt; default: pre-train one)",
    )
    g = p.add_argument_group("the encoder")
    g.add_argument(
        "--max-len",
        type=positive_int,
        default=50,
        help="inputs keep the last max-len items (sets the split, the model, "
        "AugmenterConfig.max_len and PretrainConfig.max_len)",
    )
    g.add_argument("--hidden-size", type=positive_int, default=64, help="encoder hidden size")
    g.add_argument(
        "--dropout",
        type=probability,
        default=None,
        help="encoder dropout on embeddings and hidden states (default: the backbone's own: "
        "SASRec 0.5, BERT4Rec 0.2, GRU4Rec 0.3)",
    )
    g.add_argument(
        "--attn-dropout",
        type=probability,
        default=None,
        help="Transformer encoders' dropout on attention weights (default: the backbone's own: "
        "SASRec 0.5, BERT4Rec 0.2)",
    )


def build_parser(
    backbone: str | Backbone, description: str | None = None
) -> argparse.ArgumentParser:
    """The full command line of the runner for ``backbone``, with its defaults.

    Examples:
        >>> build_parser("gru4rec").parse_args([]).hidden_size
        64
    """
    backbone = resolve(backbone)
    p = argparse.ArgumentParser(
        description=description or f"{backbone.title} + RaSeRec: both stages on a dataset.",
        usage="%(prog)s [--dataset NAME] [--demo] [--plain] [options]",
        formatter_class=_HelpFormatter,
    )
    _run_options(p, backbone.title)
    if backbone.add_options is not None:
        backbone.add_options(p)
    add_config_options(p)
    p.set_defaults(**backbone.defaults)
    return p


def parse_args(
    backbone: str | Backbone, argv: list[str] | None = None, description: str | None = None
) -> argparse.Namespace:
    """Parses ``argv`` for ``backbone``: ``--demo`` defaults applied, every config checked.

    Exits with the config's own message (``PretrainConfig.lr must be > 0, got -1.0``) when a
    value does not fit.
    """
    backbone = resolve(backbone)
    parser = build_parser(backbone, description)
    args = parser.parse_args(argv)
    if args.demo:
        parser.set_defaults(**DEMO)
        args = parser.parse_args(argv)
    try:
        backbone.settings(args)
        for section in SECTIONS:
            config_from_args(args, section)  # the runner's own fields keep their defaults here
    except ValueError as e:
        parser.error(str(e))
    return args


def choose_threads(requested: int | None = None) -> tuple[int, str]:
    """Torch's CPU thread count for a run, and one line saying why.

    ``requested`` (``--threads``) wins. Otherwise: the cores this process may use
    (``os.sched_getaffinity``) less the 1-minute load average, rounded, at least 1 and at most
    ``$OMP_NUM_THREADS`` when set, so a busy machine is never oversubscribed.

    Examples:
        >>> choose_threads(3)[0]
        3
        >>> 1 <= choose_threads()[0] <= (os.cpu_count() or 1)
        True
    """
    if requested is not None:
        return requested, f"torch threads: {requested} (--threads)"
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    threads = max(1, min(cores, math.floor(cores - load + 0.5)))
    why = f"{cores} cores available, 1-minute load {load:.2f}"
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and 1 <= int(omp) < threads:
        threads = int(omp)
        why += f", OMP_NUM_THREADS={omp}"
    return threads, f"torch threads: {threads} ({why}; --threads N to choose)"
