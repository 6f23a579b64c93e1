"""An example run with the RAM's dropout drawn by ``torch.nn.Dropout`` or by the library's own.

``raserec_adapter.layers.Dropout`` (the RAM's default) draws the same distribution as
``torch.nn.Dropout`` from a different random stream, several times faster on a CPU. This script
runs an example (both stages, or stage 2 alone with ``--encoder-checkpoint``) with the RAM's
dropout class chosen, so that the two can be compared over the same frozen encoder and RAFT
seeds; the example's own options follow the backbone name and are passed on unchanged:

    python benchmarks/ram_dropout.py torch sasrec --dataset beauty --seed 0 \\
        --encoder-checkpoint runs/<run>/encoder.pt --tag one-encoder-nn-dropout

Merge the arms' seeds with ``benchmarks/merge_seeds.py``; the results files record this
script's command line.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raserec_adapter import layers, ram

DROPOUTS = {"torch": torch.nn.Dropout, "layers": layers.Dropout}


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] not in DROPOUTS:
        sys.exit(f"usage: ram_dropout.py {{{','.join(DROPOUTS)}}} BACKBONE [EXAMPLE OPTIONS...]")
    ram.Dropout = DROPOUTS[argv[0]]  # read by the RAM's layers when the augmenter builds them
    example = importlib.import_module(f"examples.{argv[1]}")
    example.main(argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
