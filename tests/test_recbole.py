"""The RecBole interop against RecBole itself: a SASRec trained by RecBole's Trainer, evaluated
through the library, equals RecBole's own full-sort evaluator.

RecBole 1.2.1 needs numpy<2 and the dev environment has numpy 2, so ``scripts/recbole_env.sh``
makes a separate environment (once; reused while its pins stay the same) and
``tests/recbole_check.py`` runs there as a subprocess, writing a JSON report that the tests
below read. Nothing here is skipped: where the environment cannot be made, the tests fail with
the installer's output.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAIRS = {"HR@5": "hit@5", "HR@10": "hit@10", "NDCG@5": "ndcg@5", "NDCG@10": "ndcg@10"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _tail(proc: subprocess.CompletedProcess[str], n: int = 4000) -> str:
    return (proc.stdout + proc.stderr)[-n:]


def recbole_python() -> str:
    """The RecBole environment's python, made by ``scripts/recbole_env.sh`` if need be."""
    try:
        proc = subprocess.run(
            ["bash", str(ROOT / "scripts" / "recbole_env.sh")],
            env={**ENV, "PYTHON": sys.executable},
            capture_output=True,
            text=True,
            timeout=900,
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"scripts/recbole_env.sh took over {err.timeout} s to make the environment")
    if proc.returncode != 0:
        pytest.fail(
            f"scripts/recbole_env.sh could not make the RecBole environment:\n{_tail(proc)}"
        )
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    python = recbole_python()
    work = tmp_path_factory.mktemp("recbole")
    out = work / "report.json"
    proc = subprocess.run(
        [
            python,
            str(ROOT / "tests" / "recbole_check.py"),
            "--workdir",
            str(work),
            "--out",
            str(out),
        ],
        cwd=work,  # RecBole writes log/ and log_tensorboard/ into the working directory
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"tests/recbole_check.py failed:\n{_tail(proc)}"
    return json.loads(out.read_text())


@pytest.mark.parametrize("which", ["valid", "test", "gru4rec test"])
def test_frozen_metrics_equal_recboles_evaluator(report: dict[str, Any], which: str) -> None:
    """RecBole's Trainer.evaluate on its own dataloader vs the library on the interop's split
    (SASRec on validation and test; GRU4Rec on test)."""
    if which == "gru4rec test":
        theirs, ours = report["gru4rec"]["recbole"], report["gru4rec"]["frozen"]
        assert report["gru4rec"]["all_positions_max_gap"] < 1e-5
    else:
        theirs, ours = report["recbole"][which], report["frozen"][which]
    for mine, rb in PAIRS.items():
        assert abs(ours[mine] - theirs[rb]) <= 1e-6, (which, mine, ours[mine], theirs[rb])
    assert report["users_with_equal_timestamps"] > 0  # RecBole's tie order is followed too
    assert report["all_positions_max_gap"] < 1e-5  # SASRec's one-pass encoding of the bank
    assert report["docstring_examples"] >= 8  # the interop's examples, with RecBole's objects


def test_recboles_full_sort_is_the_full_protocol(report: dict[str, Any]) -> None:
    """RecBole masks no history items of a sequential model: ``seen_removed`` does, and its
    ranks can only improve, so it reads higher than RecBole's numbers here."""
    removed, full = report["seen_removed_test"], report["frozen"]["test"]
    assert all(removed[m] >= full[m] for m in PAIRS)
    assert any(removed[m] > report["recbole"]["test"][rb] + 1e-6 for m, rb in PAIRS.items())


def test_the_naive_path_numbers_items_otherwise(report: dict[str, Any]) -> None:
    """Read without the interop, the shuffled file gets other item ids: the same model ranks
    the wrong items, without any error."""
    assert report["naive_same_item_ids"] < 0.5
    assert report["naive_test"]["NDCG@10"] < report["recbole"]["test"]["ndcg@10"] - 0.05


def test_mismatches_are_refused_with_the_fix(report: dict[str, Any]) -> None:
    said = report["refusals"]
    assert "another dataset" in said["dataset"]
    assert "max_seq_length = 8" in said["max_len"] and "Use max_len=8" in said["max_len"]
    assert 'user_inter_num_interval: "[4,inf)"' in said["short"]
    assert "{split: {LS: valid_and_test}, order: TO" in said["split"]


def test_without_recbole_the_interop_says_how_to_install() -> None:
    from raserec_adapter.interop import sequences_from_recbole, split_from_recbole, wrap_recbole

    if importlib.util.find_spec("recbole") is not None:  # RecBole in this environment too
        with pytest.raises(TypeError, match="create_dataset"):
            sequences_from_recbole(object())
        return
    for call in (sequences_from_recbole, split_from_recbole, wrap_recbole):
        with pytest.raises(ImportError, match=r"numpy<2.*scripts/recbole_env\.sh"):
            call(object())
