"""The experiment runner behind ``examples/``: one command line for every backbone.

:func:`main` runs both RaSeRec stages for a registered backbone (:data:`BACKBONES`: SASRec,
GRU4Rec, BERT4Rec) or a :class:`Backbone` of one's own, with a command line whose training
options are generated from the config dataclasses (``--pretrain.lr``, ``--bank.nprobe``,
``--ram.k``, ``--raft.epochs``; see :mod:`raserec_adapter.experiments.options`). It prints one
result table per protocol and writes results files with provenance
(:mod:`raserec_adapter.experiments.reporting`).

Examples:
    >>> from raserec_adapter.experiments import BACKBONES, parse_args
    >>> sorted(BACKBONES)
    ['bert4rec', 'gru4rec', 'sasrec']
    >>> vars(parse_args("bert4rec", ["--ram.k", "10"]))["ram.k"]
    10
"""

from raserec_adapter.experiments.backbones import BACKBONES, Backbone, dropout_kwargs
from raserec_adapter.experiments.cli import DEMO, build_parser, choose_threads, parse_args
from raserec_adapter.experiments.options import add_config_options, config_from_args
from raserec_adapter.experiments.runner import main, run

__all__ = [
    "BACKBONES",
    "DEMO",
    "Backbone",
    "add_config_options",
    "build_parser",
    "choose_threads",
    "config_from_args",
    "dropout_kwargs",
    "main",
    "parse_args",
    "run",
]
