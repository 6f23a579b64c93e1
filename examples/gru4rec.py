"""GRU4Rec + RaSeRec: both stages on a named dataset.

python examples/gru4rec.py --dataset beauty             # full schedule, one seed
python examples/gru4rec.py --dataset beauty --demo      # a few minutes on a laptop CPU
python examples/gru4rec.py --dataset beauty --plain     # plain cross-entropy GRU4Rec only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.common import Backbone, build_parser, dropout_kwargs, run
from raserec_adapter.models import GRU4Rec


def build(num_items: int, args: argparse.Namespace) -> GRU4Rec:
    """GRU4Rec with RecBole's settings (1 GRU layer of 128, embedding dropout 0.3)."""
    return GRU4Rec(num_items, hidden_size=args.hidden_size, **dropout_kwargs(args, attention=False))


BACKBONE = Backbone("gru4rec", build)


def parser() -> argparse.ArgumentParser:
    """This example's command line (the options every example shares)."""
    return build_parser("GRU4Rec", __doc__.splitlines()[0])


def main(argv: list[str] | None = None) -> None:
    run(BACKBONE, parser().parse_args(argv))


if __name__ == "__main__":
    main()
