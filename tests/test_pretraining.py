from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import synthetic_sequences
from torch import nn

from examples.models import SASRec
from raserec_adapter import PretrainConfig, evaluate_encoder, leave_one_out, pretrain
from raserec_adapter.pretraining import _PositiveSampler, info_nce


def reference_info_nce(z1, z2, tau, targets=None):
    """Written out per anchor: -log(exp(s_pos) / sum over all other views (minus masked))."""
    z = torch.cat([z1, z2]).double()
    b = len(z1)
    t = None if targets is None else torch.cat([targets, targets])
    total = 0.0
    for i in range(2 * b):
        pos = i + b if i < b else i - b
        denom = 0.0
        for j in range(2 * b):
            if j == i:
                continue
            if t is not None and j != pos and t[j] == t[i]:
                continue
            denom += math.exp(float(z[i] @ z[j]) / tau)
        total += -(float(z[i] @ z[pos]) / tau - math.log(denom))
    return total / (2 * b)


@pytest.mark.parametrize("mask", [False, True])
def test_info_nce_matches_reference(mask):
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 4), torch.randn(6, 4)
    targets = torch.tensor([1, 2, 1, 3, 2, 4])
    got = info_nce(z1, z2, 0.7, targets if mask else None)
    assert float(got) == pytest.approx(
        reference_info_nce(z1, z2, 0.7, targets if mask else None), rel=1e-5
    )


def test_positive_sampler_draws_same_target_other_pair():
    targets = np.array([5, 3, 5, 7, 5, 3])
    s = _PositiveSampler(targets, seed=0)
    for _ in range(20):
        pairs = np.arange(6)
        pos = s.sample(pairs)
        assert (targets[pos] == targets[pairs]).all()
        assert pos[3] == 3  # target 7 has no partner: falls back to the anchor itself
        assert (pos[[0, 1, 2, 4, 5]] != pairs[[0, 1, 2, 4, 5]]).all()


class MeanEncoder(nn.Module):
    """A bidirectional (non-causal) toy encoder: mean of item embeddings plus a projection."""

    def __init__(self, n, d=16):
        super().__init__()
        self.item_embedding = nn.Embedding(n + 1, d, padding_idx=0)
        self.proj = nn.Linear(d, d)

    def forward(self, seq, lens):
        e = self.item_embedding(seq)
        last = e[torch.arange(len(lens)), lens - 1]
        return self.proj(last + e.sum(1) / lens[:, None])


@pytest.mark.parametrize("causal", [True, False])
def test_pretraining_beats_random_and_checkpoints(causal, tmp_path):
    seqs = synthetic_sequences(150, 30, seed=2)
    split = leave_one_out(seqs, max_len=10)
    torch.manual_seed(0)
    model = SASRec(30, hidden_size=16, max_len=10) if causal else MeanEncoder(30)
    before = evaluate_encoder(model, split, "valid")["HR@10"]
    res = pretrain(
        model,
        split,
        PretrainConfig(epochs=8, batch_size=64, max_len=10, mask_false_negatives=True),
        checkpoint=tmp_path / "enc.pt",
        show_progress=False,
    )
    after = evaluate_encoder(model, split, "valid")["HR@10"]
    assert after > before + 0.2
    assert res.history[0]["loss_ret"] > 0  # the retrieval loss was used
    assert after == pytest.approx(res.best_valid["HR@10"])  # best weights restored
    state = torch.load(tmp_path / "enc.pt", weights_only=True)
    assert set(state) == set(model.state_dict())


def recording_loss(log: list[torch.Tensor]):
    """A backbone-style rec_loss (next-item cross-entropy) that logs each batch's input."""

    def loss(enc, batch):
        log.append(batch.item_seq)
        h = enc(batch.item_seq, batch.lengths)
        return nn.functional.cross_entropy(h @ enc.item_weights().t(), batch.targets)

    return loss


def test_custom_rec_loss_is_used():
    seqs = synthetic_sequences(40, 20, seed=3)
    split = leave_one_out(seqs, max_len=10)
    calls: list[torch.Tensor] = []
    my_loss = recording_loss(calls)

    pretrain(
        SASRec(20, hidden_size=8, max_len=10),
        split,
        PretrainConfig(epochs=1, batch_size=32, max_len=10, retrieval_weight=0.0),
        rec_loss=my_loss,
        show_progress=False,
    )
    assert len(calls) == math.ceil(len(split.train) / 32)


def test_own_rec_loss_skips_the_unused_anchor_pass():
    """With a backbone's own loss, each batch is encoded by that loss and one InfoNCE view only."""
    seqs = synthetic_sequences(40, 20, seed=3)
    split = leave_one_out(seqs, max_len=10)
    seen: list[torch.Tensor] = []
    batches: list[torch.Tensor] = []

    class Counting(SASRec):
        is_causal = False  # per-prefix batches, like a bidirectional backbone

        def forward(self, item_seq, item_seq_len):
            seen.append(item_seq)
            return super().forward(item_seq, item_seq_len)

    pretrain(
        Counting(20, hidden_size=8, max_len=10),
        split,
        PretrainConfig(epochs=1, batch_size=32, max_len=10, retrieval_weight=0.1),
        rec_loss=recording_loss(batches),
        show_progress=False,
    )
    assert batches
    for b in batches:  # the loss's own pass + the InfoNCE view; no third (anchor) pass
        assert sum(x is b for x in seen) == 2


def test_wrong_item_count_is_explained():
    split = leave_one_out(synthetic_sequences(10, 20), max_len=10)
    with pytest.raises(ValueError, match="num_items=20"):
        pretrain(SASRec(10, hidden_size=8, max_len=10), split, PretrainConfig(epochs=1))
