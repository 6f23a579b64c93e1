"""RecBole end to end, run by tests/test_recbole.py in RecBole's environment (recbole_env.sh).

A tiny ``.inter`` file with shuffled rows (and some equal timestamps within a user), a SASRec
trained by RecBole's own Trainer, then through :mod:`raserec_adapter.interop.recbole`: the
sequences and the split (checked row by row against RecBole's dataloaders and against this
library's reader given RecBole's vocabulary), a bank, RAFT, and the frozen encoder's metrics
against RecBole's evaluator. Writes a JSON report; exits non-zero at the first failed check.

Import-safe without RecBole (pytest imports every module of tests/ for doctests): RecBole is
imported in :func:`main` only. Run: ``python tests/recbole_check.py --workdir DIR --out FILE``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

PAIRS = {"HR@5": "hit@5", "HR@10": "hit@10", "NDCG@5": "ndcg@5", "NDCG@10": "ndcg@10"}
TOLERANCE = 1e-6


def write_inter(path: Path, users: int, items: int, seed: int) -> list[tuple[str, str, int]]:
    """Writes ring-walk sequences (5..14 items per user) with shuffled rows; returns the rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        cur, t = int(rng.integers(1, items + 1)), int(rng.integers(10**6, 2 * 10**6))
        for _ in range(int(rng.integers(5, 15))):
            rows.append((f"u{u:03d}", f"i{cur:03d}", t))
            t += int(rng.integers(0, 3)) * 100  # a third of the steps keep the timestamp
            jump = rng.random() >= 0.8
            cur = int(rng.integers(1, items + 1)) if jump else cur % items + 1
    rng.shuffle(rows)
    _write_rows(path, rows)
    return rows


def recbole_config(workdir: Path, name: str, epochs: int, **extra: Any) -> dict[str, Any]:
    return {
        "data_path": str(workdir / "data"),
        "checkpoint_dir": str(workdir / "saved"),  # fresh: RecBole would unpickle a saved dataset
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
        "MAX_ITEM_LIST_LENGTH": 8,
        "train_neg_sample_args": None,
        "loss_type": "CE",
        "epochs": epochs,
        "train_batch_size": 64,
        "eval_batch_size": 32,
        "learning_rate": 0.01,
        "hidden_size": 16,
        "inner_size": 32,
        "n_layers": 1,
        "n_heads": 1,
        "metrics": ["Hit", "NDCG"],
        "topk": [5, 10],
        "valid_metric": "NDCG@10",
        "metric_decimal_place": 12,  # RecBole rounds its metrics to 4 places by default
        "device": "cpu",
        "use_gpu": False,
        "seed": 0,
        "reproducibility": True,
        "show_progress": False,
        "log_wandb": False,
        "state": "ERROR",
        **extra,
    }


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"FAILED: {message}")


def raises(fn: Any, kind: type[BaseException], text: str) -> str:
    """Runs ``fn``; it must raise ``kind`` with ``text`` in the message, which is returned."""
    try:
        fn()
    except kind as err:
        expect(text in str(err), f"{kind.__name__} without {text!r}: {err}")
        return str(err)
    raise SystemExit(f"FAILED: no {kind.__name__} ({text!r})")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value options from the command line
    warnings.simplefilter("ignore")  # pandas / torch FutureWarnings from inside RecBole
    t0 = time.perf_counter()

    import torch

    torch.set_num_threads(1)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import GRU4Rec, SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    from raserec_adapter import (
        AugmenterConfig,
        BankConfig,
        DataFormatError,
        EncoderError,
        RAFTConfig,
        RAMConfig,
        RetrievalAugmenter,
        leave_one_out,
    )
    from raserec_adapter.data import read_interactions
    from raserec_adapter.encoder import encode_prefixes, encode_training_pairs
    from raserec_adapter.interop.recbole import (
        sequences_from_recbole,
        split_from_recbole,
        wrap_recbole,
    )

    work = args.workdir.resolve()
    path = work / "data" / "tiny" / "tiny.inter"
    write_inter(path, args.users, args.items, seed=0)
    config = Config(
        model="SASRec", dataset="tiny", config_dict=recbole_config(work, "tiny", args.epochs)
    )
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    raw = sequences_from_recbole(dataset)  # from create_dataset's rows (pandas)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = SASRec(config, train_data.dataset)
    trainer = Trainer(config, model)
    t_train = time.perf_counter()
    trainer.fit(train_data, valid_data, saved=False, show_progress=False)
    t_train = time.perf_counter() - t_train
    theirs = {
        which: dict(trainer.evaluate(data, load_best_model=False))
        for which, data in (("valid", valid_data), ("test", test_data))
    }

    # the sequences: both states of the dataset, and this library's reader in RecBole's ids
    seqs = sequences_from_recbole(dataset)  # from the training rows data_preparation made
    expect(np.array_equal(seqs.items, raw.items), "sequences differ before/after data_preparation")
    expect(np.array_equal(seqs.offsets, raw.offsets), "users differ before/after data_preparation")
    expect(seqs.num_items == dataset.item_num - 1 == args.items, "item count")
    tokens = dataset.field2id_token
    read = read_interactions(path, item_vocab=tokens["item_id"], user_vocab=tokens["user_id"])
    expect(np.array_equal(read.items, seqs.items), "the reader with RecBole's vocabulary differs")
    expect(np.array_equal(read.offsets, seqs.offsets), "the reader's users differ")
    ties = sum(
        len(np.unique(t)) < len(t)
        for t in (np.sort([r[2] for r in rows]) for rows in _by_user(path).values())
    )
    expect(ties > 0, "the data should hold equal timestamps within a user")

    # the split, row by row against RecBole's dataloaders
    split = split_from_recbole(dataset, check_against=(train_data, valid_data, test_data))
    expect(len(split.test) == len(test_data.dataset) == args.users, "test rows")
    expect(split.max_len == config["MAX_ITEM_LIST_LENGTH"], "max_len")

    # the interop's docstring examples (skipped without RecBole), with these objects
    failed, tried = run_examples(
        dataset=dataset, model=model, train_data=train_data, valid_data=valid_data,
        test_data=test_data,
    )  # fmt: skip
    expect(failed == 0 and tried >= 8, f"{failed} of {tried} docstring examples failed")

    # the model: all positions in one pass equals each prefix on its own
    encoder = wrap_recbole(model, dataset)
    per_prefix = wrap_recbole(model, dataset, all_positions=None)
    expect(encoder.is_causal and not per_prefix.is_causal, "causal encoding of SASRec")
    expect(encoder.num_items == args.items, "encoder item count")
    one_pass = encode_training_pairs(encoder, split, show_progress=False)
    each = encode_prefixes(per_prefix, split.sequences, split.train, split.max_len)
    max_gap = float((one_pass - each).abs().max())
    expect(max_gap < 1e-5, f"all-positions encoding differs from per-prefix by {max_gap}")

    # the pipeline: bank, RAFT, evaluation; frozen metrics equal RecBole's evaluator
    bank = BankConfig(kind="torch")
    cfg = AugmenterConfig(max_len=split.max_len, bank=bank, ram=RAMConfig(k=5))
    torch.manual_seed(0)
    aug = RetrievalAugmenter(encoder, cfg)
    aug.build_bank(split, show_progress=False)
    aug.fit_raft(split, RAFTConfig(epochs=2, batch_size=64), show_progress=False)
    ours = {w: aug.evaluate(split, w, show_progress=False) for w in ("valid", "test")}
    gaps = {}
    for which in ("valid", "test"):
        for mine, rb in PAIRS.items():
            gap = abs(ours[which]["plain"][mine] - theirs[which][rb])
            gaps[f"{which} {mine}"] = gap
            expect(gap <= TOLERANCE, f"{which} {mine}: {ours[which]['plain'][mine]} vs {rb} "
                   f"{theirs[which][rb]}")  # fmt: skip
    removed = aug.evaluate(
        split, "test", augmented=False, protocol="seen_removed", show_progress=False
    )["plain"]
    full = ours["test"]["plain"]
    expect(all(removed[m] >= full[m] for m in PAIRS), "seen_removed ranks can only improve")
    expect(
        any(abs(removed[m] - theirs["test"][rb]) > TOLERANCE for m, rb in PAIRS.items()),
        "seen_removed should differ from RecBole's full-sort evaluation here",
    )

    # the naive path: this library's own numbering of the same file
    naive = read_interactions(path)
    same_ids = float(np.mean(naive.item_labels == tokens["item_id"][1:]))
    expect(same_ids < 0.5, f"the naive reading numbers {same_ids:.0%} of items as RecBole does")
    naive_split = leave_one_out(naive, max_len=split.max_len)
    naive_metrics = aug.evaluate(naive_split, "test", augmented=False, show_progress=False)["plain"]
    expect(
        naive_metrics["NDCG@10"] < theirs["test"]["ndcg@10"] - 0.05,
        f"naive NDCG@10 {naive_metrics['NDCG@10']} vs RecBole's {theirs['test']['ndcg@10']}",
    )

    # GRU4Rec: its dense layer's output at every position, and RecBole's evaluator again
    gru_config = Config(
        model="GRU4Rec", dataset="tiny", config_dict=recbole_config(work, "tiny", 2)
    )
    init_seed(gru_config["seed"], gru_config["reproducibility"])
    gru_dataset = create_dataset(gru_config)
    gru_train, gru_valid, gru_test = data_preparation(gru_config, gru_dataset)
    gru = GRU4Rec(gru_config, gru_train.dataset)
    gru_trainer = Trainer(gru_config, gru)
    gru_trainer.fit(gru_train, gru_valid, saved=False, show_progress=False)
    gru_theirs = dict(gru_trainer.evaluate(gru_test, load_best_model=False))
    gru_encoder = wrap_recbole(gru, gru_dataset)
    expect(gru_encoder.is_causal, "GRU4Rec encodes all positions in one pass")
    gru_split = split_from_recbole(gru_dataset)
    gru_aug = RetrievalAugmenter(gru_encoder, cfg)
    gru_ours = gru_aug.evaluate(gru_split, "test", augmented=False, show_progress=False)["plain"]
    for mine, rb in PAIRS.items():
        gap = abs(gru_ours[mine] - gru_theirs[rb])
        gaps[f"gru4rec test {mine}"] = gap
        expect(gap <= TOLERANCE, f"GRU4Rec test {mine}: {gru_ours[mine]} vs {gru_theirs[rb]}")
    gru_one = encode_training_pairs(gru_encoder, gru_split, show_progress=False)
    gru_each = encode_prefixes(
        wrap_recbole(gru, all_positions=None), gru_split.sequences, gru_split.train, 8
    )
    gru_gap = float((gru_one - gru_each).abs().max())
    expect(gru_gap < 1e-5, f"GRU4Rec all-positions encoding differs by {gru_gap}")

    # refusals: another dataset, a max_len above the model's, short users, another split
    rows = [r for r in _rows(path) if r[1] != "i001"]  # one item fewer
    rows += [("short", "i002", 1), ("short", "i003", 2), ("short", "i004", 3)]
    _write_rows(work / "data" / "other" / "other.inter", rows)
    other_cfg = Config(
        model="SASRec", dataset="other", config_dict=recbole_config(work, "other", 1)
    )
    other = create_dataset(other_cfg)
    refusals = {
        "dataset": raises(
            lambda: wrap_recbole(model, other), EncoderError, f"built for {args.items + 1} item"
        ),
        "max_len": raises(
            lambda: RetrievalAugmenter(encoder, AugmenterConfig(max_len=split.max_len + 1)),
            ValueError,
            f"max_seq_length = {split.max_len}",
        ),
        "short": raises(lambda: split_from_recbole(other), DataFormatError, "fewer than 4"),
    }
    parts = (train_data, valid_data, test_data)
    refusals["part"] = raises(  # the training part alone lacks each user's last two items
        lambda: split_from_recbole(train_data.dataset, check_against=parts), ValueError, "RecBole"
    )
    rs = recbole_config(work, "tiny", 1, eval_args={"split": {"RS": [0.8, 0.1, 0.1]}})
    rs_data = create_dataset(Config(model="SASRec", dataset="tiny", config_dict=rs))
    refusals["split"] = raises(
        lambda: split_from_recbole(rs_data), ValueError, "LS: valid_and_test"
    )

    report = {
        "users": args.users,
        "items": args.items,
        "epochs": args.epochs,
        "users_with_equal_timestamps": int(ties),
        "recbole": theirs,
        "frozen": {w: ours[w]["plain"] for w in ours},
        "raserec": {w: ours[w]["raserec"] for w in ours},
        "seen_removed_test": removed,
        "naive_test": naive_metrics,
        "naive_same_item_ids": same_ids,
        "largest_gap": max(gaps.values()),
        "all_positions_max_gap": max_gap,
        "docstring_examples": tried,
        "gru4rec": {"recbole": gru_theirs, "frozen": gru_ours, "all_positions_max_gap": gru_gap},
        "refusals": refusals,
        "train_seconds": round(t_train, 2),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    args.out.write_text(json.dumps(report, indent=1, default=_plain))
    print(json.dumps({k: report[k] for k in ("largest_gap", "seconds")}))
    return report


def run_examples(**objects: Any) -> tuple[int, int]:
    """``(failed, tried)`` of the interop module's docstring examples, none skipped."""
    import doctest

    from raserec_adapter.interop import recbole as module

    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder().find(module, globs={**vars(module), **objects}):
        for example in test.examples:
            example.options.pop(doctest.SKIP, None)
        runner.run(test)
    result = runner.summarize(verbose=False)
    return result.failed, result.attempted


def _rows(path: Path) -> list[tuple[str, str, int]]:
    lines = path.read_text().splitlines()[1:]
    return [(u, i, int(t)) for u, i, t in (line.split("\t") for line in lines)]


def _by_user(path: Path) -> dict[str, list[tuple[str, str, int]]]:
    out: dict[str, list[tuple[str, str, int]]] = {}
    for row in _rows(path):
        out.setdefault(row[0], []).append(row)
    return out


def _write_rows(path: Path, rows: list[tuple[str, str, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "user_id:token\titem_id:token\ttimestamp:float",
        *(f"{u}\t{i}\t{t}" for u, i, t in rows),
    ]
    path.write_text("\n".join(lines) + "\n")


def _plain(value: Any) -> Any:
    return (
        float(value)
        if isinstance(value, (np.floating, float)) and math.isfinite(value)
        else str(value)
    )


if __name__ == "__main__":
    main()
