"""Random SIGKILLs of a process that saves checkpoints A and B over one path; flipped bits.

Each try starts a child process that loads two small augmenters, A and B (a SASRec, a Faiss
bank, RAM weights and banks that differ), and saves them alternately to one path without end;
after a random delay the parent kills it with SIGKILL. Then the parent checks that the path
loads as A or as B with exactly that checkpoint's recommendations (a load puts back a complete
copy if the kill left nothing at the path), saves once more, and checks that nothing but the
checkpoint is left in the folder. The child records the last save step it finished in shared
memory, so the results say where the kills landed. ``--mode fallback`` makes the child use
the two-rename scheme that systems without ``renameat2(RENAME_EXCHANGE)`` get.

Then one bit at a time is flipped in each file of checkpoint A (every byte of the JSON files,
about 300 evenly spaced bytes of the others) and in a stage-1 state file (every byte), and
each damaged copy is loaded: the results count the loads refused with a message naming the
file, and keep one such message per file.

    python benchmarks/kill_checkpoints.py [--tries 50] [--modes exchange,fallback] [--threads 1]
"""

from __future__ import annotations

import argparse
import collections
import logging
import mmap
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import save

from raserec_adapter import (
    AugmenterConfig,
    BankConfig,
    RAMConfig,
    RetrievalAugmenter,
    Sequences,
    _atomic,
    leave_one_out,
)
from raserec_adapter.models import SASRec
from raserec_adapter.training.state import EarlyStopping, TrainingRun

QUERIES = [[1, 2, 3], [5, 6], [11, 12, 13, 14]]
STEP_BYTES = 64


def encoder() -> SASRec:
    return SASRec(num_items=30, hidden_size=16, max_len=10)


def make_references(work: Path) -> None:
    """Writes ``encoder.pt`` and the checkpoints ``A`` and ``B`` (other RAM weights, banks)."""
    torch.manual_seed(0)
    model = encoder()
    torch.save(model.state_dict(), work / "encoder.pt")
    rows = [[(u * 7 + 3 * i) % 30 + 1 for i in range(4 + u % 9)] for u in range(80)]
    split = leave_one_out(Sequences.from_lists(rows, num_items=30), max_len=10)
    bank = BankConfig(kind="faiss", index_factory="Flat")
    config = AugmenterConfig(max_len=10, bank=bank, ram=RAMConfig(k=4))
    for name, seed, phase in (("A", 1, "train"), ("B", 2, "test")):
        aug = RetrievalAugmenter(model, config)
        aug.build_bank(split, phase, show_progress=False)
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in aug.ram.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        aug.save(work / name)


def load(work: Path, path: Path) -> RetrievalAugmenter:
    model = encoder()
    model.load_state_dict(torch.load(work / "encoder.pt", weights_only=True))
    return RetrievalAugmenter.load(model, path)


def child(work: Path, target: Path, mode: str) -> None:
    """Saves A and B to ``target`` alternately until killed. Shared memory holds the name of
    the checkpoint being saved (byte 0) and the last step the save finished (the rest)."""
    _atomic._use_exchange = mode == "exchange"
    augs = {"A": load(work, work / "A"), "B": load(work, work / "B")}
    fd = os.open(work / "step", os.O_RDWR)
    shared = mmap.mmap(fd, STEP_BYTES)

    def note(step: str) -> None:
        shared[1:STEP_BYTES] = step.encode()[: STEP_BYTES - 1].ljust(STEP_BYTES - 1)

    _atomic._after_step = note
    print("ready", flush=True)
    while True:
        for name in "AB":
            shared[0:1] = name.encode()
            note("started")
            augs[name].save(target)
            note("saved")


NEW_AFTER = {"swapped", "moved new in", "removed old", "moved old aside"}
"""After these steps of the checkpoint's own save the new one must load (after "moved old
aside" nothing is at the path and the load puts the complete new copy back)."""


def expected_after(saving: str, step: str) -> str:
    """Which checkpoint a kill after ``step`` of saving ``saving`` must leave loadable."""
    owner, _, last = step.partition(".")
    done = step == "saved" or (owner == "checkpoint" and last in NEW_AFTER)
    return saving if done else {"A": "B", "B": "A"}[saving]


def leftovers(folder: Path, target: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p != target)


class WarningCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def one_try(work: Path, mode: str, delay: float, expected: dict[str, Any], log) -> dict[str, Any]:
    """B saved at a fresh path, then a child saving A, B, A, ... there killed after ``delay``."""
    folder = Path(tempfile.mkdtemp(dir=work))
    target = folder / "checkpoint"
    load(work, work / "B").save(target)  # so there is always an earlier checkpoint
    (work / "step").write_bytes(b"A" + b" " * (STEP_BYTES - 1))
    cmd = [sys.executable, __file__, "--child", str(work), str(target), mode]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    shared = (work / "step").read_bytes().decode()
    saving, step = shared[0], shared[1:].strip() or "started"
    out: dict[str, Any] = {"saving": saving, "after_step": step}
    out["expected"] = expected_after(saving, step)
    out["path_missing"] = not target.exists()
    out["leftovers_after_kill"] = len(leftovers(folder, target))
    log.messages.clear()
    try:
        got = load(work, target).recommend(QUERIES, k=5)
    except Exception as e:  # counted, never expected
        out["loaded"] = f"failed: {type(e).__name__}: {e}"
    else:
        same = [
            n for n, (i, s) in expected.items() if torch.equal(i, got[0]) and torch.equal(s, got[1])
        ]
        out["loaded"] = same[0] if len(same) == 1 else "neither A nor B"
    out["recovered_by_load"] = any("is back in place" in m for m in log.messages)
    out["leftovers_after_load"] = len(leftovers(folder, target))
    load(work, work / "A").save(target)
    out["leftovers_after_next_save"] = leftovers(folder, target)
    again = load(work, target).recommend(QUERIES, k=5)
    out["next_save_loads_as_A"] = bool(torch.equal(again[1], expected["A"][1]))
    return out


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        torch.set_num_threads(1)
        child(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tries", type=int, default=50, help="kills per mode")
    p.add_argument("--modes", default="exchange,fallback")
    p.add_argument("--max-delay", type=float, default=1.0, help="seconds after the child is ready")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rng = random.Random(args.seed)
    log = WarningCounter()
    logging.getLogger("raserec_adapter").addHandler(log)
    record: dict[str, Any] = {
        "settings": {
            "tries_per_mode": args.tries,
            "max_delay_seconds": args.max_delay,
            "seed": args.seed,
            "threads": args.threads,
        },
        "modes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_references(work)
        expected = {n: load(work, work / n).recommend(QUERIES, k=5) for n in "AB"}
        for mode in args.modes.split(","):
            tries = []
            for i in range(args.tries):
                tries.append(one_try(work, mode, rng.uniform(0, args.max_delay), expected, log))
                t = tries[-1]
                print(mode, i + 1, t["saving"], t["after_step"], t["loaded"], flush=True)
            record["modes"][mode] = summary(tries)
        record["flipped_bits"] = flips(work)
    path = save("checkpoint-kills", record, time.perf_counter() - start)
    print(f"wrote {path}")


def summary(tries: list[dict[str, Any]]) -> dict[str, Any]:
    loaded = collections.Counter(t["loaded"] for t in tries)
    return {
        "tries": len(tries),
        "loaded_as_A": loaded.pop("A", 0),
        "loaded_as_B": loaded.pop("B", 0),
        "not_loadable_or_mixed": dict(loaded),
        "loaded_the_one_the_step_implies": sum(t["loaded"] == t["expected"] for t in tries),
        "nothing_at_the_path_after_the_kill": sum(t["path_missing"] for t in tries),
        "put_back_by_the_load": sum(t["recovered_by_load"] for t in tries),
        "tries_with_leftovers_after_the_kill": sum(t["leftovers_after_kill"] > 0 for t in tries),
        "tries_with_leftovers_after_the_load": sum(t["leftovers_after_load"] > 0 for t in tries),
        "tries_with_leftovers_after_the_next_save": sum(
            bool(t["leftovers_after_next_save"]) for t in tries
        ),
        "next_save_loads_as_A": sum(t["next_save_loads_as_A"] for t in tries),
        "killed_after_step": dict(
            sorted(collections.Counter(t["after_step"] for t in tries).items())
        ),
    }


def flipped(file: Path, load_it, positions: range, root: Path) -> dict[str, Any]:
    """Loads ``load_it()`` with bit 0 of each byte in ``positions`` of ``file`` flipped."""
    original = file.read_bytes()
    out: dict[str, Any] = {"bytes": len(original), "flips": 0, "refused_naming_the_file": 0}
    other: list[str] = []
    middle = positions[len(positions) // 2]
    for i in positions:
        damaged = bytearray(original)
        damaged[i] ^= 0x01
        file.write_bytes(bytes(damaged))
        out["flips"] += 1
        try:
            load_it()
        except ValueError as e:  # CheckpointError and the state's ValueError
            message = str(e).replace(f"{root}/", "")
            if file.name in message:
                out["refused_naming_the_file"] += 1
                if i == middle:  # the message of a flip in the middle of the file
                    out["message_for_the_middle_byte"] = message
            else:
                other.append(message)
        else:
            other.append(f"loaded with byte {i} flipped")
    file.write_bytes(original)
    out["other_outcomes"] = other[:5]
    return out


def flips(work: Path) -> dict[str, Any]:
    """Every checkpoint file and a stage-1 state file, damaged one bit at a time."""
    ck = work / "flips" / "checkpoint"
    load(work, work / "A").save(ck)
    out = {}
    for name in ("config.json", "ram.pt", "bank/bank.json", "bank/arrays.npz", "bank/index.faiss"):
        size = (ck / name).stat().st_size
        step = 1 if name.endswith(".json") else max(1, size // 300)
        out[name] = flipped(ck / name, lambda: load(work, ck), range(0, size, step), work)
    module = torch.nn.Linear(16, 16)
    opt = torch.optim.Adam(module.parameters())
    run = TrainingRun({"epochs": 1}, module, opt, None, torch.device("cpu"))
    stop = EarlyStopping()
    stop.update(1, 0.5, {}, module)
    state = work / "flips" / "pretrain-state.pt"
    run.save(state, stop)
    size = state.stat().st_size
    out["pretrain-state.pt"] = flipped(state, lambda: run.restore(state), range(size), work)
    return out


if __name__ == "__main__":
    main()
