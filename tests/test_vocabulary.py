"""Shared vocabularies: data renumbered into the ids of an encoder trained elsewhere."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raserec_adapter import (
    AugmenterConfig,
    DataFormatError,
    RAMConfig,
    RetrievalAugmenter,
    Sequences,
    leave_one_out,
    load_dataset,
)
from raserec_adapter.data import read_interactions
from raserec_adapter.data.vocabulary import apply_vocabulary, vocabulary_ids

ROWS = [("u1", "i30", 3), ("u1", "i10", 1), ("u2", "i30", 1), ("u2", "i20", 2), ("u3", "i10", 5)]
ROWS += [("u3", "i20", 4), ("u3", "i40", 6), ("u1", "i40", 2)]


def _write(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    lines += [f"{u}\t{i}\t{t}" for u, i, t in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _tokens(seqs: Sequences, row: int) -> list[str]:
    return seqs.labels_of(seqs[row]).tolist() if len(seqs[row]) else []


def test_shuffled_rows_line_up_with_the_first_reads_vocabulary(tmp_path):
    """The file's rows shuffled (RecBole accepts that): read alone, the ids change; read with
    the vocabulary of the first read, every user gets the same ids as before."""
    first = read_interactions(_write(tmp_path / "a.inter", ROWS))
    shuffled = list(ROWS)
    random.Random(0).shuffle(shuffled)
    path = _write(tmp_path / "b.inter", shuffled)
    alone = read_interactions(path)
    assert alone.item_labels.tolist() != first.item_labels.tolist()  # the naive path
    items = ["[PAD]", *first.item_labels.tolist()]  # the encoder's id order
    users = {"[PAD]": 0, **{u: i + 1 for i, u in enumerate(first.user_labels.tolist())}}
    shared = read_interactions(path, item_vocab=items, user_vocab=users)
    assert shared.num_items == first.num_items and shared.num_users == first.num_users + 1
    assert len(shared[0]) == 0  # RecBole's padding user
    for u in range(first.num_users):
        assert shared[u + 1].tolist() == first[u].tolist()
        assert shared.user_labels[u + 1] == first.user_labels[u]
    assert (
        load_dataset(path, item_vocab=items)[0].tolist() == alone.with_vocabulary(items)[0].tolist()
    )


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_a_vocabulary_keeps_every_users_tokens_in_order(data):
    n = data.draw(st.integers(1, 12))
    lists = data.draw(st.lists(st.lists(st.integers(1, n), max_size=6), min_size=1, max_size=8))
    labels = [f"t{i}" for i in range(n)]
    seqs = Sequences.from_lists(lists, num_items=n, item_labels=labels)
    extra = data.draw(st.integers(0, 3))  # the encoder knows items the data never shows
    order = data.draw(st.permutations([*labels, *(f"new{i}" for i in range(extra))]))
    form = data.draw(st.sampled_from(["list", "mapping"]))
    vocab = ["[PAD]", *order] if form == "list" else {t: i + 1 for i, t in enumerate(order)}
    shared = seqs.with_vocabulary(vocab)
    assert shared.num_items == n + extra
    for u in range(seqs.num_users):
        assert _tokens(shared, u) == _tokens(seqs, u)
        assert all(order[i - 1] == t for i, t in zip(shared[u], _tokens(seqs, u), strict=True))


def test_unknown_tokens_are_refused_or_dropped_when_asked(tmp_path, caplog):
    seqs = Sequences.from_lists([[1, 2, 3], [3, 3]], item_labels=["a", "b", "c"])
    with pytest.raises(
        DataFormatError, match=r"1 item tokens .* not in the given item vocab.*\['c'\]"
    ):
        seqs.with_vocabulary(["[PAD]", "a", "b"])
    dropped = seqs.with_vocabulary(["[PAD]", "b", "a"], unknown="drop")
    assert dropped[0].tolist() == [2, 1] and dropped[1].tolist() == []
    users = Sequences.from_lists([[1], [2]], user_labels=["x", "y"], item_labels=["a", "b"])
    with pytest.raises(DataFormatError, match="user tokens"):
        users.with_vocabulary(users=["[PAD]", "x"])
    kept = users.with_vocabulary(users=["[PAD]", "x"], unknown="drop")
    assert kept.num_users == 2 and kept[1].tolist() == [1]
    with pytest.raises(ValueError, match="'error' or 'drop'"):
        seqs.with_vocabulary(["[PAD]", "a", "b", "c"], unknown="skip")
    with pytest.raises(ValueError, match="'error' or 'drop'"):
        read_interactions(_write(tmp_path / "c.inter", ROWS), unknown="skip")


def test_malformed_vocabularies_say_what_is_wrong():
    seqs = Sequences.from_lists([[1]], user_labels=["x"], item_labels=["a"])
    cases = [
        ({"a": 1, "b": 1}, "gives id 1 to both 'a' and 'b'"),
        (["[PAD]", "a", "a"], "lists 'a' twice"),
        ({"a": 1.0}, "ids must be integers"),
        ({"a": -1}, "ids must be integers"),
        ({"a": True}, "ids must be integers"),
        (["[PAD]"], "no token with an id >= 1"),
        ("abc", "mapping or the tokens in id order"),
    ]
    for vocab, message in cases:
        with pytest.raises(DataFormatError, match=message):
            seqs.with_vocabulary(vocab)
    with pytest.raises(ValueError, match="no item_labels"):
        Sequences.from_lists([[1]]).with_vocabulary(["[PAD]", "a"])
    with pytest.raises(ValueError, match="no user_labels"):
        Sequences.from_lists([[1]], item_labels=["a"]).with_vocabulary(users=["[PAD]", "x"])
    assert vocabulary_ids(np.array(["[PAD]", "a"])) == ({"a": 1}, 1)
    same = apply_vocabulary(seqs)  # no vocabulary: the sequences as they are
    assert same.items.tolist() == [1] and same.item_labels.tolist() == ["a"]


class _RecBoleLike(torch.nn.Module):
    """RecBole's SequentialRecommender contract: ``max_seq_length``, a position table,
    ``item_embedding`` and ``forward(item_seq, item_seq_len)``."""

    def __init__(self, num_items: int = 10, with_attribute: bool = True) -> None:
        super().__init__()
        if with_attribute:
            self.max_seq_length = 50
        self.position_embedding = torch.nn.Embedding(50, 8)
        self.item_embedding = torch.nn.Embedding(num_items + 1, 8, padding_idx=0)

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        return self.item_embedding(item_seq).mean(1)


@pytest.mark.parametrize("with_attribute", [True, False])
def test_a_longer_max_len_than_the_models_is_refused_by_its_own_name(with_attribute):
    where = "max_seq_length" if with_attribute else "position_embedding.num_embeddings"
    with pytest.raises(ValueError, match=rf"max_len = 60 but _RecBoleLike.{where} = 50"):
        RetrievalAugmenter(_RecBoleLike(with_attribute=with_attribute), AugmenterConfig(max_len=60))
    RetrievalAugmenter(_RecBoleLike(with_attribute=with_attribute), AugmenterConfig(max_len=50))


def test_item_counts_that_differ_from_the_table_point_at_the_vocabulary(caplog):
    rows = [[1, 2, 3, 4], [2, 3, 4, 1], [3, 4, 1, 2]]
    split = leave_one_out(Sequences.from_lists(rows), max_len=50)
    small = RetrievalAugmenter(_RecBoleLike(num_items=3), AugmenterConfig(ram=RAMConfig(k=2)))
    with pytest.raises(
        ValueError,
        match=r"covers items 1..3 but the data has items up to 4; .*item_vocab=.*"
        r"for a new, untrained model build it with num_items=4",
    ):
        small.build_bank(split, show_progress=False)
    big = RetrievalAugmenter(_RecBoleLike(num_items=97), AugmenterConfig(ram=RAMConfig(k=2)))
    with caplog.at_level(logging.WARNING, logger="raserec_adapter"):
        big.evaluate(split, "test", augmented=False, show_progress=False)
        big.evaluate(split, "test", augmented=False, show_progress=False)
    said = [
        r
        for r in caplog.records
        if "numbers 4 items but the encoder's item table covers 1..97" in r.message
    ]
    assert len(said) == 1 and "item_vocab" in said[0].message  # once, with the fix


class _Rows(torch.utils.data.Dataset):
    """A user's own dataset: one dict per training pair, with RecBole's field names."""

    def __init__(self, split, max_len: int) -> None:
        self.split, self.max_len = split, max_len

    def __len__(self) -> int:
        return len(self.split.train)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        train, seqs = self.split.train, self.split.sequences
        user, n = int(train.users[i]), int(train.lengths[i])
        prefix = seqs[user][:n][-self.max_len :]
        seq = torch.zeros(self.max_len, dtype=torch.long)
        seq[: len(prefix)] = torch.from_numpy(prefix)
        return {"item_id_list": seq, "item_length": torch.tensor(len(prefix)),
                "item_id": torch.tensor(int(train.targets[i])), "user_id": torch.tensor(user),
                "prefix_length": torch.tensor(n)}  # fmt: skip


@pytest.mark.parametrize("with_prefix_lengths", [True, False])
def test_a_users_dataloader_feeds_build_bank(with_prefix_lengths):
    from conftest import pretrained_sasrec, small_augmenter

    model, split = pretrained_sasrec(60, 20, seed=2, epochs=1, max_len=8)
    reference = small_augmenter(model, max_len=8, k=4)
    reference.build_bank(split, show_progress=False)
    rows = _Rows(split, 8)
    loader = torch.utils.data.DataLoader(rows, batch_size=32, shuffle=True)

    def batches():
        for b in loader:
            if not with_prefix_lengths:
                b.pop("prefix_length")
            yield b

    aug = small_augmenter(model, max_len=8, k=4)
    aug.build_bank(batches(), show_progress=False)
    assert len(aug.bank) == len(reference.bank) == len(split.train)
    h = reference.encode(split.sequences, split.test)
    users, lengths = torch.from_numpy(split.test.users), torch.from_numpy(split.test.lengths)
    got = aug.bank.search(h, 4, users, lengths)
    want = reference.bank.search(h, 4, users, lengths)
    keys_got, _ = aug.bank.fetch(got.ids)
    keys_want, _ = reference.bank.fetch(want.ids)
    torch.testing.assert_close(keys_got, keys_want)  # the same memories, in another order
    if with_prefix_lengths:  # the rule reads the full prefix lengths: the same exclusions
        store = aug.bank._store
        assert (
            (store.users[got.ids] != users[:, None]) | (store.lengths[got.ids] < lengths[:, None])
        ).all()


def test_batches_that_cannot_be_read_say_what_is_expected():
    from raserec_adapter.data.loaders import as_batch

    good = {"item_seq": torch.tensor([[1, 2]]), "lengths": torch.tensor([2]),
            "targets": torch.tensor([3]), "users": torch.tensor([0])}  # fmt: skip
    assert as_batch(tuple(good.values())).prefix_lengths.tolist() == [2]
    with pytest.raises(ValueError, match=r"none of \['users', 'user_id'\]"):
        as_batch({k: v for k, v in good.items() if k != "users"})
    with pytest.raises(ValueError, match=r"targets must be \(1,\)"):
        as_batch({**good, "targets": torch.tensor([3, 4])})
    with pytest.raises(TypeError, match="integer ids"):
        as_batch({**good, "item_seq": torch.tensor([[1.0, 2.0]])})
    with pytest.raises(TypeError, match="an iterable of str .* cannot be read as a batch"):
        as_batch("item_seq")
