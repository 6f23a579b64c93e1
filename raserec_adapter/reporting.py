"""Result tables and results files with provenance (command, commit, machine, seeds, wall time).

Example:
    >>> print(format_table({"plain": {"HR@5": 0.05, "NDCG@5": 0.031}}))
    variant  HR@5     NDCG@5
    plain    0.0500   0.0310
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["format_table", "machine_info", "mean_metrics", "write_results"]

METRIC_KEYS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model and core count, GPU name if any, Python and torch versions."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def git_commit(cwd: str | Path | None = None) -> str:
    """The current commit (with ``-dirty`` when the tree has changes), or ``unknown``.

    ``$RASEREC_GIT_COMMIT``, when set, wins: ``scripts/gpu-session.sh`` records it when it
    prepares a copy of the tree for another machine, where a ``.git`` folder, if any, may be a
    stale one (seen on a GPU machine: it named the session's first commit, not the copied one).
    """
    recorded = os.environ.get("RASEREC_GIT_COMMIT")
    if recorded:
        return recorded
    try:
        root = cwd or Path(__file__).resolve().parents[1]
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def command_line() -> str:
    """This process's command line as a shell would take it (``python examples/sasrec.py ...``)."""
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def mean_metrics(per_seed: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over seeds."""
    keys = list(per_seed[0]) if per_seed else []
    return {k: sum(m[k] for m in per_seed) / len(per_seed) for k in keys}


def write_results(
    path: str | Path,
    *,
    dataset: str,
    backbone: str,
    variant: str,
    protocol: str,
    seeds: Sequence[int],
    per_seed: Sequence[Mapping[str, float]],
    wall_seconds: float,
    split: str = "test",
    extra: Mapping[str, Any] | None = None,
    commit: str | None = None,
) -> dict[str, Any]:
    """Writes ``benchmarks/results``-style JSON with provenance and returns it.

    Pass ``commit`` as read when the run started (:func:`git_commit`); by default the current
    commit is recorded.
    """
    record: dict[str, Any] = {
        "dataset": dataset,
        "backbone": backbone,
        "variant": variant,
        "protocol": protocol,
        "split": split,
        "seeds": list(seeds),
        "per_seed": [dict(m) for m in per_seed],
        "mean": mean_metrics(per_seed),
        "command": command_line(),
        "git_commit": commit or git_commit(),
        "machine": machine_info(),
        "wall_seconds": round(wall_seconds, 1),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if extra:
        record.update(extra)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)
    return record


def format_table(rows: Mapping[str, Mapping[str, float]], keys: Sequence[str] | None = None) -> str:
    """A plain-text table, one row per variant, one column per metric."""
    keys = list(keys or next(iter(rows.values()), {}).keys())
    width = max([len("variant"), *(len(r) for r in rows)])
    lines = ["  ".join([f"{'variant':<{width}}", *(f"{k:<7}" for k in keys)]).rstrip()]
    for name, metrics in rows.items():
        cells = [f"{name:<{width}}", *(f"{metrics[k]:<7.4f}" for k in keys)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
