"""RAM sensitivity to alpha, beta and K over one frozen encoder (the paper's Fig. 5).

Stage 2 only: a registered backbone's trained encoder (``encoder.pt`` from a run of
``examples/<backbone>.py``) is loaded, the memory bank is built once, and for every setting a
fresh RAM head (:meth:`~raserec_adapter.RetrievalAugmenter.reset_ram`, same seed) is trained by
RAFT with early stopping on validation HR@10, then evaluated on the test split. As in the
paper's figure, one setting varies at a time around the base (alpha 0.5, beta 1.0, K 20).

Every setting records its best validation metrics (what to select by) next to its test metrics
(what to report for the selected one; choosing by test figures would tune on the test set). The
file is rewritten after each setting, and ``--resume`` skips settings already in it, so a long
sweep survives an interruption. ``--summarise`` merges the files of several seeds: the mean per
setting, and the setting with the best mean validation metric. One seed's grid can also be
split over several processes (each with its own ``--out`` and a part of the grid, e.g.
``--alphas 0.3,0.7 --betas '' --ks ''`` and ``--alphas '' --betas 0 --ks 10,40``):
``--summarise`` joins the parts of a seed when they swept the same encoder.

    python benchmarks/sensitivity.py --backbone bert4rec --dataset beauty --seed 0 \\
        --encoder runs/beauty-bert4rec-raserec-seed0/encoder.pt \\
        --out runs/sensitivity-beauty-bert4rec-seed0.json
    python benchmarks/sensitivity.py --summarise runs/sensitivity-beauty-bert4rec-seed*.json \\
        --out benchmarks/results/sensitivity-beauty-bert4rec.json
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (
    backbone_options,
    check_resume,
    earlier_invocations,
    fit_raft_and_test,
    provenance,
    resume_settings,
    write_json,
)

from raserec_adapter import (
    AugmenterConfig,
    BankConfig,
    RAMConfig,
    RetrievalAugmenter,
    leave_one_out,
    load_dataset,
)
from raserec_adapter.experiments.reporting import code_version
from raserec_adapter.training.state import seed_everything

BASE = {"alpha": 0.5, "beta": 1.0, "k": 20}
METRICS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def settings(
    alphas: list[float], betas: list[float], ks: list[int], base: dict[str, Any]
) -> list[dict[str, Any]]:
    """The base setting, then one parameter varied at a time (duplicates dropped).

    Example:
        >>> settings([0.3, 0.5], [1.0], [10], {"alpha": 0.5, "beta": 1.0, "k": 20})
        [{'alpha': 0.5, 'beta': 1.0, 'k': 20}, {'alpha': 0.3, 'beta': 1.0, 'k': 20}, \
{'alpha': 0.5, 'beta': 1.0, 'k': 10}]
    """
    out = [dict(base)]
    for name, values in (("alpha", alphas), ("beta", betas), ("k", ks)):
        for v in values:
            s = {**base, name: v}
            if s not in out:
                out.append(s)
    return out


# what shapes each row besides the encoder, the seed and the setting (checked by --resume)
ROW_SETTINGS = (
    "dataset",
    "backbone",
    "backbone_args",
    "valid_metric",
    "raft_epochs",
    "patience",
    "index",
    "nprobe",
    "device",
)


def _label(s: dict[str, Any]) -> str:
    return f"alpha={s['alpha']:g} beta={s['beta']:g} k={s['k']}"


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("faiss").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    grid = settings(_floats(args.alphas), _floats(args.betas), _ints(args.ks), BASE)
    record: dict[str, Any] = {}
    row_settings = resume_settings(args, ROW_SETTINGS)
    if args.resume and out.exists():
        record = json.loads(out.read_text())
        if record.get("encoder") != str(args.encoder) or record.get("seed") != args.seed:
            raise SystemExit(f"{out} holds a sweep of another encoder or seed; use another --out")
        check_resume(record, row_settings, out)
        record["earlier_invocations"] = earlier_invocations(record)
    done = {_label(r["setting"]): r for r in record.get("settings", [])}
    t_start = time.perf_counter()
    wall_before = record.get("wall_seconds", 0.0)

    backbone, ex_args = backbone_options(args.backbone, args.backbone_args)
    sequences = load_dataset(args.dataset, data_dir=args.data_dir)
    split = leave_one_out(sequences, max_len=ex_args.max_len)
    seed_everything(args.seed)
    encoder = backbone.build(sequences.num_items, ex_args)
    state = torch.load(args.encoder, map_location="cpu", weights_only=True)
    encoder.load_state_dict(state)
    acfg = AugmenterConfig(
        max_len=ex_args.max_len,
        bank=BankConfig(index_factory=args.index, nprobe=args.nprobe),
        ram=RAMConfig(**BASE),
    )
    aug = RetrievalAugmenter(encoder, acfg, **backbone.augmenter_kwargs(encoder))
    aug.build_bank(split, device=args.device)
    plain: dict[str, dict[str, float]] = record.get("plain", {})
    if not plain:
        plain = {
            w: aug.evaluate(split, w, augmented=(False,), device=args.device)["plain"]
            for w in ("valid", "test")
        }
    record.update(
        {
            "what": "RAM sensitivity to alpha, beta, K over one frozen encoder (stage 2 only)",
            "dataset": args.dataset,
            "backbone": args.backbone,
            "backbone_args": args.backbone_args,
            "encoder": str(args.encoder),
            "seed": args.seed,
            "protocol": "full",
            "selection_metric": f"valid {args.valid_metric}",
            "settings_of_rows": row_settings,
            "plain": plain,
        }
    )
    results = []
    for s in grid:
        if _label(s) in done:
            results.append(done[_label(s)])
            continue
        aug.reset_ram(acfg.ram.replace(**s), seed=args.seed)
        res, test = fit_raft_and_test(aug, split, args)
        row = {
            "setting": s,
            "best_epoch": res.best_epoch,
            "epochs_run": res.epochs_run,
            "seconds": round(res.seconds, 1),
            "valid": res.best_valid,
            "test": test,
        }
        results.append(row)
        logging.info(
            "%s: valid %s %.4f | test HR@5 %.4f HR@10 %.4f (plain %.4f / %.4f)",
            _label(s),
            args.valid_metric,
            res.best_valid[args.valid_metric],
            test["HR@5"],
            test["HR@10"],
            plain["test"]["HR@5"],
            plain["test"]["HR@10"],
        )
        record.update(
            {"settings": results, **provenance(wall_before + time.perf_counter() - t_start)}
        )
        write_json(out, record)
    return record


def _order(setting: dict[str, Any]) -> tuple[Any, ...]:
    """Sort key: the base, then alpha, beta and K varied one at a time, each by value."""
    varied = [name for name in BASE if setting[name] != BASE[name]]
    if not varied:
        return (0,)
    if len(varied) == 1:
        return (1 + list(BASE).index(varied[0]), setting[varied[0]])
    return (len(BASE) + 1, _label(setting))


def join_parts(parts: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One sweep per seed from files that each hold a part of that seed's grid.

    Settings are put in a fixed order (:func:`_order`). A setting found in more than one part
    (the base, which every part runs first) keeps its first occurrence; the second is listed in
    the returned ``repeated`` rows with the largest difference of its test metrics, so a
    non-deterministic rerun would show.

    Raises:
        SystemExit: two parts of a seed swept different encoders or found different frozen
            metrics.

    Example:
        >>> row = lambda a, v: {"setting": {**BASE, "alpha": a}, "test": {"HR@5": v}}
        >>> one = {"seed": 0, "encoder": "e.pt", "plain": {}, "settings": [row(0.5, 0.1)]}
        >>> two = {**one, "settings": [row(0.5, 0.1), row(0.3, 0.2)]}
        >>> runs, repeated = join_parts([two, one])
        >>> [r["setting"]["alpha"] for r in runs[0]["settings"]], repeated[0]["max_test_diff"]
        ([0.5, 0.3], 0.0)
    """
    by_seed: dict[int, dict[str, Any]] = {}
    repeated: list[dict[str, Any]] = []
    for part in parts:
        seed = part["seed"]
        if seed not in by_seed:
            by_seed[seed] = {**part, "settings": list(part["settings"])}
            continue
        run = by_seed[seed]
        if part.get("encoder") != run.get("encoder") or part.get("plain") != run.get("plain"):
            what = "encoders" if part.get("encoder") != run.get("encoder") else "frozen metrics"
            raise SystemExit(
                f"a seed appears twice: two files of seed {seed} have different {what} "
                f"(encoders {run.get('encoder')}, {part.get('encoder')}); give one file per "
                "seed, or parts of one sweep of the same encoder"
            )
        have = {_label(x["setting"]): x for x in run["settings"]}
        for row in part["settings"]:
            first = have.get(_label(row["setting"]))
            if first is None:
                run["settings"].append(row)
                continue
            diff = max(abs(first["test"][m] - row["test"][m]) for m in first["test"])
            repeated.append({"seed": seed, "setting": row["setting"], "max_test_diff": diff})
    runs = list(by_seed.values())
    for run in runs:
        run["settings"].sort(key=lambda x: _order(x["setting"]))
    return runs, repeated


def summarise(files: list[str], metric: str) -> dict[str, Any]:
    """Means over seeds per setting, and the setting with the best mean validation ``metric``.

    Raises:
        SystemExit: the files sweep different datasets, backbones or settings, or two files
            of one seed swept different encoders.
    """
    parts = [json.loads(Path(f).read_text()) for f in files]
    keys = {(r["dataset"], r["backbone"], r.get("backbone_args", "")) for r in parts}
    if len(keys) != 1:
        raise SystemExit(f"the files sweep different datasets or backbones: {sorted(keys)}")
    # RAFT's settings (older files record only the selection metric)
    made = {
        json.dumps([r.get("selection_metric"), r.get("settings_of_rows")], sort_keys=True)
        for r in parts
    }
    if len(made) != 1:
        raise SystemExit(
            "the files were swept with different RAFT settings or selection metrics: "
            f"{sorted(made)}; summarise only sweeps made alike"
        )
    runs, repeated = join_parts(parts)
    seeds = [r["seed"] for r in runs]
    labels = [[_label(x["setting"]) for x in r["settings"]] for r in runs]
    if any(lab != labels[0] for lab in labels):
        raise SystemExit("the files hold different settings; rerun them with the same grid")

    def mean(rows: list[dict[str, float]]) -> dict[str, float]:
        return {m: statistics.fmean(row[m] for row in rows) for m in rows[0]}

    table = []
    for i in range(len(labels[0])):
        rows = [r["settings"][i] for r in runs]
        table.append(
            {
                "setting": rows[0]["setting"],
                "valid": mean([x["valid"] for x in rows]),
                "test": mean([x["test"] for x in rows]),
                "test_per_seed": [{m: x["test"][m] for m in METRICS} for x in rows],
                "best_epochs": [x["best_epoch"] for x in rows],
            }
        )
    best = max(table, key=lambda t: t["valid"][metric])
    extra: dict[str, Any] = {"repeated_settings": repeated} if repeated else {}
    return {
        "what": runs[0]["what"] + f"; mean of seeds {sorted(seeds)}",
        "dataset": runs[0]["dataset"],
        "backbone": runs[0]["backbone"],
        "backbone_args": runs[0].get("backbone_args", ""),
        "seeds": seeds,
        "protocol": "full",
        "plain": {w: mean([r["plain"][w] for r in runs]) for w in ("valid", "test")},
        "settings": table,
        "selected_by_valid": {"metric": f"valid {metric}", "setting": best["setting"]},
        **extra,
        "runs": [
            {k: r[k] for k in ("command", "git_commit", "machine", "wall_seconds", "encoder")}
            for r in parts
        ],
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "git_commit": code_version(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def print_table(record: dict[str, Any], metric: str) -> None:
    head = f"{'setting':<28} {'valid ' + metric:>14} " + " ".join(f"{m:>8}" for m in METRICS)
    print(head)
    plain = record["plain"]
    print(
        f"{'frozen encoder (no RAM)':<28} {plain['valid'][metric]:>14.4f} "
        + " ".join(f"{plain['test'][m]:>8.4f}" for m in METRICS)
    )
    for row in record["settings"]:
        print(
            f"{_label(row['setting']):<28} {row['valid'][metric]:>14.4f} "
            + " ".join(f"{row['test'][m]:>8.4f}" for m in METRICS)
        )
    if "selected_by_valid" in record:
        chosen = _label(record["selected_by_valid"]["setting"])
        print(f"selected by {metric} on validation: {chosen}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--summarise", nargs="+", metavar="FILE", help="merge per-seed sweep files")
    p.add_argument("--out", required=True, help="results file to write")
    p.add_argument("--backbone", choices=["sasrec", "gru4rec", "bert4rec"], default="sasrec")
    p.add_argument(
        "--backbone-args",
        default="",
        help="the runner's options the encoder was trained with that change the model, e.g. "
        "'--max-len 10 --hidden-size 16' (default: none, the runner's defaults)",
    )
    p.add_argument("--encoder", help="the example run's encoder.pt (a state dict)")
    p.add_argument("--dataset", default="beauty")
    p.add_argument("--data-dir", default=None, help="folder with the dataset files")
    p.add_argument("--seed", type=int, default=0, help="RAFT seed (and the RAM's init)")
    p.add_argument("--alphas", default="0.1,0.3,0.7,0.9", help="comma-separated alpha values")
    p.add_argument("--betas", default="0,0.5", help="comma-separated beta values")
    p.add_argument("--ks", default="5,10,40", help="comma-separated K values")
    p.add_argument("--valid-metric", default="HR@10", help="RAFT early stopping and selection")
    p.add_argument("--raft-epochs", type=int, default=100)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--index", default="IVF128,Flat")
    p.add_argument("--nprobe", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="skip settings already in --out")
    p.add_argument(
        "--note",
        default=None,
        help="with --summarise: free-text provenance kept in the file's 'note' (where the "
        "encoder came from, anything unusual about the runs)",
    )
    args = p.parse_args(argv)
    if args.note is not None and not args.summarise:
        p.error("--note goes with --summarise")
    if args.summarise:
        record = summarise(args.summarise, args.valid_metric)
        if args.note is not None:
            record["note"] = args.note
        write_json(Path(args.out), record)
    else:
        if not args.encoder:
            p.error("--encoder is required (or --summarise)")
        record = sweep(args)
    print_table(record, args.valid_metric)
    return record


if __name__ == "__main__":
    main()
