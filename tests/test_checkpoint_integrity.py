"""Saves interrupted at every step, by an exception or a real SIGKILL, and damaged files.

Three writers: the augmenter's checkpoint (``write_checkpoint``, with a Faiss bank inside), a
bank saved on its own (``write_bank_dir``) and the stage-1 state file (``TrainingRun.save``).
The test hook ``raserec_adapter._atomic._after_step`` raises or kills the process after one
step; then loading the path must give the old or the new save, with identical
recommendations (search results, weights), and the next save must leave no leftovers. The
steps are parametrized from the constants the writers declare, and one test per writer checks
that a save takes exactly those steps, so a new step is covered or fails that test.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import pretrained_sasrec, small_augmenter

from raserec_adapter import CheckpointError, FaissMemoryBank, RetrievalAugmenter, _atomic
from raserec_adapter import checkpoint as ckpt
from raserec_adapter.memory import format as bank_format
from raserec_adapter.training.state import EarlyStopping, TrainingRun

MAX_LEN = 10
QUERIES = [[1, 2, 3], [5, 6], [11, 12, 13, 14]]
MODES = ("first", "exchange", "fallback")  # no old one yet; renameat2 swap; two renames
NEW_FROM = {"swapped", "moved new in", "removed old"}  # the new one is in place after these
COMPLETE = {"wrote config.json", "wrote bank.json", "synced"}  # the new copy is complete
HAS_FORK = hasattr(os, "fork")
BANK_FILES = ["bank.json", "arrays.npz", "index.faiss"]


class Interrupt(Exception):
    """What the hook raises: an error (or Ctrl-C) in the middle of a save."""


# ------------------------------------------------------------------------------ the steps
def replace_steps(prefix: str, mode: str) -> list[str]:
    return [f"{prefix}.{s}" for s in ("synced", *_atomic.REPLACE_STEPS[mode])]


def bank_steps(mode: str, faiss: bool = True) -> list[str]:
    wrote = [s for s in bank_format.SAVE_STEPS if faiss or s != "bank.wrote extra files"]
    return [*wrote, *replace_steps("bank", mode)]


def checkpoint_steps(mode: str) -> list[str]:
    ram, bank, config = ckpt.SAVE_STEPS
    inner = bank_steps("first")  # the bank goes into the new, empty directory
    return [ram, *inner, bank, config, *replace_steps("checkpoint", mode)]


def state_steps() -> list[str]:
    return [f"state.{s}" for s in _atomic.FILE_STEPS]


def cases(steps: Callable[[str], list[str]]) -> list[tuple[str, str]]:
    return [(mode, s) for mode in MODES for s in steps(mode)]


def expect_new(writer: str, mode: str, step: str, killed: bool) -> bool:
    """Whether ``writer``'s save stopped after ``step`` leaves the new one at the path (else
    the old): only its own steps count (a bank's inside a checkpoint's do not). A kill that
    leaves nothing at the path but a complete new copy beside it gets that copy back."""
    owner, last = step.split(".", 1)
    if owner != writer:
        return False
    nothing_there = last == "moved old aside" or (mode == "first" and last in COMPLETE)
    return last in NEW_FROM or (killed and nothing_there)


@pytest.fixture
def force_mode(monkeypatch):
    def use(mode: str) -> None:
        monkeypatch.setattr(_atomic, "_use_exchange", mode != "fallback")

    return use


def stop_at(step: str, how: str) -> Callable[[str], None]:
    def hook(name: str) -> None:
        if name == step:
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise Interrupt(name)

    return hook


def interrupted(step: str, how: str, save: Callable[[], None], monkeypatch) -> None:
    """Runs ``save`` and stops it after ``step``: raises there, or SIGKILLs a forked child."""
    if how == "raise":
        monkeypatch.setattr(_atomic, "_after_step", stop_at(step, how))
        with pytest.raises(Interrupt):
            save()
        monkeypatch.setattr(_atomic, "_after_step", None)
        return
    pid = os.fork()
    if pid == 0:  # the child: save until killed; exit 3 if the step never came
        try:
            _atomic._after_step = stop_at(step, how)
            save()
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (step, status)


def steps_taken(save: Callable[[], None], monkeypatch) -> list[str]:
    """The step names the hook sees during ``save()``."""
    seen: list[str] = []
    monkeypatch.setattr(_atomic, "_after_step", seen.append)
    save()
    monkeypatch.setattr(_atomic, "_after_step", None)
    return seen


def entries(d: Path) -> list[str]:
    return sorted(os.listdir(d))


HOWS = ["raise", pytest.param("kill", marks=pytest.mark.skipif(not HAS_FORK, reason="no fork"))]


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def two():
    """A and B: augmenters over one SASRec whose RAM weights and banks differ."""
    model, split = pretrained_sasrec(60, 30, seed=1, epochs=1, max_len=MAX_LEN)
    augs = {}
    for name, seed, phase in (("A", 1, "train"), ("B", 2, "test")):
        aug = small_augmenter(model, max_len=MAX_LEN, k=4, kind="faiss")
        aug.build_bank(split, phase, show_progress=False)
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in aug.ram.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        augs[name] = aug
    recs = {name: a.recommend(QUERIES, k=5) for name, a in augs.items()}
    assert not torch.equal(recs["A"][1], recs["B"][1])
    return model, augs, recs


def which(two, path: Path) -> str:
    """``"A"`` or ``"B"``: the checkpoint at ``path`` recommends exactly as that one."""
    model, _, recs = two
    ids, scores = RetrievalAugmenter.load(model, path).recommend(QUERIES, k=5)
    found = [n for n, (i, s) in recs.items() if torch.equal(i, ids) and torch.equal(s, scores)]
    assert len(found) == 1, "the loaded checkpoint recommends as neither A nor B"
    return found[0]


# ------------------------------------------------------------------------------ checkpoint
@pytest.mark.parametrize("mode", MODES)
def test_a_checkpoint_save_takes_exactly_the_declared_steps(
    two, tmp_path, mode, force_mode, monkeypatch
):
    _, augs, _ = two
    force_mode(mode)
    ck = tmp_path / "ck"
    if mode != "first":
        augs["A"].save(ck)
    assert steps_taken(lambda: augs["B"].save(ck), monkeypatch) == checkpoint_steps(mode)


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize(("mode", "step"), cases(checkpoint_steps))
def test_a_checkpoint_save_stopped_at_any_step_leaves_the_old_or_the_new(
    two, tmp_path, mode, step, how, force_mode, monkeypatch, caplog
):
    _, augs, _ = two
    force_mode(mode)
    ck = tmp_path / "ck"
    if mode != "first":
        augs["A"].save(ck)
    interrupted(step, how, lambda: augs["B"].save(ck), monkeypatch)
    if how == "raise":  # the failed save removed what it wrote
        assert entries(tmp_path) == (["ck"] if ck.exists() else [])
    new = expect_new("checkpoint", mode, step, how == "kill")
    if mode == "first" and not new:
        with pytest.raises(CheckpointError, match="no config.json"):
            RetrievalAugmenter.load(two[0], ck)
    else:
        with caplog.at_level(logging.WARNING, logger="raserec_adapter"):
            assert which(two, ck) == ("B" if new else "A")
        if how == "kill" and step.endswith("moved old aside"):
            assert "the new complete copy it left" in caplog.text
    assert entries(tmp_path) == (["ck"] if ck.exists() else [])  # the load cleaned up
    augs["A"].save(ck)  # the next save: no leftovers either
    assert entries(tmp_path) == ["ck"] and which(two, ck) == "A"


def flip(file: Path, where: float) -> None:
    data = bytearray(file.read_bytes())
    i = min(int(len(data) * where), len(data) - 1)
    data[i] ^= 0x01
    file.write_bytes(bytes(data))


CHECKPOINT_FILES = [
    "config.json",
    "ram.pt",
    "bank/bank.json",
    "bank/arrays.npz",
    "bank/index.faiss",
]


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_flipped_bit_in_any_checkpoint_file_is_refused_naming_it(two, tmp_path, name, where):
    _, augs, _ = two
    augs["A"].save(tmp_path / "ck")
    flip(tmp_path / "ck" / name, where)
    with pytest.raises(CheckpointError, match=Path(name).name.replace(".", r"\.")):
        RetrievalAugmenter.load(two[0], tmp_path / "ck")


def test_edits_that_still_parse_are_refused_by_the_checksums(two, tmp_path):
    _, augs, _ = two
    ck = tmp_path / "ck"
    augs["A"].save(ck)
    meta = json.loads((ck / "config.json").read_text())
    meta["config"]["ram"]["k"] = 5
    (ck / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"config\.json: its content does not match"):
        RetrievalAugmenter.load(two[0], ck)
    augs["A"].save(ck)
    torch.save(augs["B"].ram.state_dict(), ck / "ram.pt")  # fits the RAM, other weights
    with pytest.raises(CheckpointError, match=r"ram\.pt differs from the record"):
        RetrievalAugmenter.load(two[0], ck)
    augs["A"].save(ck)
    bank = json.loads((ck / "bank" / "bank.json").read_text())
    bank["config"]["nprobe"] = 2
    (ck / "bank" / "bank.json").write_text(json.dumps(bank))
    with pytest.raises(CheckpointError, match=r"bank\.json: its content does not match"):
        RetrievalAugmenter.load(two[0], ck)
    augs["A"].save(ck)
    augs["B"].bank.save(ck / "bank")  # a whole other bank, consistent in itself
    with pytest.raises(CheckpointError, match=r"bank/bank\.json differs from the record"):
        RetrievalAugmenter.load(two[0], ck)


def test_checkpoints_saved_before_checksums_load_with_a_warning(two, tmp_path, caplog):
    _, augs, _ = two
    ck = tmp_path / "ck"
    augs["A"].save(ck)
    for manifest in (ck / "config.json", ck / "bank" / "bank.json"):
        meta = json.loads(manifest.read_text())
        del meta["files"], meta[_atomic.DIGEST_KEY]
        manifest.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    with caplog.at_level(logging.WARNING, logger="raserec_adapter"):
        assert which(two, ck) == "A"
    assert "saved without checksums" in caplog.text and "cannot be verified" in caplog.text


def test_a_missing_index_is_rebuilt_from_the_arrays(two, tmp_path, caplog):
    _, augs, _ = two
    augs["A"].save(tmp_path / "ck")
    (tmp_path / "ck" / "bank" / "index.faiss").unlink()
    with caplog.at_level(logging.WARNING, logger="raserec_adapter"):
        assert which(two, tmp_path / "ck") == "A"
    assert "index.faiss is missing: the index is rebuilt from arrays.npz" in caplog.text


@pytest.mark.skipif(not HAS_FORK, reason="needs fork for a finished process's id")
def test_only_leftovers_of_finished_saves_of_that_path_are_removed(two, tmp_path):
    _, augs, _ = two
    ck = tmp_path / "ck"
    augs["A"].save(ck)
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    kept = [
        f".ck.tmp-{os.getppid()}-0123abcd",  # a save by a process that still runs
        ".ck.tmp-notes",  # not a name saves make
        ".other.tmp-1-0123abcd",  # another path's
        "ck.0123456789ab.old",  # the old scheme's names are left alone
    ]
    for name in [*kept, f".ck.tmp-{dead}-0123abcd", f".ck.old-{dead}-89abcdef"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "x").write_text("x")
    augs["B"].save(ck)
    assert entries(tmp_path) == sorted(["ck", *kept])
    assert which(two, ck) == "B"


# ------------------------------------------------------------------------------ bank alone
def faiss_bank(seed: int, n: int) -> FaissMemoryBank:
    g = torch.Generator().manual_seed(seed)
    bank = FaissMemoryBank(dim=4, index_factory="Flat")
    users = torch.arange(n) % 7
    bank.add(torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g), users, users + 1)
    bank.search(torch.zeros(1, 4), 2)  # builds the index, as a used bank has
    return bank


def bank_name(path: Path) -> str:
    got = FaissMemoryBank.load(path).search(torch.eye(4), 3)
    for name, bank in BANKS.items():
        want = bank.search(torch.eye(4), 3)
        if torch.equal(got.ids, want.ids) and torch.equal(got.scores, want.scores):
            return name
    raise AssertionError("the loaded bank searches as neither A nor B")


BANKS = {"A": faiss_bank(1, 30), "B": faiss_bank(2, 40)}


@pytest.mark.parametrize("mode", MODES)
def test_a_bank_save_takes_exactly_the_declared_steps(tmp_path, mode, force_mode, monkeypatch):
    force_mode(mode)
    if mode != "first":
        BANKS["A"].save(tmp_path / "bank")
    assert steps_taken(lambda: BANKS["B"].save(tmp_path / "bank"), monkeypatch) == bank_steps(mode)


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize(("mode", "step"), cases(bank_steps))
def test_a_bank_save_stopped_at_any_step_leaves_the_old_or_the_new(
    tmp_path, mode, step, how, force_mode, monkeypatch
):
    force_mode(mode)
    path = tmp_path / "bank"
    if mode != "first":
        BANKS["A"].save(path)
    interrupted(step, how, lambda: BANKS["B"].save(path), monkeypatch)
    new = expect_new("bank", mode, step, how == "kill")
    if mode == "first" and not new:
        with pytest.raises(bank_format.MemoryBankFormatError, match="not a saved memory bank"):
            FaissMemoryBank.load(path)
    else:
        assert bank_name(path) == ("B" if new else "A")
    assert entries(tmp_path) == (["bank"] if path.exists() else [])
    BANKS["A"].save(path)
    assert entries(tmp_path) == ["bank"] and bank_name(path) == "A"


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("name", BANK_FILES)
def test_a_flipped_bit_in_a_bank_file_is_refused_naming_it(tmp_path, name, where):
    BANKS["A"].save(tmp_path / "bank")
    flip(tmp_path / "bank" / name, where)
    with pytest.raises(bank_format.MemoryBankFormatError, match=name.replace(".", r"\.")):
        FaissMemoryBank.load(tmp_path / "bank")


# ------------------------------------------------------------------------------ stage-1 state
def training_run(seed: int) -> tuple[TrainingRun, EarlyStopping]:
    torch.manual_seed(seed)
    module = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(module.parameters(), lr=0.01)
    module(torch.randn(5, 4)).sum().backward()
    opt.step()
    rng, cpu = np.random.default_rng(seed), torch.device("cpu")
    run = TrainingRun({"lr": 0.01, "epochs": 3}, module, opt, rng, cpu)
    stop = EarlyStopping()
    stop.update(1, 0.5 + seed, {"MRR@10": 0.5}, module)
    return run, stop


def state_name(path: Path) -> str:
    run, _ = training_run(0)
    run.restore(path)
    for name, seed in (("A", 1), ("B", 2)):
        if torch.equal(run.module.weight, training_run(seed)[0].module.weight):
            return name
    raise AssertionError("the restored state is neither A nor B")


def save_state(path: Path, seed: int) -> None:
    run, stop = training_run(seed)
    run.save(path, stop)


def test_a_state_save_takes_exactly_the_declared_steps(tmp_path, monkeypatch):
    assert steps_taken(lambda: save_state(tmp_path / "s.pt", 1), monkeypatch) == state_steps()


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("first", [True, False], ids=["first", "over-old"])
@pytest.mark.parametrize("step", state_steps())
def test_a_state_save_stopped_at_any_step_leaves_the_old_or_the_new(
    tmp_path, step, first, how, monkeypatch
):
    path = tmp_path / "s.pt"
    if not first:
        save_state(path, 1)
    interrupted(step, how, lambda: save_state(path, 2), monkeypatch)
    new = step != "state.wrote"
    if first and not new:
        assert not path.exists()
    else:
        assert state_name(path) == ("B" if new else "A")
        assert entries(tmp_path) == ["s.pt"]  # restore removed what the kill left
    save_state(path, 1)
    assert entries(tmp_path) == ["s.pt"] and state_name(path) == "A"


@pytest.mark.parametrize("where", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_a_flipped_bit_in_the_state_file_is_refused(tmp_path, where):
    save_state(tmp_path / "s.pt", 1)
    flip(tmp_path / "s.pt", where)
    with pytest.raises(ValueError, match=r"s\.pt.*(damaged|not a pre-training state)"):
        state_name(tmp_path / "s.pt")


def test_a_state_re_saved_by_torch_save_loads_with_a_warning(tmp_path, caplog):
    save_state(tmp_path / "s.pt", 1)
    torch.save(torch.load(tmp_path / "s.pt", weights_only=True), tmp_path / "s.pt")
    with caplog.at_level(logging.WARNING, logger="raserec_adapter"):
        assert state_name(tmp_path / "s.pt") == "A"
    assert "s.pt has no checksum" in caplog.text and "cannot be verified" in caplog.text
