"""The registry of shipped backbones: how each is built from the parsed options.

A :class:`Backbone` says what the runner cannot know about an encoder: how to build it from the
parsed options, its own options, defaults and stage-1 loss if any, what a results file records
of it, and its name in the results files (``<dataset>-<name>-<variant>.json``). A backbone of
one's own is a :class:`Backbone` too (see ``examples/custom_encoder.py``).

Examples:
    >>> import argparse
    >>> model = BACKBONES["sasrec"].build(100, argparse.Namespace(hidden_size=16, max_len=10))
    >>> type(model).__name__, model.item_embedding.weight.shape
    ('SASRec', torch.Size([101, 16]))
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from raserec_adapter.data import Batch
from raserec_adapter.encoder import WrappedEncoder
from raserec_adapter.models import BERT4Rec, GRU4Rec, SASRec
from raserec_adapter.training.pretraining import RecLoss

__all__ = ["BACKBONES", "Backbone", "dropout_kwargs"]


def _no_settings(args: argparse.Namespace) -> dict[str, object]:
    return {}


def _no_loss(args: argparse.Namespace) -> RecLoss | None:
    return None


@dataclass(frozen=True)
class Backbone:
    """An encoder the runner can train: a name, a factory, and what differs from the default.

    Attributes:
        name: Used in results-file and run-folder names, e.g. ``"sasrec"``.
        title: Shown in ``--help``, e.g. ``"SASRec"``.
        build: ``build(num_items, args)`` returns a new encoder from the parsed options (reads
            ``args.hidden_size``, ``args.max_len`` and the backbone's own options).
        wrap: ``wrap(encoder)`` gives keyword arguments of
            :class:`~raserec_adapter.RetrievalAugmenter` (``encode=``, ``item_weights=``,
            ``encode_all=``) for an encoder that does not follow the RecBole contract.
        rec_loss: ``rec_loss(args)`` is the stage-1 recommendation loss for these options, or
            ``None`` for the library's next-item cross-entropy.
        settings: ``settings(args)`` is what the results files record of the backbone's own
            options (``backbone_settings``); raises ``ValueError`` for options that do not go
            together.
        add_options: Adds the backbone's own options to the parser.
        defaults: Parser defaults of this backbone, by destination (``{"pretrain.batching":
            "random"}``).
        converged: Per dataset, one line saying what a converged run of it reaches (printed
            after a ``--demo`` run).
    """

    name: str
    title: str
    build: Callable[[int, argparse.Namespace], nn.Module]
    wrap: Callable[[nn.Module], dict[str, Any]] | None = None
    rec_loss: Callable[[argparse.Namespace], RecLoss | None] = _no_loss
    settings: Callable[[argparse.Namespace], dict[str, object]] = _no_settings
    add_options: Callable[[argparse.ArgumentParser], None] | None = None
    defaults: Mapping[str, object] = field(default_factory=dict)
    converged: Mapping[str, str] = field(default_factory=dict)

    def augmenter_kwargs(self, encoder: nn.Module) -> dict[str, Any]:
        """The keyword arguments :class:`~raserec_adapter.RetrievalAugmenter` needs for it."""
        return self.wrap(encoder) if self.wrap else {}


def dropout_kwargs(args: argparse.Namespace, attention: bool = True) -> dict[str, float]:
    """``dropout=`` / ``attn_dropout=`` for a model's constructor, only those given (a
    namespace without these attributes, e.g. built by hand, gives none).

    Raises:
        SystemExit: ``--attn-dropout`` for a model without attention (``attention=False``).

    Examples:
        >>> dropout_kwargs(argparse.Namespace(dropout=0.3, attn_dropout=None))
        {'dropout': 0.3}
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


# ------------------------------------------------------------------------------ SASRec
def _build_sasrec(num_items: int, args: argparse.Namespace) -> SASRec:
    """SASRec with the paper's settings (2 layers, 2 heads, dropout 0.5)."""
    return SASRec(
        num_items, hidden_size=args.hidden_size, max_len=args.max_len, **dropout_kwargs(args)
    )


SASREC = Backbone(
    "sasrec",
    "SASRec",
    _build_sasrec,
    # the released code's batches: over five seeds on Beauty they trained better encoders,
    # frozen and with the RAM, than PretrainConfig's faster default "windows"
    defaults={"pretrain.batching": "random"},
    converged={
        "beauty": "a converged run (five seeds, benchmarks/results/beauty-sasrec-"
        "{pretrained-plain,raserec}.json) reaches HR@10 0.0857 / NDCG@10 0.0446 frozen and "
        "HR@10 0.0871 / NDCG@10 0.0469 with the RAM",
    },
)


# ------------------------------------------------------------------------------ GRU4Rec
def _build_gru4rec(num_items: int, args: argparse.Namespace) -> GRU4Rec:
    """GRU4Rec with RecBole's settings (1 GRU layer of 128, embedding dropout 0.3)."""
    return GRU4Rec(num_items, hidden_size=args.hidden_size, **dropout_kwargs(args, attention=False))


GRU4REC = Backbone("gru4rec", "GRU4Rec", _build_gru4rec)


# ------------------------------------------------------------------------------ BERT4Rec
def _build_bert4rec(num_items: int, args: argparse.Namespace) -> BERT4Rec:
    """BERT4Rec with RecBole's settings (2 layers, 2 heads, dropout 0.2, mask ratio 0.2)."""
    return BERT4Rec(
        num_items,
        hidden_size=args.hidden_size,
        max_len=args.max_len,
        head=getattr(args, "head", True),
        readout=getattr(args, "readout", "last"),
        positions=getattr(args, "positions", "start"),
        **dropout_kwargs(args),
    )


def cloze_loss(enc: WrappedEncoder, batch: Batch) -> torch.Tensor:
    """BERT4Rec's cloze (masked-item) loss on each prefix followed by its next item."""
    model = enc.module
    assert isinstance(model, BERT4Rec)
    return model.cloze_loss(batch.item_seq, batch.lengths, targets=batch.targets)


def _bert4rec_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("BERT4Rec")
    g.add_argument(
        "--objective",
        choices=["next-item", "cloze"],
        default="next-item",
        help="stage-1 recommendation loss: next-item cross-entropy at the readout, or "
        "BERT4Rec's own cloze task (needs --readout mask)",
    )
    g.add_argument(
        "--readout",
        choices=["last", "mask"],
        default="last",
        help="read the representation at the last item, or at a [mask] appended after it",
    )
    g.add_argument(
        "--head",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score through BERT4Rec's prediction head (linear -> GELU -> LayerNorm); "
        "--no-head scores the last layer's output directly (RecBole before 1.1)",
    )
    g.add_argument(
        "--positions",
        choices=["start", "end"],
        default="start",
        help="count position embeddings from the first item (RecBole) or back from the "
        "readout token, so that it always sits at position 0",
    )


def _bert4rec_settings(args: argparse.Namespace) -> dict[str, object]:
    if args.objective == "cloze" and args.readout != "mask":
        raise ValueError("--objective cloze needs --readout mask (the cloze task trains at [mask])")
    settings: dict[str, object] = {"objective": args.objective, "readout": args.readout}
    if not args.head:
        settings["head"] = False
    if args.positions != "start":
        settings["positions"] = args.positions
    return settings


def _bert4rec_loss(args: argparse.Namespace) -> RecLoss | None:
    return cloze_loss if getattr(args, "objective", "next-item") == "cloze" else None


def _bert4rec_wrap(model: nn.Module) -> dict[str, Any]:
    """Scores use the item table without its ``[mask]`` row."""
    assert isinstance(model, BERT4Rec)
    return {"item_weights": model.item_weights}


BERT4REC = Backbone(
    "bert4rec",
    "BERT4Rec",
    _build_bert4rec,
    wrap=_bert4rec_wrap,
    rec_loss=_bert4rec_loss,
    settings=_bert4rec_settings,
    add_options=_bert4rec_options,
)

BACKBONES: dict[str, Backbone] = {b.name: b for b in (SASREC, GRU4REC, BERT4REC)}
"""The shipped backbones by name: ``"sasrec"``, ``"gru4rec"``, ``"bert4rec"``."""
