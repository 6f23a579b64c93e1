"""Side-by-side stage-1 learning curves of runs, read from their pre-training state files.

Every run of the examples writes ``<out>/<run>/pretrain-state.pt`` after each epoch (see
``docs/checkpoints.md``); its history holds the losses and validation metrics of every epoch
so far. This script compares arms (e.g. two model variants, same seed) epoch by epoch, prints
the validation metric of each, and writes a results file with the arms' own commands and this
script's provenance. A learning-curve probe, not a comparison of converged models.

    python tools/learning_curves.py --name beauty-bert4rec-head-probe \\
        --what "BERT4Rec with vs without its prediction head, seed 0" \\
        --arm "head=/tmp/runs/beauty-bert4rec-raserec-seed0/pretrain-state.pt" \\
        --command "head=python examples/bert4rec.py --dataset beauty ..." \\
        --arm "no-head=/tmp/runs/beauty-bert4rec-raserec-seed0-nohead/pretrain-state.pt" \\
        --command "no-head=python examples/bert4rec.py --dataset beauty --no-head ..."

A state file does not outlive its session; an arm already recorded by an earlier probe is
read back from that results file with ``--arm NAME=benchmarks/results/<probe>.json#ARM`` (its
state file path and command come along).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # for _common

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


def read_recorded_arm(spec: str) -> dict[str, Any]:
    """One arm of an earlier results file of this script, named as ``<file>.json#<arm>``."""
    path, _, arm = spec.partition("#")
    if not arm:
        raise SystemExit(f"{spec}: name the recorded arm after a '#', e.g. probe.json#windows")
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{path}: cannot read it as a JSON results file ({exc})") from exc
    arms = record.get("arms") if isinstance(record, dict) else None
    if not isinstance(arms, dict) or arm not in arms:
        have = sorted(arms) if isinstance(arms, dict) else []
        raise SystemExit(f"{path} holds no recorded arm {arm!r} (it has {have})")
    return arms[arm]


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
    recorded: dict[str, dict[str, Any]] = {}
    for name, spec in arms.items():
        if spec.partition("#")[0].endswith(".json"):
            arm = read_recorded_arm(spec)
            recorded[name] = {
                "state_file": arm.get("state_file", ""),
                "command": commands.get(name, arm.get("command", "")),
                "read_from": spec,
                "epochs": arm["epochs"],
            }
        else:
            recorded[name] = {
                "state_file": spec,
                "command": commands.get(name, ""),
                "epochs": read_history(spec),
            }
    curves = {name: arm["epochs"] for name, arm in recorded.items()}
    epochs = min(len(c) for c in curves.values())
    print("epoch  " + "  ".join(f"{n:>12}" for n in curves))
    for i in range(epochs):
        print(f"{i + 1:5d}  " + "  ".join(f"{c[i][args.metric]:12.4f}" for c in curves.values()))
    for name, curve in curves.items():
        best = max(curve, key=lambda e: e[args.metric])
        value, epoch = best[args.metric], best["epoch"]
        print(f"{name}: best {args.metric} {value:.4f} at epoch {epoch} of {len(curve)}")
    record: dict[str, Any] = {"what": args.what, "compared_epochs": epochs}
    if args.note:
        record["note"] = args.note
    record["arms"] = recorded
    print(f"wrote {save(args.name, record, time.perf_counter() - t0)}")


if __name__ == "__main__":
    main()
