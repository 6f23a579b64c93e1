"""Live memory under preference drift: does adding new interactions to the bank beat a stale one?

Trains the encoder (stage 1) and the RAM (stage 2) on each user's history up to a cut and holds
out what comes after as a stream (:mod:`raserec_adapter.experiments.streaming`): on a file with
timestamps (``.inter``/``.csv``/``.tsv``) the cut is a date and the steps are ``--step-days``
of global time; on a text file (Beauty, Sports) each user's last ``--stream-steps`` items are
the stream and step ``j`` is every user's ``j``-th new item. Every step's next-item targets are
ranked (full ranking; protocols ``full`` and ``seen_removed``) by five arms:

- ``frozen``: the cut's encoder alone;
- ``stale``: the cut's RAM over the bank of every pair known at the cut;
- ``live``: the same RAM over that bank plus, through ``add_memories``, every stream interaction
  before the step (all users, the no-leakage rule intact), nothing retrained;
- ``forget`` (from the middle step on): ``live`` after ``remove_memories`` of ``--forget-share``
  of the users, whose later interactions are not added either;
- ``retrained`` (every ``--retrain-every``-th step): encoder and RAM trained again on
  everything before the step (from scratch or from the cut's weights, ``--retrain-init``).

Per step: HR@10 / NDCG@10 per arm, each arm's wall seconds to get up to date, the paired bootstrap
interval of live - stale (seeds averaged per target), the share of retrieved memories that are
stream memories, and leaks (own or later pairs of the query's user, forgotten users' memories;
asserted 0). Resumable: models, step records and ranks are kept under ``--work-dir``. The
commands: ``benchmarks/README.md``; ``--plot FILE`` draws a results file's figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import ROOT, earlier_invocations, provenance, write_json
from live_memory_plots import plot

import raserec_adapter as ra
from raserec_adapter.data import read_interactions
from raserec_adapter.evaluation import RankingMetrics
from raserec_adapter.evaluation.lift import lift_record
from raserec_adapter.experiments import BACKBONES
from raserec_adapter.experiments import streaming as st
from raserec_adapter.training.state import seed_everything

log = logging.getLogger("live_memory")
PROTOCOLS = ("full", "seen_removed")
OVER = "stream targets (user, step)"  # what a lift's rows are: one per next-item target
METRICS = ("HR@10", "NDCG@10")
SETTINGS = (
    "dataset", "cut", "step_days", "stream_steps", "users", "backbone", "max_len", "hidden_size",
    "pretrain_epochs", "batching", "retrieval_weight", "patience", "raft_epochs", "bank",
    "retrain_every", "retrain_epochs", "retrain_init", "forget_share",
)  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="../shared/data/ml-100k.inter")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--cut", default="1998-03-01", help="global time: the cut date (UTC)")
    p.add_argument("--step-days", type=float, default=7.0, help="global time: days per step")
    p.add_argument("--stream-steps", type=int, default=5, help="per-user: new items per user")
    p.add_argument("--users", type=int, default=None, help="keep the first N users (a test)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--backbone", choices=sorted(BACKBONES), default="sasrec")
    for flag, kind, default in (
        ("--max-len", int, 20), ("--hidden-size", int, 64), ("--pretrain-epochs", int, 15),
        ("--batching", str, "windows"), ("--retrieval-weight", float, 0.1),
        ("--patience", int, 10), ("--raft-epochs", int, 100), ("--forget-share", float, 0.1),
        ("--resamples", int, 2000), ("--threads", int, 1), ("--device", str, "cpu"),
    ):  # fmt: skip
        p.add_argument(flag, type=kind, default=default)
    p.add_argument("--bank", choices=["faiss", "torch"], default="faiss")
    p.add_argument("--retrain-every", type=int, default=2, help="0: no retrained arm")
    p.add_argument("--retrain-epochs", type=int, default=None, help="default: --pretrain-epochs")
    p.add_argument("--retrain-init", choices=["scratch", "cut"], default="scratch")
    p.add_argument("--work-dir", help="models, step records and ranks (resumed from)")
    p.add_argument("--out", default=None, help="results file (default: benchmarks/results/...)")
    p.add_argument("--note", default=None, help="a note to keep in the results file")
    p.add_argument("--plot", default=None, help="draw the figures of a results file and exit")
    p.add_argument("--figures", default=str(ROOT / "docs"), help="where --plot writes the SVGs")
    args = p.parse_args(argv)
    if args.plot is None and not args.work_dir:
        p.error("--work-dir is required (models and step records are kept there)")
    if args.retrain_epochs is None:
        args.retrain_epochs = args.pretrain_epochs
    return args


def load_stream(args: argparse.Namespace) -> tuple[st.Stream, str]:
    """The stream of ``--dataset``: global time for a table with timestamps, else per user."""
    path = Path(args.dataset)
    if path.suffix in (".inter", ".csv", ".tsv") or path.name.endswith((".inter.gz", ".csv.gz")):
        import pandas as pd

        df = pd.read_csv(path, sep="," if ".csv" in path.name else "\t")
        df.columns = [c.split(":")[0] for c in df.columns]
        seqs, times = st.timed_sequences(
            df["user_id"].to_numpy(), df["item_id"].to_numpy(), df["timestamp"].to_numpy()
        )
        ref = read_interactions(path)  # the library's reading: the same sequences, same order
        same = np.array_equal(ref.items, seqs.items) and np.array_equal(ref.offsets, seqs.offsets)
        if not same:
            raise SystemExit(f"{path}: the timed reading differs from read_interactions'")
        cut = pd.Timestamp(args.cut, tz="UTC").timestamp()
        day = lambda t: time.strftime("%Y-%m-%d", time.gmtime(t))  # noqa: E731
        stream = st.global_time_stream(seqs, times, cut, args.step_days * 86400, label=day)
        kind = "global time"
    else:
        seqs = ra.load_dataset(args.dataset, data_dir=args.data_dir)
        stream = st.per_user_stream(seqs, args.stream_steps)
        kind = "per-user steps"
    return (stream.head(args.users) if args.users else stream), kind


def new_augmenter(args: argparse.Namespace, num_items: int, seed: int) -> ra.RetrievalAugmenter:
    seed_everything(seed)
    backbone = BACKBONES[args.backbone]
    encoder = backbone.build(num_items, args)  # reads hidden_size and max_len
    cfg = ra.AugmenterConfig(max_len=args.max_len, bank=ra.BankConfig(kind=args.bank))
    return ra.RetrievalAugmenter(encoder, cfg, **backbone.augmenter_kwargs(encoder))


def twin(aug: ra.RetrievalAugmenter, args: argparse.Namespace) -> ra.RetrievalAugmenter:
    """Another augmenter over the same encoder and a copy of the same RAM (its own bank)."""
    wrap = BACKBONES[args.backbone].augmenter_kwargs(aug.encoder.module)
    other = ra.RetrievalAugmenter(aug.encoder.module, aug.config, **wrap)
    other.ram.load_state_dict(aug.ram.state_dict())
    other.ram.serve(True)
    return other


def train_or_load(
    args: argparse.Namespace, snap: st.Snapshot, seed: int, folder: Path, epochs: int,
    init: dict[str, torch.Tensor] | None = None,
) -> tuple[ra.RetrievalAugmenter, dict[str, Any]]:  # fmt: skip
    """Stage 1 and RAFT on ``snap``'s split (or the models saved in ``folder``)."""
    aug = new_augmenter(args, snap.split.sequences.num_items, seed)
    done = folder / "record.json"
    log.info("seed %d: %s on %d users' pairs", seed, folder.name, snap.split.sequences.num_users)
    if done.exists():  # resume: the saved encoder and RAM
        model = aug.encoder.module
        model.load_state_dict(torch.load(folder / "encoder.pt", "cpu", weights_only=True))
        wrap = BACKBONES[args.backbone].augmenter_kwargs(model)
        aug = ra.RetrievalAugmenter.load(model, folder / "augmenter", **wrap)
        aug.ram.serve(True)
        return aug, {**json.loads(done.read_text()), "resumed": True}
    if init is not None:
        aug.encoder.module.load_state_dict(init)
    t0 = time.perf_counter()
    pcfg = ra.PretrainConfig(
        epochs=epochs, max_len=args.max_len, batching=args.batching, seed=seed,
        retrieval_weight=args.retrieval_weight, patience=args.patience,
    )  # fmt: skip
    pre = aug.pretrain(snap.split, pcfg, device=args.device, show_progress=False)
    aug.build_bank(snap.split, device=args.device, show_progress=False)
    rcfg = ra.RAFTConfig(epochs=args.raft_epochs, patience=args.patience, seed=seed, fallback=False)
    raft = aug.fit_raft(snap.split, rcfg, device=args.device, show_progress=False)
    aug.ram.serve(True)  # the RAM itself is measured, whatever validation chose
    record = {  # what was trained and how long it took
        "seconds": round(time.perf_counter() - t0, 1),
        "pretrain": {"epochs_run": pre.epochs_run, "best_epoch": pre.best_epoch},
        "raft": {"epochs_run": raft.epochs_run, "best_valid": raft.best_valid,
                 "baseline_valid": raft.baseline_valid},
        "users": int(snap.split.sequences.num_users),
        "training_pairs": len(snap.split.train.users),
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(aug.encoder.module.state_dict(), folder / "encoder.pt")
    aug.save(folder / "augmenter")
    write_json(done, record)
    return aug, record


def _metrics(ranks: torch.Tensor) -> dict[str, float]:
    return {k: v for k, v in RankingMetrics.of(ranks, ks=(10,)).items() if k in METRICS}


def run_seed(args: argparse.Namespace, stream: st.Stream, seed: int, work: Path) -> list[dict]:
    """Every step of one seed (steps already recorded under ``work`` are read back)."""
    seqs, steps = stream.sequences, stream.steps
    done = [work / f"step{j}.json" for j in range(len(steps))]
    if all(p.exists() and p.with_name(f"{p.stem}-ranks.npz").exists() for p in done):
        return [json.loads(p.read_text()) for p in done]  # every step recorded: no model needed
    cut_snap = st.snapshot(seqs, stream.cut, args.max_len)
    stale, cut_rec = train_or_load(args, cut_snap, seed, work / "cut", args.pretrain_epochs)
    for aug in (stale, live := twin(stale, args)):
        st.fill_bank(aug, cut_snap, seqs, args.device)
    live_known, forget, forget_known, removed = stream.cut.copy(), None, None, None
    half, ids, records = len(steps) // 2, cut_snap.bank_ids, []
    for j, step in enumerate(steps):
        path = work / f"step{j}.json"
        targets = step.targets()
        if path.exists() and (work / f"step{j}-ranks.npz").exists():
            records.append(json.loads(path.read_text()))
            continue
        rec: dict[str, Any] = {"step": j, "label": step.label, "targets": len(targets)}
        rec["new_user_targets"] = int((stream.cut[targets.users] < 3).sum())
        t0 = time.perf_counter()
        added = st.add_stream(live, seqs, live_known, step.known, ids, device=args.device)
        cost = {"frozen": 0.0, "stale": 0.0, "live": time.perf_counter() - t0}
        if j and not np.array_equal(live_known, steps[j - 1].known):
            cost["live"] = None  # resumed: several steps replayed at once
        live_known = step.known
        rec["added"], rec["bank"] = added, {"stale": len(stale.bank), "live": len(live.bank)}
        arms = {"frozen": (stale, False, ids), "stale": (stale, True, ids)}  # (aug, RAM, ids)
        arms["live"] = (live, True, ids)
        before: dict[str, np.ndarray] = {}
        if j >= half > 0:
            t0 = time.perf_counter()
            if forget is None:  # the live bank of the middle step, then a share of users removed
                forget, mid = twin(stale, args), steps[half].known
                st.fill_bank(forget, cut_snap, seqs, args.device)
                st.add_stream(forget, seqs, stream.cut, mid, ids, device=args.device)
                have = np.flatnonzero(mid >= 2)  # users with memories
                rng = np.random.default_rng(1000 + seed)
                removed = np.sort(rng.choice(have, round(args.forget_share * len(have)), False))
                for p in PROTOCOLS if j == half else ():  # the same bank, before the removal
                    r = st.rank_step(forget, seqs, targets, ids, augmented=True, protocol=p,
                                     device=args.device)  # fmt: skip
                    before[f"{p}.forget_before"] = r.numpy().astype(np.int32)
                t0 = time.perf_counter()
                rec["removed_memories"] = forget.remove_memories(ids[removed])
                rec["removed_users"], forget_known = len(removed), mid
            st.add_stream(forget, seqs, forget_known, step.known, ids, removed, args.device)
            forget_known = step.known
            cost["forget"] = time.perf_counter() - t0 if cost["live"] is not None else None
            arms["forget"] = (forget, True, ids)
        if args.retrain_every and j and j % args.retrain_every == 0:
            snap = st.snapshot(seqs, step.known, args.max_len)
            init = stale.encoder.module.state_dict() if args.retrain_init == "cut" else None
            again, rrec = train_or_load(
                args, snap, seed, work / f"retrain{j}", args.retrain_epochs, init
            )
            t0 = time.perf_counter()  # the training's own seconds are in rrec (also resumed)
            st.fill_bank(again, snap, seqs, args.device)
            cost["retrained"] = rrec["seconds"] + time.perf_counter() - t0
            rec["retrain"] = rrec
            arms["retrained"] = (again, True, snap.bank_ids)
            arms["retrained_frozen"] = (again, False, snap.bank_ids)
        ranks = {
            f"{p}.{arm}": st.rank_step(a, seqs, targets, b, augmented=m, protocol=p,
                                       device=args.device).numpy().astype(np.int32)
            for arm, (a, m, b) in arms.items() for p in PROTOCOLS
        }  # fmt: skip
        ranks.update(before)
        rec["metrics"] = {k: _metrics(torch.from_numpy(r)) for k, r in ranks.items()}
        rec["cost_seconds"] = {k: None if v is None else round(v, 3) for k, v in cost.items()}
        checked = {"stale": (stale, None), "live": (live, None), "forget": (forget, removed)}
        rec["checks"] = {
            arm: st.retrieval_checks(a, stream, targets, cut_snap, gone, args.device)
            for arm, (a, gone) in checked.items() if a is not None
        }  # fmt: skip
        if forget is not None:
            keep = ~np.isin(targets.users, removed)
            rec["remaining_targets"] = int(keep.sum())
            rec["remaining"] = {
                f"{p}.{arm}": _metrics(torch.from_numpy(ranks[f"{p}.{arm}"][keep]))
                for arm in ("live", "forget", *(["forget_before"] if before else []))
                for p in PROTOCOLS
            }  # fmt: skip
        np.savez(work / f"step{j}-ranks.npz", **ranks)
        write_json(path, {**rec, "seed": seed, "cut_model": cut_rec})
        records.append(json.loads(path.read_text()))
        log.info("seed %d step %d (%s): %d targets, NDCG@10 full %s", seed, j, step.label,
                 len(targets), {a: round(m["NDCG@10"], 4) for a, m in rec["metrics"].items()
                                if a.startswith("full.")})  # fmt: skip
    return records


def _means(recs: list[dict], key: str) -> dict[str, dict[str, float]]:
    """``{arm: {metric: mean over seeds}}`` of ``rec[key]`` in each seed's record."""
    arms = recs[0][key]
    return {a: {m: float(np.mean([r[key][a][m] for r in recs])) for m in METRICS} for a in arms}


def aggregate(args: argparse.Namespace, per_seed: dict[int, list[dict]], work: Path) -> list:
    """Per step: means over seeds, costs, live - stale intervals (ranks pooled over seeds)."""
    out = []
    for j, first in enumerate(per_seed[args.seeds[0]]):
        recs = [per_seed[s][j] for s in args.seeds]
        ranks = [np.load(work / f"seed{s}" / f"step{j}-ranks.npz") for s in args.seeds]
        row = {k: first[k] for k in ("step", "label", "targets", "new_user_targets")}
        row["metrics"] = dict(sorted(_means(recs, "metrics").items()))
        costs = {a: [r["cost_seconds"][a] for r in recs] for a in first["cost_seconds"]}
        row["cost_seconds"] = {
            a: None if None in v else round(float(np.mean(v)), 3) for a, v in costs.items()
        }
        row["lift_live_minus_stale"] = {
            p: lift_record(*(np.stack([r[f"{p}.{a}"] for r in ranks]) for a in ("stale", "live")),
                           over=OVER, ks=(10,), resamples=args.resamples)["metrics"]
            for p in PROTOCOLS
        }  # fmt: skip
        for name, arm, field in (
            ("stream_share", "live", "stream_share"),
            ("queries_with_a_stream_memory", "live", "queries_with_a_stream_memory"),
            ("stale_stream_share", "stale", "stream_share"),
        ):
            row[name] = float(np.mean([r["checks"][arm][field] for r in recs]))
        checks = [c for r in recs for c in r["checks"].values()]
        row["leaks"] = sum(c["leaks"] for c in checks)
        row["forgotten_retrieved"] = sum(c.get("forgotten_retrieved", 0) for c in checks)
        row["added_memories"] = [r["added"] for r in recs]
        if "remaining" in first:
            row["remaining_targets"] = first["remaining_targets"]
            row["remaining"] = _means(recs, "remaining")
        if "removed_users" in first:
            row["removed_users"] = first["removed_users"]
            row["removed_memories"] = [r["removed_memories"] for r in recs]
        out.append(row)
    return out


def pooled_lift(args: argparse.Namespace, steps: list, work: Path, a: str, b: str) -> dict:
    """``b - a`` over the targets of ``steps`` together, per protocol (seeds averaged)."""

    def ranks(p: str, arm: str) -> np.ndarray:
        files = [[work / f"seed{s}" / f"step{j}-ranks.npz" for j in steps] for s in args.seeds]
        return np.stack([np.concatenate([np.load(f)[f"{p}.{arm}"] for f in fs]) for fs in files])

    return {
        p: lift_record(ranks(p, a), ranks(p, b), over=OVER, ks=(10,), resamples=args.resamples)
        for p in PROTOCOLS
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.plot:
        for path in plot(json.loads(Path(args.plot).read_text()), Path(args.figures)):
            print(f"wrote {path}")
        return {}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("faiss").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in SETTINGS}
    saved = work / "settings.json"
    if saved.exists() and json.loads(saved.read_text()) != settings:
        raise SystemExit(f"{saved}: a run of other settings; use another --work-dir")
    write_json(saved, settings)
    stream, kind = load_stream(args)
    log.info("%s stream: %d users, %d held-out interactions in %d steps", kind,
             stream.sequences.num_users, stream.held_out(), len(stream.steps))  # fmt: skip
    per_seed = {}
    for seed in args.seeds:
        (work / f"seed{seed}").mkdir(exist_ok=True)
        per_seed[seed] = run_seed(args, stream, seed, work / f"seed{seed}")
    steps = aggregate(args, per_seed, work)
    cut_models = [per_seed[s][0]["cut_model"] for s in args.seeds]
    again = [r["step"] for r in steps if "retrained" in r["cost_seconds"]]
    every = list(range(len(steps)))
    name = Path(args.dataset).name.split(".")[0].lower()
    record: dict[str, Any] = {
        "what": "live memory under drift: frozen, stale, live (add_memories), forget, retrained",
        "dataset": name, "backbone": args.backbone, "stream": kind, "seeds": args.seeds,
        "protocols": list(PROTOCOLS), "settings_of_rows": settings,
        "stream_size": {"users": stream.sequences.num_users, "held_out": stream.held_out(),
                        "training_interactions": int(stream.cut.sum()), "steps": len(steps)},
        "cut_model_seconds": [c["seconds"] for c in cut_models],
        "retrained_at_steps": again,
        "live_minus_stale_all_steps": pooled_lift(args, every, work, "stale", "live"),
        "live_minus_frozen_all_steps": pooled_lift(args, every, work, "frozen", "live"),
        "retrained_minus_stale": again and pooled_lift(args, again, work, "stale", "retrained"),
        "leaks": sum(r["leaks"] for r in steps),
        "forgotten_retrieved": sum(r["forgotten_retrieved"] for r in steps),
        "steps": steps,
    }  # fmt: skip
    assert record["leaks"] == 0 and record["forgotten_retrieved"] == 0
    default = ROOT / f"benchmarks/results/live-memory-{name}-{args.backbone}.json"
    out = Path(args.out or default)
    old = json.loads(out.read_text()) if out.exists() else {}
    if old.get("settings_of_rows") == settings:  # the processes that made these rows before
        record["earlier_invocations"] = earlier_invocations(old)
    record.update({"note": args.note} if args.note else {}, **provenance(time.perf_counter() - t0))
    write_json(out, record)
    for r in steps:
        m, d = r["metrics"], r["lift_live_minus_stale"]["full"]["NDCG@10"]
        arms = " ".join(f"{a} {m[f'full.{a}']['NDCG@10']:.4f}" for a in ("frozen", "stale", "live"))
        print(
            f"step {r['step']} ({r['targets']} targets) NDCG@10 {arms}, live - stale "
            f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
        )
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
