"""Both stages on a tiny generated dataset, for ``tests/test_distributed.py``.

``tests/test_distributed.py`` runs :func:`pipeline` and the example runner (:func:`runner_argv`)
in its own process, and launches this file with ``python -m torch.distributed.run
--nproc_per_node 2 --standalone tests/data/ddp_worker.py OUT REPORTS DATA``: each process
joins the group, runs the same :func:`pipeline` and the runner on the data file ``DATA`` with
their files under ``OUT``, and saves what it got (weights, representations, metrics, every file
it wrote under ``OUT``, how often it validated) to ``REPORTS/rank<N>.pt``. Importing it runs
nothing.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raserec_adapter import (
    AugmenterConfig,
    BankConfig,
    PretrainConfig,
    RAFTConfig,
    RAMConfig,
    RetrievalAugmenter,
    RunOptions,
    Sequences,
    leave_one_out,
)
from raserec_adapter.data import LeaveOneOutSplit
from raserec_adapter.models import GRU4Rec, SASRec
from raserec_adapter.training import pretraining, raft

MAX_LEN = 8
ITEMS = 24


def tiny_split(users: int = 60, seed: int = 5) -> LeaveOneOutSplit:
    """Users walking a ring of items with some noise (item i mostly followed by i + 1)."""
    rng = np.random.default_rng(seed)
    lists = []
    for _ in range(users):
        cur, seq = int(rng.integers(1, ITEMS + 1)), []
        for _ in range(int(rng.integers(4, 13))):
            seq.append(cur)
            jump = rng.random() < 0.2
            cur = int(rng.integers(1, ITEMS + 1)) if jump else cur % ITEMS + 1
        lists.append(seq)
    return leave_one_out(Sequences.from_lists(lists, num_items=ITEMS), max_len=MAX_LEN)


def write_data(split: LeaveOneOutSplit, path: Path) -> None:
    """The split's sequences as a ``user_id item_id ...`` file (the example runner's input)."""
    seqs = split.sequences
    lines = [" ".join(map(str, [u, *seqs[u].tolist()])) for u in range(seqs.num_users)]
    path.write_text("\n".join(lines) + "\n")


def runner_argv(data: Path, out: Path) -> list[str]:
    """The example runner's options for a short run of both stages without dropout."""
    return (
        f"--dataset {data} --seed 0 --out {out} --threads 1 --hidden-size 16 --max-len {MAX_LEN} "
        "--dropout 0 --attn-dropout 0 --ram.dropout 0 --ram.k 3 --bank.kind torch "
        "--protocols full --pretrain.epochs 3 --pretrain.batch-size 100 --raft.epochs 2"
    ).split()


def odd_batch(n: int, low: int) -> int:
    """A batch size from ``low`` on whose last batch holds one row (one process gets none)."""
    return next(b for b in range(low, n) if n % b == 1)


# stage-1 settings per case: every batching mode, the fused step, the InfoNCE masks
CASES: dict[str, dict[str, Any]] = {
    "windows": {"batching": "windows"},
    "random": {"batching": "random", "mask_false_negatives": True},
    "bucketed_fused": {"batching": "bucketed", "mask_same_user_negatives": True, "fuse": True},
}


TRAINED = 1
"""How many of the cases train to early stopping (all have their gradients compared)."""


def sasrec() -> SASRec:
    """The model every case trains, from the same initial weights (no dropout: one process and
    several then compute the same function)."""
    torch.manual_seed(0)
    return SASRec(ITEMS, hidden_size=16, max_len=MAX_LEN, dropout=0.0, attn_dropout=0.0)


def stage1_config(pairs: int, options: dict[str, Any], **more: Any) -> PretrainConfig:
    return PretrainConfig(
        batch_size=odd_batch(pairs, 40), retrieval_weight=0.5, seed=3, **options, **more
    )


class GradientRecorder:
    """Stands in for a run's optimizer: keeps each step's gradients and changes no weight."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.params = list(module.parameters())
        self.grads: list[torch.Tensor] = []

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        flat = [torch.zeros_like(p) if p.grad is None else p.grad for p in self.params]
        self.grads.append(torch.cat([g.flatten() for g in flat]))


def epoch_gradients(split: LeaveOneOutSplit, name: str) -> torch.Tensor:
    """``(steps, parameters)``: the gradient of every batch of a case's first epoch, at the
    initial weights (the optimizer never steps)."""
    options = dict(CASES[name])
    fuse = options.pop("fuse", False)
    model = sasrec()
    cfg = stage1_config(len(split.train), options, max_len=MAX_LEN)
    run = pretraining._setup(model, split, cfg, None, torch.device("cpu"), fuse)
    recorder = GradientRecorder(model)
    run.optimizer = recorder  # type: ignore[assignment]
    batches, _ = pretraining._epoch_batches(run, 1)
    for host in batches:
        pretraining._step(run, host)
    return torch.stack(recorder.grads)


def fresh_banks(split: LeaveOneOutSplit) -> dict[str, dict[str, torch.Tensor]]:
    """Banks built from untrained encoders: SASRec (its causal windows; the training phase) and
    GRU4Rec (prefix batches; the test phase, with the validation pairs)."""
    out = {}
    for name, build, phase in (
        ("sasrec", sasrec, "train"),
        ("gru4rec", lambda: GRU4Rec(ITEMS, hidden_size=16), "test"),
    ):
        torch.manual_seed(1)
        aug = RetrievalAugmenter(
            build(), AugmenterConfig(max_len=MAX_LEN, bank=BankConfig(kind="torch"))
        )
        aug.build_bank(split, phase, show_progress=False)
        assert aug.bank is not None
        keys, values = aug.bank.fetch(torch.arange(len(aug.bank)))
        out[f"bank.{name}"] = {"keys": keys.clone(), "values": values.clone()}
    return out


def pipeline(out: Path) -> dict[str, Any]:
    """Gradients and fresh banks, then stage 1 for every case, and the bank, RAFT and test
    metrics after the first."""
    split = tiny_split()
    pairs = len(split.train)
    report: dict[str, Any] = {"tensors": fresh_banks(split), "cases": {}}
    for name in CASES:
        report["tensors"][f"{name}.gradients"] = {"g": epoch_gradients(split, name)}
    for name, options in list(CASES.items())[:TRAINED]:
        options = dict(options)
        fuse = options.pop("fuse", False)
        model = sasrec()
        ram = RAMConfig(k=3, dropout=0.0, inner_size=32)
        aug = RetrievalAugmenter(
            model, AugmenterConfig(max_len=MAX_LEN, bank=BankConfig(kind="torch"), ram=ram)
        )
        cfg = stage1_config(pairs, options, epochs=12, lr=0.01, patience=1)
        run = RunOptions(state_path=out / name / "state.pt", fuse=fuse)
        res = aug.pretrain(
            split, cfg, checkpoint=out / name / "encoder.pt", run=run, show_progress=False
        )
        case: dict[str, Any] = {
            "epochs_run": res.epochs_run,
            "best_epoch": res.best_epoch,
            "history": [{k: v for k, v in e.items() if "seconds" not in k} for e in res.history],
        }
        report["tensors"][f"{name}.encoder"] = {k: v.clone() for k, v in model.state_dict().items()}
        valid_h = aug.encode(split.sequences, split.valid)  # what the encoder computes
        report["tensors"][f"{name}.valid_h"] = {"h": valid_h}
        if name == "windows":  # stage 2 once
            aug.build_bank(split, show_progress=False)
            assert aug.memory.train_keys is not None
            report["tensors"]["bank_keys"] = {"keys": aug.memory.train_keys.clone()}
            rcfg = RAFTConfig(
                epochs=4,
                batch_size=odd_batch(pairs, 30),
                lr=0.005,
                seed=1,
                patience=1,
                fallback=False,
                alpha_grid=(0.3, 0.8),
            )
            fit = aug.fit_raft(split, rcfg, show_progress=False)
            report["tensors"]["ram"] = {k: v.clone() for k, v in aug.ram.state_dict().items()}
            case["raft"] = {
                "epochs_run": fit.epochs_run,
                "best_epoch": fit.best_epoch,
                "alpha": aug.config.ram.alpha,
                "history": [
                    {k: v for k, v in e.items() if k != "train_seconds"} for e in fit.history
                ],
            }
            case["test"] = aug.evaluate(split, "test", show_progress=False)
        report["cases"][name] = case
    return report


def _counting(module: Any, name: str, calls: dict[str, int]) -> None:
    """Counts the calls of ``module.name`` (a validation function) in ``calls[name]``."""
    original = getattr(module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        return original(*args, **kwargs)

    calls[name] = 0
    setattr(module, name, counted)


WRITES = {"os.rename", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "shutil.copyfile"}
"""Audit events (besides opening a file for writing) that change files."""


def _written_path(event: str, args: tuple[Any, ...]) -> str | None:
    """The path an audit event writes, renames to, makes or removes (``None``: none)."""
    if not args or not isinstance(args[0], (str, os.PathLike)):
        return None
    if event == "open":
        mode, flags = args[1], args[2]
        if isinstance(mode, str):
            writing = any(c in mode for c in "wax+")
        else:  # os.open
            writing = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        return os.path.abspath(args[0]) if writing else None
    if event == "os.rename":  # os.replace too: what it names is the target
        return os.path.abspath(args[1])
    return os.path.abspath(args[0]) if event in WRITES else None


def main(out: Path, reports: Path, data: Path) -> None:
    from raserec_adapter import distributed
    from raserec_adapter.experiments import main as run_example

    assert distributed.init("cpu") and distributed.active(), "not launched by torchrun"
    torch.set_num_threads(1)
    written: list[str] = []
    root = str(out.resolve())

    def audit(event: str, args: tuple[Any, ...]) -> None:  # every write of a file under OUT
        path = _written_path(event, args)
        if path is not None and path.startswith(root):
            written.append(f"{event} {path}")

    sys.addaudithook(audit)
    calls: dict[str, int] = {}
    _counting(pretraining, "evaluate_encoder", calls)
    _counting(raft, "evaluate_ram", calls)
    report = pipeline(out / "api")
    run_example("sasrec", runner_argv(data, out / "runner"))
    rank = distributed.rank()
    meta = {"rank": rank, "written": written, "validations": calls, "cases": report["cases"]}
    reports.mkdir(parents=True, exist_ok=True)
    torch.save({"meta": json.dumps(meta), **report["tensors"]}, reports / f"rank{rank}.pt")
    distributed.finish()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
