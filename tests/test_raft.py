"""``fit_raft`` and ``search_neighbours``: the RAFT loop on inputs of the caller's own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raserec_adapter import RAFTConfig, RAMConfig, Sequences, TorchMemoryBank, leave_one_out
from raserec_adapter.ram import RetrievalAugmentedModule
from raserec_adapter.training import fit_raft, search_neighbours
from raserec_adapter.training.raft import evaluate_ram

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


def valid_metrics(head: RetrievalAugmentedModule, split, inputs: dict) -> dict[str, float]:
    """The RAM's validation metrics over ``inputs`` (as :func:`oracle_inputs` makes them)."""
    return evaluate_ram(
        head,
        split,
        inputs["valid_queries"],
        inputs["valid_neighbours"],
        inputs["memories"],
        inputs["item_table"],
    )


def test_train_ram_learns_to_read_the_memories(split):
    # the labels are the pairs' targets and the memories' values are what the RAM can use:
    # trained, it must rank the remembered item first far more often than the queries alone do
    # (about 10/40 of the users at random for HR@10); an off-by-one between items and the
    # item table's rows, or training on other labels, keeps it near random
    inputs = oracle_inputs(split)
    cfg = RAFTConfig(epochs=40, batch_size=64, lr=1e-2, patience=40)
    res = fit_raft(ram(), split, cfg, show_progress=False, **inputs)
    assert res.baseline_valid["HR@10"] < 0.45
    assert res.best_valid["HR@5"] > 0.9, res.best_valid
    assert res.best_valid["HR@10"] > res.baseline_valid["HR@10"] + 0.4
    # an untrained RAM over the same memories does not rank them first
    fresh = valid_metrics(ram(), split, inputs)
    assert fresh["HR@5"] < 0.6, fresh


def test_train_ram_keeps_the_best_epoch(split):
    inputs = oracle_inputs(split)
    head = ram()
    res = fit_raft(
        head, split, RAFTConfig(epochs=8, batch_size=64, lr=1e-2), show_progress=False, **inputs
    )
    again = valid_metrics(head, split, inputs)
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
    ra = fit_raft(a, split, cfg, show_progress=False, **inputs)
    rb = fit_raft(b, split, cfg, show_progress=False, **inputs)
    assert ra.history == [
        {**r, "train_seconds": ra.history[i]["train_seconds"]} for i, r in enumerate(rb.history)
    ]
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    for k, v in before.items():  # the caller's tensors are not modified
        torch.testing.assert_close(inputs[k], v, rtol=0, atol=0)


def test_train_ram_stops_after_patience_and_restores_the_best_epoch(split):
    # validation users retrieve the memory of the item after their target: the more the RAM
    # learns to copy its memories, the worse validation gets, so the first epoch is the best
    inputs = oracle_inputs(split)
    inputs["valid_neighbours"] = (inputs["valid_neighbours"] + 1) % N_ITEMS
    head = ram()
    cfg = RAFTConfig(epochs=40, batch_size=64, lr=1e-2, patience=3)
    res = fit_raft(head, split, cfg, show_progress=False, **inputs)
    assert res.epochs_run == res.best_epoch + 3 < 40  # stopped early, patience epochs after
    last = res.history[-1]["valid_HR@10"]
    assert last < res.best_valid["HR@10"]  # so the RAM's final weights are not the best ones
    again = valid_metrics(head, split, inputs)
    assert again == pytest.approx(res.best_valid)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_train_ram_sends_no_gradient_into_the_callers_tensors(split, precision):
    inputs = oracle_inputs(split)
    table = torch.nn.Parameter(inputs["item_table"].clone())  # e.g. an encoder's item table
    encoder = torch.nn.Linear(D, D)  # queries still attached to the graph that made them
    inputs.update(
        item_table=table,
        queries=encoder(inputs["queries"]),
        valid_queries=encoder(inputs["valid_queries"]),
        memories=tuple(m.clone().requires_grad_(True) for m in inputs["memories"]),
    )
    cfg = RAFTConfig(epochs=2, batch_size=64, precision=precision)
    fit_raft(ram(), split, cfg, show_progress=False, **inputs)
    assert table.grad is None and encoder.weight.grad is None
    assert all(m.grad is None for m in inputs["memories"])


def test_train_ram_seeds_its_dropout_and_keeps_the_callers_random_state(split):
    inputs = oracle_inputs(split)

    def head() -> RetrievalAugmentedModule:
        torch.manual_seed(0)
        return RetrievalAugmentedModule(D, RAMConfig(k=K, dropout=0.5))

    cfg = RAFTConfig(epochs=2, batch_size=64, seed=5)
    a, b = head(), head()
    torch.manual_seed(1)
    state = torch.get_rng_state()
    fit_raft(a, split, cfg, show_progress=False, **inputs)
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is left as it was
    torch.manual_seed(2)  # another global state: the same RAM all the same
    fit_raft(b, split, cfg, show_progress=False, **inputs)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    c = head()
    fit_raft(c, split, RAFTConfig(epochs=2, batch_size=64, seed=6), show_progress=False, **inputs)
    assert any(  # another seed: other dropout masks and batch order, another RAM
        not torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True)
    )


def test_train_ram_gives_the_weights_back_when_training_fails(split, monkeypatch):
    import raserec_adapter.training.raft as raft

    inputs = oracle_inputs(split)
    head = ram()
    start = {k: v.clone() for k, v in head.state_dict().items()}
    calls = {"n": 0}

    def failing(*args, **kwargs):  # epoch 1's weights were updated before this
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(raft, "evaluate_ram", failing)
    with pytest.raises(KeyboardInterrupt):
        fit_raft(head, split, RAFTConfig(epochs=3, batch_size=64), show_progress=False, **inputs)
    assert calls["n"] == 1
    for k, v in head.state_dict().items():
        torch.testing.assert_close(v, start[k], rtol=0, atol=0, msg=k)


def test_evaluate_ram_keeps_the_mode_when_it_fails(split):
    inputs = oracle_inputs(split)
    head = ram().train()
    with pytest.raises(IndexError):  # a neighbour id past the memories
        evaluate_ram(
            head,
            split,
            inputs["valid_queries"],
            inputs["valid_neighbours"] + 10 * N_ITEMS,
            inputs["memories"],
            inputs["item_table"],
        )
    assert head.training


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
        ("values_nan", r"memories' values holds NaN or infinite values"),
        ("table_inf", r"item_table holds NaN or infinite values"),
        ("queries_int", r"queries must be a floating-point tensor .* got torch.int64"),
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
    elif change == "values_nan":
        keys, values = inputs["memories"]
        values = values.clone()
        values[3, 0] = float("nan")
        inputs["memories"] = (keys, values)
    elif change == "table_inf":
        inputs["item_table"] = inputs["item_table"].clone()
        inputs["item_table"][7, 1] = float("inf")
    elif change == "queries_int":
        inputs["queries"] = inputs["queries"].long()
    head = ram()
    state = {k: v.clone() for k, v in head.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        fit_raft(head, split, RAFTConfig(epochs=1), show_progress=False, **inputs)
    for k, v in head.state_dict().items():  # refused before any training
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
