"""BERT4Rec + RaSeRec: both stages on a named dataset.

python examples/bert4rec.py --dataset beauty             # full schedule, one seed
python examples/bert4rec.py --dataset beauty --demo      # a few minutes on a laptop CPU
python examples/bert4rec.py --dataset beauty --plain     # plain BERT4Rec (cloze task) only

Stage 1 trains BERT4Rec's own cloze objective (plus the retrieval loss unless ``--plain``); the
representation is the output at a ``[mask]`` token appended after the last item.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

if __package__ in (None, ""):  # run as a script: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.common import Backbone, build_parser, run
from examples.models import BERT4Rec
from raserec_adapter import Batch, WrappedEncoder


def build(num_items: int, args: argparse.Namespace) -> BERT4Rec:
    """BERT4Rec with RecBole's settings (2 layers, 2 heads, dropout 0.2, mask ratio 0.2)."""
    return BERT4Rec(num_items, hidden_size=args.hidden_size, max_len=args.max_len)


def rec_loss(enc: WrappedEncoder, batch: Batch) -> torch.Tensor:
    """The cloze (masked-item) loss replaces next-item cross-entropy in stage 1."""
    model = enc.module
    assert isinstance(model, BERT4Rec)
    return model.cloze_loss(batch.item_seq, batch.lengths)


def wrap(model: nn.Module) -> dict[str, Any]:
    """Scores use the item table without its ``[mask]`` row."""
    assert isinstance(model, BERT4Rec)
    return {"item_weights": model.item_weights}


BACKBONE = Backbone("bert4rec", build, rec_loss=rec_loss, wrap=wrap)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser("BERT4Rec", __doc__.splitlines()[0])
    run(BACKBONE, parser.parse_args(argv))


if __name__ == "__main__":
    main()
