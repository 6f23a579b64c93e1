"""``train_ram`` and ``search_neighbours``: the RAFT loop on inputs of the caller's own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raserec_adapter import (
    RAFTConfig,
    RAMConfig,
    RetrievalAugmentedModule,
    Sequences,
    TorchMemoryBank,
    evaluate_ram,
    leave_one_out,
    search_neighbours,
    train_ram,
)

N_ITEMS, D, K = 40, 16, 3


@pytest.fixture(scope="module")
def split():
    rng = np.random.default_rng(0)
    rows = [list(rng.integers(1, N_ITEMS + 1, size=rng.integers(5, 10))) for _ in range(80)]
    return leave_one_out(Sequences.from_lists(rows), max_len=10)


def oracle_inputs(split, seed: int = 0) -> dict:
    """Random queries, and memories that carry the query's own target (one memory per item).

    Memory ``i - 1`` holds item ``i``'s embedding as its value; every training pair and every
    validation user retrieves K copies of the memory of its own target. The queries alone
    carry no information about the targets.
    """
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(N_ITEMS + 1, D, generator=g)
    keys = torch.randn(N_ITEMS, D, generator=g)
    train_t = torch.from_numpy(split.train.targets)
    valid_t = torch.from_numpy(split.valid.targets)
    return {
        "queries": torch.randn(len(split.train), D, generator=g),
        "neighbours": (train_t - 1)[:, None].repeat(1, K),
        "valid_queries": torch.randn(len(split.valid), D, generator=g),
        "valid_neighbours": (valid_t - 1)[:, None].repeat(1, K),
        "memories": (keys, table[1:].clone()),
        "item_table": table,
    }


def ram(seed: int = 0) -> RetrievalAugmentedModule:
    torch.manual_seed(seed)
    return RetrievalAugmentedModule(D, RAMConfig(k=K, dropout=0.0))


def test_train_ram_learns_to_read_the_memories(split):
    # the labels are the pairs' targets and the memories' values are what the RAM can use:
    # trained, it must rank the remembered item first far more often than the queries alone do
    # (about 10/40 of the users at random for HR@10); an off-by-one between items and the
    # item table's rows, or training on other labels, keeps it near random
    inputs = oracle_inputs(split)
    cfg = RAFTConfig(epochs=40, batch_size=64, lr=1e-2, patience=40)
    res = train_ram(ram(), split, cfg, show_progress=False, **inputs)
    assert res.baseline_valid["HR@10"] < 0.45
    assert res.best_valid["HR@5"] > 0.9, res.best_valid
    assert res.best_valid["HR@10"] > res.baseline_valid["HR@10"] + 0.4
    # an untrained RAM over the same memories does not rank them first
    fresh = evaluate_ram(
        ram(),
        split,
        inputs["valid_queries"],
        inputs["valid_neighbours"],
        inputs["memories"],
        inputs["item_table"],
    )
    assert fresh["HR@5"] < 0.6, fresh


def test_train_ram_keeps_the_best_epoch(split):
    inputs = oracle_inputs(split)
    head = ram()
    res = train_ram(
        head, split, RAFTConfig(epochs=8, batch_size=64, lr=1e-2), show_progress=False, **inputs
    )
    again = evaluate_ram(
        head,
        split,
        inputs["valid_queries"],
        inputs["valid_neighbours"],
        inputs["memories"],
        inputs["item_table"],
    )
    assert again == pytest.approx(res.best_valid)
    assert not head.training
    best = max(r["valid_HR@10"] for r in res.history)
    assert res.best_valid["HR@10"] == best
    assert res.history[res.best_epoch - 1]["valid_HR@10"] == best


def test_train_ram_is_deterministic_and_trains_only_the_ram(split):
    inputs = oracle_inputs(split)
    before = {k: v.clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    cfg = RAFTConfig(epochs=2, batch_size=64, seed=3)
    a, b = ram(), ram()
    ra = train_ram(a, split, cfg, show_progress=False, **inputs)
    rb = train_ram(b, split, cfg, show_progress=False, **inputs)
    assert ra.history == [
        {**r, "train_seconds": ra.history[i]["train_seconds"]} for i, r in enumerate(rb.history)
    ]
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    for k, v in before.items():  # the caller's tensors are not modified
        torch.testing.assert_close(inputs[k], v, rtol=0, atol=0)


def test_search_neighbours_obeys_the_exclusion_rule_in_any_step():
    g = torch.Generator().manual_seed(1)
    n = 60
    users = torch.randint(0, 6, (n,), generator=g)
    lengths = torch.randint(1, 8, (n,), generator=g)
    keys = torch.randn(n, 8, generator=g)
    bank = TorchMemoryBank(dim=8)
    bank.add(keys, torch.randn(n, 8, generator=g), users, lengths)
    whole = bank.search(keys, 4, users, lengths).ids
    for step in (1, 7, 60):
        got = search_neighbours(bank, keys, 4, users, lengths, step=step)
        torch.testing.assert_close(got, whole, rtol=0, atol=0)
    # written out: another user's memory, or the same user's of a shorter prefix
    for q in range(n):
        for m in whole[q].tolist():
            assert users[m] != users[q] or lengths[m] < lengths[q]


@pytest.mark.parametrize(
    "change,match",
    [
        ({"queries": torch.zeros(3, D)}, r"queries must be \(\d+, 16\): one representation per"),
        ({"valid_queries": torch.zeros(5, D + 1)}, r"valid_queries must be \(\d+, 16\)"),
        ("neighbours_k", r"neighbours must be a long tensor of shape \(\d+, 3\) \(K = the RAM"),
        ("neighbours_float", r"neighbours must be a long tensor"),
        ("neighbours_minus_one", r"neighbours holds ids outside 0\.\.39 .*e\.g\. -1.*-1 padding"),
        ("neighbours_too_big", r"valid_neighbours holds ids outside 0\.\.39 .*e\.g\. 40"),
        ("memories_dim", r"memories must be \(keys, values\) of shape \(M, 16\)"),
        ("table_small", r"item_table must be \(N \+ 1, 16\) with N >= 40"),
        ("queries_nan", r"queries holds NaN or infinite values"),
    ],
)
def test_train_ram_refuses_inputs_that_do_not_fit(split, change, match):
    inputs = oracle_inputs(split)
    if isinstance(change, dict):
        inputs.update(change)
    elif change == "neighbours_k":
        inputs["neighbours"] = inputs["neighbours"][:, :2]
    elif change == "neighbours_float":
        inputs["neighbours"] = inputs["neighbours"].float()
    elif change == "neighbours_minus_one":
        inputs["neighbours"] = inputs["neighbours"].clone()
        inputs["neighbours"][0, 1] = -1
    elif change == "neighbours_too_big":
        inputs["valid_neighbours"] = inputs["valid_neighbours"].clone()
        inputs["valid_neighbours"][2, 0] = N_ITEMS
    elif change == "memories_dim":
        keys, values = inputs["memories"]
        inputs["memories"] = (keys[:, :8], values[:, :8])
    elif change == "table_small":
        inputs["item_table"] = inputs["item_table"][:-1]
    elif change == "queries_nan":
        inputs["queries"] = inputs["queries"].clone()
        inputs["queries"][4, 2] = float("nan")
    head = ram()
    state = {k: v.clone() for k, v in head.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        train_ram(head, split, RAFTConfig(epochs=1), show_progress=False, **inputs)
    for k, v in head.state_dict().items():  # refused before any training
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
