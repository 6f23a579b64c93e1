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

from raserec_adapter.experiments.reporting import code_version, machine_info  # noqa: E402

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


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux's ``ru_maxrss`` is in kB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# the code a long run executes is the code it started with: its commit is read at import
START_COMMIT = code_version()


def resume_settings(args: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The arguments in ``names`` that shape a results file's rows (its ``settings_of_rows``)."""
    return {name: getattr(args, name) for name in names}


def check_resume(record: dict[str, Any], settings: dict[str, Any], out: Path) -> None:
    """Refuses to add rows to ``record`` (an ``--out`` file being resumed) that were made with
    other settings; a file written before ``settings`` were recorded cannot be checked."""
    have = record.get("settings_of_rows")
    if have is None:
        raise SystemExit(
            f"{out} does not record the settings its rows were made with (written by an older "
            "version of this script), so --resume cannot check them; use another --out"
        )
    if have != settings:
        diff = {k: (have.get(k), v) for k, v in settings.items() if have.get(k) != v}
        raise SystemExit(
            f"{out} was made with other settings: {diff} (file, now); use another --out or "
            "the file's settings"
        )


def earlier_invocations(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Provenance of the processes that wrote ``record`` before (its rows carried over), kept
    when a resumed process writes its own provenance at the top level."""
    keys = ("command", "git_commit", "git_commit_at_end", "finished_at", "wall_seconds")
    earlier = list(record.get("earlier_invocations", []))
    if "command" in record:
        earlier.append({k: record[k] for k in keys if k in record})
    return earlier


def provenance(wall: float) -> dict[str, Any]:
    """Command, commit, machine, wall time and finishing time of this script's run.

    ``git_commit`` is the commit the script started from; ``git_commit_at_end`` is added when
    the checkout changed while it ran (the run kept executing the code it had loaded).
    """
    out = {
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "git_commit": START_COMMIT,
        "machine": machine_info(),
        "wall_seconds": round(wall, 1),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    now = code_version()
    if now != START_COMMIT:
        out["git_commit_at_end"] = now
    return out


def save(name: str, record: dict[str, Any], wall: float) -> Path:
    """Writes ``benchmarks/results/<name>.json`` with command, commit, machine and wall time."""
    record = {**record, **provenance(wall)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def load_finished_run(
    backbone: Any, num_items: int, ex_args: Any, run: Path, device: str = "cpu"
) -> Any:
    """The :class:`~raserec_adapter.RetrievalAugmenter` an example saved in ``run``.

    ``run`` is an example run's folder (``<out>/<dataset>-<backbone>-raserec-seed<N>``), holding
    ``encoder.pt`` (a state dict) and the augmenter saved in ``augmenter/``; ``backbone`` is the
    :class:`~raserec_adapter.experiments.Backbone` and ``ex_args`` the runner's options the run
    was made with. The encoder and the RAM are moved to ``device``; the RAM is served even where
    RAFT chose the frozen encoder (do no harm), as the run's own results measure it.

    Raises:
        SystemExit: If either file is missing.
    """
    import torch

    from raserec_adapter import RetrievalAugmenter

    for need in (run / "encoder.pt", run / "augmenter"):
        if not need.exists():
            raise SystemExit(f"{need} is missing: --run takes a finished example run's folder")
    encoder = backbone.build(num_items, ex_args)
    encoder.load_state_dict(torch.load(run / "encoder.pt", map_location="cpu", weights_only=True))
    encoder.to(device)
    wrap = backbone.augmenter_kwargs(encoder)
    aug = RetrievalAugmenter.load(encoder, run / "augmenter", device=device, **wrap)
    aug.ram.serve(True)  # the analyses measure the RAM itself, as the run's results files do
    return aug


def run_analysis_parser(description: str) -> Any:
    """Options shared by the scripts that reload finished example runs (``--run``)."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--backbone", choices=["sasrec", "gru4rec", "bert4rec"], default="sasrec")
    p.add_argument(
        "--backbone-args",
        default="",
        help="the runner's model options the runs were made with, e.g. '--max-len 10 "
        "--hidden-size 16' (default: none, the runner's defaults)",
    )
    p.add_argument("--dataset", default="beauty")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--run", action="append", required=True, help="a finished run's folder")
    p.add_argument("--protocol", default="full", choices=["full", "seen_removed"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="results file to write")
    return p


def backbone_options(name: str, backbone_args: str) -> tuple[Any, Any]:
    """The registered backbone ``name`` and the runner's options parsed from
    ``backbone_args`` (what the analysed runs were made with)."""
    from raserec_adapter.experiments import BACKBONES, parse_args

    return BACKBONES[name], parse_args(name, shlex.split(backbone_args))


def open_run_analysis(args: Any) -> tuple[Any, Any, Any]:
    """Logging, threads, the backbone, the runner's options and the dataset's split."""
    import logging

    import torch

    from raserec_adapter import leave_one_out, load_dataset

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("faiss").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone, ex_args = backbone_options(args.backbone, args.backbone_args)
    split = leave_one_out(load_dataset(args.dataset, data_dir=args.data_dir), ex_args.max_len)
    return backbone, ex_args, split


def each_run(args: Any, backbone: Any, ex_args: Any, split: Any) -> Any:
    """Yields ``(run folder, its reloaded augmenter)`` for every ``--run`` of ``args``."""
    for run in map(Path, args.run):
        yield run, load_finished_run(backbone, split.sequences.num_items, ex_args, run, args.device)


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Writes ``record`` to ``path`` through a temporary file: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def fit_raft_and_test(aug: Any, split: Any, args: Any, protocol: str = "full") -> tuple[Any, Any]:
    """RAFT of ``aug``'s RAM (``args``: raft_epochs, patience, valid_metric, seed, device),
    then its test metrics with the RAM: ``(TrainResult, metrics)``."""
    from raserec_adapter import RAFTConfig

    rcfg = RAFTConfig(
        epochs=args.raft_epochs,
        patience=args.patience,
        valid_metric=args.valid_metric,
        seed=args.seed,
        fallback=False,  # the analyses measure the RAM itself, not the do-no-harm choice
    )
    res = aug.fit_raft(split, rcfg, device=args.device, show_progress=False)
    test = aug.evaluate(split, "test", protocol=protocol, augmented=True, device=args.device)
    return res, test["raserec"]


def run_provenance(runs: list[str]) -> dict[str, Any]:
    """How each finished example run was made, from the results file the example wrote next
    to its folder (``<run>.json``): command, commit, machine, wall time; ``{}`` where missing."""
    out: dict[str, Any] = {}
    for run in runs:
        path = Path(str(run).rstrip("/") + ".json")
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            out[str(run)] = {}
            continue
        keep = ("command", "git_commit", "machine", "wall_seconds", "finished_at", "mean")
        out[str(run)] = {k: rec[k] for k in keep if k in rec}
    return out
