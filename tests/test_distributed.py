"""Two processes under ``torchrun`` (gloo, one thread each) train what one process trains.

One launch of ``tests/data/ddp_worker.py`` with ``--nproc_per_node 2`` runs, in each process:
the gradients of every stage-1 batch of an epoch (one case per batching mode, the fused step
and both InfoNCE masks; batch sizes that leave a one-row last batch, so one process holds no
row of it), banks built from untrained encoders, stage 1 with early stopping (causal windows),
the bank, RAFT with the choice of alpha, test metrics, and the example runner. This module runs
the same in its own process with the same global batches and compares.

Tolerances, and why:

- The bank of the same encoder is the same bank, bit for bit: each process encodes the very
  batches one process encodes (every second one), so no sum is reordered.
- A step's gradient: ``rtol 1e-4`` plus ``1e-6`` of the largest entry. Two processes sum each
  mean in two parts and DDP adds the parts: float32 rounding of a reordered sum (about 1e-7
  relative), larger relative to entries that cancel to near zero.
- Trained weights: ``atol 1e-3`` after about 50 Adam steps at ``lr 0.01``. Adam divides each
  step by the gradient's running RMS, so an entry whose gradient is near zero moves by up to
  ``lr`` per step whatever the sign of its rounding error. The attention's key bias is left out:
  softmax is shift-invariant, its exact gradient is 0, and Adam turns the rounding noise into
  steps of ``lr`` (1e-3 here). What the weights compute is compared tighter: the validation
  representations (of size about 1) to ``atol 5e-5``, losses and validation metrics to
  ``rtol 1e-5``.
- RAFT's RAM (2 to 4 epochs, ``lr 0.005``): ``atol 1e-5``.
- Test metrics: equal up to one test user moving one place (``1 / users``), as a rounding
  difference between two near-tied item scores can do.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from raserec_adapter.experiments import main as run_example

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "data" / "ddp_worker.py"
PROCESSES = 2


def _worker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The reports of both ranks of one torchrun launch, and the one-process run's."""
    worker = _worker()
    tmp = tmp_path_factory.mktemp("ddp")
    data = tmp / "tiny.txt"
    worker.write_data(worker.tiny_split(), data)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(PROCESSES),
        "--standalone",
        str(WORKER),
        str(tmp / "ddp"),
        str(tmp / "reports"),
        str(data),
    ]
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    launch = time.perf_counter() - t0
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    reports = []
    for rank in range(PROCESSES):
        saved = torch.load(tmp / "reports" / f"rank{rank}.pt", weights_only=True)
        reports.append({"meta": json.loads(saved.pop("meta")), "tensors": saved})
    torch.set_num_threads(1)
    single = worker.pipeline(tmp / "one" / "api")
    run_example("sasrec", worker.runner_argv(data, tmp / "one" / "runner"))
    return {
        "reports": reports,
        "single": single,
        "tmp": tmp,
        "users": worker.tiny_split().sequences.num_users,
        "launch_seconds": launch,
    }


def _tensors(runs: dict[str, Any], rank: int, key: str) -> tuple[dict, dict]:
    return runs["single"]["tensors"][key], runs["reports"][rank]["tensors"][key]


@pytest.mark.parametrize("rank", range(PROCESSES))
def test_every_stage1_batch_gives_the_one_process_gradient(runs: dict, rank: int) -> None:
    for case in ("windows", "random", "bucketed_fused"):
        want, got = _tensors(runs, rank, f"{case}.gradients")
        want, got = want["g"], got["g"]
        assert want.shape == got.shape and len(want) >= 2  # every batch, the odd last one too
        for step in range(len(want)):
            scale = float(want[step].abs().max())
            torch.testing.assert_close(
                got[step], want[step], rtol=1e-4, atol=1e-6 * scale, msg=f"{case} step {step}"
            )


@pytest.mark.parametrize("rank", range(PROCESSES))
def test_a_sharded_bank_is_the_one_process_bank(runs: dict, rank: int) -> None:
    for encoder in ("sasrec", "gru4rec"):  # causal windows; prefix batches + validation pairs
        want, got = _tensors(runs, rank, f"bank.{encoder}")
        for part in ("keys", "values"):
            assert torch.equal(got[part], want[part]), (encoder, part)


@pytest.mark.parametrize("rank", range(PROCESSES))
def test_stage1_trains_the_one_process_encoder(runs: dict, rank: int) -> None:
    single, meta = runs["single"]["cases"], runs["reports"][rank]["meta"]["cases"]
    for case in single:
        want, got = _tensors(runs, rank, f"{case}.encoder")
        assert sorted(want) == sorted(got)
        for name in want:
            w, g = want[name], got[name]
            if name.endswith("qkv.bias"):  # the key bias: no effect, no exact gradient
                d = w.shape[0] // 3
                w, g = torch.cat([w[:d], w[2 * d :]]), torch.cat([g[:d], g[2 * d :]])
            torch.testing.assert_close(g, w, rtol=0, atol=1e-3, msg=f"{case} {name}")
        want, got = _tensors(runs, rank, f"{case}.valid_h")
        torch.testing.assert_close(got["h"], want["h"], rtol=0, atol=5e-5)
        assert (meta[case]["epochs_run"], meta[case]["best_epoch"]) == (
            single[case]["epochs_run"],
            single[case]["best_epoch"],
        )
        for w, g in zip(single[case]["history"], meta[case]["history"], strict=True):
            assert sorted(w) == sorted(g)
            for key in w:
                assert math.isclose(g[key], w[key], rel_tol=1e-5, abs_tol=1e-7), (case, key)


@pytest.mark.parametrize("rank", range(PROCESSES))
def test_raft_trains_the_one_process_ram_and_ranks_alike(runs: dict, rank: int) -> None:
    want, got = _tensors(runs, rank, "ram")
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-5, msg=name)
    single = runs["single"]["cases"]["windows"]
    mine = runs["reports"][rank]["meta"]["cases"]["windows"]
    for key in ("epochs_run", "best_epoch", "alpha"):
        assert mine["raft"][key] == single["raft"][key], key
    for w, g in zip(single["raft"]["history"], mine["raft"]["history"], strict=True):
        assert math.isclose(g["loss"], w["loss"], rel_tol=1e-5)
    one_user = 1 / runs["users"]
    for variant, metrics in single["test"].items():
        for name, value in metrics.items():
            assert abs(mine["test"][variant][name] - value) <= one_user + 1e-9, (variant, name)


def _runner_results(folder: Path) -> dict[str, dict[str, float]]:
    out = {}
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        out[path.name] = record["per_seed"][0]
    return out


def test_the_example_runner_gives_the_one_process_results(runs: dict) -> None:
    tmp = runs["tmp"]
    one, two = tmp / "one" / "runner", tmp / "ddp" / "runner"
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    want, got = _runner_results(one), _runner_results(two)
    assert sorted(want) == sorted(got) and want
    for name, metrics in want.items():
        for metric, value in metrics.items():
            assert abs(got[name][metric] - value) <= 1 / runs["users"] + 1e-9, (name, metric)
    record = json.loads(next(two.glob("*-raserec-seed0.json")).read_text())
    calls = record["per_seed_details"][0]["pretrain"]["invocations"]
    assert [c.get("processes") for c in calls] == [PROCESSES]


def test_only_rank0_writes_files(runs: dict) -> None:
    first, second = (r["meta"]["written"] for r in runs["reports"])
    assert second == []
    tmp = str((runs["tmp"] / "ddp").resolve())
    for name in ("state.pt", "encoder.pt", "test-ranks.npz", "config.json", ".json"):
        assert any(w.startswith(("os.rename", "open")) and w.endswith(name) for w in first), name
    assert all(w.split(" ", 1)[1].startswith(tmp) for w in first)


def test_both_ranks_stop_at_the_epoch_one_process_stops_at(runs: dict) -> None:
    single = runs["single"]["cases"]
    epochs = {case: single[case]["epochs_run"] for case in single}
    assert min(epochs.values()) < 12  # (stage 1 runs 12 epochs at most) early stopping acted
    assert single["windows"]["raft"]["epochs_run"] < 4  # and in RAFT
    for report in runs["reports"]:
        cases = report["meta"]["cases"]
        assert {case: cases[case]["epochs_run"] for case in cases} == epochs
        assert cases["windows"]["raft"]["epochs_run"] == single["windows"]["raft"]["epochs_run"]
    # rank 0 alone validates, once per epoch (the API's cases and the runner's run)
    results = next((runs["tmp"] / "ddp" / "runner").glob("*-raserec-seed0.json"))
    details = json.loads(results.read_text())["per_seed_details"][0]
    first, second = (r["meta"]["validations"] for r in runs["reports"])
    assert second == {"evaluate_encoder": 0, "evaluate_ram": 0}
    assert first["evaluate_encoder"] == sum(epochs.values()) + details["pretrain"]["epochs_run"]
    raft_epochs = single["windows"]["raft"]["epochs_run"] + details["raft"]["epochs_run"]
    assert first["evaluate_ram"] == raft_epochs
