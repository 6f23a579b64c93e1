"""Configs: construction-time validation of values and types, and exact JSON round trips."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raserec_adapter.config import (
    BATCHING,
    AugmenterConfig,
    BankConfig,
    PretrainConfig,
    RAFTConfig,
    RAMConfig,
)
from raserec_adapter.evaluation.metrics import DEFAULT_KS, RankingMetrics

CONFIGS = (AugmenterConfig, BankConfig, PretrainConfig, RAFTConfig, RAMConfig)


def json_round_trip(cfg: Any) -> Any:
    return type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict())))


# ---------------------------------------------------------------- 1. valid_metric

# what training looks the metric up in: the evaluation's keys (default cut-offs)
EVALUATED = tuple(RankingMetrics(DEFAULT_KS).compute())


def test_evaluation_returns_hr_ndcg_mrr_at_5_10_20() -> None:
    assert set(EVALUATED) == {f"{m}@{k}" for m in ("HR", "NDCG", "MRR") for k in (5, 10, 20)}


@pytest.mark.parametrize("cls", [PretrainConfig, RAFTConfig])
@pytest.mark.parametrize("metric", EVALUATED)
def test_every_evaluated_metric_is_accepted(cls: type, metric: str) -> None:
    assert cls(valid_metric=metric).valid_metric == metric


@pytest.mark.parametrize("cls", [PretrainConfig, RAFTConfig])
@pytest.mark.parametrize(
    "metric",
    ["HR@30", "NDCG@15", "MRR@1", "HR@abc", "HR@", "@10", "hr@10", "HR@10 ", "HR@010", "AUC@10"],
)
def test_metric_the_evaluation_does_not_return_is_rejected(cls: type, metric: str) -> None:
    with pytest.raises(ValueError, match=r"valid_metric must be one of .*'NDCG@20'") as err:
        cls(valid_metric=metric)
    assert repr(metric) in str(err.value)


@pytest.mark.parametrize("metric", [None, 10, ("HR", 10)])
def test_non_string_metric_is_rejected(metric: object) -> None:
    with pytest.raises(ValueError, match="RAFTConfig.valid_metric"):
        RAFTConfig(valid_metric=metric)  # type: ignore[arg-type]


# ---------------------------------------------------------------- 2. field types


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (RAMConfig, {"k": 2.5}, r"RAMConfig\.k must be an int, got 2\.5 \(float\)"),
        (RAMConfig, {"k": 3.0}, r"RAMConfig\.k must be an int, got 3\.0 \(float\)"),
        (RAMConfig, {"k": "3"}, r"RAMConfig\.k must be an int, got '3' \(str\)"),
        (RAMConfig, {"k": True}, r"RAMConfig\.k must be an int, got True \(bool\)"),
        (RAMConfig, {"k": None}, r"RAMConfig\.k must be an int, got None \(NoneType\)"),
        (AugmenterConfig, {"max_len": 6.5}, r"AugmenterConfig\.max_len must be an int"),
        (AugmenterConfig, {"hidden_size": np.float32(8)}, r"hidden_size must be an int"),
        (PretrainConfig, {"epochs": 2.0}, r"PretrainConfig\.epochs must be an int"),
        (PretrainConfig, {"seed": "0"}, r"PretrainConfig\.seed must be an int"),
        (RAFTConfig, {"batch_size": 64.0}, r"RAFTConfig\.batch_size must be an int"),
        (BankConfig, {"nprobe": 1.5}, r"BankConfig\.nprobe must be an int"),
        (
            RAMConfig,
            {"alpha": "0.5"},
            r"RAMConfig\.alpha must be a float or an int, got '0\.5' \(str\)",
        ),
        (
            RAMConfig,
            {"dropout": False},
            r"RAMConfig\.dropout must be a float or an int, got False \(bool\)",
        ),
        (PretrainConfig, {"lr": math.nan}, r"PretrainConfig\.lr must be a finite float, got nan"),
        (RAFTConfig, {"weight_decay": math.inf}, r"weight_decay must be a finite float"),
        (PretrainConfig, {"mask_false_negatives": 1}, r"mask_false_negatives must be a bool"),
        (PretrainConfig, {"batching": None}, r"PretrainConfig\.batching must be a str"),
        (BankConfig, {"index_factory": 128}, r"BankConfig\.index_factory must be a str"),
        (AugmenterConfig, {"bank": None}, r"AugmenterConfig\.bank must be a BankConfig"),
        (AugmenterConfig, {"ram": {"k": 4}}, r"AugmenterConfig\.ram must be a RAMConfig"),
        (AugmenterConfig, {"ram": BankConfig()}, r"AugmenterConfig\.ram must be a RAMConfig"),
        (BankConfig, {"prefix_lengths": ((1.5, 2),)}, r"BankConfig\.prefix_lengths must be"),
        (BankConfig, {"prefix_lengths": "16"}, r"BankConfig\.prefix_lengths must be"),
        (BankConfig, {"prefix_lengths": ((True, 2),)}, r"BankConfig\.prefix_lengths must be"),
    ],
)
def test_wrong_type_is_rejected_naming_field_value_and_type(
    cls: type, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_wrong_type_is_rejected_by_replace_too() -> None:
    with pytest.raises(ValueError, match=r"RAMConfig\.k must be an int"):
        RAMConfig().replace(k=2.5)


def test_numpy_scalars_are_accepted_as_python_numbers() -> None:
    ram = RAMConfig(k=np.int64(4), num_heads=np.int32(2), alpha=np.float32(0.25), beta=np.int64(1))
    assert ram == RAMConfig(k=4, num_heads=2, alpha=0.25, beta=1.0)
    assert type(ram.k) is int and type(ram.num_heads) is int
    assert type(ram.alpha) is float and type(ram.beta) is float
    assert json.loads(json.dumps(ram.to_dict()))["k"] == 4  # numpy ints would not serialise
    pre = PretrainConfig(mask_false_negatives=np.bool_(True))
    assert pre.mask_false_negatives is True
    pre = PretrainConfig(max_len=np.int64(5))  # an optional int field
    assert type(pre.max_len) is int and json.loads(json.dumps(pre.to_dict()))["max_len"] == 5
    bank = BankConfig(prefix_lengths=[[np.int64(1), np.int64(6)]])
    assert bank.prefix_lengths == ((1, 6),) and type(bank.prefix_lengths[0][0]) is int


def test_ints_are_accepted_for_float_fields() -> None:
    cfg = PretrainConfig(lr=1, weight_decay=0, temperature=2)
    assert (cfg.lr, cfg.weight_decay, cfg.temperature) == (1.0, 0.0, 2.0)
    assert type(cfg.lr) is float


def test_value_checks_still_apply_after_the_type_checks() -> None:
    with pytest.raises(ValueError, match=r"RAMConfig\.alpha must be in \[0, 1\], got 1\.5"):
        RAMConfig(alpha=1.5)
    with pytest.raises(ValueError, match=r"RAMConfig\.k must be >= 1, got 0"):
        RAMConfig(k=0)


# every range check, at the first value outside the range (and the boundary that is allowed)
RANGES = [
    (PretrainConfig, "epochs", 0, 1, ">= 1"),
    (PretrainConfig, "batch_size", 1, 2, ">= 2"),
    (PretrainConfig, "lr", 0.0, 1e-9, "> 0"),
    (PretrainConfig, "weight_decay", -0.1, 0.0, ">= 0"),
    (PretrainConfig, "patience", 0, 1, ">= 1"),
    (PretrainConfig, "retrieval_weight", -0.1, 0.0, ">= 0"),
    (PretrainConfig, "temperature", 0.0, 1e-3, "> 0"),
    (PretrainConfig, "batching", "sorted", BATCHING[0], "one of"),
    (BankConfig, "kind", "annoy", "torch", "'faiss', 'torch' or 'milvus'"),
    (BankConfig, "nprobe", 0, 1, ">= 1"),
    (BankConfig, "overfetch", 0, 1, ">= 1"),
    (RAMConfig, "alpha", -0.1, 0.0, r"in \[0, 1\]"),
    (RAMConfig, "beta", 1.1, 1.0, r"in \[0, 1\]"),
    (RAMConfig, "k", 0, 1, ">= 1"),
    (RAMConfig, "num_heads", 0, 1, ">= 1"),
    (RAMConfig, "inner_size", 0, 1, ">= 1"),
    (RAMConfig, "dropout", 1.0, 0.0, r"in \[0, 1\)"),
    (RAMConfig, "attn_temperature", 0.0, 0.1, "> 0"),
    (RAMConfig, "layers", 0, 1, ">= 1"),
    (RAFTConfig, "epochs", 0, 1, ">= 1"),
    (RAFTConfig, "batch_size", 0, 1, ">= 1"),
    (RAFTConfig, "lr", -1e-3, 1e-9, "> 0"),
    (RAFTConfig, "weight_decay", -1.0, 0.0, ">= 0"),
    (RAFTConfig, "patience", 0, 1, ">= 1"),
    (AugmenterConfig, "hidden_size", -1, 0, ">= 0"),
    (AugmenterConfig, "max_len", 0, 1, ">= 1"),
    (PretrainConfig, "max_len", 0, 1, ">= 1"),
    (PretrainConfig, "seed", -1, 0, "a non-negative int below 2\\*\\*63"),
    (RAFTConfig, "seed", -1, 0, "a non-negative int below 2\\*\\*63"),
    (PretrainConfig, "seed", 2**63, 2**63 - 1, "a non-negative int below 2\\*\\*63"),
    (RAFTConfig, "seed", 2**63, 2**63 - 1, "a non-negative int below 2\\*\\*63"),
]


@pytest.mark.parametrize(("cls", "field", "bad", "edge", "want"), RANGES)
def test_each_range_check_names_the_field_the_range_and_the_value(
    cls: type, field: str, bad: object, edge: object, want: str
) -> None:
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field} must be {want}.*got {bad!r}"):
        cls(**{field: bad})
    assert getattr(cls(**{field: edge}), field) == edge  # the boundary itself is allowed


# ---------------------------------------------------------------- 3. from_dict


@pytest.mark.parametrize("bank", [[1], None, "faiss", 3, True])
def test_from_dict_rejects_a_nested_section_that_is_not_an_object(bank: object) -> None:
    with pytest.raises(ValueError, match=r"AugmenterConfig\.bank must be a JSON object") as err:
        AugmenterConfig.from_dict({"bank": bank})
    assert repr(bank) in str(err.value)


def test_from_dict_rejects_wrong_value_types_in_nested_sections() -> None:
    with pytest.raises(ValueError, match=r"RAMConfig\.k must be an int, got '3' \(str\)"):
        AugmenterConfig.from_dict({"ram": {"k": "3"}})
    with pytest.raises(ValueError, match=r"AugmenterConfig\.max_len must be an int"):
        AugmenterConfig.from_dict({"max_len": 6.5})


def test_from_dict_rejects_unknown_keys_at_every_level() -> None:
    with pytest.raises(ValueError, match=r"unknown AugmenterConfig fields \['rams'\]; known:"):
        AugmenterConfig.from_dict({"rams": {}})
    with pytest.raises(ValueError, match=r"unknown RAMConfig fields \['kk'\]"):
        AugmenterConfig.from_dict({"ram": {"kk": 3}})


@pytest.mark.parametrize("cls", CONFIGS)
@pytest.mark.parametrize("data", [[("k", 3)], "{}", None])
def test_from_dict_rejects_a_top_level_that_is_not_an_object(cls: type, data: object) -> None:
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.from_dict expects a JSON object"):
        cls.from_dict(data)


def test_from_dict_still_accepts_config_instances_and_partial_sections() -> None:
    ram = RAMConfig(k=4)
    assert AugmenterConfig.from_dict({"ram": ram}).ram is ram
    cfg = AugmenterConfig.from_dict({"ram": {"k": 4}, "bank": {}})
    assert cfg == AugmenterConfig(ram=RAMConfig(k=4))


# ---------------------------------------------------------------- round trips

unit = st.floats(0.0, 1.0, allow_nan=False)
positive = st.floats(1e-6, 1e3, allow_nan=False)
non_negative = st.floats(0.0, 1e3, allow_nan=False)
count = st.integers(1, 10_000)
metric = st.sampled_from(EVALUATED)
ranges = st.lists(
    st.integers(1, 50).flatmap(
        lambda lo: st.tuples(st.just(lo), st.one_of(st.none(), st.integers(lo, 100)))
    ),
    min_size=1,
    max_size=3,
).map(tuple)

banks = st.builds(
    BankConfig,
    kind=st.sampled_from(["faiss", "torch"]),
    index_factory=st.sampled_from(["Flat", "IVF16,Flat", "HNSW32,Flat"]),
    nprobe=count,
    overfetch=count,
    prefix_lengths=st.one_of(st.none(), ranges),
)
rams = st.builds(
    RAMConfig,
    alpha=unit,
    beta=unit,
    k=count,
    num_heads=count,
    inner_size=count,
    dropout=st.floats(0.0, 0.99),
    attn_temperature=positive,
    layers=count,
)
augmenters = st.builds(
    AugmenterConfig, hidden_size=st.integers(0, 4096), max_len=count, bank=banks, ram=rams
)
pretrains = st.builds(
    PretrainConfig,
    epochs=count,
    batch_size=st.integers(2, 4096),
    lr=positive,
    weight_decay=non_negative,
    patience=count,
    valid_metric=metric,
    retrieval_weight=non_negative,
    temperature=positive,
    mask_false_negatives=st.booleans(),
    mask_same_user_negatives=st.booleans(),
    max_len=count,
    seed=st.integers(0, 2**31),
    batching=st.sampled_from(BATCHING),
)
rafts = st.builds(
    RAFTConfig,
    epochs=count,
    batch_size=count,
    lr=positive,
    weight_decay=non_negative,
    patience=count,
    valid_metric=metric,
    seed=st.integers(0, 2**31),
    precision=st.sampled_from(["float32", "bfloat16"]),
)


@settings(max_examples=60, deadline=None)
@given(cfg=st.one_of(augmenters, banks, rams, pretrains, rafts))
def test_json_round_trip_is_exact(cfg: Any) -> None:
    back = json_round_trip(cfg)
    assert back == cfg
    assert hash(back) == hash(cfg)
    assert back.to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    "cfg",
    [
        AugmenterConfig(
            hidden_size=64,
            max_len=20,
            bank=BankConfig(
                kind="torch", nprobe=8, overfetch=2, prefix_lengths=((1, 2), (7, None))
            ),
            ram=RAMConfig(alpha=0.3, beta=0.6, k=4, dropout=0.1, attn_temperature=0.5, layers=1),
        ),
        PretrainConfig(epochs=3, lr=5e-4, valid_metric="NDCG@20", mask_false_negatives=True),
        RAFTConfig(epochs=2, batch_size=64, valid_metric="MRR@5", precision="bfloat16"),
    ],
)
def test_json_round_trip_of_non_default_examples(cfg: Any) -> None:
    assert cfg != type(cfg)()
    assert json_round_trip(cfg) == cfg


def test_prefix_lengths_come_back_from_json_lists_as_tuples() -> None:
    cfg = AugmenterConfig(bank=BankConfig(prefix_lengths=[[1, 6], [9, None]]))
    assert cfg.bank.prefix_lengths == ((1, 6), (9, None))
    saved = json.loads(json.dumps(cfg.to_dict()))
    assert saved["bank"]["prefix_lengths"] == [[1, 6], [9, None]]
    assert AugmenterConfig.from_dict(saved) == cfg
