"""A user's own DataLoaders: the split they describe, and every stage fed from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raserec_adapter import RAFTConfig, Sequences, leave_one_out
from raserec_adapter.data import iter_batches
from raserec_adapter.data.from_batches import map_batches, split_from_batches


class _Rows(torch.utils.data.Dataset):
    """One dict per prefix of a prefix set, under a user's own field names."""

    def __init__(self, split, prefixes, max_len: int, prefix_lengths: bool = True) -> None:
        self.split, self.prefixes, self.max_len = split, prefixes, max_len
        self.prefix_lengths = prefix_lengths

    def __len__(self) -> int:
        return len(self.prefixes)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        user, n = int(self.prefixes.users[i]), int(self.prefixes.lengths[i])
        items = self.split.sequences[user][:n][-self.max_len :]
        seq = torch.zeros(self.max_len, dtype=torch.long)
        seq[: len(items)] = torch.from_numpy(items)
        row = {"history": seq, "n": torch.tensor(len(items)), "uid": torch.tensor(user),
               "next": torch.tensor(int(self.prefixes.targets[i]))}  # fmt: skip
        if self.prefix_lengths:
            row["full"] = torch.tensor(n)
        return row


NAMES = {"item_seq": "history", "lengths": "n", "targets": "next", "users": "uid"}
NAMES_FULL = {**NAMES, "prefix_lengths": "full"}


def _loader(split, which: str, max_len: int, shuffle: bool = False, **kw):
    prefixes = getattr(split, which)
    rows = _Rows(split, prefixes, max_len, **kw)
    loader = torch.utils.data.DataLoader(
        rows,
        batch_size=16,
        shuffle=shuffle and len(rows) > 0,
        generator=torch.Generator().manual_seed(0),
    )
    return map_batches(loader, NAMES_FULL if rows.prefix_lengths else NAMES)


def _same_prefixes(a, b) -> bool:
    ia, ib = np.lexsort((a.lengths, a.users)), np.lexsort((b.lengths, b.users))
    return all(
        np.array_equal(getattr(a, f)[ia], getattr(b, f)[ib])
        for f in ("users", "lengths", "targets")
    )


@settings(max_examples=40, deadline=None)
@given(
    lists=st.lists(st.lists(st.integers(1, 9), min_size=3, max_size=14), min_size=1, max_size=6),
    max_len=st.integers(1, 6),
    shuffle=st.booleans(),
)
def test_the_rows_of_a_split_give_that_split_back(lists, max_len, shuffle):
    split = leave_one_out(Sequences.from_lists(lists, num_items=9), max_len=max_len)
    got = split_from_batches(
        _loader(split, "train", max_len, shuffle),
        _loader(split, "valid", max_len, shuffle),
        _loader(split, "test", max_len, shuffle),
        max_len=max_len,
        num_items=9,
    )
    assert np.array_equal(got.sequences.items, split.sequences.items)
    assert np.array_equal(got.sequences.offsets, split.sequences.offsets)
    assert got.sequences.num_items == 9 and got.max_len == max_len
    for which in ("train", "valid", "test"):
        assert _same_prefixes(getattr(got, which), getattr(split, which))
    for field in ("users", "lengths", "targets"):  # in leave_one_out's order, however given
        assert np.array_equal(getattr(got.train, field), getattr(split.train, field))


def test_user_ids_become_rows_and_stay_as_labels():
    rows = [((np.array([[4, 0], [4, 5]]), [1, 2], [5, 6], [70, 70], [1, 2]))]
    valid = [(np.array([[4, 5, 6]]), [3], [7], [70], [3])]
    other = [(np.array([[2]]), [1], [3], [9], [1])]
    split = split_from_batches(
        [tuple(map(torch.as_tensor, r)) for r in rows + other],
        [tuple(map(torch.as_tensor, r)) for r in [*valid, (np.array([[2, 3]]), [2], [8], [9])]],
    )
    assert split.sequences.user_labels.tolist() == ["9", "70"]
    assert split.sequences[1].tolist() == [4, 5, 6, 7] and split.sequences[0].tolist() == [2, 3, 8]
    assert split.valid.users.tolist() == [0, 1] and len(split.test) == 0


def _rows(*rows):
    return [tuple(torch.as_tensor(np.asarray(c)) for c in r) for r in rows]


def test_rows_that_do_not_describe_one_sequence_per_user_are_refused():
    valid = _rows(([[1, 2, 3]], [3], [4], [0], [3]))
    clash = _rows(([[1, 0]], [1], [2], [0], [1]), ([[1, 5]], [2], [3], [0], [2]))
    with pytest.raises(ValueError, match="user 0 disagree on the item at position 1 .* prefix_len"):
        split_from_batches(clash, valid)
    gap = _rows(([[1, 0]], [1], [2], [0], [1]))
    with pytest.raises(ValueError, match="no row covers position 2 of user 0"):
        split_from_batches(gap, _rows(([[4]], [1], [5], [0], [4])))
    # inputs cut to the last item without prefix lengths: the rows no longer line up
    cut = _rows(([[1]], [1], [2], [0]), ([[2]], [1], [3], [0]))
    with pytest.raises(ValueError, match="disagree|no row covers"):
        split_from_batches(cut, _rows(([[3]], [1], [4], [0])))
    twice = valid + _rows(([[1, 2]], [2], [3], [0], [2]))
    with pytest.raises(ValueError, match="exactly one row per user; user 0 has 2"):
        split_from_batches(
            _rows(([[1, 0]], [1], [2], [0], [1]), ([[1, 2]], [2], [3], [0], [2])), twice
        )
    three = _rows(([[1, 0]], [1], [2], [0], [1]), ([[1, 2]], [2], [3], [0], [2]))
    four = _rows(([[1, 2, 3]], [3], [4], [0], [3]))
    with pytest.raises(ValueError, match="user 0's prefix of length 2 is missing"):
        split_from_batches(three[:1], four)
    with pytest.raises(ValueError, match="prefix of length 2 appears more than once"):
        split_from_batches(three + three[1:], four)
    with pytest.raises(ValueError, match="prefix of length 3 reaches into the validation"):
        split_from_batches(three + four, four, _rows(([[1, 2, 3, 4]], [4], [5], [0], [4])))
    with pytest.raises(ValueError, match="the valid row of user 0 has prefix length 2"):
        split_from_batches(three[:1], three[1:], _rows(([[1, 2, 3, 4]], [4], [5], [0], [4])))
    with pytest.raises(ValueError, match="target 0"):
        split_from_batches(_rows(([[1]], [1], [0], [0], [1])), valid)
    with pytest.raises(ValueError, match="left-aligned"):
        split_from_batches(_rows(([[0, 1]], [1], [2], [0], [1])), valid)
    with pytest.raises(ValueError, match="valid gave no rows"):
        split_from_batches(clash, [])


def test_the_mapping_names_fields_and_says_what_is_missing():
    rows = [{"history": torch.tensor([[1, 2]]), "n": torch.tensor([2]),
             "next": torch.tensor([3]), "uid": torch.tensor([0])}]  # fmt: skip
    (b,) = list(map_batches(rows, NAMES))
    assert b.item_seq.tolist() == [[1, 2]] and b.users.tolist() == [0]
    (c,) = list(map_batches(rows, convert=lambda r: (r["history"], r["n"], r["next"], r["uid"])))
    assert c.targets.tolist() == [3]
    with pytest.raises(ValueError, match=r"none of \['uid', 'users', 'user_id'\] \(for users\)"):
        list(map_batches([{k: v for k, v in rows[0].items() if k != "uid"}], NAMES))
    with pytest.raises(ValueError, match=r"unknown Batch fields \['item'\]"):
        list(map_batches(rows, {"item": "history"}))
    with pytest.raises(ValueError, match="fields or convert, not both"):
        map_batches(rows, NAMES, convert=lambda r: r)
    with pytest.raises(TypeError, match="iterable of batches"):
        map_batches(rows[0])


def test_every_stage_runs_from_the_users_loaders_as_from_the_split():
    from conftest import pretrained_sasrec, small_augmenter

    model, split = pretrained_sasrec(60, 20, seed=2, epochs=1, max_len=8)
    cfg = RAFTConfig(epochs=2, batch_size=64, fallback=False)
    ref = small_augmenter(model, max_len=8, k=4)
    ref.build_bank(split, show_progress=False)
    aug = small_augmenter(model, max_len=8, k=4)
    aug.build_bank(_loader(split, "train", 8), show_progress=False)
    # a DataLoader of dicts builds the same bank as the split: the same keys under the same ids
    ids = torch.arange(len(ref.bank))
    for got, want in zip(aug.bank.fetch(ids), ref.bank.fetch(ids), strict=True):
        assert torch.equal(got, want)
    ref.reset_ram(seed=0)
    aug.reset_ram(seed=0)
    ref_result = ref.fit_raft(split, cfg, show_progress=False)
    result = aug.fit_raft(_loader(split, "train", 8), cfg, valid=_loader(split, "valid", 8))
    assert result.best_epoch == ref_result.best_epoch
    for (name, p), q in zip(
        aug.ram.state_dict().items(), ref.ram.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(p, q, msg=name)
    for which in ("valid", "test"):
        want = ref.ranks(split, which)
        got = aug.ranks(_loader(split, which, 8), which)
        for variant in ("plain", "raserec"):
            assert torch.equal(got[variant], want[variant]), (which, variant)
    metrics = aug.evaluate(_loader(split, "test", 8), "test", show_progress=False)
    assert metrics == ref.evaluate(split, "test", show_progress=False)


def test_seen_removed_on_batches_removes_the_inputs_items():
    from conftest import pretrained_sasrec, small_augmenter

    model, split = pretrained_sasrec(40, 15, seed=3, epochs=1, max_len=50)
    aug = small_augmenter(model, max_len=50, k=3)
    aug.build_bank(split, show_progress=False)
    # histories shorter than max_len: the input is the whole history, as the split ranks it
    want = aug.ranks(split, "test", protocol="seen_removed", augmented=False)["plain"]
    got = aug.ranks(_loader(split, "test", 50), "test", protocol="seen_removed", augmented=False)
    assert torch.equal(got["plain"], want)


def test_wrong_uses_of_the_batch_paths_say_what_to_do():
    from conftest import pretrained_sasrec, small_augmenter

    model, split = pretrained_sasrec(30, 12, seed=4, epochs=1, max_len=8)
    aug = small_augmenter(model, max_len=8, k=2)
    with pytest.raises(TypeError, match=r"needs their validation batches too: fit_raft\(train"):
        aug.fit_raft(_loader(split, "train", 8))
    with pytest.raises(TypeError, match="takes valid= only with the user's own training batches"):
        aug.fit_raft(split, valid=_loader(split, "valid", 8))
    with pytest.raises(TypeError, match="takes a LeaveOneOutSplit, got the Sequences"):
        aug.evaluate(split.sequences)
    with pytest.raises(TypeError, match="batches carry their own"):
        aug.ranks(_loader(split, "test", 8), inputs=split.sequences)
    batches = list(iter_batches(split.sequences, split.test, 8, max_len=8))
    big = _rows(([[99]], [1], [3], [0], [1]))
    with pytest.raises(ValueError, match="item"):
        aug.evaluate(big, augmented=False, show_progress=False)
    got = aug.evaluate(batches, augmented=False, show_progress=False)
    want = aug.evaluate(split, "test", augmented=False, show_progress=False)
    assert got["plain"] == pytest.approx(want["plain"], abs=1e-12)  # rows in another order
