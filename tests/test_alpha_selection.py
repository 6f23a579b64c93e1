"""RAFTConfig.alpha_grid: the RAM's alpha chosen on validation after RAFT."""

from __future__ import annotations

import pytest
from conftest import pretrained_sasrec, small_augmenter

from raserec_adapter import RAFTConfig, RAMConfig, RetrievalAugmenter
from raserec_adapter.experiments import parse_args
from raserec_adapter.experiments.options import config_from_args

MAX_LEN = 10
GRID = (0.2, 0.8, 1.0)


@pytest.fixture(scope="module")
def fitted():
    model, split = pretrained_sasrec(120, 30, seed=1, epochs=6, max_len=MAX_LEN)
    aug = small_augmenter(model, max_len=MAX_LEN, k=4)
    aug.build_bank(split, show_progress=False)
    cfg = RAFTConfig(epochs=3, lr=1e-2, alpha_grid=GRID, fallback=False)
    res = aug.fit_raft(split, cfg, show_progress=False)
    return model, split, aug, res


def test_the_chosen_alpha_is_the_best_on_validation_through_the_bank(fitted):
    _, split, aug, res = fitted
    sel = res.alpha_selection
    assert sel["trained"] == 0.5 and set(sel["valid"]) == {"0.2", "0.5", "0.8", "1"}
    # every value again through the public path (the bank searched, not the caches)
    by_hand = {}
    for alpha in (0.2, 0.5, 0.8, 1.0):
        aug.ram.config = aug.ram.config.replace(alpha=alpha)
        by_hand[alpha] = aug.evaluate(split, "valid", show_progress=False)["raserec"]["HR@10"]
    aug.ram.config = aug.ram.config.replace(alpha=sel["chosen"])
    for alpha, score in by_hand.items():
        assert sel["valid"][f"{alpha:g}"] == pytest.approx(score, abs=1e-9)
    best = max(by_hand.values())
    assert by_hand[sel["chosen"]] == best
    if by_hand[0.5] == best:  # a tie keeps the trained alpha
        assert sel["chosen"] == 0.5
    # alpha 1 is the frozen encoder itself
    assert sel["valid"]["1"] == pytest.approx(res.baseline_valid["HR@10"], abs=1e-12)
    assert res.best_valid["HR@10"] == sel["valid"][f"{sel['chosen']:g}"]


def test_the_chosen_alpha_is_the_augmenters_and_is_saved(fitted, tmp_path):
    model, split, aug, res = fitted
    chosen = res.alpha_selection["chosen"]
    assert aug.config.ram.alpha == aug.ram.config.alpha == chosen
    aug.save(tmp_path / "ckpt")
    back = RetrievalAugmenter.load(model, tmp_path / "ckpt")
    assert back.config.ram.alpha == chosen
    assert back.evaluate(split, "test", show_progress=False) == aug.evaluate(
        split, "test", show_progress=False
    )


def test_no_grid_keeps_the_trained_alpha(fitted):
    model, split, _, _ = fitted
    aug = small_augmenter(model, max_len=MAX_LEN, k=4, alpha=0.3)
    aug.build_bank(split, show_progress=False)
    res = aug.fit_raft(split, RAFTConfig(epochs=1), show_progress=False)
    assert res.alpha_selection == {} and aug.config.ram.alpha == 0.3


def test_the_grid_is_checked_and_read_from_json_and_the_command_line(capsys):
    assert RAFTConfig.from_dict({"alpha_grid": [0.5, 1]}).alpha_grid == (0.5, 1.0)
    assert RAFTConfig(alpha_grid=(1,)) == RAFTConfig(alpha_grid=(1.0,))
    for bad in ((1.5,), (-0.1,), ("a",), "0.5", (True,)):
        with pytest.raises(ValueError, match="alpha_grid"):
            RAFTConfig(alpha_grid=bad)
    args = parse_args("sasrec", ["--raft.alpha-grid", "0.3,0.7,1"])
    assert config_from_args(args, "raft").alpha_grid == (0.3, 0.7, 1.0)
    assert config_from_args(parse_args("sasrec", []), "raft").alpha_grid == ()
    with pytest.raises(SystemExit):
        parse_args("sasrec", ["--raft.alpha-grid", "0.3,x"])
    assert "comma-separated numbers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args("sasrec", ["--raft.alpha-grid", "2"])
    assert "alpha_grid" in capsys.readouterr().err
    assert RAMConfig().alpha == 0.5  # the paper's fixed alpha stays the default


def test_the_benchmark_compares_the_trained_and_the_chosen_alpha(tmp_path):
    import json
    import sys
    from pathlib import Path

    from conftest import TINY_MODEL, finished_run, synthetic_sequences

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import alpha_selection

    seqs = synthetic_sequences(60, 20, seed=9)
    options = ["--raft.epochs", "2", "--raft.alpha-grid", "0.1,1", "--protocols", "full"]
    data, run = finished_run(tmp_path, "sasrec", seqs, *options)
    out = tmp_path / "alpha.json"
    args = ["--backbone-args", " ".join(TINY_MODEL), "--dataset", str(data), "--run", str(run)]
    record = alpha_selection.main([*args, "--out", str(out)])
    assert json.loads(out.read_text()) == record
    own = json.loads((tmp_path / "toy-sasrec-raserec-seed0.json").read_text())
    chosen = own["per_seed_details"][0]["raft"]["alpha_selection"]["chosen"]
    assert record["alphas"] == [{"trained": 0.5, "chosen": chosen}]
    test = record["splits"]["test"]["per_run"][0]
    for m in alpha_selection.METRICS:  # the chosen arm is what the run itself reported
        assert test["chosen_alpha"][m] == pytest.approx(own["mean"][m], abs=1e-9)
    valid = own["per_seed_details"][0]["raft"]["alpha_selection"]["valid"]
    got = record["splits"]["valid"]["per_run"][0]
    assert got["trained_alpha"]["HR@10"] == pytest.approx(valid["0.5"], abs=1e-9)
    assert got["chosen_alpha"]["HR@10"] == pytest.approx(valid[f"{chosen:g}"], abs=1e-9)
    # a run made without the grid: the script makes RAFT's choice itself, with the same scores
    again = alpha_selection.main([*args, "--alpha-grid", "0.1,0.5,1", "--out", str(out)])
    assert again["alphas"][0]["chosen"] == chosen
    assert again["alphas"][0]["valid"] == pytest.approx(valid, abs=1e-9)
    for m in alpha_selection.METRICS:
        assert again["splits"]["test"]["per_run"][0]["chosen_alpha"][m] == test["chosen_alpha"][m]
    with pytest.raises(SystemExit, match="alpha-grid"):
        alpha_selection.main([*args, "--alpha-grid", "0.5,x", "--out", str(out)])
