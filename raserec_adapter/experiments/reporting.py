"""Result tables and results files with provenance (command, code version, machine, seeds, time).

The code version is the git commit when the package is imported from a checkout of this
project, else the installed package's version: an installed wheel never runs git.

Examples:
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

from raserec_adapter.data.datasets import checkout_root

__all__ = [
    "code_version",
    "command_line",
    "format_table",
    "machine_info",
    "mean_metrics",
    "write_results",
]

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
    """CPU model and core count, GPU name if any, Python and torch versions.

    Examples:
        >>> sorted(machine_info())[:3]
        ['cpu', 'cpu_cores', 'platform']
    """
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


def code_version() -> str:
    """The code a run imports: the git commit (``-dirty`` with uncommitted changes) when the
    package is imported from a git checkout of this project, else ``raserec-adapter <version>``.

    ``$RASEREC_GIT_COMMIT``, when set, wins: ``scripts/gpu-session.sh`` records it when it
    prepares a copy of the tree for another machine, where a ``.git`` folder, if any, may be a
    stale one (seen on a GPU machine: it named the session's first commit, not the copied one).

    Examples:
        >>> code_version().startswith(("raserec-adapter ", "unknown")) or len(code_version()) >= 40
        True
    """
    recorded = os.environ.get("RASEREC_GIT_COMMIT")
    if recorded:
        return recorded
    root = checkout_root()
    if root is None or not (root / ".git").exists():
        from raserec_adapter import __version__

        return f"raserec-adapter {__version__}"
    try:
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
    """Mean of each metric over seeds.

    Examples:
        >>> mean_metrics([{"HR@10": 0.25}, {"HR@10": 0.75}])
        {'HR@10': 0.5}
    """
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

    Pass ``commit`` as read when the run started (:func:`code_version`); by default the current
    one is recorded (under the key ``git_commit``, as in every results file so far).

    Examples:
        >>> import json, tempfile
        >>> path = Path(tempfile.mkdtemp()) / "r.json"
        >>> _ = write_results(path, dataset="toy", backbone="sasrec", variant="raserec",
        ...     protocol="full", seeds=[0], per_seed=[{"HR@10": 0.5}], wall_seconds=1.0)
        >>> json.loads(path.read_text())["mean"]
        {'HR@10': 0.5}
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
        "git_commit": commit or code_version(),
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
    """A plain-text table, one row per variant, one column per metric (``keys``, default all)."""
    keys = list(keys or next(iter(rows.values()), {}).keys())
    width = max([len("variant"), *(len(r) for r in rows)])
    lines = ["  ".join([f"{'variant':<{width}}", *(f"{k:<7}" for k in keys)]).rstrip()]
    for name, metrics in rows.items():
        cells = [f"{name:<{width}}", *(f"{metrics[k]:<7.4f}" for k in keys)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
