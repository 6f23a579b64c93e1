"""The sampled softmax: its logits against a hand-written reference, its correction unbiased."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raserec_adapter.training.sampled_softmax import SampledSoftmax


def reference(h, table, targets, cands, expected) -> float:
    """The loss written out row by row: corrected logits, accidental hits dropped."""
    total = 0.0
    for row in range(h.shape[0]):
        t = int(targets[row])
        pos = float(h[row] @ table[t]) - math.log(expected[t])
        terms = [pos] + [
            float(h[row] @ table[c]) - math.log(expected[c]) for c in cands.tolist() if c != t
        ]
        top = max(terms)
        total += -(pos - top - math.log(sum(math.exp(x - top) for x in terms)))
    return total / h.shape[0]


@pytest.mark.parametrize("in_batch,negatives", [(True, 0), (False, 7), (True, 7)])
def test_the_loss_is_the_written_out_estimator(in_batch, negatives):
    g = torch.Generator().manual_seed(1)
    n, b = 12, 5
    h, table = torch.randn(b, 4, generator=g), torch.randn(n + 1, 4, generator=g)
    targets = torch.tensor([3, 3, 9, 1, 12])
    counts = np.bincount([3, 3, 3, 9, 1, 12, 5, 5], minlength=n + 1)
    loss = SampledSoftmax(n, negatives, in_batch, counts)
    got = loss.loss(h.double(), table.double(), targets, generator=torch.Generator().manual_seed(5))
    drawn = torch.randint(1, n + 1, (negatives,), generator=torch.Generator().manual_seed(5))
    cands = torch.cat(([targets] if in_batch else []) + ([drawn] if negatives else []))
    share = counts / counts.sum()
    expected = [negatives / n + (b * share[i] if in_batch else 0.0) for i in range(n + 1)]
    assert float(got) == pytest.approx(
        reference(h.double(), table.double(), targets, cands, expected)
    )


def test_the_correction_makes_the_sampled_denominator_unbiased():
    """E[sum over candidates of exp(s_j) / E[count_j]] is the full softmax's sum over items."""
    g = torch.Generator().manual_seed(0)
    n, b, m = 50, 16, 8
    scores = torch.randn(n + 1, generator=g).double()
    share = torch.distributions.Dirichlet(torch.ones(n)).sample().double()
    counts = np.concatenate([[0.0], share.numpy() * 1000])
    loss = SampledSoftmax(n, m, True, counts)
    full = float(scores[1:].exp().sum())
    estimates = []
    for _ in range(4000):
        targets = torch.multinomial(share.float(), b, replacement=True, generator=g) + 1
        drawn = torch.randint(1, n + 1, (m,), generator=g)
        cands = torch.cat([targets, drawn])
        log_e = loss.log_expected_counts(cands, b).double()
        estimates.append(float((scores[cands] - log_e).exp().sum()))
    assert np.mean(estimates) == pytest.approx(full, rel=0.03)


def test_a_model_trained_with_it_ranks_like_one_trained_with_the_full_softmax():
    torch.manual_seed(0)
    n, d = 40, 8
    # each item's successor is fixed: item i -> i % n + 1
    inputs = torch.randint(1, n + 1, (2000,))
    nxt = inputs % n + 1
    results = {}
    for name in ("full", "sampled"):
        torch.manual_seed(0)
        emb = torch.nn.Embedding(n + 1, d)
        proj = torch.nn.Linear(d, d)
        opt = torch.optim.Adam([*emb.parameters(), *proj.parameters()], lr=0.05)
        sampled = SampledSoftmax(n, negatives=10, in_batch=True)
        g = torch.Generator().manual_seed(0)
        for _ in range(300):
            rows = torch.randint(0, len(inputs), (64,), generator=g)
            h = proj(emb(inputs[rows]))
            if name == "full":
                loss = torch.nn.functional.cross_entropy(h @ emb.weight[1:].t(), nxt[rows] - 1)
            else:
                loss = sampled.loss(h, emb.weight, nxt[rows], generator=g)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            top = (proj(emb(torch.arange(1, n + 1))) @ emb.weight[1:].t()).argmax(1) + 1
        results[name] = float((top == torch.arange(1, n + 1) % n + 1).float().mean())
    assert results["full"] > 0.9 and results["sampled"] > 0.9, results


def test_bad_settings_say_what_is_wrong():
    with pytest.raises(ValueError, match="negatives > 0 or in_batch=True"):
        SampledSoftmax(10, negatives=0, in_batch=False)
    with pytest.raises(ValueError, match=r"target_counts must be \(11,\)"):
        SampledSoftmax(10, target_counts=np.ones(10))
    loss = SampledSoftmax(10)
    with pytest.raises(ValueError, match="has 5 items but"):
        loss.loss(torch.randn(2, 3), torch.randn(6, 3), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"targets \(B,\)"):
        loss.loss(torch.randn(2, 3), torch.randn(11, 3), torch.tensor([1]))


def test_both_stages_train_with_the_sampled_softmax_chosen_in_their_configs():
    from conftest import small_augmenter, synthetic_sequences

    from raserec_adapter import PretrainConfig, RAFTConfig, leave_one_out
    from raserec_adapter.models import SASRec
    from raserec_adapter.training import pretrain

    split = leave_one_out(synthetic_sequences(80, 30, seed=1), max_len=10)
    scores = {}
    for loss in ("full", "sampled"):
        torch.manual_seed(0)
        model = SASRec(30, hidden_size=16, max_len=10)
        cfg = PretrainConfig(epochs=6, batch_size=64, max_len=10, loss=loss, negatives=8)
        result = pretrain(model, split, cfg, show_progress=False)
        assert all(math.isfinite(h["loss"]) for h in result.history if "loss" in h)
        aug = small_augmenter(model, max_len=10, k=3)
        aug.build_bank(split, show_progress=False)
        raft = RAFTConfig(epochs=2, loss=loss, negatives=8, fallback=False)
        aug.fit_raft(split, raft, show_progress=False)
        scores[loss] = aug.evaluate(split, "valid", show_progress=False)["plain"]["HR@10"]
    # the synthetic sequences mostly step to the next item: both losses learn that
    assert scores["sampled"] > 0.5 and scores["full"] > 0.5, scores


def test_the_sampled_softmax_is_refused_where_it_cannot_apply():
    from conftest import synthetic_sequences

    from raserec_adapter import PretrainConfig, RAFTConfig, leave_one_out
    from raserec_adapter.models import SASRec
    from raserec_adapter.training import pretrain

    with pytest.raises(ValueError, match="RAFTConfig.loss must be 'full' or 'sampled'"):
        RAFTConfig(loss="bpr")
    with pytest.raises(ValueError, match="negatives must be > 0 where in_batch_negatives is off"):
        PretrainConfig(loss="sampled", negatives=0, in_batch_negatives=False)
    split = leave_one_out(synthetic_sequences(10, 8, seed=1), max_len=5)
    cfg = PretrainConfig(epochs=1, max_len=5, loss="sampled")
    with pytest.raises(ValueError, match="replaces the cross-entropy"):
        pretrain(SASRec(8, hidden_size=8, max_len=5), split, cfg, rec_loss=lambda e, b: None)
