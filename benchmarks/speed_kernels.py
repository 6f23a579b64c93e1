"""The RAFT step's CPU kernels against the plain PyTorch forms they replace, in one run.

Medians of ``--repeats`` calls at Beauty's sizes (a batch of 1024 queries, d = 64, 12,101
items, K = 20 memories from a bank of 131,413):

* the frozen-table cross-entropy (forward + backward; its default kernel, one CPU
  flash-attention call) against its chunked loop (one exp() pass per chunk, the default before),
  against that loop with two exp() passes (``logsumexp``, then the softmax), and against
  ``F.cross_entropy`` on the whole score matrix; at score scales whose row spreads stay under
  exp()'s float32 range and at one where most of them are beyond it; and in bfloat16
  (``RAFTConfig(precision="bfloat16")``) against ``F.cross_entropy`` in bfloat16, its form before;
* gathering the memories with ``index_select`` against advanced indexing;
* dropout (``raserec_adapter.models._fast``, forward + backward) against ``nn.Dropout`` and against
  the RAM's dropout before (masks from 31-bit random integers), at the RAM's size and at the
  example SASRec's hidden states (256 x 50 x 64); and a SASRec block's attention in training
  (attention dropout 0.5), written out with those masks, against
  ``F.scaled_dot_product_attention(dropout_p=0.5)``;
* ``target_rank`` on 1024 users x 12,101 items (the evaluation's kernel) against the same count
  summed as int64 with an elementwise NaN test, its form before.

    python benchmarks/speed_kernels.py
    python benchmarks/speed_kernels.py --device cuda   # the same forms on a GPU

On a GPU every tensor is made there and each call is timed to a ``torch.cuda.synchronize()``;
the frozen-table cross-entropy's default kernel is then the chunked loop (the attention kernel is
the CPU's), so its first two columns time the same code.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from _common import median, save

from raserec_adapter.evaluation.metrics import target_rank
from raserec_adapter.memory.protocol import gather_rows
from raserec_adapter.models._fast import FastDropout as Dropout
from raserec_adapter.models._fast import _attention_with_dropout
from raserec_adapter.training.losses import frozen_table_cross_entropy


def _int31_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """The RAM's CPU dropout before ``raserec_adapter.layers``: one 31-bit integer per entry."""
    bits = torch.empty(x.shape, dtype=torch.int32).random_()
    return x * (bits >= round(p * 2**31)).to(x.dtype).mul_(1.0 / (1.0 - p))


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


def _sync() -> None:
    if torch.cuda.is_available() and torch.get_default_device().type == "cuda":
        torch.cuda.synchronize()


def ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    _sync()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync()
        out.append(time.perf_counter() - t0)
    return 1000 * median(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20, help="timed calls per kernel")
    p.add_argument("--device", default="cpu", help="where the tensors live: cpu or cuda")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here")
    if args.device != "cpu":  # a default-device mode costs every op a Python call: not on a CPU
        torch.set_default_device(args.device)
    t_start = time.perf_counter()
    torch.manual_seed(0)
    b, d, n_items, bank, k = 1024, 64, 12101, 131413, 20
    record: dict[str, Any] = {
        "benchmark": "speed-kernels",
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "sizes": [b, d, n_items, bank, k],
    }

    ce = []
    for scale in (0.3, 1.0, 3.0):
        x = torch.randn(b, d, requires_grad=True)
        w_t = (torch.randn(n_items, d) * scale).t()  # RAFT's layout: a view of the (N, d) table
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
            "chunked_ms": ms(
                lambda x=x, w=w_t, y=y: frozen_table_cross_entropy(
                    x, w, y, kernel="chunked"
                ).backward(),
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
            f"{row['frozen_table_ms']:.1f} ms; chunked loop {row['chunked_ms']:.1f} ms "
            f"({row['chunked_ms'] / row['frozen_table_ms']:.2f}x); two exp passes "
            f"{row['two_pass_chunked_ms']:.1f} ms "
            f"({row['two_pass_chunked_ms'] / row['frozen_table_ms']:.1f}x); F.cross_entropy "
            f"{row['torch_cross_entropy_ms']:.1f} ms"
        )
    record["cross_entropy"] = ce

    # RAFTConfig(precision="bfloat16"): the attention kernel in bfloat16 against the RAFT step's
    # bfloat16 form before (one product, then F.cross_entropy), and the float32 default
    xb = torch.randn(b, d).bfloat16().requires_grad_()
    wb = (torch.randn(n_items, d) * 0.3).bfloat16().t()
    y = torch.randint(0, n_items, (b,))
    bf16 = {
        "attention_bfloat16_ms": ms(
            lambda: frozen_table_cross_entropy(xb, wb, y).float().backward(), args.repeats
        ),
        "torch_cross_entropy_bfloat16_ms": ms(
            lambda: F.cross_entropy(xb @ wb, y).float().backward(), args.repeats
        ),
        "attention_float32_ms": ce[0]["frozen_table_ms"],
    }
    record["cross_entropy_bfloat16"] = bf16
    print(
        f"cross-entropy in bfloat16: attention kernel {bf16['attention_bfloat16_ms']:.1f} ms; "
        f"F.cross_entropy {bf16['torch_cross_entropy_bfloat16_ms']:.1f} ms "
        f"({bf16['torch_cross_entropy_bfloat16_ms'] / bf16['attention_bfloat16_ms']:.1f}x); "
        f"float32 attention kernel {bf16['attention_float32_ms']:.1f} ms"
    )

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

    drop: dict[str, dict[str, float]] = {}
    ours, ref = Dropout(0.5).train(), torch.nn.Dropout(0.5).train()
    for name, shape in (("ram_1024x64", (b, d)), ("sasrec_hidden_256x50x64", (256, 50, d))):
        h = torch.randn(shape, requires_grad=True)
        drop[name] = {
            "ours_ms": ms(lambda h=h: ours(h).sum().backward(), args.repeats),
            "int31_masks_before_ms": ms(
                lambda h=h: _int31_dropout(h, 0.5).sum().backward(), args.repeats
            ),
            "nn_dropout_ms": ms(lambda h=h: ref(h).sum().backward(), args.repeats),
        }
        r = drop[name]
        print(
            f"dropout {name}, forward + backward: ours {r['ours_ms']:.2f} ms, 31-bit masks "
            f"(before) {r['int31_masks_before_ms']:.2f} ms, nn.Dropout {r['nn_dropout_ms']:.2f} "
            f"ms ({r['nn_dropout_ms'] / r['ours_ms']:.1f}x)"
        )
    q, k, v = (torch.randn(256, 2, 50, d // 2, requires_grad=True) for _ in range(3))
    drop["sasrec_attention_256x2x50"] = {
        "written_out_ms": ms(
            lambda: _attention_with_dropout(q, k, v, True, None, 0.5).sum().backward(),
            args.repeats,
        ),
        "sdpa_dropout_ms": ms(
            lambda: (
                F.scaled_dot_product_attention(q, k, v, dropout_p=0.5, is_causal=True)
                .sum()
                .backward()
            ),
            args.repeats,
        ),
    }
    r = drop["sasrec_attention_256x2x50"]
    print(
        f"causal attention with dropout 0.5, (256, 2, 50, 32), forward + backward: written out "
        f"{r['written_out_ms']:.2f} ms, SDPA {r['sdpa_dropout_ms']:.2f} ms "
        f"({r['sdpa_dropout_ms'] / r['written_out_ms']:.1f}x)"
    )
    record["dropout"] = drop
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
    name = "speed-kernels" if args.device == "cpu" else f"speed-kernels-{args.device.split(':')[0]}"
    print(f"written to {save(name, record, time.perf_counter() - t_start)}")


if __name__ == "__main__":
    main()
