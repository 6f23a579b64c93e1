"""Merges results files of single-seed runs into one multi-seed results file.

Seeds of the same experiment often run as separate processes (one per CPU core, or one per
machine). This script checks that the files describe the same experiment (dataset, backbone and
its settings, variant, protocol, split, and the same settings apart from the seed), that no seed
appears twice, and writes one file whose ``mean`` is over all seeds. The provenance of every input
run (command, commit, machine, wall time, finish time) is kept under ``runs``; an input that is
itself a merged file passes on its own ``runs``, so seeds can be added to a merged file later.

Example:
    python tools/merge_seeds.py /tmp/runs/beauty-sasrec-raserec-seed0.json \\
        /tmp/runs/beauty-sasrec-raserec-seed1.json /tmp/runs/beauty-sasrec-raserec-seed2.json \\
        --out benchmarks/results/beauty-sasrec-raserec.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # for _common

import _common  # noqa: F401  (puts the repository root on sys.path)

from raserec_adapter import AugmenterConfig, PretrainConfig, RAFTConfig
from raserec_adapter.experiments.reporting import write_results

# a setting added to a config after a file was written ran at its default there: compare with it
DEFAULTS: dict[str, dict[str, Any]] = {
    "pretrain.config": PretrainConfig().to_dict(),
    "raft.config": RAFTConfig().to_dict(),
    "raft.augmenter_config": AugmenterConfig().to_dict(),
}
SAME = ("dataset", "backbone", "variant", "protocol", "split")  # passed on to the merged file
CHECKED = (*SAME, "backbone_settings")  # must agree between the merged files
RUN_KEYS = ("command", "git_commit", "machine", "wall_seconds", "finished_at", "seeds")


def _filled(config: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the keys it lacks taken from ``defaults`` (nested dicts too)."""
    out = dict(config)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = _filled(out[key], value)
    return out


def _settings(details: dict[str, Any]) -> dict[str, Any]:
    """The settings of one seed's run, minus the seed itself.

    Keys a file lacks (settings added to the library after it was written) count as their
    current defaults, which is what that older code ran with.
    """
    out: dict[str, Any] = {}
    for stage in ("pretrain", "raft"):
        for key in ("config", "augmenter_config"):
            config = dict((details.get(stage) or {}).get(key) or {})
            if config:
                config = _filled(config, DEFAULTS.get(f"{stage}.{key}", {}))
                config.pop("seed", None)
                out[f"{stage}.{key}"] = config
    return out


def _model(details: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in details["encoder"].items() if k != "checkpoint"}


def merge(records: list[dict[str, Any]], ignore_epochs: bool = False) -> dict[str, Any]:
    """Checks that ``records`` are seeds of one experiment and returns the merged fields.

    With ``ignore_epochs`` the seeds may differ in their stage-1 epoch cap (runs stopped by
    hand at different epochs); each seed's own cap stays in its ``per_seed_details``.

    Raises:
        ValueError: The files differ in what they measured or in settings, or repeat a seed.
    """
    if not records:
        raise ValueError("give at least one results file")
    first = records[0]
    seeds: list[int] = []
    per_seed: list[dict[str, float]] = []
    details: list[dict[str, Any]] = []
    for i, rec in enumerate(records):
        for key in CHECKED:
            if rec.get(key) != first.get(key):
                raise ValueError(
                    f"file {i + 1} has {key}={rec.get(key)!r} but file 1 has {first.get(key)!r}; "
                    "merge only seeds of the same experiment"
                )
        if len(rec["seeds"]) != len(rec["per_seed"]):
            raise ValueError(
                f"file {i + 1}: {len(rec['seeds'])} seeds but {len(rec['per_seed'])} rows"
            )
        if len(rec.get("per_seed_details") or []) != len(rec["seeds"]):
            raise ValueError(
                f"file {i + 1}: {len(rec['seeds'])} seeds but "
                f"{len(rec.get('per_seed_details') or [])} per_seed_details, so its settings "
                "cannot be checked against the other files'; merge files the examples wrote"
            )
        for seed in rec["seeds"]:
            if seed in seeds:
                raise ValueError(f"seed {seed} appears twice; each seed may be merged once")
        seeds.extend(rec["seeds"])
        per_seed.extend(rec["per_seed"])
        details.extend(rec.get("per_seed_details", []))

    def compared(d: dict[str, Any]) -> dict[str, Any]:
        out = _settings(d)
        if ignore_epochs and "pretrain.config" in out:
            out["pretrain.config"] = {
                k: v for k, v in out["pretrain.config"].items() if k != "epochs"
            }
        return out

    # the encoder (class, hidden size, parameter count) where every file records it; older
    # files do not, and the checkpoint each seed loaded may differ on purpose
    with_encoder = all("encoder" in d for d in details)
    reference = compared(details[0])
    for d in details[1:]:
        if with_encoder and _model(d) != _model(details[0]):
            raise ValueError(
                f"seed {d.get('seed')} ran another encoder than seed {details[0].get('seed')}: "
                f"{_model(d)} vs {_model(details[0])}; merge only seeds of the same model"
            )
        if compared(d) != reference:
            raise ValueError(
                f"seed {d.get('seed')} ran with other settings than seed {details[0].get('seed')}: "
                f"{compared(d)} vs {reference}"
                + ("" if ignore_epochs else " (--ignore-epochs lets stage-1 epoch caps differ)")
            )
    keys = list(per_seed[0])
    # the sample standard deviation (n - 1 in the denominator)
    std = {k: statistics.stdev(m[k] for m in per_seed) if len(per_seed) > 1 else 0.0 for k in keys}
    return {
        "seeds": seeds,
        "per_seed": per_seed,
        "std": std,
        "per_seed_details": details,
        "runs": [run for rec in records for run in _runs_of(rec)],
    }


def _runs_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The provenance of the runs behind ``record``.

    A file written by this script keeps its inputs' runs under ``runs``; merging it again passes
    those on rather than one entry for the earlier merge, so every seed's command and commit stay.
    """
    if record.get("runs"):
        return [dict(run) for run in record["runs"]]
    run = {k: record.get(k) for k in RUN_KEYS}
    if earlier := _earlier_seconds(record):  # a resumed run: its wall time is the last call's
        run["earlier_invocations_seconds"] = earlier
    if record.get("run_history"):  # free text on how a resumed run was pieced together
        run["run_history"] = record["run_history"]
    return [run]


def _earlier_seconds(record: dict[str, Any]) -> float:
    """Stage-1 seconds of a resumed run's invocations before its last one (0 if not resumed).

    A run resumed with ``--resume`` records only its last invocation's wall time; each
    invocation's stage-1 seconds are under ``per_seed_details[i].pretrain.invocations``.
    """
    total = 0.0
    for detail in record.get("per_seed_details") or []:
        calls = (detail.get("pretrain") or {}).get("invocations") or []
        total += sum(float(c.get("seconds", 0.0)) for c in calls[:-1])
    return round(total, 1)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("files", nargs="+", help="results files of single-seed (or few-seed) runs")
    p.add_argument("--out", required=True, help="merged results file to write")
    p.add_argument(
        "--ignore-epochs",
        action="store_true",
        help="let the seeds' stage-1 epoch caps differ (runs stopped by hand at different "
        "epochs and resumed with --epochs N); each cap stays in per_seed_details",
    )
    args = p.parse_args(argv)
    records = [json.loads(Path(f).read_text()) for f in args.files]
    merged = merge(records, ignore_epochs=args.ignore_epochs)
    first = records[0]
    commits = sorted({r.get("git_commit") or "unknown" for r in merged["runs"]})
    backbone = first.get("backbone_settings")
    settings = {"backbone_settings": backbone} if backbone else {}
    write_results(
        args.out,
        **{k: first[k] for k in SAME},
        seeds=merged["seeds"],
        per_seed=merged["per_seed"],
        wall_seconds=sum(
            (r.get("wall_seconds") or 0.0) + r.get("earlier_invocations_seconds", 0.0)
            for r in merged["runs"]
        ),
        extra={
            "std": merged["std"],
            "per_seed_details": merged["per_seed_details"],
            "runs": merged["runs"],
            "wall_seconds_note": "sum of the merged runs' wall times, each with the stage-1 "
            "invocations it resumed after (the runs may run in parallel)",
            **settings,
        },
        commit=commits[0] if len(commits) == 1 else ", ".join(commits),
    )
    print(f"wrote {args.out}: seeds {merged['seeds']}")
    return Path(args.out)


if __name__ == "__main__":
    main()
