"""Side-by-side stage-1 learning curves of runs, read from their pre-training state files.

Every run of the examples writes ``<out>/<run>/pretrain-state.pt`` after each epoch (see
``docs/checkpoints.md``); its history holds the losses and validation metrics of every epoch
so far. This script compares arms (e.g. two model variants, same seed) epoch by epoch, prints
the validation metric of each, and writes a results file with the arms' own commands and this
script's provenance. A learning-curve probe, not a comparison of converged models.

    python benchmarks/learning_curves.py --name beauty-bert4rec-head-probe \\
        --what "BERT4Rec with vs without its prediction head, seed 0" \\
        --arm "head=/tmp/runs/beauty-bert4rec-raserec-seed0/pretrain-state.pt" \\
        --command "head=python examples/bert4rec.py --dataset beauty ..." \\
        --arm "no-head=/tmp/runs/beauty-bert4rec-raserec-seed0-nohead/pretrain-state.pt" \\
        --command "no-head=python examples/bert4rec.py --dataset beauty --no-head ..."
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from _common import save

KEEP = ("epoch", "loss_rec", "loss_ret", "valid_MRR@10", "valid_HR@10", "train_seconds")


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """The per-epoch history stored in a pre-training state file (read without unpickling)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "meta" not in state:
        raise SystemExit(f"{path} is not a pre-training state file (no 'meta' entry)")
    meta = json.loads(state["meta"])
    return [
        {k: round(v, 4) if isinstance(v, float) else v for k, v in e.items() if k in KEEP}
        for e in meta["result"]["history"]
    ]


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"{flag} takes NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True, help="results file benchmarks/results/<name>.json")
    p.add_argument("--what", required=True, help="one sentence: what the probe compares")
    p.add_argument("--arm", action="append", default=[], help="NAME=path/to/pretrain-state.pt")
    p.add_argument("--command", action="append", default=[], help="NAME=the arm's command")
    p.add_argument("--note", default="", help="free text: machine load, stopped runs, ...")
    p.add_argument("--metric", default="valid_MRR@10", help="metric printed per epoch")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    arms = _pairs(args.arm, "--arm")
    commands = _pairs(args.command, "--command")
    if len(arms) < 2:
        raise SystemExit("give at least two --arm NAME=STATE_FILE")
    curves = {name: read_history(path) for name, path in arms.items()}
    epochs = min(len(c) for c in curves.values())
    print("epoch  " + "  ".join(f"{n:>12}" for n in curves))
    for i in range(epochs):
        print(f"{i + 1:5d}  " + "  ".join(f"{c[i][args.metric]:12.4f}" for c in curves.values()))
    record: dict[str, Any] = {"what": args.what, "compared_epochs": epochs}
    if args.note:
        record["note"] = args.note
    record["arms"] = {
        name: {"state_file": arms[name], "command": commands.get(name, ""), "epochs": curve}
        for name, curve in curves.items()
    }
    print(f"wrote {save(args.name, record, time.perf_counter() - t0)}")


if __name__ == "__main__":
    main()
