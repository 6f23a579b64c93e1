from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raserec_adapter.data import DataFormatError, Sequences, leave_one_out
from raserec_adapter.data.batching import (
    causal_windows,
    iter_batches,
    iter_windows,
    window_pair_index,
)

lists = st.lists(st.lists(st.integers(1, 9), min_size=3, max_size=20), min_size=1, max_size=12)


def reference_split(seqs: list[list[int]], max_len: int):
    """Independent reference: the leave-one-out protocol written out with Python lists."""
    train, valid, test = [], [], []
    for u, s in enumerate(seqs):
        part = s[:-2]
        for n in range(1, len(part)):
            train.append((u, part[:n][-max_len:], part[n]))
        valid.append((u, part[-max_len:], s[-2]))
        test.append((u, s[:-1][-max_len:], s[-1]))
    return train, valid, test


def rows_of(seqs: Sequences, prefixes, max_len: int):
    out = {}
    for b in iter_batches(seqs, prefixes, batch_size=3, max_len=max_len):
        for i, row, n, t in zip(b.index, b.item_seq, b.lengths, b.targets, strict=True):
            assert (row[n:] == 0).all()  # zero padding after the items
            out[int(i)] = (int(prefixes.users[i]), row[:n].tolist(), int(t))
    return [out[i] for i in range(len(prefixes))]


@settings(max_examples=60, deadline=None)
@given(lists, st.integers(1, 6))
def test_leave_one_out_matches_reference(seqs, max_len):
    s = Sequences.from_lists(seqs, num_items=9)
    split = leave_one_out(s, max_len=max_len)
    train, valid, test = reference_split(seqs, max_len)
    assert rows_of(s, split.train, max_len) == train
    assert rows_of(s, split.valid, max_len) == valid
    assert rows_of(s, split.test, max_len) == test


@settings(max_examples=60, deadline=None)
@given(lists, st.integers(1, 6))
def test_causal_windows_cover_each_training_pair_once(seqs, max_len):
    s = Sequences.from_lists(seqs, num_items=9)
    split = leave_one_out(s, max_len=max_len)
    w = causal_windows(split)
    assert w.num_pairs == len(split.train)
    seen = []
    for b in iter_windows(s, w, batch_size=4, shuffle=True, seed=1):
        take = b.targets > 0
        pos = take.nonzero().numpy()
        rows = window_pair_index(w, b.index.numpy()[pos[:, 0]], pos[:, 1])
        for (r, p), pair in zip(pos, rows, strict=True):
            # the window up to position p is exactly the (truncated) prefix of that pair
            u, n = split.train.users[pair], split.train.lengths[pair]
            expect = list(s[u][:n][-max_len:])
            assert b.item_seq[r, : p + 1].tolist() == expect
            assert int(b.targets[r, p]) == split.train.targets[pair]
            if n > max_len:
                assert p == max_len - 1  # long prefixes get a window of their own
        seen.extend(rows.tolist())
    assert sorted(seen) == list(range(len(split.train)))


def test_counts_on_hand_example():
    s = Sequences.from_lists([[1, 2, 3, 4], [2, 3, 1, 4, 5]])
    split = leave_one_out(s)
    assert split.train.lengths.tolist() == [1, 1, 2]
    assert split.valid.targets.tolist() == [3, 4]
    assert split.test.lengths.tolist() == [3, 4]
    assert len(split.bank_pairs("test")) == 5


def test_batches_are_trimmed_and_bucketed():
    s = Sequences.from_lists([[1] * 3, [2] * 40, [1] * 4, [2] * 41])
    split = leave_one_out(s)
    widths = [b.item_seq.shape[1] for b in iter_batches(s, split.test, batch_size=2)]
    assert widths == [3, 40]  # short with short, long with long, no padding to 50


def test_shuffled_batches_are_seeded():
    s = Sequences.from_lists([[1, 2, 3, 4, 5]] * 50)
    split = leave_one_out(s)
    a = [b.index.tolist() for b in iter_batches(s, split.train, 8, shuffle=True, seed=3)]
    b = [b.index.tolist() for b in iter_batches(s, split.train, 8, shuffle=True, seed=3)]
    c = [b.index.tolist() for b in iter_batches(s, split.train, 8, shuffle=True, seed=4)]
    assert a == b and a != c
    assert sorted(i for rows in a for i in rows) == list(range(len(split.train)))


def test_unbucketed_batches_are_uniform_draws():
    """``bucket=False``: a seeded permutation cut into batches (lengths mixed, each pair once)."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(4, 30, 60)
    s = Sequences.from_lists([list(rng.integers(1, 9, size=int(n))) for n in lengths])
    split = leave_one_out(s)
    n = len(split.train)
    batches = list(iter_batches(s, split.train, 16, shuffle=True, seed=5, bucket=False))
    perm = np.random.default_rng(5).permutation(n)  # the reference draw
    assert [b.index.tolist() for b in batches] == [
        perm[i : i + 16].tolist() for i in range(0, n, 16)
    ]
    for b in batches:  # padded to the longest of the batch, every row's items intact
        assert b.item_seq.shape[1] == int(b.lengths.max())
        for row, m, i in zip(b.item_seq, b.lengths, b.index, strict=True):
            u, length = split.train.users[i], split.train.lengths[i]
            start = s.offsets[u] + length - int(m)
            assert row[:m].tolist() == s.items[start : s.offsets[u] + length].tolist()
            assert (row[m:] == 0).all()
    spread = np.mean([float(b.lengths.max() - b.lengths.min()) for b in batches])
    bucketed = list(iter_batches(s, split.train, 16, shuffle=True, seed=5))
    assert spread > 2 * np.mean([float(b.lengths.max() - b.lengths.min()) for b in bucketed])


def test_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(DataFormatError, match="0 is reserved for padding"):
        Sequences.from_lists([[0, 1, 2]], num_items=2)
    with pytest.raises(DataFormatError, match="fewer than 3 items"):
        leave_one_out(Sequences.from_lists([[1, 2], [1, 2, 3]]))
    with pytest.raises(DataFormatError, match="offsets"):
        Sequences(np.array([1, 2]), np.array([0, 3]), 2)
    bad = tmp_path / "x.npz"
    np.savez(bad, items=np.array([1]))
    with pytest.raises(DataFormatError, match="missing"):
        Sequences.load(bad)


def test_save_load_roundtrip(tmp_path):
    s = Sequences.from_lists(
        [[1, 2, 3], [3, 1]], user_labels=["a", "b"], item_labels=["x", "y", "z"]
    )
    s.save(tmp_path / "d.npz")
    r = Sequences.load(tmp_path / "d.npz")
    assert r.items.tolist() == s.items.tolist() and r.offsets.tolist() == s.offsets.tolist()
    assert r.user_labels.tolist() == ["a", "b"] and r.item_labels.tolist() == ["x", "y", "z"]


def test_batch_carries_no_leakage_metadata():
    s = Sequences.from_lists([[1, 2, 3, 4, 5, 6]])
    split = leave_one_out(s, max_len=2)
    b = next(iter_batches(s, split.test, 4, max_len=2))
    assert b.lengths.tolist() == [2] and b.prefix_lengths.tolist() == [5]
    assert b.users.tolist() == [0] and torch.equal(b.item_seq, torch.tensor([[4, 5]]))


@pytest.mark.parametrize(
    ("sequences", "words"),
    [
        ([[1.7, 2.2, 3.9]], ["user 0, position 0", "1.7", "float"]),
        ([[1, 2], [3, 2.0]], ["user 1, position 1", "2.0"]),
        ([[1, True]], ["user 0, position 1", "True", "bool"]),
        ([[1, "2"]], ["'2'", "str"]),
        (np.array([[1.7, 2.2, 3.9]]), ["user 0, position 0", "1.7", "float64"]),
        ([np.array([1, 2]), np.array([1.0, 2.0])], ["user 1, position 0", "float64"]),
        ([np.array([True, False])], ["user 0, position 0", "bool"]),
    ],
    ids=["floats", "whole-float", "bool", "str", "float-array", "float-row", "bool-row"],
)
def test_from_lists_refuses_non_integer_ids(sequences, words):
    with pytest.raises(DataFormatError) as err:
        Sequences.from_lists(sequences)
    msg = str(err.value)
    assert "must be integers" in msg
    for word in words:
        assert word in msg


def test_from_lists_accepts_numpy_integers():
    s = Sequences.from_lists([[np.int32(1), np.uint8(2)], np.array([3, 1], dtype=np.int16)])
    assert s.items.dtype == np.int64 and s.items.tolist() == [1, 2, 3, 1]
    assert Sequences.from_lists(np.array([[1, 2], [2, 1]])).items.tolist() == [1, 2, 2, 1]


def test_constructor_refuses_float_arrays():
    with pytest.raises(DataFormatError, match="integer"):
        Sequences(np.array([1.5, 2.0]), np.array([0, 2]), 2)
    with pytest.raises(DataFormatError, match="integer"):
        Sequences(np.array([1, 2]), np.array([0.0, 2.0]), 2)


def write_bad_file(path, kind):
    """A file that ``Sequences.load`` must refuse (``path`` or, for ``npy``, a ``.npy`` file)."""
    items, num_items = np.array([1, 2]), np.array(2)
    if kind == "text":
        path.write_text("1 2 3\n")
        return path
    if kind == "npy":
        np.save(path.with_suffix(".npy"), items)
        return path.with_suffix(".npy")
    if kind == "float-items":
        items = np.array([1.7, 2.2])
    elif kind == "object-items":
        items = items.astype(object)
    elif kind == "float-num-items":
        num_items = np.array(2.5)
    np.savez(path, items=items, offsets=np.array([0, 2]), num_items=num_items)
    return path


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("text", ["not a Sequences file", "Sequences.save"]),
        ("npy", ["not a Sequences file", "Sequences.save"]),
        ("float-items", ["'items'", "float64", "integer"]),
        ("object-items", ["'items'", "object", "Sequences.save"]),
        ("float-num-items", ["'num_items'", "integer"]),
    ],
)
def test_load_refuses_other_files(tmp_path, kind, words):
    path = write_bad_file(tmp_path / "bad.npz", kind)
    with pytest.raises(DataFormatError) as err:
        Sequences.load(path)
    msg = str(err.value)
    assert str(path) in msg and "pickle" not in msg
    for word in words:
        assert word in msg
