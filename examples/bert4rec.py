"""BERT4Rec + RaSeRec: both stages on a named dataset.

python examples/bert4rec.py --dataset beauty             # full schedule, one seed
python examples/bert4rec.py --dataset beauty --demo      # a few minutes on a laptop CPU
python examples/bert4rec.py --dataset beauty --plain     # plain BERT4Rec (cloze task) only
python examples/bert4rec.py --objective next-item        # stage 1 with next-item cross-entropy
python examples/bert4rec.py --no-head                    # score the last layer's output directly
python examples/bert4rec.py --objective next-item --readout last   # read h at the last item
python examples/bert4rec.py --objective next-item --positions end  # positions count from the end

Stage 1 trains BERT4Rec's own cloze objective (plus the retrieval loss unless ``--plain``) on
each training prefix followed by its next item; ``--objective next-item`` trains the library's
next-item cross-entropy at the appended ``[mask]`` instead (how the paper's Table 3 trains its
DuoRec and RaSeRec rows on a BERT4Rec backbone). The representation is the output at a
``[mask]`` token appended after the last item.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

if __package__ in (None, ""):  # run as a script: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.common import Backbone, build_parser, dropout_kwargs, run
from raserec_adapter.data import Batch
from raserec_adapter.encoder import WrappedEncoder
from raserec_adapter.models import BERT4Rec


def build(num_items: int, args: argparse.Namespace) -> BERT4Rec:
    """BERT4Rec with RecBole's settings (2 layers, 2 heads, dropout 0.2, mask ratio 0.2)."""
    return BERT4Rec(
        num_items,
        hidden_size=args.hidden_size,
        max_len=args.max_len,
        head=getattr(args, "head", True),
        readout=getattr(args, "readout", "mask"),
        positions=getattr(args, "positions", "start"),
        **dropout_kwargs(args),
    )


def rec_loss(enc: WrappedEncoder, batch: Batch) -> torch.Tensor:
    """The cloze (masked-item) loss on prefix + next item replaces next-item cross-entropy."""
    model = enc.module
    assert isinstance(model, BERT4Rec)
    return model.cloze_loss(batch.item_seq, batch.lengths, targets=batch.targets)


def wrap(model: nn.Module) -> dict[str, Any]:
    """Scores use the item table without its ``[mask]`` row."""
    assert isinstance(model, BERT4Rec)
    return {"item_weights": model.item_weights}


BACKBONE = Backbone(
    "bert4rec", build, rec_loss=rec_loss, wrap=wrap, settings={"objective": "cloze"}
)
NEXT_ITEM = replace(BACKBONE, rec_loss=None, settings={"objective": "next-item"})


def parser() -> argparse.ArgumentParser:
    """This example's command line: the shared options plus the BERT4Rec-specific ones."""
    parser = build_parser("BERT4Rec", __doc__.splitlines()[0])
    parser.add_argument(
        "--objective",
        choices=["cloze", "next-item"],
        default="cloze",
        help="stage-1 recommendation loss: BERT4Rec's cloze task or next-item cross-entropy",
    )
    parser.add_argument(
        "--head",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score through BERT4Rec's prediction head (linear -> GELU -> LayerNorm); "
        "--no-head scores the last layer's output directly (RecBole before 1.1)",
    )
    parser.add_argument(
        "--readout",
        choices=["mask", "last"],
        default="mask",
        help="read the representation at a [mask] appended after the last item (BERT4Rec's "
        "own) or at the last item itself (needs --objective next-item)",
    )
    parser.add_argument(
        "--positions",
        choices=["start", "end"],
        default="start",
        help="count position embeddings from the first item (RecBole) or back from the last "
        "token, so the [mask] always sits at position 0",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    if args.readout == "last" and args.objective == "cloze":
        p.error("--readout last needs --objective next-item (the cloze task trains at [mask])")
    backbone = BACKBONE if args.objective == "cloze" else NEXT_ITEM
    extra: dict[str, object] = {}  # recorded in the results files; defaults are left out
    if not args.head:
        extra["head"] = False
    if args.readout != "mask":
        extra["readout"] = args.readout
    if args.positions != "start":
        extra["positions"] = args.positions
    if extra:
        backbone = replace(backbone, settings={**(backbone.settings or {}), **extra})
    run(backbone, args)


if __name__ == "__main__":
    main()
