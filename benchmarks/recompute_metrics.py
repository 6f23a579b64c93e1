"""Recomputes a saved example encoder's metrics from the raw data file, by hand.

An end-to-end check of the evaluation: the ``user item item ...`` file is read with plain
Python, the leave-one-out input is cut by list slicing, the encoder scores all items and every
target's rank is counted directly (ties against the target), with none of the library's data,
evaluation or metrics code. Compare the printed figures with the frozen encoder's results file
(``...-pretrained-plain.json``, protocol ``full``).

``--which train-last`` scores each user's last *training* pair instead (input: the training
part without its last item; target: that item), a pair the encoder was trained on. Set beside
the validation and test figures it shows how much of an encoder's validation score is
memorised rather than generalised.

    python benchmarks/recompute_metrics.py --model bert4rec \\
        --encoder /tmp/runs/beauty-bert4rec-raserec-seed2/encoder.pt \\
        --data ../shared/data/Beauty.txt --which test
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.models import BERT4Rec, GRU4Rec, SASRec

MODELS = {"sasrec": SASRec, "gru4rec": GRU4Rec, "bert4rec": BERT4Rec}


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), required=True)
    p.add_argument("--encoder", required=True, help="the example's encoder.pt (a state dict)")
    p.add_argument("--data", required=True, help="a 'user item item ...' text file")
    p.add_argument("--which", choices=["train-last", "valid", "test"], default="test")
    p.add_argument(
        "--readout",
        choices=["mask", "last"],
        default="mask",
        help="bert4rec: the --readout the encoder was trained with",
    )
    p.add_argument(
        "--positions",
        choices=["start", "end"],
        default="start",
        help="bert4rec: the --positions the encoder was trained with",
    )
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with open(args.data) as fh:
        seqs = [[int(x) for x in line.split()[1:]] for line in fh if line.strip()]
    n_items = max(max(s) for s in seqs)
    kwargs: dict[str, object] = {} if args.model == "gru4rec" else {"max_len": args.max_len}
    if args.model == "bert4rec":
        kwargs["readout"] = args.readout
        kwargs["positions"] = args.positions
    model = MODELS[args.model](n_items, **kwargs)
    model.load_state_dict(torch.load(args.encoder, map_location="cpu", weights_only=True))
    model.eval()
    table = model.item_embedding.weight[1 : n_items + 1]  # items 1..N
    cut = {"test": 1, "valid": 2, "train-last": 3}[args.which]  # the target's place from the end
    sums = {"HR@5": 0.0, "NDCG@5": 0.0, "HR@10": 0.0, "NDCG@10": 0.0}
    with torch.no_grad():
        for start in range(0, len(seqs), 512):
            chunk = seqs[start : start + 512]
            inputs = [s[:-cut][-args.max_len :] for s in chunk]
            width = max(len(x) for x in inputs)
            seq = torch.tensor([x + [0] * (width - len(x)) for x in inputs])
            lengths = torch.tensor([len(x) for x in inputs])
            scores = model(seq, lengths) @ table.T
            targets = torch.tensor([s[-cut] for s in chunk]) - 1
            target_scores = scores[torch.arange(len(chunk)), targets]
            ranks = (scores >= target_scores[:, None]).sum(1)  # the target counts itself: 1-based
            for r in ranks.tolist():
                for k in (5, 10):
                    if r <= k:
                        sums[f"HR@{k}"] += 1.0
                        sums[f"NDCG@{k}"] += 1.0 / math.log2(r + 1)
    out = {k: v / len(seqs) for k, v in sums.items()}
    print(
        f"{args.model} {args.which} ({len(seqs)} users, {n_items} items, protocol full): "
        + "  ".join(f"{k} {v:.4f}" for k, v in out.items())
    )
    return out


if __name__ == "__main__":
    main()
