from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import pretrained_sasrec, small_augmenter, synthetic_sequences

from raserec_adapter import (
    AugmenterConfig,
    BankConfig,
    CheckpointError,
    PretrainConfig,
    RAFTConfig,
    RAMConfig,
    RetrievalAugmenter,
    Sequences,
    leave_one_out,
)
from raserec_adapter.models import SASRec
from raserec_adapter.training import pretrain

MAX_LEN = 10


@pytest.fixture(scope="module")
def trained():
    return pretrained_sasrec(120, 30, seed=1, epochs=6, max_len=MAX_LEN)


def make(model, kind="torch", **ram):
    return small_augmenter(model, max_len=MAX_LEN, k=4, kind=kind, **ram)


def test_fit_raft_before_build_bank_says_what_to_do(trained):
    model, split = trained
    with pytest.raises(RuntimeError, match=r"call augmenter.build_bank\(split\) first"):
        make(model).fit_raft(split, RAFTConfig(epochs=1))


def test_raft_trains_only_the_ram(trained):
    model, split = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    ram_before = [p.detach().clone() for p in aug.ram.parameters()]
    ram_forward = aug.ram.forward
    seen = []

    def spy(h, keys, values):  # what the RAM gets: no path back into the encoder
        seen.append((h.requires_grad, keys.requires_grad, values.requires_grad))
        seen.append(tuple(p.requires_grad for p in model.parameters()))
        return ram_forward(h, keys, values)

    aug.ram.forward = spy
    aug.fit_raft(split, RAFTConfig(epochs=2, batch_size=64), show_progress=False)
    del aug.ram.forward
    assert seen and not any(any(flags) for flags in seen)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert any(not torch.equal(a, b) for a, b in zip(ram_before, aug.ram.parameters(), strict=True))
    assert all(p.requires_grad for p in model.parameters())  # restored for the user


def test_bank_contents_per_phase(trained):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    assert len(aug.bank) == len(split.train)
    # bank keys are the frozen encoder's representations of the training prefixes
    torch.testing.assert_close(aug.memory.train_keys, aug.encode(split.sequences, split.train))
    aug.evaluate(split, "test", augmented=(True,))
    assert len(aug.bank) == len(split.train) + len(split.valid)
    aug.evaluate(split, "valid", augmented=(True,))
    assert len(aug.bank) == len(split.train)


@pytest.mark.parametrize("kind", ["torch", "faiss"])
def test_retrieval_never_leaks_the_future(trained, kind, monkeypatch):
    """Every search the augmenter makes itself (RAFT's training and validation queries, the
    test, ``recommend(users=...)``) passes the queries' users and prefix lengths, and what comes
    back is admissible, checked against the bank's metadata with the rule written out."""
    model, split = trained
    aug = make(model, kind)
    aug.build_bank(split, show_progress=False)
    bank_cls = type(aug.bank)
    real_search = bank_cls.search
    calls = []

    def spy(self, queries, k, users=None, lengths=None):
        found = real_search(self, queries, k, users, lengths)
        store = self._store
        calls.append((users, lengths, store.users[found.ids], store.lengths[found.ids]))
        return found

    monkeypatch.setattr(bank_cls, "search", spy)
    rcfg = RAFTConfig(epochs=1, batch_size=64, fallback=False)  # the RAM served: it retrieves
    aug.fit_raft(split, rcfg, show_progress=False)
    aug.evaluate(split, "test", augmented=(True,))
    seqs = split.sequences  # recommend for the first 3 items of 5 users: their later pairs are out
    starts = [seqs.items[o : o + 3].tolist() for o in seqs.offsets[:5]]
    aug.recommend(starts, k=3, users=list(range(5)))

    def allowed(users, lengths, mem_users, mem_lengths):  # SPEC section 3, written out
        return (mem_users != users[:, None]) | (mem_lengths < lengths[:, None])

    assert len(calls) >= 4  # RAFT training queries, RAFT validation, the test, recommend
    for users, lengths, mem_users, mem_lengths in calls:
        assert users is not None and lengths is not None
        assert allowed(users.cpu(), lengths.cpu(), mem_users, mem_lengths).all()
    # the rule had work to do: unfiltered, most training queries would get inadmissible memories
    # (their own pair, their future)
    monkeypatch.setattr(bank_cls, "search", real_search)
    ids = aug.bank.search(aug.memory.train_keys, 4).ids
    train = split.train
    users, lengths = torch.from_numpy(train.users), torch.from_numpy(train.lengths)
    store = aug.bank._store
    leaked = ~allowed(users, lengths, store.users[ids], store.lengths[ids])
    assert leaked.any(1).float().mean() > 0.5


def test_save_load_identical_scores_and_config_check(trained, tmp_path):
    model, split = trained
    aug = make(model, "faiss")
    aug.build_bank(split, "test", show_progress=False)
    ids, scores = aug.recommend([[1, 2, 3], [5, 6]], k=5)
    aug.save(tmp_path / "ck")
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert files == ["bank", "config.json", "ram.pt"]  # only the augmenter's own parts
    again = RetrievalAugmenter.load(model, tmp_path / "ck")
    ids2, scores2 = again.recommend([[1, 2, 3], [5, 6]], k=5)
    assert torch.equal(ids, ids2)
    torch.testing.assert_close(scores, scores2)
    other = AugmenterConfig(
        max_len=MAX_LEN, bank=BankConfig(kind="faiss", index_factory="Flat"), ram=RAMConfig(k=8)
    )
    with pytest.raises(CheckpointError, match="ram.k: saved 4, given 8"):
        RetrievalAugmenter.load(model, tmp_path / "ck", other)
    with pytest.raises(CheckpointError, match="hidden size 16.*settings it was saved with"):
        RetrievalAugmenter.load(SASRec(30, hidden_size=8, max_len=MAX_LEN), tmp_path / "ck")
    same = again.config  # the saved config, hidden size and all, loads; 0 takes the encoder's
    for size in (same.hidden_size, 0):
        RetrievalAugmenter.load(model, tmp_path / "ck", same.replace(hidden_size=size))
    with pytest.raises(CheckpointError, match="hidden size 16, the given config asks for 32"):
        RetrievalAugmenter.load(model, tmp_path / "ck", same.replace(hidden_size=32))
    with pytest.raises(CheckpointError, match="trained for 30 items.*encoder it was saved with"):
        RetrievalAugmenter.load(SASRec(31, hidden_size=16, max_len=MAX_LEN), tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    meta["config"]["ram"]["alpha"] = "x"
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="malformed"):
        RetrievalAugmenter.load(model, tmp_path / "ck")
    with pytest.raises(CheckpointError, match="no config.json"):
        RetrievalAugmenter.load(model, tmp_path)


def test_failed_save_keeps_the_old_checkpoint(trained, tmp_path, monkeypatch):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    aug.save(tmp_path / "ck")
    before = (tmp_path / "ck" / "ram.pt").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        aug.save(tmp_path / "ck")
    assert (tmp_path / "ck" / "ram.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_recommend_inputs(trained):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    ids, _ = aug.recommend([[1, 2, 3]], k=5, exclude_seen=True)
    assert not set(ids[0].tolist()) & {1, 2, 3} and 0 not in ids[0].tolist()
    with pytest.raises(ValueError, match="at least one item"):
        aug.recommend([[]], k=5)
    with pytest.raises(ValueError, match=r"not one flat list of ids"):
        aug.recommend([1, 2, 3], k=5)
    with pytest.raises(ValueError, match=r"no sequences given"):
        aug.recommend([], k=5)
    with pytest.raises(ValueError, match=r"batch_size must be a positive int"):
        aug.evaluate(split, "test", batch_size=0)
    with pytest.raises(ValueError, match="item ids must be integers in 1..30"):
        aug.recommend([[0, 1]], k=5)
    with pytest.raises(ValueError, match="k must be in 1..30"):
        aug.recommend([[1]], k=31)
    with pytest.raises(TypeError, match="integer item ids"):
        aug.recommend(torch.tensor([[1.0, 2.0]]), lengths=torch.tensor([2]), k=3)


def test_augmentation_with_alpha_one_equals_plain(trained):
    model, split = trained
    aug = make(model, alpha=1.0)
    aug.build_bank(split, show_progress=False)
    res = aug.evaluate(split, "test")
    assert res["plain"] == res["raserec"]


def test_bfloat16_raft_trains_the_ram_as_float32_does(trained):
    model, split = trained
    cfg = RAFTConfig(epochs=3, batch_size=64, patience=5)

    def update(precision):  # what RAFT did to a RAM of the same initialisation
        aug = make(model)
        aug.build_bank(split, show_progress=False)
        aug.reset_ram(seed=0)
        before = torch.cat([p.detach().flatten().clone() for p in aug.ram.parameters()])
        torch.manual_seed(0)
        res = aug.fit_raft(split, cfg.replace(precision=precision), show_progress=False)
        assert all(np.isfinite([h["loss"] for h in res.history]))
        return torch.cat([p.detach().flatten() for p in aug.ram.parameters()]) - before

    f32, bf16 = update("float32"), update("bfloat16")
    assert float(f32.norm()) > 0.01  # the RAM moved (a learning rate near 0 moves it ~1e-7)
    assert float(bf16.norm()) == pytest.approx(float(f32.norm()), rel=0.1)
    assert float(torch.nn.functional.cosine_similarity(f32, bf16, dim=0)) > 0.9
    with pytest.raises(ValueError, match="precision must be 'float32' or 'bfloat16'"):
        RAFTConfig(precision="fp16")


def test_failed_raft_gives_the_encoder_back_as_it_was(trained, monkeypatch):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    first = next(model.parameters())
    first.requires_grad_(False)  # the user had frozen this one themselves

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(aug.ram, "forward", boom)
    with pytest.raises(RuntimeError, match="out of memory"):
        aug.fit_raft(split, RAFTConfig(epochs=1, batch_size=64), show_progress=False)
    flags = [p.requires_grad for p in model.parameters()]
    assert flags[0] is False and all(flags[1:])
    first.requires_grad_(True)


@pytest.mark.parametrize("kind", ["torch", "faiss"])
def test_bank_keeps_only_the_chosen_prefix_lengths(trained, kind):
    """Appendix G's partitions: the bank holds exactly the memories in the ranges."""
    model, split = trained
    ranges = ((1, 2), (6, None))
    cfg = AugmenterConfig(
        max_len=MAX_LEN,
        bank=BankConfig(kind=kind, index_factory="Flat", prefix_lengths=ranges),
        ram=RAMConfig(k=4),
    )
    aug = RetrievalAugmenter(model, cfg)
    aug.build_bank(split, "test", show_progress=False)
    lengths = torch.cat(
        [torch.from_numpy(split.train.lengths), torch.from_numpy(split.valid.lengths)]
    )
    keep = (lengths <= 2) | (lengths >= 6)  # written out, not through BankConfig.keeps
    assert 0 < int(keep.sum()) < len(lengths)
    assert len(aug.bank) == int(keep.sum())
    all_keys = torch.cat([aug.memory.train_keys, aug.encode(split.sequences, split.valid)])
    keys, _ = aug.bank.fetch(torch.arange(len(aug.bank)))
    torch.testing.assert_close(keys, all_keys[keep])
    # retrieval returns kept memories only; the RAM trains on every training query
    h = aug.encode(split.sequences, split.test)
    found = aug.bank.search(
        h, 4, torch.from_numpy(split.test.users), torch.from_numpy(split.test.lengths)
    )
    got, _ = aug.bank.fetch(found.ids)
    kept_keys = all_keys[keep]
    assert all(
        bool((kept_keys == row).all(1).any()) for row in got.reshape(-1, got.shape[-1])[:200]
    )
    aug.build_bank(split, show_progress=False)
    res = aug.fit_raft(split, RAFTConfig(epochs=1, batch_size=64), show_progress=False)
    assert res.epochs_run == 1 and len(aug.bank) == int(keep[: len(split.train)].sum())


def test_a_bank_filtered_to_nothing_is_refused(trained):
    model, split = trained
    cfg = AugmenterConfig(
        max_len=MAX_LEN, bank=BankConfig(kind="torch", prefix_lengths=((10_000, None),))
    )
    with pytest.raises(ValueError, match="memory bank is empty.*widen the ranges"):
        RetrievalAugmenter(model, cfg).build_bank(split, show_progress=False)


def test_a_phase_filtered_to_nothing_keeps_the_bank_and_names_the_filter(trained):
    """A filter that keeps only validation pairs: the test bank builds, the training phase's
    bank would be empty, so switching to it is refused and the test bank stays."""
    model, split = trained
    longest = int(split.valid.lengths.max())
    assert longest > int(split.train.lengths.max())  # training prefixes are all shorter
    cfg = AugmenterConfig(
        max_len=MAX_LEN,
        bank=BankConfig(kind="torch", prefix_lengths=((longest, None),)),
        ram=RAMConfig(k=1),
    )
    aug = RetrievalAugmenter(model, cfg)
    aug.build_bank(split, "test", show_progress=False)
    bank, size = aug.bank, len(aug.bank)
    assert size == int((split.valid.lengths >= longest).sum())
    for call in (
        lambda: aug.evaluate(split, "valid"),
        lambda: aug.fit_raft(split, RAFTConfig(epochs=1), show_progress=False),
    ):
        with pytest.raises(
            ValueError, match=r"bank of the train phase \(training pairs\) is empty.*widen"
        ):
            call()
        assert aug.bank is bank and len(aug.bank) == size


def test_prefix_length_ranges_survive_a_json_round_trip():
    cfg = AugmenterConfig(bank=BankConfig(prefix_lengths=[[1, 6]]))  # as JSON gives it back
    assert cfg.bank.prefix_lengths == ((1, 6),)
    assert AugmenterConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="BankConfig.prefix_lengths must be ranges"):
        BankConfig(prefix_lengths=((3, 2),))


def test_prefix_length_filter_survives_phase_switches(trained):
    """test -> valid rebuilds the bank from cached keys: the filter must apply again."""
    model, split = trained
    cfg = AugmenterConfig(
        max_len=MAX_LEN,
        bank=BankConfig(kind="torch", prefix_lengths=((1, 2),)),
        ram=RAMConfig(k=4),
    )
    aug = RetrievalAugmenter(model, cfg)
    aug.build_bank(split, show_progress=False)
    n_train = int((split.train.lengths <= 2).sum())
    n_valid = int((split.valid.lengths <= 2).sum())
    assert len(aug.bank) == n_train
    aug.evaluate(split, "test")
    assert len(aug.bank) == n_train + n_valid
    aug.evaluate(split, "valid")
    assert len(aug.bank) == n_train
    keys, _ = aug.bank.fetch(torch.arange(len(aug.bank)))
    torch.testing.assert_close(
        keys, aug.memory.train_keys[torch.from_numpy(split.train.lengths <= 2)]
    )


def test_evaluate_and_fit_raft_check_the_split(trained):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    shorter = leave_one_out(split.sequences, max_len=MAX_LEN - 3)
    with pytest.raises(ValueError, match="max_len = 7 but the augmenter uses 10"):
        aug.evaluate(shorter, "test")
    with pytest.raises(ValueError, match="max_len = 7 but the augmenter uses 10"):
        aug.fit_raft(shorter, RAFTConfig(epochs=1))
    same_data = leave_one_out(split.sequences, max_len=MAX_LEN)  # another object, same split
    assert aug.evaluate(same_data, "test") == aug.evaluate(split, "test")
    other = leave_one_out(synthetic_sequences(120, 30, seed=3), max_len=MAX_LEN)
    with pytest.raises(ValueError, match="bank was built from another split"):
        aug.evaluate(other, "test")
    with pytest.raises(ValueError, match="bank was built from another split"):
        aug.fit_raft(other, RAFTConfig(epochs=1))
    assert aug.evaluate(other, "test", augmented=(False,))["plain"]["HR@10"] >= 0
    more_items = leave_one_out(synthetic_sequences(40, 35, seed=2), max_len=MAX_LEN)
    with pytest.raises(ValueError, match="covers items 1..30 but the data has items up to 3"):
        aug.evaluate(more_items, "test", augmented=(False,))


def test_save_never_replaces_what_is_not_a_checkpoint(trained, tmp_path):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    user_dir = tmp_path / "mine"
    user_dir.mkdir()
    (user_dir / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a checkpoint"):
        aug.save(user_dir)
    assert (user_dir / "notes.txt").read_text() == "keep me"
    user_file = tmp_path / "file.txt"
    user_file.write_text("keep me too")
    with pytest.raises(FileExistsError, match="is a file"):
        aug.save(user_file)
    assert user_file.read_text() == "keep me too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "mine"]
    (tmp_path / "empty").mkdir()
    aug.save(tmp_path / "empty")  # an empty directory is fine
    ck = tmp_path / "empty"
    (ck / "encoder.pt").write_bytes(b"the user's weights")  # kept inside the checkpoint
    with pytest.raises(FileExistsError, match=r"holds files that save\(\) did not write \(encoder"):
        aug.save(ck)
    assert (ck / "encoder.pt").read_bytes() == b"the user's weights"
    (ck / "encoder.pt").unlink()
    ck.chmod(0o750)
    aug.save(ck)  # a checkpoint of its own parts only is replaced, keeping its permissions
    assert ck.stat().st_mode & 0o777 == 0o750
    aug.save(tmp_path / "empty")  # and so is an earlier checkpoint, over and over
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file.txt", "mine"]
    assert RetrievalAugmenter.load(model, tmp_path / "empty").memory.phase == "train"


def test_load_reports_damaged_checkpoints(trained, tmp_path, caplog, monkeypatch):
    model, split = trained
    aug = make(model, "faiss")
    aug.build_bank(split, show_progress=False)
    ck = tmp_path / "ck"
    aug.save(ck)
    meta = json.loads((ck / "config.json").read_text())

    def write_meta(**changes):
        (ck / "config.json").write_text(json.dumps({**meta, **changes}))

    write_meta(format_version=2, config={**meta["config"], "new_field": 1})
    with pytest.raises(CheckpointError, match="format version 2"):
        RetrievalAugmenter.load(model, ck)
    write_meta(config={**meta["config"], "bank": None})
    with pytest.raises(CheckpointError, match="malformed"):
        RetrievalAugmenter.load(model, ck)
    write_meta()
    (ck / "ram.pt").write_bytes(b"not a tensor file")
    with pytest.raises(CheckpointError, match=r"(?s)ram.pt cannot be read.*save it again"):
        RetrievalAugmenter.load(model, ck)
    (ck / "ram.pt").unlink()
    with pytest.raises(CheckpointError, match="ram.pt cannot be read"):
        RetrievalAugmenter.load(model, ck)
    aug.save(ck)
    for f in (ck / "bank").iterdir():
        if f.suffix != ".json":
            f.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="memory bank in .* cannot be read"):
        RetrievalAugmenter.load(model, ck)
    aug.save(ck)
    from raserec_adapter.models import GRU4Rec

    with monkeypatch.context() as m:
        m.setattr(torch.cuda, "is_available", lambda: False)
        with pytest.raises(RuntimeError, match="CUDA is not available here.*use device='cpu'"):
            RetrievalAugmenter.load(model, ck, device="cuda")
    with caplog.at_level("WARNING", logger="raserec_adapter"):
        RetrievalAugmenter.load(GRU4Rec(30, hidden_size=16), ck)
    assert "saved with a SASRec encoder, it is loaded with a GRU4Rec" in caplog.text
    with pytest.raises(CheckpointError, match="saved with a SASRec encoder.*strict=True"):
        RetrievalAugmenter.load(GRU4Rec(30, hidden_size=16), ck, strict=True)


def test_recommend_rejects_malformed_tensors_and_excludes_the_whole_history(trained):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    one = torch.tensor([[3, 0, 0]])
    ids, _ = aug.recommend(one, lengths=[1], k=3)  # lengths as a list is fine
    ids_list, _ = aug.recommend([[3]], k=3)
    assert torch.equal(ids, ids_list)
    with pytest.raises(ValueError, match="non-zero ids after the stated lengths"):
        aug.recommend(torch.tensor([[3, 0, 5]]), lengths=torch.tensor([1]), k=3)
    with pytest.raises(ValueError, match="within the lengths must lie in 1..30"):
        aug.recommend(torch.tensor([[0, 0, 3]]), lengths=torch.tensor([3]), k=3)
    with pytest.raises(ValueError, match=r"\(batch, length\)"):
        aug.recommend(torch.tensor([3, 4]), lengths=torch.tensor([2]), k=3)
    with pytest.raises(ValueError, match="lengths must lie in 1..2"):
        aug.recommend(torch.tensor([[3, 4]]), lengths=torch.tensor([3]), k=3)
    with pytest.raises(TypeError, match="k must be an int"):
        aug.recommend([[3]], k=2.5)
    history = list(range(1, 25))  # longer than max_len: the early items count as seen too
    ids, scores = aug.recommend([history], k=6, exclude_seen=True)
    assert sorted(ids[0].tolist()) == list(range(25, 31)) and torch.isfinite(scores).all()
    with pytest.raises(ValueError, match="leaves only 6 unseen items of 30"):
        aug.recommend([history], k=7, exclude_seen=True)
    # an unknown item beyond the last max_len is not used, unless it must be excluded
    old_unknown = [99, *range(1, 11)]
    assert torch.equal(
        aug.recommend([old_unknown], k=3)[0], aug.recommend([[*range(1, 11)]], k=3)[0]
    )
    with pytest.raises(ValueError, match=r"got \[99\]"):
        aug.recommend([old_unknown], k=3, exclude_seen=True)


def test_add_memories_encodes_new_pairs_of_a_users_history(trained):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    before = len(aug.bank)
    seqs = split.sequences
    u = 5
    history = seqs.items[seqs.offsets[u] : seqs.offsets[u + 1]].tolist()
    covered = int(split.valid.lengths[u])  # the training part: what the bank's pairs cover
    assert aug.add_memories([history], [u], start_lengths=covered) == 2
    assert len(aug.bank) == before + 2
    keys, values = aug.bank.fetch(torch.tensor([before, before + 1]))
    model.eval()
    with torch.no_grad():
        for row, n in enumerate((covered, covered + 1)):  # reference: the encoder by hand
            prefix = torch.tensor([history[:n][-MAX_LEN:]])
            want = model(prefix, torch.tensor([prefix.shape[1]]))[0]
            assert torch.allclose(keys[row], want, atol=1e-5)
            assert torch.equal(values[row], model.item_embedding.weight[history[n]])
    # the new memories are found by other users' queries, and never by u's earlier prefixes
    other = aug.bank.search(
        keys, 1, users=torch.tensor([u + 1, u + 1]), lengths=torch.tensor([3, 3])
    )
    assert other.ids[:, 0].tolist() == [before, before + 1]
    own = aug.bank.search(keys, 4, users=torch.tensor([u, u]), lengths=torch.tensor([covered] * 2))
    assert not ({before, before + 1} & set(own.ids.flatten().tolist()))
    later = aug.bank.search(
        keys[:1], 1, users=torch.tensor([u]), lengths=torch.tensor([covered + 1])
    )
    assert later.ids.tolist() == [[before]]  # u's next prefix may see the pair of length covered
    # the bank no longer follows the split's protocol: RAFT wants it rebuilt, evaluation uses it
    with pytest.raises(RuntimeError, match=r"build_bank\(split\)"):
        aug.fit_raft(split, RAFTConfig(epochs=1))
    assert set(aug.evaluate(split, "test")) == {"plain", "raserec"}
    assert len(aug.bank) == before + 2


def test_add_memories_new_users_filters_and_bad_input(trained):
    model, split = trained
    with pytest.raises(RuntimeError, match="build_bank"):
        make(model).add_memories([[1, 2, 3]], [0])
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    before = len(aug.bank)
    # a new user: every pair of each sequence (default start 1); one-item sequences have none
    assert aug.add_memories([[1, 2, 3, 4], [7]], [500, 501]) == 3
    assert aug.bank.fetch(torch.arange(before, before + 3))[0].shape == (3, 16)
    assert aug.add_memories([[1, 2, 3]], [500], start_lengths=3) == 0
    with pytest.raises(ValueError, match="users has 2 entries for 1 sequences"):
        aug.add_memories([[1, 2, 3]], [1, 2])
    with pytest.raises(ValueError, match=r"start_lengths must lie in 1\.\..*, got 0"):
        aug.add_memories([[1, 2, 3]], [1], start_lengths=0)
    with pytest.raises(ValueError, match=r"users must lie in 0\.\..*, got -1"):
        aug.add_memories([[1, 2, 3]], [-1])
    with pytest.raises(ValueError, match="start_lengths has 2 entries for 1 sequences"):
        aug.add_memories([[1, 2, 3]], [1], start_lengths=[1, 2])
    with pytest.raises(ValueError, match=r"users must lie in 0\.\..*, got 9223372036854775813"):
        aug.add_memories([[1, 2, 3]], np.array([2**63 + 5], dtype=np.uint64))
    with pytest.raises(ValueError, match=r"users must be integers, got \[1.5\]"):
        aug.add_memories([[1, 2, 3]], [1.5])
    with pytest.raises(ValueError, match="users must be a sequence of integers"):
        aug.add_memories([[1, 2, 3]], 7)
    with pytest.raises(ValueError, match="1..30"):
        aug.add_memories([[1, 2, 31]], [1])
    assert len(aug.bank) == before + 3  # refused calls added nothing
    short = RetrievalAugmenter(
        model,
        AugmenterConfig(
            max_len=MAX_LEN,
            bank=BankConfig(kind="torch", prefix_lengths=((1, 2),)),
            ram=RAMConfig(k=4),
        ),
    )
    short.build_bank(split, show_progress=False)
    assert short.add_memories([[1, 2, 3, 4, 5]], [600]) == 2  # prefix lengths 1 and 2 only


def test_remove_memories_drops_a_users_memories_for_good(trained):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    mine = int((split.train.users == 3).sum()) + int((split.train.users == 4).sum())
    assert mine > 0
    assert aug.remove_memories([3, 4]) == mine
    assert len(aug.bank) == len(split.train) - mine
    # not restored behind the user's back by a later evaluation's bank phase switch
    aug.evaluate(split, "valid")
    aug.evaluate(split, "test")
    assert len(aug.bank) == len(split.train) - mine
    with pytest.raises(RuntimeError, match=r"build_bank\(split\)"):
        aug.fit_raft(split, RAFTConfig(epochs=1))


def test_phase_switches_train_the_ivf_index_on_the_phases_memories(trained):
    """Evaluating the test after validation gives what a bank built for the test gives."""
    model, split = trained

    def ivf():
        cfg = AugmenterConfig(
            max_len=MAX_LEN, bank=BankConfig(index_factory="IVF8,Flat"), ram=RAMConfig(k=4)
        )
        return RetrievalAugmenter(model, cfg)

    switched = ivf()
    switched.build_bank(split, show_progress=False)
    rcfg = RAFTConfig(epochs=1, batch_size=64, fallback=False)  # the RAM served: it retrieves
    switched.fit_raft(split, rcfg, show_progress=False)
    got = switched.evaluate(split, "test")["raserec"]
    direct = ivf()
    direct.ram.load_state_dict(switched.ram.state_dict())
    direct.build_bank(split, "test", show_progress=False)
    assert direct.evaluate(split, "test")["raserec"] == got
    assert switched.bank.index_description == "IVF8,Flat"
    # approximate search over the whole bank: same centroids, same lists, same answers
    q = torch.randn(2000, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(switched.bank.search(q, 4).ids, direct.bank.search(q, 4).ids)


def test_add_and_remove_memories_take_arrays_tensors_and_keep_the_protocol_on_no_ops(trained):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    n_train = len(split.train)
    # calls that change nothing leave the split's protocol in place
    assert aug.remove_memories([]) == 0
    assert aug.remove_memories([10_000]) == 0
    assert aug.add_memories([[1, 2, 3]], [700], start_lengths=3) == 0
    aug.evaluate(split, "test")
    assert len(aug.bank) == n_train + len(split.valid)  # validation pairs joined as usual
    aug.evaluate(split, "valid")
    assert len(aug.bank) == n_train
    # ids as tensors / NumPy, one NumPy int for all start lengths, a Sequences object
    history = [[1, 2, 3, 4], [5, 6, 7]]
    assert aug.add_memories(history, torch.tensor([700, 701]), start_lengths=np.int64(2)) == 3
    seqs = split.sequences
    assert aug.add_memories(seqs, np.arange(seqs.num_users) + 1000, start_lengths=1) == sum(
        max(int(seqs.offsets[u + 1] - seqs.offsets[u]) - 1, 0) for u in range(seqs.num_users)
    )
    # removal: one int, a 0-d tensor, a generator; floats are refused, nothing removed
    assert aug.remove_memories(700) == 2 and aug.remove_memories(torch.tensor(701)) == 1
    size = len(aug.bank)
    with pytest.raises(TypeError, match="users must be an integer tensor"):
        aug.remove_memories([1.7])
    with pytest.raises(ValueError, match="user ids are integers >= 0"):
        aug.remove_memories([5, -1])
    assert len(aug.bank) == size
    assert aug.remove_memories(u for u in range(1000, 1000 + seqs.num_users)) == size - n_train
    # a bank emptied by removals still takes memories
    assert aug.remove_memories(np.arange(seqs.num_users)) == n_train and len(aug.bank) == 0
    assert aug.add_memories([[1, 2, 3]], [5]) == 2


def test_reset_ram_gives_a_fresh_seeded_head_and_keeps_the_bank(trained, tmp_path):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    bank, keys = aug.bank, aug.memory.train_keys
    rcfg = RAFTConfig(epochs=2, batch_size=64, seed=3)
    aug.reset_ram(RAMConfig(k=4, alpha=0.3), seed=5)
    first = aug.fit_raft(split, rcfg, show_progress=False)
    trained_head = {k: v.clone() for k, v in aug.ram.state_dict().items()}
    rng_before = torch.get_rng_state()
    aug.reset_ram(RAMConfig(k=4, alpha=0.3), seed=5)  # the same setting again, from scratch
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global random state is untouched
    assert any(not torch.equal(v, trained_head[k]) for k, v in aug.ram.state_dict().items())
    assert aug.bank is bank and aug.memory.train_keys is keys  # nothing re-encoded
    again = aug.fit_raft(split, rcfg, show_progress=False)
    assert again.best_valid == first.best_valid  # same seed, same fresh head: same run
    for k, v in aug.ram.state_dict().items():
        assert torch.equal(v, trained_head[k])
    aug.reset_ram(RAMConfig(k=6, alpha=0.9, beta=0.5), seed=5)
    assert (aug.config.ram.k, aug.config.ram.alpha, aug.config.ram.beta) == (6, 0.9, 0.5)
    assert aug.ram.config.alpha == 0.9  # the head mixes with the new weights
    aug.fit_raft(split, rcfg, show_progress=False)
    ids, _ = aug.recommend([[1, 2, 3]], k=5)
    assert ids.shape == (1, 5)
    aug.save(tmp_path / "ck")  # the checkpoint records the new settings
    with pytest.raises(CheckpointError, match="ram.k: saved 6, given 4"):
        RetrievalAugmenter.load(model, tmp_path / "ck", make(model).config)
    assert RetrievalAugmenter.load(model, tmp_path / "ck").config.ram.k == 6
    with pytest.raises(TypeError, match="ram must be a RAMConfig"):
        aug.reset_ram({"k": 3})  # type: ignore[arg-type]


def test_raft_reports_the_frozen_encoders_own_validation_score(trained, caplog):
    model, split = trained
    aug = make(model, alpha=1.0)  # h~ = h: the RAM can never beat the encoder alone
    aug.build_bank(split, show_progress=False)
    with caplog.at_level("WARNING", logger="raserec_adapter"):
        res = aug.fit_raft(split, RAFTConfig(epochs=2, batch_size=64), show_progress=False)
    plain = aug.evaluate(split, "valid", augmented=(False,))["plain"]
    assert res.baseline_valid == pytest.approx(plain)
    assert res.best_valid["HR@10"] == pytest.approx(plain["HR@10"])
    assert "does not beat the frozen encoder alone" in caplog.text


def test_ranks_are_the_per_user_view_of_evaluate(trained):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    aug.fit_raft(split, RAFTConfig(epochs=1, batch_size=64), show_progress=False)
    r = aug.ranks(split, "test")
    # plain ranks by brute force: encode each test input by hand, count items scoring >= target
    model.eval()
    table = model.item_embedding.weight.detach()[1:]
    for i, u in enumerate(split.test.users[:25]):
        n = int(split.test.lengths[i])
        items = split.sequences[int(u)][:n][-MAX_LEN:].tolist()
        target = int(split.sequences[int(u)][n])
        with torch.no_grad():
            scores = model(torch.tensor([items]), torch.tensor([len(items)]))[0] @ table.T
        assert int(r["plain"][i]) == int((scores >= scores[target - 1]).sum())
    for variant, metrics in aug.evaluate(split, "test").items():
        hr10 = float((r[variant] <= 10).double().mean())
        ndcg10 = float((1 / torch.log2(r[variant].double() + 1))[r[variant] <= 10].sum()) / len(
            r[variant]
        )
        assert metrics["HR@10"] == pytest.approx(hr10)
        assert metrics["NDCG@10"] == pytest.approx(ndcg10)
    assert list(aug.ranks(split, "valid", augmented=(True,))) == ["raserec"]


def _test_inputs(split, edit=lambda items: items):
    """Every user's test input as a Sequences object, each passed through ``edit``."""
    rows = [
        edit(split.sequences[int(u)][: int(n)].tolist())
        for u, n in zip(split.test.users, split.test.lengths, strict=True)
    ]
    return Sequences.from_lists(rows, num_items=split.sequences.num_items)


def test_ranks_from_other_inputs_keep_the_splits_targets_users_and_prefix_lengths(
    trained, monkeypatch
):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    aug.fit_raft(split, RAFTConfig(epochs=1, batch_size=64), show_progress=False)
    for protocol in ("full", "seen_removed"):  # the split's own inputs: the same ranks
        same = aug.ranks(split, "test", protocol=protocol, inputs=_test_inputs(split))
        ref = aug.ranks(split, "test", protocol=protocol)
        for variant in ("plain", "raserec"):
            assert torch.equal(same[variant], ref[variant])
    # other inputs (an item of the user's future, then the first item twice more): plain
    # ranks by brute force, with seen items kept and with the given input's items removed
    other = _test_inputs(split, lambda items: items + [items[0] % 30 + 1] + items[:1] * 2)
    removed = aug.ranks(split, "test", protocol="seen_removed", inputs=other, augmented=(False,))
    seen = []
    real_augment = aug.augment

    def spy(h, users=None, lengths=None):
        seen.append((users.clone(), lengths.clone()))
        return real_augment(h, users, lengths)

    monkeypatch.setattr(aug, "augment", spy)
    r = aug.ranks(split, "test", inputs=other)
    assert not torch.equal(r["plain"], aug.ranks(split, "test", augmented=(False,))["plain"])
    model.eval()
    table = model.item_embedding.weight.detach()[1:]
    for i, u in enumerate(split.test.users[:20]):
        items = other[int(u)][-MAX_LEN:].tolist()
        target = int(split.test.targets[i])
        with torch.no_grad():
            scores = model(torch.tensor([items]), torch.tensor([len(items)]))[0] @ table.T
        ge = scores >= scores[target - 1]
        assert int(r["plain"][i]) == int(ge.sum())
        drop = sorted(set(other[int(u)].tolist()) - {target})
        ge[[item - 1 for item in drop]] = False
        assert int(removed["plain"][i]) == int(ge.sum())
    # the no-leakage rule saw the split's users and clean prefix lengths, not the longer inputs
    users = torch.cat([s[0] for s in seen])
    lengths = torch.cat([s[1] for s in seen])
    by_user = dict(zip(users.tolist(), lengths.tolist(), strict=True))
    assert sorted(by_user) == split.test.users.tolist()
    assert [by_user[int(u)] for u in split.test.users] == split.test.lengths.tolist()


def test_ranks_refuse_inputs_that_do_not_fit_the_split(trained):
    model, split = trained
    aug = make(model)
    n_users = split.sequences.num_users
    n_items = split.sequences.num_items
    with pytest.raises(TypeError, match="Sequences object"):
        aug.ranks(split, "test", inputs=[[1, 2]] * n_users)
    with pytest.raises(ValueError, match="one input per user"):
        aug.ranks(split, "test", inputs=Sequences.from_lists([[1, 2]] * (n_users - 1)))
    too_big = Sequences.from_lists([[1, n_items + 1]] * n_users, num_items=n_items + 1)
    with pytest.raises(ValueError, match=f"item id {n_items + 1}"):
        aug.ranks(split, "test", inputs=too_big)
    empty = Sequences.from_lists([[1]] * 3 + [[]] + [[2]] * (n_users - 4), num_items=n_items)
    with pytest.raises(ValueError, match="gives user 3 an empty sequence"):
        aug.ranks(split, "test", inputs=empty, augmented=(False,))


def test_a_failed_build_bank_keeps_the_bank_that_was_there(trained):
    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    bank, size = aug.bank, len(aug.bank)
    other = leave_one_out(split.sequences, max_len=MAX_LEN + 2)
    with pytest.raises(ValueError, match="max_len"):
        aug.build_bank(other, show_progress=False)
    with pytest.raises(TypeError, match=r"leave_one_out\(sequences\)"):
        aug.build_bank(split.sequences, show_progress=False)
    with pytest.raises(TypeError, match="iterable of list"):
        aug.build_bank([[1, 2, 3]], show_progress=False)
    assert aug.bank is bank and len(aug.bank) == size
    _ = aug.fit_raft(split, RAFTConfig(epochs=1, batch_size=64), show_progress=False)
    assert aug.recommend([[1, 2, 3]], k=3, users=[0])[0].shape == (1, 3)


def test_wrong_objects_for_split_config_and_variants_get_clear_errors(trained, monkeypatch):
    model, split = trained
    aug = make(model)
    with pytest.raises(TypeError, match="pretrain takes a LeaveOneOutSplit, got the Sequences"):
        aug.pretrain(split.sequences)
    with pytest.raises(TypeError, match="pretrain takes a LeaveOneOutSplit, got the Sequences"):
        pretrain(model, split.sequences)
    with pytest.raises(TypeError, match="pretrain takes a PretrainConfig, got RAFTConfig"):
        pretrain(model, split, RAFTConfig())
    with pytest.raises(TypeError, match="evaluate takes a LeaveOneOutSplit"):
        aug.evaluate(split.sequences)
    aug.build_bank(split, show_progress=False)
    with pytest.raises(TypeError, match="fit_raft takes a RAFTConfig, got PretrainConfig"):
        aug.fit_raft(split, PretrainConfig())
    with pytest.raises(TypeError, match=r"fit_raft takes a RAFTConfig, got dict \{'epochs': 1\}"):
        aug.fit_raft(split, {"epochs": 1})
    assert list(aug.evaluate(split, "test", augmented=False)) == ["plain"]
    assert list(aug.evaluate(split, "test", augmented=True)) == ["raserec"]
    with pytest.raises(TypeError, match="augmented must be True, False or a non-empty"):
        aug.evaluate(split, "test", augmented=())
    with monkeypatch.context() as m:
        m.setattr(torch.cuda, "is_available", lambda: False)
        for call in (
            lambda: aug.recommend([[1, 2]], k=3, device="cuda"),
            lambda: aug.evaluate(split, "test", device="cuda"),
            lambda: aug.build_bank(split, device="cuda", show_progress=False),
        ):
            with pytest.raises(RuntimeError, match="CUDA is not available here"):
                call()
        assert len(aug.bank) > 0  # the refused build kept the bank


def test_nan_from_the_encoder_and_a_too_large_k_are_named(trained):
    import copy

    model, split = trained
    broken = copy.deepcopy(model)
    with torch.no_grad():
        for p in broken.parameters():
            p.fill_(float("nan"))
    aug = make(broken)
    with pytest.raises(ValueError, match="encoder's encode_all returned NaN or inf"):
        aug.build_bank(split, show_progress=False)
    with pytest.raises(ValueError, match="encoder's encode returned NaN or inf in 2 of 2"):
        aug.recommend([[1, 2], [3]], k=3, augmented=False)
    small = RetrievalAugmenter(
        model, AugmenterConfig(max_len=MAX_LEN, bank=BankConfig(kind="torch"), ram=RAMConfig(k=5))
    )
    small.build_bank(split, show_progress=False)
    small.reset_ram(small.config.ram.replace(k=len(small.bank) + 1))
    with pytest.raises(ValueError, match=r"RAMConfig.k = \d+ memories .* bank holds only"):
        small.recommend([[1, 2]], k=3)
    small.reset_ram(small.config.ram.replace(k=5))
    with pytest.raises(ValueError, match="users has 2 entries for 1 sequences"):
        small.recommend([[1, 2]], k=3, users=[0, 1])
    for bad, says in ((["a"], "users must be integers"), ([-1], "users must lie in 0..")):
        with pytest.raises(ValueError, match=says):
            small.recommend([[1, 2]], k=3, users=bad)


def test_load_refuses_a_missing_bank_and_warns_about_a_train_phase_bank(trained, tmp_path, caplog):
    import shutil

    model, split = trained
    aug = make(model)
    aug.build_bank(split, show_progress=False)
    aug.save(tmp_path / "ckpt")
    loaded = RetrievalAugmenter.load(model, tmp_path / "ckpt")
    with caplog.at_level("WARNING", logger="raserec_adapter"):
        loaded.evaluate(split, "test")
    assert "holds training pairs only" in caplog.text
    shutil.rmtree(tmp_path / "ckpt" / "bank")
    with pytest.raises(CheckpointError, match="records a memory bank .* is missing"):
        RetrievalAugmenter.load(model, tmp_path / "ckpt")
