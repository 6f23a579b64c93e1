"""The RAFT step's CPU kernels against the plain PyTorch forms they replace, in one run.

Medians of ``--repeats`` calls at Beauty's sizes (a batch of 1024 queries, d = 64, 12,101
items, K = 20 memories from a bank of 131,413):

* the frozen-table cross-entropy (forward + backward) against the same chunked loop with two
  exp() passes (``logsumexp``, then the softmax), and against ``F.cross_entropy`` on the whole
  score matrix; at score scales whose row spreads stay under exp()'s float32 range and at one
  where most of them are beyond it;
* gathering the memories with ``index_select`` against advanced indexing;
* the RAM's dropout against ``nn.Dropout`` (forward + backward);
* ``target_rank`` on 1024 users x 12,101 items (the evaluation's kernel) against the same count
  summed as int64 with an elementwise NaN test, its form before.

    python benchmarks/speed_kernels.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from _common import median, save

from raserec_adapter.bank import gather_rows
from raserec_adapter.losses import frozen_table_cross_entropy
from raserec_adapter.metrics import target_rank
from raserec_adapter.ram import Dropout


class _TwoPassCE(torch.autograd.Function):
    """The loop before: ``logsumexp`` (one exp pass, an allocated copy), then a second exp."""

    @staticmethod
    def forward(ctx: Any, x, w_t, targets, chunk):  # type: ignore[override]
        grad = torch.empty_like(x)
        total = torch.zeros((), dtype=torch.float64)
        for s in range(0, x.shape[0], chunk):
            logits = x[s : s + chunk] @ w_t
            tc = targets[s : s + chunk]
            lse = torch.logsumexp(logits, dim=1)
            total += (lse - logits.gather(1, tc[:, None]).squeeze(1)).sum().double()
            probs = torch.exp_(logits.sub_(lse[:, None]))
            probs[torch.arange(len(tc)), tc] -= 1.0
            grad[s : s + chunk] = probs @ w_t.t()
        ctx.save_for_backward(grad)
        ctx.n = x.shape[0]
        return (total / ctx.n).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, g):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * (g / ctx.n), None, None, None


def ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return 1000 * median(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20, help="timed calls per kernel")
    args = p.parse_args()
    t_start = time.perf_counter()
    torch.manual_seed(0)
    b, d, n_items, bank, k = 1024, 64, 12101, 131413, 20
    record: dict[str, Any] = {"benchmark": "speed-kernels", "sizes": [b, d, n_items, bank, k]}

    ce = []
    for scale in (0.3, 1.0, 3.0):
        x = torch.randn(b, d, requires_grad=True)
        w_t = torch.randn(d, n_items) * scale
        y = torch.randint(0, n_items, (b,))
        logits = (x @ w_t).detach()
        beyond = float(((logits.amax(1, keepdim=True) - logits) > 87).float().mean())
        row = {
            "score_scale": scale,
            "fraction_beyond_exp_range": beyond,
            "frozen_table_ms": ms(
                lambda x=x, w=w_t, y=y: frozen_table_cross_entropy(x, w, y).backward(),
                args.repeats,
            ),
            "two_pass_chunked_ms": ms(
                lambda x=x, w=w_t, y=y: _TwoPassCE.apply(x, w, y, 128).backward(), args.repeats
            ),
            "torch_cross_entropy_ms": ms(
                lambda x=x, w=w_t, y=y: F.cross_entropy(x @ w, y).backward(), args.repeats
            ),
        }
        ce.append(row)
        print(
            f"cross-entropy, score scale {scale} ({beyond:.0%} beyond exp's range): "
            f"{row['frozen_table_ms']:.1f} ms; two exp passes {row['two_pass_chunked_ms']:.1f} ms "
            f"({row['two_pass_chunked_ms'] / row['frozen_table_ms']:.1f}x); F.cross_entropy "
            f"{row['torch_cross_entropy_ms']:.1f} ms"
        )
    record["cross_entropy"] = ce

    table = torch.randn(bank, d)
    ids = torch.randint(0, bank, (b, k))
    gather = {
        "index_select_ms": ms(lambda: gather_rows(table, ids), args.repeats),
        "advanced_indexing_ms": ms(lambda: table[ids], args.repeats),
    }
    record["gather"] = gather
    print(
        f"gather (1024, 20) memories: index_select {gather['index_select_ms']:.2f} ms, advanced "
        f"indexing {gather['advanced_indexing_ms']:.2f} ms "
        f"({gather['advanced_indexing_ms'] / gather['index_select_ms']:.1f}x)"
    )

    h = torch.randn(b, d, requires_grad=True)
    ours, ref = Dropout(0.5).train(), torch.nn.Dropout(0.5).train()
    drop = {
        "ram_dropout_ms": ms(lambda: ours(h).sum().backward(), args.repeats),
        "nn_dropout_ms": ms(lambda: ref(h).sum().backward(), args.repeats),
    }
    record["dropout"] = drop
    print(
        f"dropout (1024, 64), forward + backward: ours {drop['ram_dropout_ms']:.2f} ms, "
        f"nn.Dropout {drop['nn_dropout_ms']:.2f} ms "
        f"({drop['nn_dropout_ms'] / drop['ram_dropout_ms']:.1f}x)"
    )
    scores = torch.randn(b, n_items + 1)
    targets = torch.randint(1, n_items + 1, (b,))

    def old_rank() -> torch.Tensor:
        if torch.isnan(scores).any():
            raise ValueError("NaN")
        own = scores[torch.arange(b), targets].unsqueeze(1)
        return (scores[:, 1:] >= own).sum(dim=1)

    if not torch.equal(old_rank(), target_rank(scores, targets)):
        raise AssertionError("target_rank disagrees with the int64 count")
    rank = {
        "target_rank_ms": ms(lambda: target_rank(scores, targets), args.repeats),
        "int64_count_ms": ms(old_rank, args.repeats),
    }
    record["target_rank"] = rank
    print(
        f"target_rank (1024 x 12,101): {rank['target_rank_ms']:.1f} ms, int64 count with "
        f"elementwise NaN test {rank['int64_count_ms']:.1f} ms "
        f"({rank['int64_count_ms'] / rank['target_rank_ms']:.1f}x)"
    )
    print(f"written to {save('speed-kernels', record, time.perf_counter() - t_start)}")


if __name__ == "__main__":
    main()
