"""User-facing errors that the other test files do not reach: each says what is wrong and how to
fix it, and a refused load leaves the checkpoint on disk as it was."""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import pretrained_sasrec, small_augmenter

from raserec_adapter import (
    CheckpointError,
    DataFormatError,
    EncoderError,
    PretrainConfig,
    RAFTConfig,
    RetrievalAugmenter,
    Sequences,
    TorchMemoryBank,
    _atomic,
    leave_one_out,
    wrap_encoder,
)
from raserec_adapter.data import PrefixSet, iter_batches
from raserec_adapter.models import SASRec
from raserec_adapter.training import pretrain
from raserec_adapter.training.pretraining import evaluate_encoder

MAX_LEN = 8


@pytest.fixture(scope="module")
def trained():
    return pretrained_sasrec(60, 20, seed=3, epochs=1, max_len=MAX_LEN)


def make(model, **ram) -> RetrievalAugmenter:
    return small_augmenter(model, max_len=MAX_LEN, k=3, **ram)


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ram_weights_of_another_ram_config_are_refused(trained, tmp_path):
    model, split = trained
    aug, other = make(model), make(model, layers=1)
    for a, name in ((aug, "ck"), (other, "one-layer")):
        a.build_bank(split, show_progress=False)
        a.save(tmp_path / name)
    shutil.copy(tmp_path / "one-layer" / "ram.pt", tmp_path / "ck" / "ram.pt")
    before = _snapshot(tmp_path / "ck")
    with pytest.raises(CheckpointError, match=r"ram.pt does not fit the RAM of this config"):
        RetrievalAugmenter.load(model, tmp_path / "ck")
    assert _snapshot(tmp_path / "ck") == before  # the refused load changed nothing on disk


def test_config_json_that_is_not_json_is_named(trained, tmp_path):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    aug.save(tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text('{"format_version": 1,')  # cut off
    with pytest.raises(CheckpointError, match=r"config.json is not valid JSON"):
        RetrievalAugmenter.load(model, tmp_path / "ck")


def test_encoder_outputs_of_the_wrong_kind_say_how_to_adapt(trained):
    model, _ = trained
    seq, lens = torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([3, 2])
    cases = [
        (lambda s, n: (model(s, n), None), r"returned tuple, expected a \(B, d\) tensor"),
        (lambda s, n: model(s, n)[:1], r"must return \(B, d\), got \(1, 16\)"),
        (lambda s, n: model(s, n)[:, :8], r"vectors of size 8 but the item table has size 16"),
    ]
    for encode, says in cases:
        with pytest.raises(EncoderError, match=says):
            wrap_encoder(model, encode=encode)(seq, lens)


def test_padded_tensors_that_do_not_fit_are_refused(trained):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    long = torch.ones(1, MAX_LEN + 1, dtype=torch.long)
    with pytest.raises(ValueError, match=f"more than max_len = {MAX_LEN}; pass lists"):
        aug.recommend(long, lengths=torch.tensor([MAX_LEN + 1]), k=3)
    with pytest.raises(ValueError, match=r"lengths must be 2 integers \(one per sequence\)"):
        aug.recommend(torch.ones(2, 3, dtype=torch.long), lengths=torch.tensor([3]), k=3)
    with pytest.raises(ValueError, match="lengths must be 1 integers"):
        aug.recommend(torch.ones(1, 3, dtype=torch.long), lengths=torch.tensor([2.0]), k=3)
    with pytest.raises(ValueError, match="lengths are only for a padded tensor"):
        aug.recommend([[1, 2, 3]], lengths=torch.tensor([2]), k=3)  # would be ignored


def test_memories_with_items_the_encoder_does_not_know_are_refused(trained):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    n = len(aug.bank)
    wide = Sequences.from_lists([[1, 2, 25]], num_items=25)
    with pytest.raises(ValueError, match=r"the sequences have 25 items, the encoder knows 20"):
        aug.add_memories(wide, users=[1000])
    with pytest.raises(ValueError, match="1..20"):
        aug.add_memories([[1, 2, 21]], users=[1000])
    assert len(aug.bank) == n  # nothing half-added


def test_models_that_do_not_fit_the_protocol_are_told_what_is_missing():
    class TableOfWrongKind(torch.nn.Module):
        item_embedding = torch.nn.Linear(4, 4)

        def forward(self, s, n):
            return torch.zeros(len(n), 4)

    with pytest.raises(EncoderError, match="item_embedding is a Linear, expected nn.Embedding"):
        wrap_encoder(TableOfWrongKind())

    class CausalWithoutAllPositions(SASRec):
        forward_all = None  # type: ignore[assignment]

    with pytest.raises(EncoderError, match="is_causal = True but has no forward_all"):
        wrap_encoder(CausalWithoutAllPositions(10, hidden_size=8))
    flat = torch.zeros(5)
    with pytest.raises(EncoderError, match=r"\(N \+ 1, d\) matrix .* got shape \(5,\)"):
        wrap_encoder(SASRec(10, hidden_size=8), item_weights=lambda: flat)


def test_bank_sources_and_phases_that_cannot_work_are_refused(trained):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    n = len(aug.bank)
    with pytest.raises(ValueError, match="phase must be 'train' or 'test', got 'valid'"):
        aug.build_bank(split, "valid", show_progress=False)
    batch = next(iter(iter_batches(split.sequences, split.train, 16, MAX_LEN)))
    no_users = dataclasses.replace(batch, users=None)
    with pytest.raises(ValueError, match="bank batches need users and prefix_lengths"):
        aug.build_bank([no_users], show_progress=False)
    with pytest.raises(ValueError, match="the memory bank is empty: the source gave no"):
        aug.build_bank([], show_progress=False)
    assert len(aug.bank) == n  # each refused build kept the bank it had
    with pytest.raises(ValueError, match="which must be 'valid' or 'test', got 'train'"):
        aug.ranks(split, "train")


def test_a_save_that_fails_while_moving_in_puts_the_old_checkpoint_back(
    trained, tmp_path, monkeypatch
):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    aug.save(tmp_path / "ck")
    before = _snapshot(tmp_path / "ck")
    monkeypatch.setattr(_atomic, "_use_exchange", False)  # the two renames (no renameat2)
    real = os.rename
    calls = {"n": 0}

    def third_fails(src, dst):  # bank in, old aside, new in (fails), old back
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("simulated failure")
        return real(src, dst)

    monkeypatch.setattr(os, "rename", third_fails)
    with pytest.raises(OSError, match="simulated failure"):
        aug.save(tmp_path / "ck")
    monkeypatch.undo()
    assert calls["n"] == 4  # bank in, aside, (failed) in, back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no stray copies
    assert _snapshot(tmp_path / "ck") == before
    RetrievalAugmenter.load(model, tmp_path / "ck")  # and it still loads


def test_ram_weights_with_nan_are_refused_at_load(trained, tmp_path):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    aug.save(tmp_path / "ck")
    state = torch.load(tmp_path / "ck" / "ram.pt", weights_only=True)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    torch.save(state, tmp_path / "ck" / "ram.pt")
    with pytest.raises(CheckpointError, match=rf"RAM weight '{name}' holds NaN"):
        RetrievalAugmenter.load(model, tmp_path / "ck")


def test_a_bank_of_another_size_is_refused_at_load(trained, tmp_path):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    aug.save(tmp_path / "ck")
    small = TorchMemoryBank(dim=8)
    small.add(
        torch.randn(4, 8), torch.randn(4, 8), torch.arange(4), torch.ones(4, dtype=torch.long)
    )
    shutil.rmtree(tmp_path / "ck" / "bank")
    small.save(tmp_path / "ck" / "bank")
    with pytest.raises(CheckpointError, match=r"memory bank .* cannot be read"):
        RetrievalAugmenter.load(model, tmp_path / "ck")


def test_recommend_refuses_nan_scores_instead_of_ranking_them_first(trained):
    model, split = trained
    broken = copy.deepcopy(model)
    aug = make(broken)
    aug.build_bank(split, show_progress=False)
    with torch.no_grad():
        broken.item_embedding.weight[7] = float("nan")
    for augmented in (False, True):
        with pytest.raises(ValueError, match="NaN or infinite values, from the encoder's item"):
            aug.recommend([[1, 2, 3]], k=3, augmented=augmented)


def test_loading_with_another_encoders_weights_warns(trained, tmp_path, caplog):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    aug.save(tmp_path / "ck")
    with caplog.at_level("WARNING", logger="raserec_adapter"):
        RetrievalAugmenter.load(copy.deepcopy(model), tmp_path / "ck")  # the same weights
    assert "item table differs" not in caplog.text
    other, _ = pretrained_sasrec(60, 20, seed=4, epochs=1, max_len=MAX_LEN)  # same shapes
    with caplog.at_level("WARNING", logger="raserec_adapter"):
        RetrievalAugmenter.load(other, tmp_path / "ck")
    assert "item table differs from this encoder's" in caplog.text
    with pytest.raises(CheckpointError, match="item table differs.*strict=True"):
        RetrievalAugmenter.load(other, tmp_path / "ck", strict=True)
    # the same weights pass the strict check, and the loaded augmenter scores as the saved one
    same = RetrievalAugmenter.load(copy.deepcopy(model), tmp_path / "ck", strict=True)
    aug.eval()
    torch.testing.assert_close(same.recommend([[1, 2, 3]], k=5), aug.recommend([[1, 2, 3]], k=5))


def test_recommend_names_the_ram_when_only_its_output_is_nan(trained):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    with torch.no_grad():
        next(aug.ram.parameters()).fill_(float("nan"))
    assert torch.isfinite(aug.recommend([[1, 2, 3]], k=3, augmented=False)[1]).all()
    with pytest.raises(ValueError, match=r"from the RAM's output h~"):
        aug.recommend([[1, 2, 3]], k=3, augmented=True)


def test_wrong_types_get_the_call_to_make_instead_of_an_attribute_error(trained, tmp_path):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    aug.save(tmp_path / "ck")
    with pytest.raises(TypeError, match=r"RetrievalAugmenter takes a AugmenterConfig, got dict"):
        RetrievalAugmenter(model, {"max_len": MAX_LEN})
    with pytest.raises(TypeError, match=r"RetrievalAugmenter.load takes a AugmenterConfig"):
        RetrievalAugmenter.load(model, tmp_path / "ck", {"max_len": MAX_LEN})
    with pytest.raises(TypeError, match=r"leave_one_out takes Sequences, got list.*from_lists"):
        leave_one_out([[1, 2, 3, 4]])
    with pytest.raises(TypeError, match=r"evaluate_encoder takes a LeaveOneOutSplit"):
        evaluate_encoder(model, split.sequences)
    for bad in (2.5, True, "8"):
        with pytest.raises(TypeError, match=r"max_len must be an int >= 1"):
            leave_one_out(split.sequences, max_len=bad)
        with pytest.raises(TypeError, match=r"batch_size must be an int >= 1"):
            next(iter_batches(split.sequences, split.test, batch_size=bad))
        with pytest.raises(TypeError, match=r"batch_size must be an int >= 1"):
            aug.encode(split.sequences, split.test, batch_size=bad)
    with pytest.raises(ValueError, match=r"batch_size must be >= 1, got 0"):
        next(iter_batches(split.sequences, split.test, batch_size=0))
    with pytest.raises(ValueError, match=r"max_len must be >= 1, got 0"):
        next(iter_batches(split.sequences, split.test, batch_size=4, max_len=0))
    with pytest.raises(ValueError, match=r"min_length .* must be >= 3, got 2"):
        leave_one_out(split.sequences, min_length=2)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available here"):
            evaluate_encoder(model, split, device="cuda")
        with pytest.raises(RuntimeError, match="CUDA is not available here"):
            TorchMemoryBank(model.item_embedding.weight.shape[1], device="cuda")


def test_recommend_flags_must_be_bools_and_users_are_checked_either_way(trained):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    for name in ("augmented", "exclude_seen"):
        for bad in ("no", "False", 0, None):
            with pytest.raises(TypeError, match=rf"{name} must be True or False, got"):
                aug.recommend([[1, 2, 3]], k=3, **{name: bad})
    ids, _ = aug.recommend([[1, 2, 3]], k=3, augmented=np.bool_(False))  # numpy bools are fine
    assert ids.shape == (1, 3)
    for augmented in (True, False):
        with pytest.raises(ValueError, match=r"users"):
            aug.recommend([[1, 2, 3]], k=3, augmented=augmented, users=[0, 1])  # 2 for 1 row


def test_a_max_len_longer_than_the_models_is_refused_before_any_work(trained):
    model, split = trained  # SASRec(max_len=MAX_LEN)
    long_split = leave_one_out(split.sequences, max_len=MAX_LEN + 2)
    fix = rf"SASRec.max_len = {MAX_LEN}: .*Use max_len={MAX_LEN}"
    with pytest.raises(ValueError, match=rf"AugmenterConfig.max_len = {MAX_LEN + 2} but {fix}"):
        small_augmenter(model, max_len=MAX_LEN + 2, k=3)
    with pytest.raises(ValueError, match=rf"the split's max_len = {MAX_LEN + 2} but {fix}"):
        evaluate_encoder(model, long_split)
    with pytest.raises(ValueError, match=rf"the split's max_len = {MAX_LEN + 2} but {fix}"):
        pretrain(model, long_split, PretrainConfig(epochs=1))
    assert set(evaluate_encoder(model, leave_one_out(split.sequences, max_len=MAX_LEN - 2)))


def test_recommend_takes_rows_as_tensors_arrays_or_a_generator(trained):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    rows = [[1, 2, 3], [4, 5]]
    want = aug.recommend(rows, k=3, exclude_seen=True)[0]
    for same in (
        [torch.tensor(r) for r in rows],
        [np.array(r) for r in rows],
        (r for r in rows),
        tuple(rows),
    ):
        assert torch.equal(aug.recommend(same, k=3, exclude_seen=True)[0], want)
    with pytest.raises(ValueError, match=r"item ids must be integers in 1..20 .* got \[1.5, 2.0\]"):
        aug.recommend([torch.tensor([1.5, 2.0])], k=3)
    with pytest.raises(ValueError, match="not one flat list of ids"):
        aug.recommend(list(torch.tensor([1, 2, 3])), k=3)  # 0-d tensors: one flat list
    with pytest.raises(TypeError, match="sequences must be lists of item ids .* got int"):
        aug.recommend(5, k=3)


def test_flat_lists_strings_and_empty_data_are_refused_by_name(trained):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    for bad in ("0", None, 1.0, True):
        with pytest.raises(TypeError, match=r"users must be bank user ids: an int or a list"):
            aug.remove_memories(bad)
    with pytest.raises(DataFormatError, match=r"not one flat list of ids \(element 0 is 1\)"):
        aug.add_memories([1, 2, 3], users=[0])
    with pytest.raises(DataFormatError, match=r"not one flat list of ids"):
        Sequences.from_lists([[1, 2], 3])
    with pytest.raises(DataFormatError, match=r"one list of item ids per user, .*got str"):
        Sequences.from_lists("123")
    assert Sequences.from_lists(iter([[1, 2], [3]])).lengths.tolist() == [2, 1]  # generators
    with pytest.raises(DataFormatError, match="hold no users"):
        leave_one_out(Sequences.from_lists([], num_items=5))
    empty = dataclasses.replace(split, test=split.test.subset(np.zeros(0, dtype=np.int64)))
    with pytest.raises(ValueError, match="the split has no test rows"):
        evaluate_encoder(model, empty, "test")


def test_the_users_encoder_keeps_its_train_and_eval_modes(trained):
    model, split = trained
    model.train()
    model.layers[0].eval()  # a mixed state, e.g. a frozen first block, is given back as it was
    modes = {name: m.training for name, m in model.named_modules()}
    aug = make(model)
    calls = (
        lambda: aug.build_bank(split, show_progress=False),
        lambda: aug.encode(split.sequences, split.valid),
        lambda: aug.fit_raft(split, RAFTConfig(epochs=1), show_progress=False),
        lambda: aug.evaluate(split, "test"),
        lambda: aug.recommend([[1, 2, 3]], k=3),
        lambda: aug.add_memories([[1, 2, 3, 4]], users=[10_000]),
    )
    for call in calls:
        call()
        assert {name: m.training for name, m in model.named_modules()} == modes
    with pytest.raises(ValueError):  # a failing call gives the modes back too
        aug.recommend([[0]], k=3)
    assert {name: m.training for name, m in model.named_modules()} == modes
    plain = aug.recommend([[1, 2, 3]], k=3, augmented=False)[0]
    model.eval()
    assert torch.equal(plain, aug.recommend([[1, 2, 3]], k=3, augmented=False)[0])  # dropout off


def test_inputs_on_another_device_than_the_encoder_say_how_to_move_it(trained):
    """``device=`` puts the batches there; an encoder left elsewhere gets the fix, not torch's
    index_select error from inside the embedding ("meta" stands in for a GPU on the CPU)."""
    model, split = trained
    aug = make(model)
    msg = r"inputs are on meta .* item table is on cpu: move the encoder there first"
    with pytest.raises(RuntimeError, match=msg):
        aug.build_bank(split, device="meta", show_progress=False)
    with pytest.raises(RuntimeError, match=msg):
        aug.encode(split.sequences, split.test, device="meta")
    enc = wrap_encoder(model)
    with pytest.raises(RuntimeError, match=r"lengths on meta"):
        enc(torch.ones(2, 3, dtype=torch.long), torch.ones(2, dtype=torch.long, device="meta"))
    aug.build_bank(split, show_progress=False)  # nothing was left half-built
    assert len(aug.bank) == len(split.train)


def test_prefixes_outside_their_users_sequence_are_refused():
    """A hand-built PrefixSet must not read another user's items or run off the data."""
    seqs = Sequences.from_lists([[1, 2, 3, 4], [5, 6, 7]])
    cases = [
        (
            PrefixSet(np.array([0]), np.array([5]), np.array([0])),
            r"5 items long but user 0 has only 4",
        ),
        (PrefixSet(np.array([1]), np.array([4]), np.array([0])), r"user 1 has only 3 items"),
        (
            PrefixSet(np.array([2]), np.array([1]), np.array([0])),
            r"refers to user 2.*users 0 \.\. 1",
        ),
        (PrefixSet(np.array([-1]), np.array([1]), np.array([0])), r"refers to user -1"),
        (PrefixSet(np.array([0]), np.array([0]), np.array([0])), r"at least one item"),
    ]
    for prefixes, message in cases:
        with pytest.raises(DataFormatError, match=message):
            next(iter_batches(seqs, prefixes, batch_size=4))
    # prefixes that fit are read from their own user only
    ok = PrefixSet(np.array([0, 1]), np.array([4, 3]), np.array([0, 0]))
    batch = next(iter_batches(seqs, ok, batch_size=4))
    assert sorted(batch.item_seq.tolist()) == [[1, 2, 3, 4], [5, 6, 7, 0]]


def test_a_prefix_set_with_ragged_or_non_integer_arrays_is_refused():
    with pytest.raises(DataFormatError, match=r"one entry per prefix, got 2, 1 and 2"):
        PrefixSet(np.array([0, 1]), np.array([2]), np.array([0, 0]))
    with pytest.raises(DataFormatError, match=r"lengths must hold integers, got dtype float64"):
        PrefixSet(np.array([0]), np.array([2.0]), np.array([0]))
    with pytest.raises(DataFormatError, match=r"users must be a 1-D numpy array, got list"):
        PrefixSet([0], np.array([2]), np.array([0]))
