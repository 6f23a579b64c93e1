from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import synthetic_sequences
from torch import nn

from raserec_adapter import PretrainConfig, RunOptions, Sequences, leave_one_out, wrap_encoder
from raserec_adapter.data.batching import causal_windows, iter_batches, iter_windows
from raserec_adapter.models import BERT4Rec, GRU4Rec, SASRec
from raserec_adapter.training import pretrain, pretraining
from raserec_adapter.training.losses import info_nce
from raserec_adapter.training.pretraining import evaluate_encoder
from raserec_adapter.training.state import RunningMean
from raserec_adapter.training.views import PositiveSampler as _PositiveSampler
from raserec_adapter.training.views import anchors


def reference_info_nce(z1, z2, tau, targets=None, groups=None):
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
            if groups is not None and j != pos and groups[j] == groups[i]:
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


@pytest.mark.parametrize("mask", [False, True])
def test_info_nce_same_group_negatives_are_dropped(mask):
    torch.manual_seed(1)
    z1, z2 = torch.randn(5, 4), torch.randn(5, 4)
    targets = torch.tensor([1, 2, 1, 3, 2])
    # view 0's positive (row 5) shares its group: a positive is never masked
    groups = torch.tensor([7, 7, 8, 9, 8, 7, 3, 9, 9, 8])
    t = targets if mask else None
    got = float(info_nce(z1, z2, 0.5, t, groups))
    assert got == pytest.approx(reference_info_nce(z1, z2, 0.5, t, groups), rel=1e-5)
    assert got != pytest.approx(float(info_nce(z1, z2, 0.5, t)), rel=1e-3)
    # groups that are all different change nothing
    distinct = float(info_nce(z1, z2, 0.5, t, torch.arange(10)))
    assert distinct == pytest.approx(float(info_nce(z1, z2, 0.5, t)), rel=1e-6)
    with pytest.raises(ValueError, match=r"groups must have shape \(10,\)"):
        info_nce(z1, z2, 0.5, t, groups[:5])


def test_a_run_that_diverges_keeps_the_best_epochs_weights(tmp_path, caplog):
    split = leave_one_out(synthetic_sequences(40, 20, seed=3), max_len=10)
    torch.manual_seed(0)
    model = SASRec(20, hidden_size=8, max_len=10)
    steps_per_epoch = math.ceil(len(split.train) / 32)
    calls = {"n": 0}

    def diverging(enc, batch):  # epoch 2's first step sends the weights to NaN
        calls["n"] += 1
        if calls["n"] == steps_per_epoch + 1:
            with torch.no_grad():
                model.item_embedding.weight.fill_(float("nan"))
        h = enc(batch.item_seq, batch.lengths)
        return nn.functional.cross_entropy(h @ enc.item_weights().t(), batch.targets)

    with pytest.raises(ValueError, match="NaN"):
        pretrain(
            model,
            split,
            PretrainConfig(epochs=3, batch_size=32, max_len=10, retrieval_weight=0.0),
            rec_loss=diverging,
            checkpoint=tmp_path / "best.pt",
            show_progress=False,
        )
    best = torch.load(tmp_path / "best.pt", weights_only=True)  # epoch 1's weights
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, best[k], rtol=0, atol=0, msg=k)
    assert "best epoch (1)" in caplog.text


def test_a_run_that_fails_in_its_first_epoch_gives_the_weights_back():
    split = leave_one_out(synthetic_sequences(40, 20, seed=3), max_len=10)
    model = MeanEncoder(20)
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def interrupted(enc, batch):
        h = enc(batch.item_seq, batch.lengths)
        loss = nn.functional.cross_entropy(h @ enc.item_weights().t(), batch.targets)
        if interrupted.steps == 2:  # two optimizer steps have changed the weights
            raise KeyboardInterrupt
        interrupted.steps += 1
        return loss

    interrupted.steps = 0
    with pytest.raises(KeyboardInterrupt):
        pretrain(
            model,
            split,
            PretrainConfig(epochs=2, batch_size=8, max_len=10, retrieval_weight=0.0),
            rec_loss=interrupted,
            show_progress=False,
        )
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, start[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("batching", ["windows", "random"])
@pytest.mark.parametrize("fuse", [False, True])
def test_same_user_groups_are_the_views_users(batching, fuse, monkeypatch):
    """Each user walks its own items, so a target names its user, and so does a positive's."""
    lists = [[10 * u + 1 + k % 3 for k in range(3 + u % 7)] for u in range(40)]
    seqs = Sequences.from_lists(lists, num_items=400)
    split = leave_one_out(seqs, max_len=6)
    user_of_item = {i: u for u, items in enumerate(lists) for i in items}
    seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    real = pretraining.info_nce

    def spy(z1, z2, temperature=1.0, targets=None, groups=None):
        seen.append((targets_box[0], groups))
        return real(z1, z2, temperature, targets, groups)

    targets_box: list[torch.Tensor] = []
    real_loss = pretraining.next_item_loss

    def loss_spy(h, w, targets):
        targets_box[:] = [targets]
        return real_loss(h, w, targets)

    monkeypatch.setattr(pretraining, "info_nce", spy)
    monkeypatch.setattr(pretraining, "next_item_loss", loss_spy)
    cfg = PretrainConfig(
        epochs=1, batch_size=16, max_len=6, batching=batching, mask_same_user_negatives=True
    )
    pretrain(
        SASRec(400, hidden_size=8, max_len=6),
        split,
        cfg,
        show_progress=False,
        run=RunOptions(fuse=fuse),
    )
    assert seen
    for targets, groups in seen:
        assert groups is not None and len(groups) == 2 * len(targets)
        want = torch.tensor([user_of_item[int(t)] for t in targets])
        assert torch.equal(groups[: len(targets)], want)
        assert torch.equal(groups[len(targets) :], want)


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


@pytest.mark.parametrize("fuse", [False, True])
def test_own_rec_loss_runs_with_checked_inputs(fuse):
    """The library trusts its own batches; a user's loss builds inputs itself and stays checked."""
    split = leave_one_out(synthetic_sequences(40, 20, seed=3), max_len=10)
    trusted_in_loss: list[int] = []

    def my_loss(enc, batch):
        trusted_in_loss.append(enc._trusted)
        h = enc(batch.item_seq, batch.lengths)
        return nn.functional.cross_entropy(h @ enc.item_weights().t(), batch.targets)

    pretrain(
        SASRec(20, hidden_size=8, max_len=10),
        split,
        PretrainConfig(epochs=1, batch_size=32, max_len=10),
        rec_loss=my_loss,
        show_progress=False,
        run=RunOptions(fuse=fuse),
    )
    assert trusted_in_loss and set(trusted_in_loss) == {0}


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
        pretrain(SASRec(10, hidden_size=8, max_len=10), split, PretrainConfig(epochs=1, max_len=10))


def test_settings_that_would_fail_late_are_refused_before_training(tmp_path):
    split = leave_one_out(synthetic_sequences(10, 20), max_len=10)
    model = SASRec(20, hidden_size=8, max_len=10)
    with pytest.raises(ValueError, match="PretrainConfig.max_len = 50 but the split truncates"):
        pretrain(model, split, PretrainConfig(epochs=1, max_len=50))
    cfg = PretrainConfig(epochs=1, max_len=10)
    with pytest.raises(ValueError, match="checkpoint = .* is a directory"):
        pretrain(model, split, cfg, checkpoint=tmp_path)
    with pytest.raises(ValueError, match="state_path = .* is a directory"):
        pretrain(model, split, cfg, run=RunOptions(state_path=tmp_path))
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "runs").write_text("a file where a folder should be")
    for kwargs in (
        {"checkpoint": tmp_path / "runs" / "a" / "enc.pt"},
        {"run": RunOptions(state_path=tmp_path / "runs" / "state.pt")},
    ):
        with pytest.raises(ValueError, match=r"cannot be written: .*runs is a file, not a folder"):
            pretrain(model, split, cfg, **kwargs)
    (tmp_path / "runs").unlink()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available here.*device='cpu'"):
            pretrain(model, split, cfg, device="cuda")
    short = leave_one_out(Sequences.from_lists([[1, 2, 3]] * 4), max_len=10)
    with pytest.raises(ValueError, match="no training pairs"):
        pretrain(SASRec(3, hidden_size=8, max_len=10), short, cfg)
    state = tmp_path / "state.pt"  # max_len None: the split's, recorded as such
    pretrain(
        model,
        split,
        PretrainConfig(epochs=1),
        show_progress=False,
        run=RunOptions(state_path=state),
    )
    meta = json.loads(torch.load(state, weights_only=True)["meta"])
    assert meta["config"]["max_len"] == 10


def test_state_files_from_before_the_data_fingerprint_still_resume(tmp_path):
    """Such states recorded max_len 50 whatever the split used, and no "data"."""
    state = tmp_path / "state.pt"
    split = leave_one_out(synthetic_sequences(30, 20, seed=1), max_len=10)
    cfg = PretrainConfig(epochs=1, batch_size=32)
    pretrain(SASRec(20, hidden_size=8, max_len=10), split, cfg, run=RunOptions(state_path=state))
    saved = torch.load(state, weights_only=True)
    meta = json.loads(saved["meta"])
    del meta["data"]
    meta["config"]["max_len"] = 50
    saved["meta"] = json.dumps(meta)
    torch.save(saved, state)
    res = pretrain(
        SASRec(20, hidden_size=8, max_len=10),
        split,
        cfg.replace(epochs=2),
        show_progress=False,
        run=RunOptions(state_path=state, resume=True),
    )
    assert res.epochs_run == 2


def test_state_file_with_numpy_item_count(tmp_path):
    seqs = synthetic_sequences(30, 20, seed=1)
    seqs = Sequences(seqs.items, seqs.offsets, seqs.items.max())  # num_items a NumPy integer
    split = leave_one_out(seqs, max_len=10)
    cfg = PretrainConfig(epochs=1, batch_size=32)
    pretrain(
        SASRec(20, hidden_size=8, max_len=10),
        split,
        cfg,
        run=RunOptions(state_path=tmp_path / "s.pt"),
    )
    assert (
        json.loads(torch.load(tmp_path / "s.pt", weights_only=True)["meta"])["data"]["items"] == 20
    )


def test_resume_on_other_data_is_refused(tmp_path):
    state = tmp_path / "state.pt"
    cfg = PretrainConfig(epochs=1, max_len=10, batch_size=32)
    split = leave_one_out(synthetic_sequences(30, 20, seed=1), max_len=10)
    pretrain(SASRec(20, hidden_size=8, max_len=10), split, cfg, run=RunOptions(state_path=state))
    before = state.read_bytes()
    other = leave_one_out(synthetic_sequences(30, 20, seed=2), max_len=10)
    with pytest.raises(ValueError, match="written for other training data"):
        pretrain(
            SASRec(20, hidden_size=8, max_len=10),
            other,
            cfg.replace(epochs=2),
            run=RunOptions(state_path=state, resume=True),
        )
    assert state.read_bytes() == before


def _no_dropout(backbone: str, n: int):
    if backbone == "sasrec":
        return SASRec(n, hidden_size=16, max_len=10, dropout=0.0, attn_dropout=0.0)
    if backbone == "gru4rec":
        return GRU4Rec(n, hidden_size=16, dropout=0.0)
    return BERT4Rec(n, hidden_size=16, max_len=10, dropout=0.0, attn_dropout=0.0, readout="mask")


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec", "bert4rec", "bert4rec-cloze"])
def test_fused_step_trains_like_separate_calls(backbone):
    """One padded call per step (the accelerator path) computes the same losses as the CPU
    path's separate, length-grouped calls: without dropout, both end at the same weights."""
    seqs = synthetic_sequences(80, 20, seed=4)
    split = leave_one_out(seqs, max_len=10)
    cloze = backbone == "bert4rec-cloze"

    def cloze_loss(enc, batch):
        return enc.module.cloze_loss(batch.item_seq, batch.lengths, targets=batch.targets)

    runs = []
    for fuse in (False, True):
        torch.manual_seed(0)
        model = _no_dropout(backbone.split("-")[0], 20)
        res = pretrain(
            model,
            split,
            PretrainConfig(epochs=2, batch_size=32, max_len=10, patience=5),
            rec_loss=cloze_loss if cloze else None,
            show_progress=False,
            run=RunOptions(fuse=fuse),
        )
        runs.append((res.history, model.state_dict()))
    (h0, s0), (h1, s1) = runs
    for a, b in zip(h0, h1, strict=True):
        assert a["loss_rec"] == pytest.approx(b["loss_rec"], rel=1e-4)
        assert a["loss_ret"] == pytest.approx(b["loss_ret"], rel=1e-4)
        assert a["loss_ret"] > 0
    for name in s0:
        torch.testing.assert_close(s0[name], s1[name], rtol=1e-4, atol=1e-5)


def test_fused_step_is_one_encoder_call():
    seqs = synthetic_sequences(40, 20, seed=3)
    split = leave_one_out(seqs, max_len=10)
    calls: list[int] = []

    class Counting(SASRec):
        def forward_all(self, item_seq, item_seq_len):
            if self.training:
                calls.append(item_seq.shape[0])
            return super().forward_all(item_seq, item_seq_len)

    cfg = PretrainConfig(epochs=1, batch_size=32, max_len=10)
    pretrain(
        Counting(20, hidden_size=8, max_len=10),
        split,
        cfg,
        show_progress=False,
        run=RunOptions(fuse=True),
    )
    steps = list(iter_windows(split.sequences, causal_windows(split), 32, True, cfg.seed + 1))
    assert len(calls) == len(steps)
    for n, batch in zip(calls, steps, strict=True):  # two views of the windows + the positives
        assert n == 2 * len(batch.lengths) + int((batch.targets > 0).sum())


def test_random_batching_encodes_uniformly_drawn_prefixes():
    """``batching="random"``: a causal encoder is trained like any other, one prefix per row, on
    the uniform draws of ``iter_batches(bucket=False)``, and still learns."""
    seqs = synthetic_sequences(150, 30, seed=2)
    split = leave_one_out(seqs, max_len=10)
    seen: list[torch.Tensor] = []

    window_passes: list[int] = []

    class Recording(SASRec):
        def forward_all(self, item_seq, item_seq_len):
            if self.training:
                window_passes.append(1)
            return super().forward_all(item_seq, item_seq_len)

        def forward(self, item_seq, item_seq_len):
            if self.training:
                seen.append(item_seq_len.clone())
            return super().forward(item_seq, item_seq_len)

    torch.manual_seed(0)
    model = Recording(30, hidden_size=16, max_len=10)
    before = evaluate_encoder(model, split, "valid")["HR@10"]
    cfg = PretrainConfig(epochs=6, batch_size=64, max_len=10, batching="random")
    pretrain(model, split, cfg, show_progress=False)
    assert evaluate_encoder(model, split, "valid")["HR@10"] > before + 0.2
    assert len(window_passes) == len(seen)  # every pass came through forward: no windows
    draws = iter_batches(split.sequences, split.train, 64, 10, True, cfg.seed + 1, bucket=False)
    first = next(draws).lengths
    # on a CPU the first anchor pass encodes the first draw in length groups (lengths in
    # (2^(g-1), 2^g]), one call per group, instead of padding all of it to its longest
    groups = torch.ceil(torch.log2(first.double())).unique()
    calls = seen[: len(groups)]
    assert torch.equal(torch.cat(calls).sort().values, first.sort().values)
    for call in calls:
        assert torch.ceil(torch.log2(call.double())).unique().numel() == 1


@pytest.mark.parametrize("backbone", [SASRec, GRU4Rec, BERT4Rec, MeanEncoder])
def test_regrouped_random_batch_encodes_like_the_padded_batch(backbone):
    """The CPU's length-grouped encoding of a uniformly drawn batch gives each row exactly what
    the padded batch gives it (dropout off), in the batch's row order."""
    seqs = synthetic_sequences(120, 30, seed=5)
    split = leave_one_out(seqs, max_len=10)
    torch.manual_seed(0)
    kwargs = {} if backbone in (GRU4Rec, MeanEncoder) else {"max_len": 10}
    enc = wrap_encoder(backbone(30, 16, **kwargs))
    enc.eval()
    host = next(iter_batches(split.sequences, split.train, 64, 10, True, 7, bucket=False))
    assert len(torch.ceil(torch.log2(host.lengths.double())).unique()) > 1  # mixed lengths
    widths: list[int] = []
    with torch.no_grad():
        want = enc(host.item_seq, host.lengths)
        hook = enc.module.register_forward_pre_hook(lambda _, args: widths.append(args[0].shape[1]))
        h, targets, pairs, view = anchors(enc, host, host, None, False, True, regroup=split)
        hook.remove()
        # the anchor pass really ran grouped: one call per length group, none padded to the max
        groups = torch.ceil(torch.log2(host.lengths.double())).unique()
        assert len(widths) == len(groups) and min(widths) < host.item_seq.shape[1]
        torch.testing.assert_close(h, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(view(), want, rtol=1e-5, atol=1e-6)
    assert torch.equal(targets, host.targets)
    assert np.array_equal(pairs, host.index.numpy())


def test_unknown_batching_is_refused():
    with pytest.raises(ValueError, match="batching must be one of"):
        PretrainConfig(batching="sorted")


def _state_tensors(path):
    state = torch.load(path, weights_only=True)
    opt = state["optimizer"]["state"]
    return state["model"], [t for i in sorted(opt) for t in opt[i].values()]


@pytest.mark.parametrize("causal", [True, False])
def test_resumed_run_equals_uninterrupted_run(causal, tmp_path):
    seqs = synthetic_sequences(120, 30, seed=4)
    split = leave_one_out(seqs, max_len=10)

    def model():
        torch.manual_seed(0)
        return SASRec(30, hidden_size=16, max_len=10) if causal else MeanEncoder(30)

    def cfg(epochs):
        return PretrainConfig(epochs=epochs, batch_size=32, max_len=10, patience=100, seed=3)

    whole = pretrain(
        model(), split, cfg(4), show_progress=False, run=RunOptions(state_path=tmp_path / "a.pt")
    )
    pretrain(
        model(), split, cfg(2), show_progress=False, run=RunOptions(state_path=tmp_path / "b.pt")
    )
    other_init = model()
    with torch.no_grad():
        for p in other_init.parameters():
            p.add_(1.0)  # resuming must overwrite whatever the model held
    torch.manual_seed(123)  # and the global random state
    resumed = pretrain(
        other_init,
        split,
        cfg(4),
        show_progress=False,
        run=RunOptions(state_path=tmp_path / "b.pt", resume=True),
    )
    assert resumed.epochs_run == 4 and len(resumed.history) == 4
    for a, b in zip(whole.history, resumed.history, strict=True):
        assert {k: v for k, v in a.items() if k != "train_seconds"} == {
            k: v for k, v in b.items() if k != "train_seconds"
        }
    assert resumed.best_epoch == whole.best_epoch
    model_a, opt_a = _state_tensors(tmp_path / "a.pt")
    model_b, opt_b = _state_tensors(tmp_path / "b.pt")
    for k in model_a:
        torch.testing.assert_close(model_a[k], model_b[k], rtol=0, atol=0)
    for x, y in zip(opt_a, opt_b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def _toy_pretrain(split, state, epochs=1, model=None, **kwargs):
    """One call of the resume tests: a MeanEncoder over 20 items, inputs of up to 8 items."""
    resume, run_info = kwargs.pop("resume", False), kwargs.pop("run_info", None)
    cfg = PretrainConfig(epochs=epochs, batch_size=32, max_len=8, **kwargs)
    return pretrain(
        model or MeanEncoder(20),
        split,
        cfg,
        show_progress=False,
        run=RunOptions(state_path=state, resume=resume, run_info=run_info),
    )


@pytest.fixture
def toy_split():
    return leave_one_out(synthetic_sequences(60, 20, seed=5), max_len=8)


def test_a_resumed_run_lists_every_call_that_trained_it(toy_split, tmp_path):
    state = tmp_path / "s.pt"

    def call(epochs, **run_info):
        return _toy_pretrain(
            toy_split, state, epochs, patience=100, resume=True, run_info=run_info or None
        )

    first = call(2, command="first call", commit="abc")
    assert [(c["first_epoch"], c["last_epoch"], c["command"]) for c in first.invocations] == [
        (1, 2, "first call")
    ]
    assert first.invocations[0]["torch_threads"] == torch.get_num_threads()
    assert first.invocations[0]["device"] == "cpu"
    resumed = call(5, command="second call")
    calls = [(c["first_epoch"], c["last_epoch"], c["command"]) for c in resumed.invocations]
    assert calls == [(1, 2, "first call"), (3, 5, "second call")]
    assert resumed.invocations[0]["commit"] == "abc" and "commit" not in resumed.invocations[1]
    assert resumed.epochs_run == 5
    # a call after the run finished trains nothing and says so
    again = call(5)
    assert [(c["first_epoch"], c["last_epoch"]) for c in again.invocations] == [
        (1, 2),
        (3, 5),
        (6, 5),
    ]


def test_a_state_written_before_invocations_were_recorded_resumes(toy_split, tmp_path):
    state = tmp_path / "s.pt"
    _toy_pretrain(toy_split, state, epochs=2, patience=100)
    saved = torch.load(state, weights_only=True)
    meta = json.loads(saved["meta"])
    del meta["result"]["invocations"]
    saved["meta"] = json.dumps(meta)
    torch.save(saved, state)
    res = _toy_pretrain(toy_split, state, epochs=3, patience=100, resume=True)
    assert [(c["first_epoch"], c["last_epoch"]) for c in res.invocations] == [(1, 2), (3, 3)]
    assert "not recorded" in res.invocations[0]["note"]


def test_run_info_that_json_cannot_hold_is_refused_before_training(toy_split, tmp_path):
    cfg = PretrainConfig(epochs=1, batch_size=32, max_len=8)
    for bad, why in (
        ({"when": object()}, "JSON values only"),
        ("cmd", "must be a mapping"),
        ({"device": "gpu0", "command": "x"}, r"may not set \['device'\]"),
    ):
        with pytest.raises(ValueError, match=why):
            pretrain(
                MeanEncoder(20),
                toy_split,
                cfg,
                run=RunOptions(state_path=tmp_path / "s.pt", run_info=bad),
            )
    assert not (tmp_path / "s.pt").exists()


def test_resume_refuses_other_settings_and_foreign_files(toy_split, tmp_path):
    state = tmp_path / "s.pt"
    _toy_pretrain(toy_split, state)
    before = state.read_bytes()
    with pytest.raises(ValueError, match=r"different settings \(lr: saved 0.001, now 0.01\)"):
        _toy_pretrain(toy_split, state, epochs=2, lr=0.01, resume=True)
    with pytest.raises(ValueError, match="different model"):
        _toy_pretrain(toy_split, state, model=MeanEncoder(20, d=8), resume=True)
    assert state.read_bytes() == before  # a refused resume leaves the saved state alone
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a pre-training state"):
        _toy_pretrain(toy_split, junk, resume=True)
    assert junk.read_bytes() == b"not a torch file"
    with pytest.raises(ValueError, match="needs state_path"):
        _toy_pretrain(toy_split, None, resume=True)


def test_resume_of_an_early_stopped_run_trains_no_more(toy_split, tmp_path, monkeypatch):
    # validation never improves after epoch 1, so patience 1 stops the run after epoch 2
    monkeypatch.setattr(pretraining, "evaluate_encoder", lambda *a, **k: {"MRR@10": 0.5})
    state = tmp_path / "s.pt"
    first = _toy_pretrain(toy_split, state, epochs=10, patience=1)
    assert first.epochs_run == 2
    again = _toy_pretrain(toy_split, state, epochs=20, patience=1, resume=True)
    assert again.history == first.history and again.epochs_run == 2
    # no state yet: resume starts from epoch 1
    fresh = _toy_pretrain(toy_split, tmp_path / "new.pt", epochs=10, patience=1, resume=True)
    assert fresh.epochs_run == 2 and (tmp_path / "new.pt").exists()


def test_resume_keeps_this_devices_optimizer_flags(toy_split, tmp_path, monkeypatch):
    state = tmp_path / "s.pt"
    _toy_pretrain(toy_split, state)
    saved = torch.load(state, weights_only=True)
    for group in saved["optimizer"]["param_groups"]:
        group["fused"] = True  # as a CUDA run writes it
    torch.save(saved, state)
    seen = []
    real_step = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        seen.append([g["fused"] for g in self.param_groups])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    _toy_pretrain(toy_split, state, epochs=2, resume=True)
    assert seen and all(flags == [False] * len(flags) for flags in seen)


def test_early_stopping_counts_ties_and_nan_as_no_improvement():
    """EarlyStopping.update keeps the best weights only on a strictly better, real score."""
    from raserec_adapter.training.state import EarlyStopping

    module = torch.nn.Linear(2, 1)
    stop = EarlyStopping()
    assert stop.update(1, 0.5, {"m": 0.5}, module)
    best = {k: v.clone() for k, v in stop.best_state.items()}
    torch.nn.init.constant_(module.weight, 9.0)
    assert not stop.update(2, 0.5, {"m": 0.5}, module)  # a tie
    assert not stop.update(3, float("nan"), {"m": float("nan")}, module)
    assert (stop.bad_epochs, stop.best_score, stop.result.best_epoch) == (2, 0.5, 1)
    assert stop.result.epochs_run == 3
    assert all(torch.equal(best[k], stop.best_state[k]) for k in best)


def test_running_mean_matches_the_mean_and_keeps_no_step_alive() -> None:
    """The per-epoch loss mean holds one scalar, whatever the number of steps: a kept step
    tensor fragments the CPU heap (see benchmarks/memory_pretrain.py)."""
    gen = torch.Generator().manual_seed(0)
    values = torch.rand(7, generator=gen, dtype=torch.float64) * 10
    m = RunningMean(torch.device("cpu"))
    assert m.value() == 0.0  # no step yet
    for v in values:
        w = torch.tensor(float(v), requires_grad=True)
        m.add((w * 1.0).float())  # a graph-attached float32 scalar, as a training step has
    held = {k: v for k, v in vars(m).items() if not isinstance(v, (int, float))}
    assert list(held) == ["total"] and m.total.numel() == 1 and not m.total.requires_grad
    assert m.value() == pytest.approx(float(values.float().double().mean()), rel=1e-12)
