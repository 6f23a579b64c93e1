from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raserec_adapter.config import RAMConfig
from raserec_adapter.ram import CrossAttention, RetrievalAugmentedModule


def naive_cross_attention(ca: CrossAttention, q, keys, values):
    """Textbook multi-head cross-attention: project every memory, then attend (no dropout)."""
    b, d = q.shape
    h, s = ca.heads, ca.head_size
    qq = ca.query(q).view(b, h, 1, s)
    kk = ca.key(keys).view(b, -1, h, s).transpose(1, 2)
    vv = ca.value(values).view(b, -1, h, s).transpose(1, 2)
    scores = (qq @ kk.transpose(-1, -2)) / math.sqrt(s) / ca.temperature
    ctx = (F.softmax(scores, -1) @ vv).reshape(b, d)
    return ca.out(ctx)


def randomise(module: torch.nn.Module) -> None:
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)


@pytest.mark.parametrize("heads,temp", [(1, 1.0), (2, 1.0), (4, 0.5)])
def test_cross_attention_equals_textbook(heads, temp):
    torch.manual_seed(0)
    ca = CrossAttention(16, heads, dropout=0.0, temperature=temp)
    randomise(ca)  # non-zero biases too
    q, keys, values = torch.randn(5, 16), torch.randn(5, 7, 16), torch.randn(5, 7, 16)
    torch.testing.assert_close(ca(q, keys, values), naive_cross_attention(ca, q, keys, values))


def test_channels_and_mix():
    torch.manual_seed(0)
    h, mk, mv = torch.randn(3, 8), torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    ram = RetrievalAugmentedModule(8, RAMConfig(alpha=0.3, beta=0.6, k=4, dropout=0.0))
    randomise(ram)
    ram.eval()
    c1 = ram.channel1(h, mk, mv)
    c2 = ram.channel2(h, mv, mk)  # channel 2: keys are the item embeddings, values the reps
    expect = 0.3 * h + 0.7 * (0.6 * c1 + 0.4 * c2)
    torch.testing.assert_close(ram(h, mk, mv), expect)
    # channel = cross-attention -> feed-forward -> cross-attention
    x = ram.channel1.attn[0](h, mk, mv)
    x = ram.channel1.attn[1](ram.channel1.ffn[0](x), mk, mv)
    torch.testing.assert_close(c1, x)
    # alpha = 1 returns h untouched
    ram1 = RetrievalAugmentedModule(8, RAMConfig(alpha=1.0, k=4))
    torch.testing.assert_close(ram1(h, mk, mv), h)


def test_dropout_changes_training_output_only():
    torch.manual_seed(0)
    ram = RetrievalAugmentedModule(8, RAMConfig(k=4))
    h, mk, mv = torch.randn(3, 8), torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    ram.train()
    assert not torch.allclose(ram(h, mk, mv), ram(h, mk, mv))
    ram.eval()
    torch.testing.assert_close(ram(h, mk, mv), ram(h, mk, mv))


def test_shape_errors():
    ram = RetrievalAugmentedModule(8, RAMConfig(k=4))
    with pytest.raises(ValueError, match="built for size 8"):
        ram(torch.randn(2, 6), torch.randn(2, 4, 6), torch.randn(2, 4, 6))
    with pytest.raises(ValueError, match=r"\(B, K, d\)"):
        ram(torch.randn(2, 8), torch.randn(2, 4, 8), torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="not divisible"):
        RetrievalAugmentedModule(9, RAMConfig(num_heads=2))


@pytest.mark.parametrize("kernel", ["chunked", "attention"])
@pytest.mark.parametrize("n,chunk", [(1, 4), (7, 3), (16, 16), (33, 8)])
def test_frozen_table_cross_entropy_matches_torch(n, chunk, kernel):
    from raserec_adapter.training.losses import frozen_table_cross_entropy

    torch.manual_seed(n)
    x = torch.randn(n, 6, dtype=torch.float64, requires_grad=True)
    w_t = torch.randn(6, 11, dtype=torch.float64)
    y = torch.randint(0, 11, (n,))
    ref = F.cross_entropy(x @ w_t, y)
    (g_ref,) = torch.autograd.grad(2.0 * ref, x)
    got = frozen_table_cross_entropy(x, w_t, y, chunk=chunk, kernel=kernel)
    (g_got,) = torch.autograd.grad(2.0 * got, x)  # upstream gradient != 1 is scaled correctly
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(g_got, g_ref)


@pytest.mark.parametrize("kernel", ["chunked", "attention"])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_frozen_table_cross_entropy_wide_scores_float32(scale, kernel):
    """Float32 scores spread far wider than exp()'s range (the clamped tail) still give
    torch's loss and gradient; the target itself may lie in the clamped tail."""
    from raserec_adapter.training.losses import frozen_table_cross_entropy

    torch.manual_seed(0)
    x = (torch.randn(40, 8) * scale).requires_grad_()
    w_t = torch.randn(8, 300)
    y = torch.randint(0, 300, (40,))
    logits = (x @ w_t).detach()
    if scale > 1:  # some targets score more than 80 below their row's best
        assert ((logits.amax(1) - logits.gather(1, y[:, None]).squeeze(1)) > 80).any()
    ref = F.cross_entropy(x @ w_t, y)
    (g_ref,) = torch.autograd.grad(ref, x)
    got = frozen_table_cross_entropy(x, w_t, y, chunk=16, kernel=kernel)
    (g_got,) = torch.autograd.grad(got, x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_frozen_table_cross_entropy_attention_kernel_any_layout(layout):
    """The CPU attention op returns wrong numbers for transposed views; the kernel copies them,
    so x and the table give torch's loss and gradient in either memory layout."""
    from raserec_adapter.training.losses import frozen_table_cross_entropy

    torch.manual_seed(1)
    table = torch.randn(50, 8)  # (N, d)
    base = torch.randn(8, 20) if layout == "transposed" else torch.randn(20, 8)
    x = (base.t() if layout == "transposed" else base).requires_grad_()
    w_t = table.t() if layout == "contiguous" else table.t().contiguous()
    y = torch.randint(0, 50, (20,))
    ref = F.cross_entropy(x @ table.t(), y)
    (g_ref,) = torch.autograd.grad(ref, x)
    got = frozen_table_cross_entropy(x, w_t, y, kernel="attention")
    (g_got,) = torch.autograd.grad(got, x)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(g_got, g_ref)


def test_frozen_table_cross_entropy_bad_input():
    from raserec_adapter.training.losses import frozen_table_cross_entropy

    x, w_t, y = torch.randn(3, 4), torch.randn(4, 6), torch.tensor([0, 1, 5])
    with pytest.raises(ValueError, match="kernel must be one of"):
        frozen_table_cross_entropy(x, w_t, y, kernel="fast")
    with pytest.raises(ValueError, match="same d"):
        frozen_table_cross_entropy(x, torch.randn(5, 6), y)
    with pytest.raises(ValueError, match="kernel='chunked'"):
        frozen_table_cross_entropy(x.half(), w_t.half(), y, kernel="attention")
    with pytest.raises(ValueError, match="kernel='chunked'"):  # two dtypes
        frozen_table_cross_entropy(x, w_t.double(), y, kernel="attention")
    # "auto" falls back to the chunked loop where the attention kernel cannot run
    got = frozen_table_cross_entropy(x.half(), w_t.half(), y)
    ref = F.cross_entropy(x.half().float() @ w_t.half().float(), y)
    torch.testing.assert_close(got.float(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("kernel", ["chunked", "attention"])
def test_frozen_table_cross_entropy_bfloat16(kernel):
    """bfloat16 inputs: loss and gradient close to float32 arithmetic on the same rounded values."""
    from raserec_adapter.training.losses import frozen_table_cross_entropy

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(300, 16, generator=gen).bfloat16().requires_grad_()
    w = (0.5 * torch.randn(2000, 16, generator=gen)).bfloat16()
    y = torch.randint(0, 2000, (300,), generator=gen)
    got = frozen_table_cross_entropy(x, w.t(), y, kernel=kernel)
    (g,) = torch.autograd.grad(got, x)
    assert got.dtype == torch.bfloat16 and g.dtype == torch.bfloat16
    xf = x.detach().float().requires_grad_()
    ref = F.cross_entropy(xf @ w.float().t(), y)
    ref.backward()
    torch.testing.assert_close(got.float(), ref, rtol=1e-2, atol=1e-2)
    # per-row gradients are O(1/B); compare them at that scale
    torch.testing.assert_close(g.float() * 300, xf.grad * 300, rtol=0, atol=3e-2)


@pytest.mark.parametrize("failure", ["missing", "raises", "wrong numbers"])
def test_frozen_table_cross_entropy_falls_back_from_a_broken_attention_op(monkeypatch, failure):
    """The private CPU op is probed once; a missing, failing or wrong op means the chunked loop."""
    from raserec_adapter.training import losses

    real = losses._cpu_attention_op()

    def broken(*args, **kwargs):
        if failure == "raises":
            raise RuntimeError("signature changed")
        out, lse = real(*args, **kwargs)
        return out + 1.0, lse

    monkeypatch.setattr(
        losses, "_cpu_attention_op", lambda: None if failure == "missing" else broken
    )
    losses._attention_op_works.cache_clear()
    try:
        x = torch.randn(6, 4, requires_grad=True)
        w_t, y = torch.randn(4, 11), torch.tensor([0, 1, 5, 10, 3, 3])
        assert not losses.attention_kernel_available(x)
        with pytest.raises(ValueError, match="kernel='chunked'"):
            losses.frozen_table_cross_entropy(x, w_t, y, kernel="attention")
        got = losses.frozen_table_cross_entropy(x, w_t, y)
        (g,) = torch.autograd.grad(got, x)
        x2 = x.detach().clone().requires_grad_()
        ref = F.cross_entropy(x2 @ w_t, y)
        ref.backward()
        torch.testing.assert_close(got, ref)
        torch.testing.assert_close(g, x2.grad)
    finally:
        losses._attention_op_works.cache_clear()
