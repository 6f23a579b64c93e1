"""The streaming protocol (raserec_adapter.experiments.streaming) and benchmarks/live_memory.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_augmenter, synthetic_sequences

from raserec_adapter import Sequences
from raserec_adapter.data import read_interactions
from raserec_adapter.experiments import streaming as st
from raserec_adapter.memory import admissible
from raserec_adapter.models import SASRec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

# three users; times per interaction, sorted within each user
LISTS = [[1, 2, 3, 4, 5], [2, 3, 4], [5, 1, 2, 3]]
TIMES = np.array([0, 3, 10, 12, 25, 1, 2, 21, 11, 14, 19, 30])


def _pairs(step: st.StreamStep) -> set[tuple[int, int]]:
    new = step.interactions()
    return set(zip(new.users.tolist(), new.lengths.tolist(), strict=True))


def test_global_time_stream_against_a_hand_computed_example():
    seqs = Sequences.from_lists(LISTS)
    stream = st.global_time_stream(seqs, TIMES, cut=10, step_seconds=10)
    # before time 10: user 0 has items at 0, 3; user 1 at 1, 2; user 2 none
    assert stream.cut.tolist() == [2, 2, 0]
    # steps [10, 20), [20, 30), [30, inf)
    assert [s.known.tolist() for s in stream.steps] == [[2, 2, 0], [4, 2, 3], [5, 3, 3]]
    assert [s.end.tolist() for s in stream.steps] == [[4, 2, 3], [5, 3, 3], [5, 3, 4]]
    assert _pairs(stream.steps[0]) == {(0, 2), (0, 3), (2, 0), (2, 1), (2, 2)}
    assert _pairs(stream.steps[1]) == {(0, 4), (1, 2)}  # times 25 and 21
    assert _pairs(stream.steps[2]) == {(2, 3)}  # time 30
    # a target needs an item before it: user 2's first item (position 0) is not one
    t0 = stream.steps[0].targets()
    assert sorted(zip(t0.users.tolist(), t0.lengths.tolist(), strict=True)) == [
        (0, 2),
        (0, 3),
        (2, 1),
        (2, 2),
    ]
    assert t0.targets.tolist() == [seqs[u][n] for u, n in zip(t0.users, t0.lengths, strict=True)]
    # no interaction at or after the cut is in training; the steps partition the held-out ones
    flat_user = np.repeat(np.arange(3), seqs.lengths)
    pos = np.arange(len(TIMES)) - seqs.offsets[flat_user]
    train = pos < stream.cut[flat_user]
    assert (TIMES[train] < 10).all() and (TIMES[~train] >= 10).all()
    held = set(zip(flat_user[~train].tolist(), pos[~train].tolist(), strict=True))
    parts = [_pairs(s) for s in stream.steps]
    assert set().union(*parts) == held and sum(map(len, parts)) == len(held) == stream.held_out()


def test_global_time_stream_refuses_unsorted_times_and_a_cut_after_everything():
    seqs = Sequences.from_lists(LISTS)
    with pytest.raises(ValueError, match="must not decrease"):
        st.global_time_stream(seqs, TIMES[::-1].copy(), cut=10, step_seconds=10)
    with pytest.raises(ValueError, match="no interaction"):
        st.global_time_stream(seqs, TIMES, cut=31, step_seconds=10)


def test_per_user_steps_against_a_hand_computed_example():
    seqs = Sequences.from_lists([[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5], [1, 2, 3]])
    stream = st.per_user_stream(seqs, steps=3, min_train=3)
    assert stream.cut.tolist() == [5, 3, 3]  # user 1 streams 2 items, user 2 none
    assert [sorted(_pairs(s)) for s in stream.steps] == [
        [(0, 5), (1, 3)],
        [(0, 6), (1, 4)],
        [(0, 7)],
    ]
    targets = stream.steps[1].targets()
    assert targets.targets.tolist() == [7, 5]  # each user's 2nd new item
    held = {(u, p) for u, n in enumerate([8, 5, 3]) for p in range(stream.cut[u], n)}
    assert set().union(*map(_pairs, stream.steps)) == held


def test_timed_sequences_read_as_read_interactions(tmp_path: Path):
    users, items = np.array([3, 1, 3, 1, 2, 3]), np.array([10, 11, 12, 10, 11, 13])
    times = np.array([5, 9, 1, 2, 7, 1])
    path = tmp_path / "t.inter"
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    rows += [f"{u}\t{i}\t{t}" for u, i, t in zip(users, items, times, strict=True)]
    path.write_text("\n".join(rows) + "\n")
    seqs, t = st.timed_sequences(users, items, times)
    ref = read_interactions(path)
    assert (
        seqs.items.tolist() == ref.items.tolist() and seqs.offsets.tolist() == ref.offsets.tolist()
    )
    # user 3: (12, t1), (13, t1) in file order, then (10, t5)
    assert t.tolist() == [1, 1, 5, 2, 9, 7]


@pytest.fixture(scope="module")
def live_bank():
    seqs = synthetic_sequences(40, 20, seed=3)
    stream = st.per_user_stream(seqs, steps=2)
    snap = st.snapshot(seqs, stream.cut, max_len=10)
    torch.manual_seed(0)
    aug = small_augmenter(SASRec(20, hidden_size=16, max_len=10), max_len=10, k=4)
    st.fill_bank(aug, snap, seqs)
    return seqs, stream, snap, aug


def _bank_pairs(aug, snap) -> set[tuple[int, int]]:
    users, lengths = st.bank_metadata(aug.bank)
    return set(zip(snap.users_of(users).tolist(), lengths.tolist(), strict=True))


def test_the_bank_holds_every_known_pair_and_add_stream_adds_exactly_the_new_ones(live_bank):
    seqs, stream, snap, aug = live_bank
    known = stream.cut
    # training uses only what lies before the cut
    rows = np.flatnonzero(known >= 3)
    for r, u in enumerate(rows):
        assert snap.split.sequences[r].tolist() == seqs[u][: known[u]].tolist()
    assert sorted(snap.bank_ids.tolist()) == list(range(seqs.num_users))
    expect = {(u, n) for u in range(seqs.num_users) for n in range(1, known[u])}
    assert _bank_pairs(aug, snap) == expect
    step = stream.steps[1]
    added = st.add_stream(aug, seqs, known, step.known, snap.bank_ids)
    new = {(u, n) for u in range(seqs.num_users) for n in range(known[u], step.known[u])}
    assert added == len(new) > 0 and _bank_pairs(aug, snap) == expect | new


def test_no_query_retrieves_its_own_future_and_removed_users_are_never_retrieved(live_bank):
    seqs, stream, snap, aug = live_bank
    targets = stream.steps[1].targets()
    got = st.retrieved(aug, seqs, targets, snap.bank_ids)
    ok = admissible(
        torch.from_numpy(got["query_users"])[:, None],
        torch.from_numpy(got["query_lengths"])[:, None],
        torch.from_numpy(got["users"]),
        torch.from_numpy(got["lengths"]),
    )
    assert bool(ok.all())
    # the users whose memories were retrieved most, removed: never retrieved afterwards
    removed_ids = np.unique(got["users"])[:4]
    assert np.isin(got["users"], removed_ids).any()  # so the check below can fail
    gone = snap.users_of(removed_ids)
    with pytest.raises(AssertionError, match="removed user"):  # the benchmark's check fires
        st.retrieval_checks(aug, stream, targets, snap, removed=gone)
    assert aug.remove_memories(removed_ids) > 0
    after = st.retrieved(aug, seqs, targets, snap.bank_ids)
    assert not np.isin(after["users"], removed_ids).any()
    checked = st.retrieval_checks(aug, stream, targets, snap, removed=gone)
    assert checked["forgotten_retrieved"] == checked["leaks"] == 0
    ranks = st.rank_step(aug, seqs, targets, snap.bank_ids, augmented=True)
    assert ranks.shape == (len(targets),) and int(ranks.min()) >= 1


def _toy_inter(path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(50):
        start = int(rng.integers(0, 30)) * 86400
        for k in range(int(rng.integers(6, 13))):
            item = int(rng.integers(1, 25)) if rng.random() < 0.5 else (u + k) % 25 + 1
            rows.append(f"{u + 1}\t{item}\t4\t{start + k * 86400 * int(rng.integers(1, 3))}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_the_benchmark_runs_end_to_end_and_resumes(tmp_path: Path):
    import live_memory

    data = _toy_inter(tmp_path / "toy.inter")
    argv = [
        "--dataset", str(data), "--cut", "1970-01-25", "--step-days", "8", "--seeds", "0",
        "--max-len", "5", "--hidden-size", "8", "--pretrain-epochs", "1", "--raft-epochs", "2",
        "--bank", "torch", "--retrain-every", "2", "--retrain-epochs", "1", "--resamples", "20",
        "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out.json"),
    ]  # fmt: skip
    rec = live_memory.main(argv)
    steps = rec["steps"]
    assert len(steps) == rec["stream_size"]["steps"] >= 3
    assert rec["leaks"] == 0 and rec["forgotten_retrieved"] == 0
    assert rec["retrained_at_steps"] == [j for j in range(len(steps)) if j and j % 2 == 0]
    assert all(s["stale_stream_share"] == 0 for s in steps)  # the stale bank has none
    assert steps[0]["stream_share"] == 0 and max(s["stream_share"] for s in steps) > 0
    half = len(steps) // 2
    assert steps[half]["removed_users"] > 0 and "full.forget_before" in steps[half]["remaining"]
    assert sum(s["targets"] for s in steps) <= rec["stream_size"]["held_out"]
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["steps"] == steps and saved["command"].startswith("python")
    again = live_memory.main(argv)  # every step read back from the work folder, nothing trained
    assert again["steps"] == steps
    figs = live_memory.main(["--plot", str(tmp_path / "out.json"), "--figures", str(tmp_path)])
    assert figs == {} and (tmp_path / "live-memory-steps-toy.svg").read_text().startswith("<svg")


def test_the_docs_figures_are_drawn_from_the_results_files(tmp_path: Path):
    from live_memory_plots import plot

    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "benchmarks" / "results").glob("live-memory-*.json"))
    assert files, "no live-memory results file"
    for f in files:
        for fig in plot(json.loads(f.read_text()), tmp_path):
            docs = root / "docs" / fig.name
            redraw = f"python benchmarks/live_memory.py --plot {f.relative_to(root)}"
            assert docs.exists(), f"{docs.name} is missing: {redraw}"
            assert docs.read_text() == fig.read_text(), f"{docs.name} is not drawn from {f.name}"
