"""Do no harm: after RAFT the augmenter serves the frozen encoder where the RAM is no better."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import pretrained_sasrec, small_augmenter

from raserec_adapter import RAFTConfig, RetrievalAugmenter

MAX_LEN = 10


@pytest.fixture(scope="module")
def trained():
    return pretrained_sasrec(120, 30, seed=1, epochs=6, max_len=MAX_LEN)


def _fitted(trained, caplog=None, **raft):
    """A RAM that cannot beat the trained encoder: alpha 0 (the memories alone), one epoch at a
    tiny learning rate from its random start."""
    model, split = trained
    aug = small_augmenter(model, max_len=MAX_LEN, k=4, alpha=0.0)
    aug.build_bank(split, show_progress=False)
    res = aug.fit_raft(split, RAFTConfig(epochs=1, lr=1e-9, **raft), show_progress=False)
    return aug, split, res


def test_a_ram_no_better_on_validation_is_not_served(trained, caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="raserec_adapter"):
        aug, split, res = _fitted(trained)
    assert res.best_valid["HR@10"] <= res.baseline_valid["HR@10"]  # the premise
    assert not aug.ram.serves
    assert "the augmenter serves the encoder's representation" in caplog.text
    # evaluate and recommend follow the choice, and say so
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="raserec_adapter"):
        out = aug.evaluate(split, "test", show_progress=False)
    assert out["raserec"] == out["plain"]
    assert "the RAM is not served" in caplog.text
    histories = [split.sequences[u][:-1].tolist() for u in range(8)]
    ids, scores = aug.recommend(histories, k=5)
    plain_ids, plain_scores = aug.recommend(histories, k=5, augmented=False)
    assert torch.equal(ids, plain_ids) and torch.equal(scores, plain_scores)
    # the choice is saved with the checkpoint
    aug.save(tmp_path / "ckpt")
    model = trained[0]
    back = RetrievalAugmenter.load(model, tmp_path / "ckpt")
    assert not back.ram.serves
    assert back.evaluate(split, "test", show_progress=False) == out
    # the user can force the RAM: then the RAM's own numbers come back
    back.ram.serve(True)
    forced = back.evaluate(split, "test", show_progress=False)
    assert forced["raserec"] != forced["plain"]
    aug.ram.serve(True)
    assert aug.evaluate(split, "test", show_progress=False) == forced  # the saved RAM's own
    with pytest.raises(TypeError, match="True or False"):
        back.ram.serve(1)


def test_fallback_off_serves_the_ram_anyway(trained, caplog):
    with caplog.at_level(logging.WARNING, logger="raserec_adapter"):
        aug, split, _ = _fitted(trained, fallback=False)
    assert aug.ram.serves
    assert "the RAM is served anyway (RAFTConfig.fallback=False)" in caplog.text
    out = aug.evaluate(split, "test", show_progress=False)
    assert out["raserec"] != out["plain"]


def test_a_ram_that_beats_the_encoder_is_served(trained):
    model, split = trained
    aug = small_augmenter(model, max_len=MAX_LEN, k=4)
    aug.build_bank(split, show_progress=False)
    aug.ram.serve(False)  # a choice from before: RAFT decides again
    res = aug.fit_raft(split, RAFTConfig(epochs=3, lr=1e-2), show_progress=False)
    assert res.best_valid["HR@10"] > res.baseline_valid["HR@10"]  # the premise
    assert aug.ram.serves


def test_a_head_saved_before_the_choice_existed_loads_as_served(trained):
    model, _ = trained
    aug = small_augmenter(model, max_len=MAX_LEN, k=4)
    state = {k: v for k, v in aug.ram.state_dict().items() if k != "serving"}
    aug.ram.serve(False)
    aug.ram.load_state_dict(state)
    assert aug.ram.serves
