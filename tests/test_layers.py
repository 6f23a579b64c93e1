"""raserec_adapter.models._fast: dropout with cheaper CPU masks, against its definition."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raserec_adapter.models import BERT4Rec, GRU4Rec, SASRec
from raserec_adapter.models._fast import FastDropout as Dropout
from raserec_adapter.models._fast import dropout, scaled_dot_product_attention, use_fast_paths
from raserec_adapter.ram import RetrievalAugmentedModule

# 0.5 and 0.25 take the byte path (256 p is an integer), 0.1 and 0.8 the 32-bit one
RATES = [0.1, 0.25, 0.5, 0.8]


def _within(rate: float, expected: float, n: int, sigmas: float = 5.0) -> bool:
    return abs(rate - expected) < sigmas * math.sqrt(expected * (1 - expected) / n)


@pytest.mark.parametrize("p", RATES)
def test_dropout_keeps_one_minus_p_scaled(p):
    """Entries are 0 or x / (1 - p), kept at rate 1 - p (within 5 standard deviations over
    200k draws), the gradient is the same mask, and a seed fixes the mask."""
    n = 200_000
    x = torch.full((n,), 3.0, requires_grad=True)
    drop = Dropout(p).train()
    torch.manual_seed(0)
    y = drop(x)
    kept = y != 0
    torch.testing.assert_close(y[kept], torch.full((int(kept.sum()),), 3.0 / (1 - p)))
    assert _within(float(kept.float().mean()), 1 - p, n)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / (1 - p))
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)
    torch.manual_seed(1)
    assert not torch.equal(drop(x), y)


@pytest.mark.parametrize("p", RATES)
def test_dropout_masks_are_uniform_over_positions_and_independent(p):
    """Every position of the random words is used alike: the keep rate of each position modulo
    8 (the bytes of one word) is 1 - p, and neighbouring entries are kept independently (the
    rate of both kept is (1 - p)^2). A word's high byte with a bias (random_() without the full
    64-bit range leaves the top bit 0) fails the first check."""
    n = 400_000
    torch.manual_seed(0)
    kept = (dropout(torch.ones(n), p) != 0).view(-1, 8).float()
    rows = kept.shape[0]
    for pos in range(8):
        assert _within(float(kept[:, pos].mean()), 1 - p, rows), pos
    both = (kept[:, 0::2] * kept[:, 1::2]).flatten()
    assert _within(float(both.mean()), (1 - p) ** 2, both.numel())


def test_dropout_shapes_dtypes_and_strides():
    """Any size (not a multiple of 8), bfloat16, a non-contiguous view: the output has the
    input's shape and dtype and is the input times a 0 / 2 mask."""
    torch.manual_seed(0)
    for x in (torch.randn(3, 5, 7), torch.randn(3, 5).to(torch.bfloat16), torch.randn(6, 4).t()):
        y = dropout(x, 0.5)
        assert y.shape == x.shape and y.dtype == x.dtype
        ratio = torch.where(y == 0, torch.zeros_like(x), y / x)
        assert set(ratio.float().unique().tolist()) <= {0.0, 2.0}
    assert dropout(torch.ones(0), 0.5).shape == (0,)


def test_dropout_identity_and_limits():
    x = torch.randn(10, 10)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    assert Dropout(0.5).eval()(x) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"in \[0, 1\]"):
            dropout(x, p)


def test_dropout_is_an_nn_dropout():
    """Code that finds nn.Dropout modules (to read their rates, or eval() switching) sees it,
    and its state dict is nn.Dropout's (empty)."""
    drop = Dropout(0.3)
    assert isinstance(drop, torch.nn.Dropout) and drop.p == 0.3
    assert drop.state_dict() == torch.nn.Dropout(0.3).state_dict() == {}


def test_dropout_matches_nn_dropout_in_distribution():
    """Same first two moments as F.dropout over many draws of a random input (bounds about 5
    standard deviations of the difference)."""
    torch.manual_seed(0)
    x = torch.randn(100_000)
    ours, ref = dropout(x, 0.3), F.dropout(x, 0.3, True)
    assert abs(float(ours.mean() - ref.mean())) < 0.03
    assert abs(float((ours**2).mean() - (ref**2).mean())) < 0.07


def _plain_copy(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every FastDropout put back to a plain nn.Dropout (same rate, weights)."""
    import copy

    plain = copy.deepcopy(model)
    for parent in plain.modules():
        for name, child in parent.named_children():
            if isinstance(child, Dropout):
                setattr(parent, name, torch.nn.Dropout(child.p))
    return plain


@pytest.mark.parametrize(
    "build",
    [
        lambda: SASRec(20, hidden_size=16, max_len=8),
        lambda: GRU4Rec(20, hidden_size=16),
        lambda: BERT4Rec(20, hidden_size=16, max_len=8),
        lambda: BERT4Rec(20, hidden_size=16, max_len=8, readout="mask"),
    ],
)
def test_models_switch_in_fast_paths_and_equal_the_plain_path(build):
    """The shipped models carry FastDropout (chosen automatically) and, with dropout off, give
    exactly what the plain torch layers give, with the same state dict."""
    torch.manual_seed(0)
    model = build()
    assert any(isinstance(m, Dropout) for m in model.modules())
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    plain = _plain_copy(model)
    assert model.state_dict().keys() == plain.state_dict().keys()
    seq, lengths = torch.tensor([[3, 4, 5, 0], [7, 0, 0, 0]]), torch.tensor([3, 1])
    model.eval(), plain.eval()
    assert torch.equal(model(seq, lengths), plain(seq, lengths))


def test_fast_paths_in_training_match_the_plain_path_in_distribution():
    """In training mode the fast and plain SASRec differ only in their random masks: over many
    draws their mean outputs agree (about 5 standard errors)."""
    torch.manual_seed(0)
    model = SASRec(10, hidden_size=8, max_len=4, dropout=0.25, attn_dropout=0.25).train()
    plain = _plain_copy(model).train()
    seq, lengths = torch.tensor([[1, 2, 3, 4]]).expand(4000, 4), torch.full((4000,), 4)
    with torch.no_grad():
        fast_out, plain_out = model(seq, lengths), plain(seq, lengths)
    se = torch.sqrt(fast_out.var(0) / 4000 + plain_out.var(0) / 4000)
    assert bool(((fast_out.mean(0) - plain_out.mean(0)).abs() < 5 * se + 1e-6).all())


@pytest.mark.parametrize("causal", [True, False])
def test_attention_without_dropout_is_sdpa_and_with_it_the_written_out_formula(causal):
    """Without dropout the fast attention is SDPA itself; the written-out CPU path with dropout
    equals the formula softmax(QK^T / sqrt(d)) V with the same kept entries (p -> keep mask
    fixed by the seed), forward and backward."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 4, requires_grad=True) for _ in range(3))
    mask = torch.tensor([True, True, True, False, True])[None, None, None, :]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    out = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    assert torch.equal(out, ref)
    # with dropout: the same seed draws the same keep mask for the reference computed by hand
    torch.manual_seed(1)
    out = scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.5, is_causal=causal)
    torch.manual_seed(1)
    scores = (q @ k.transpose(-2, -1)) / 2.0
    if causal:
        scores = scores.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    weights = dropout(torch.softmax(scores.masked_fill(~mask, float("-inf")), -1), 0.5)
    expected = weights @ v
    assert torch.allclose(out, expected, atol=1e-6)
    g_out = torch.autograd.grad(out.sum(), (q, k, v))
    g_ref = torch.autograd.grad(expected.sum(), (q, k, v))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_out, g_ref, strict=True))


def test_use_fast_paths_swaps_only_plain_dropout_and_keeps_the_ram_plain_in_eval():
    """The RAM gets FastDropout too; eval outputs do not depend on it."""
    from raserec_adapter import RAMConfig

    torch.manual_seed(0)
    ram = RetrievalAugmentedModule(8, RAMConfig(k=2)).eval()
    assert any(isinstance(m, Dropout) for m in ram.modules())
    plain = _plain_copy(ram).eval()
    h, keys = torch.randn(3, 8), torch.randn(3, 2, 8)
    assert torch.equal(ram(h, keys, keys), plain(h, keys, keys))
    model = use_fast_paths(torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Identity()))
    assert isinstance(model[0], Dropout) and model[0].p == 0.2
