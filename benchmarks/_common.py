"""Helpers shared by the benchmark scripts: data loading, timing, results with provenance."""

from __future__ import annotations

import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from raserec_adapter.reporting import git_commit, machine_info  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn``."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def provenance(wall: float) -> dict[str, Any]:
    """Command, commit, machine, wall time and finishing time of this script's run."""
    return {
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "git_commit": git_commit(ROOT),
        "machine": machine_info(),
        "wall_seconds": round(wall, 1),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def save(name: str, record: dict[str, Any], wall: float) -> Path:
    """Writes ``benchmarks/results/<name>.json`` with command, commit, machine and wall time."""
    record = {**record, **provenance(wall)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
