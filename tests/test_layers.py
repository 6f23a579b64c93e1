"""raserec_adapter.layers: dropout with cheaper CPU masks, against its definition."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raserec_adapter.layers import Dropout, dropout
from raserec_adapter.ram import Dropout as RamDropout

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
    its state dict is nn.Dropout's (empty), and ram.Dropout is the same class."""
    drop = Dropout(0.3)
    assert isinstance(drop, torch.nn.Dropout) and drop.p == 0.3
    assert drop.state_dict() == torch.nn.Dropout(0.3).state_dict() == {}
    assert RamDropout is Dropout


def test_dropout_matches_nn_dropout_in_distribution():
    """Same first two moments as F.dropout over many draws of a random input (bounds about 5
    standard deviations of the difference)."""
    torch.manual_seed(0)
    x = torch.randn(100_000)
    ours, ref = dropout(x, 0.3), F.dropout(x, 0.3, True)
    assert abs(float(ours.mean() - ref.mean())) < 0.03
    assert abs(float((ours**2).mean() - (ref**2).mean())) < 0.07
