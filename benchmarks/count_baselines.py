"""Two counting baselines with no learning, on validation and test: a floor for any encoder.

* ``transitions``: scores item ``j`` for a history by how often ``j`` directly followed the
  history's last item in the counted part of all users' sequences (a first-order Markov
  chain of counts);
* ``popularity``: scores every item by its count in the counted part.

Each is counted two ways. ``train``: the training part only (each user's items before the
last two), for validation and test alike, like an encoder trained once and frozen.
``before-target``: everything before the split's target, so the test counts include the
validation pairs, as the memory bank does for the test. Full ranking over all items, ties
counted against the target (an unseen transition ranks the target last), protocol ``full``.
The ratio test / validation of each metric shows how a model that leans on the last item, or
on the items' overall popularity, carries over from validation to test; an encoder's own ratio
can be set beside it.

    python benchmarks/count_baselines.py --dataset beauty --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict
from itertools import pairwise

import numpy as np
import torch
from _common import save

from raserec_adapter import DATASETS, RankingMetrics, load_dataset


def target_ranks(
    seqs: list[list[int]], num_items: int, split: str, counted: str = "before-target"
) -> dict[str, np.ndarray]:
    """1-based rank of each user's target under each baseline (ties against the target).

    ``counted``: ``"train"`` counts each user's items before the last two, ``"before-target"``
    all items before the split's target (the same for the validation split).
    """
    if counted not in ("train", "before-target"):
        raise ValueError(f"counted must be 'train' or 'before-target', got {counted!r}")
    cut = 2 if split == "valid" else 1
    follows: defaultdict[int, Counter[int]] = defaultdict(Counter)
    counts = np.zeros(num_items + 1)
    for s in seqs:
        train = s[:-2] if counted == "train" else s[:-cut]
        np.add.at(counts, train, 1)
        for a, b in pairwise(train):
            follows[a][b] += 1
    ascending = np.sort(counts[1:])  # popularity rank = items counted at least as often
    ranks: dict[str, list[int]] = {"transitions": [], "popularity": []}
    for s in seqs:
        history, target = s[:-cut], s[-cut]
        row = follows[history[-1]]
        c = row.get(target, 0)
        # items scoring at least the target's count, the target included; zero counts tie
        # with every item never seen after the last one, so the target ranks last
        ranks["transitions"].append(sum(1 for v in row.values() if v >= c) if c > 0 else num_items)
        ranks["popularity"].append(num_items - int(np.searchsorted(ascending, counts[target])))
    return {k: np.asarray(v) for k, v in ranks.items()}


def metrics(ranks: np.ndarray) -> dict[str, float]:
    """HR and NDCG at 5 and 10 of 1-based ranks, by the library's :class:`RankingMetrics`."""
    m = RankingMetrics(ks=(5, 10))
    m.update(torch.from_numpy(ranks))
    return {k: v for k, v in m.compute().items() if not k.startswith("MRR")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(DATASETS), default="beauty")
    p.add_argument("--data-dir", default=None, help="folder with the dataset's file")
    args = p.parse_args()
    t0 = time.perf_counter()
    data = load_dataset(args.dataset, data_dir=args.data_dir)
    seqs = [data[u].tolist() for u in range(data.num_users)]
    results: dict[str, dict[str, dict[str, float]]] = {}
    for counted in ("train", "before-target"):
        per_split = {s: target_ranks(seqs, data.num_items, s, counted) for s in ("valid", "test")}
        for name in ("transitions", "popularity"):
            valid, test = metrics(per_split["valid"][name]), metrics(per_split["test"][name])
            ratio = {k: test[k] / valid[k] for k in valid}
            label = f"{name}, counted: {counted}"
            results[label] = {"valid": valid, "test": test, "test_over_valid": ratio}
            print(
                f"{label:36s} "
                + "  ".join(f"{k} {valid[k]:.4f} -> {test[k]:.4f} ({ratio[k]:.2f})" for k in valid)
            )
    record = {
        "benchmark": "count-baselines",
        "dataset": args.dataset,
        "users": data.num_users,
        "items": data.num_items,
        "protocol": "full",
        "ties": "counted against the target",
        "results": results,
    }
    path = save(f"count-baselines-{args.dataset}", record, time.perf_counter() - t0)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
