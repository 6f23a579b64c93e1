"""The library on a GPU against the same work on the CPU (skipped where CUDA is not available).

Each test does one piece of work on ``RASEREC_TEST_DEVICE`` (default ``cuda``) and checks it
against a CPU reference: the frozen-table cross-entropy against ``F.cross_entropy`` on the CPU,
the torch bank's search against a brute-force CPU search with the exclusion rule written out,
pre-training, the bank, RAFT and evaluation end to end, and checkpoints moved between devices.
``RASEREC_TEST_DEVICE=cpu pytest tests/test_cuda.py`` runs the same checks on the CPU (a dry run of
the tests themselves).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import small_augmenter, synthetic_sequences

from raserec_adapter import (
    PretrainConfig,
    RAFTConfig,
    RetrievalAugmenter,
    TorchMemoryBank,
    leave_one_out,
)
from raserec_adapter.models import SASRec
from raserec_adapter.training import pretrain
from raserec_adapter.training.losses import frozen_table_cross_entropy

DEVICE = os.environ.get("RASEREC_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="CUDA is not available"
)
MAX_LEN, N_ITEMS = 10, 30


@pytest.fixture(scope="module")
def split():
    return leave_one_out(synthetic_sequences(150, N_ITEMS, seed=3), max_len=MAX_LEN)


def sasrec(seed: int = 0) -> SASRec:
    torch.manual_seed(seed)
    return SASRec(N_ITEMS, hidden_size=16, max_len=MAX_LEN)


@pytest.mark.parametrize("scale", [0.3, 3.0])
def test_frozen_table_cross_entropy_matches_torch_on_the_cpu(scale):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 32, generator=g, dtype=torch.float64)
    table = torch.randn(1000, 32, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, 1000, (300,), generator=g)
    ref_x = x.clone().requires_grad_()
    ref = F.cross_entropy(ref_x @ table.t(), y)
    ref.backward()
    dx = x.float().to(DEVICE).requires_grad_()
    w_t = table.float().to(DEVICE).contiguous().t()
    loss = frozen_table_cross_entropy(dx, w_t, y.to(DEVICE), chunk=128)
    loss.backward()
    assert loss.device.type == torch.device(DEVICE).type
    assert abs(float(loss.detach()) - float(ref.detach())) < 1e-4 * max(1.0, float(ref))
    torch.testing.assert_close(dx.grad.cpu().double(), ref_x.grad, rtol=1e-4, atol=1e-6)


def test_torch_bank_search_matches_brute_force_with_the_exclusion_rule():
    g = torch.Generator().manual_seed(1)
    n, d, k = 500, 16, 5
    keys, values = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    users = torch.randint(0, 40, (n,), generator=g)
    lengths = torch.randint(1, 9, (n,), generator=g)
    bank = TorchMemoryBank(d, device=DEVICE, query_chunk=64)
    bank.add(keys, values, users, lengths)
    q = torch.randn(200, d, generator=g)
    q_users, q_len = (
        torch.randint(0, 40, (200,), generator=g),
        torch.randint(1, 9, (200,), generator=g),
    )
    found = bank.search(q.to(DEVICE), k, users=q_users.to(DEVICE), lengths=q_len.to(DEVICE))
    assert found.ids.device.type == torch.device(DEVICE).type
    sims = F.normalize(q.double(), dim=1) @ F.normalize(keys.double(), dim=1).t()
    allowed = (users[None, :] != q_users[:, None]) | (lengths[None, :] < q_len[:, None])
    sims[~allowed] = -math.inf
    ids = found.ids.cpu()
    assert allowed[torch.arange(200)[:, None], ids].all()
    # the same similarities as the brute-force top-k (ids may swap on float ties only)
    torch.testing.assert_close(sims.gather(1, ids), sims.topk(k, dim=1).values, rtol=0, atol=1e-5)
    k_raw, v_raw = bank.fetch(found.ids)
    torch.testing.assert_close(v_raw.cpu(), values[ids])
    torch.testing.assert_close(k_raw.cpu(), keys[ids])


def test_the_pipeline_on_the_device_agrees_with_the_cpu(split, tmp_path):
    cfg = PretrainConfig(epochs=3, batch_size=64, max_len=MAX_LEN)
    model = sasrec()
    pretrain(model, split, cfg, device=DEVICE, show_progress=False)
    assert next(model.parameters()).device.type == torch.device(DEVICE).type
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    assert all(torch.isfinite(v).all() for v in weights.values())

    aug = small_augmenter(model, max_len=MAX_LEN, k=4)
    aug.build_bank(split, device=DEVICE, show_progress=False)
    assert aug.bank.device.type == torch.device(DEVICE).type
    res = aug.fit_raft(
        split, RAFTConfig(epochs=3, batch_size=64), device=DEVICE, show_progress=False
    )
    assert res.history and all(np.isfinite(e["loss"]) for e in res.history)
    on_dev = aug.evaluate(split, "test", device=DEVICE)
    ids, scores = aug.recommend([[1, 2, 3], [4, 5]], k=5, device=DEVICE)
    aug.save(tmp_path / "ck")

    # the same weights on the CPU: an encoder loaded from the device's state dict
    cpu_model = sasrec(1)
    cpu_model.load_state_dict(weights)
    again = RetrievalAugmenter.load(cpu_model, tmp_path / "ck", device="cpu")
    assert next(again.ram.parameters()).device.type == "cpu"
    again.build_bank(split, "test", show_progress=False)
    on_cpu = again.evaluate(split, "test")
    n_users = len(split.test)
    for variant in on_dev:
        for metric, value in on_dev[variant].items():  # a tie flipped by float order, at most 2
            assert abs(value - on_cpu[variant][metric]) <= 2.0 / n_users, (variant, metric)
    ids_cpu, scores_cpu = again.recommend([[1, 2, 3], [4, 5]], k=5)
    torch.testing.assert_close(scores.cpu(), scores_cpu, rtol=1e-4, atol=1e-4)
    assert (ids.cpu() == ids_cpu).float().mean() >= 0.8


def test_bfloat16_raft_on_the_device_tracks_float32(split):
    model = sasrec()
    pretrain(
        model, split, PretrainConfig(epochs=3, batch_size=64, max_len=MAX_LEN), show_progress=False
    )
    if torch.device(DEVICE).type != "cpu":  # an encoder left on the CPU: the fix, by name
        with pytest.raises(RuntimeError, match="item table is on cpu: move the encoder there"):
            small_augmenter(model, max_len=MAX_LEN, k=4).build_bank(
                split, device=DEVICE, show_progress=False
            )
    model.to(DEVICE)
    losses = {}
    for precision in ("float32", "bfloat16"):
        aug = small_augmenter(model, max_len=MAX_LEN, k=4)
        aug.build_bank(split, device=DEVICE, show_progress=False)
        cfg = RAFTConfig(epochs=2, batch_size=64, precision=precision, patience=5)
        res = aug.fit_raft(split, cfg, device=DEVICE, show_progress=False)
        losses[precision] = [e["loss"] for e in res.history]
    assert all(np.isfinite(losses["bfloat16"]))
    # bfloat16's 8-bit mantissa: the same first-epoch loss to about 1%
    assert abs(losses["bfloat16"][0] - losses["float32"][0]) < 0.02 * losses["float32"][0]


def test_faiss_bank_from_a_device_encoder_matches_the_cpu_build(split):
    model = sasrec()
    pretrain(
        model, split, PretrainConfig(epochs=2, batch_size=64, max_len=MAX_LEN), show_progress=False
    )
    on_cpu = small_augmenter(model, max_len=MAX_LEN, k=4, kind="faiss")
    on_cpu.build_bank(split, show_progress=False)
    b = on_cpu.recommend([[1, 2, 3], [7, 8, 9, 10]], k=5)
    model.to(DEVICE)
    on_dev = small_augmenter(model, max_len=MAX_LEN, k=4, kind="faiss")
    on_dev.build_bank(split, device=DEVICE, show_progress=False)
    assert len(on_dev.bank) == len(on_cpu.bank) == len(split.train)
    torch.testing.assert_close(
        on_dev.memory.train_keys.cpu(), on_cpu.memory.train_keys, rtol=1e-4, atol=1e-5
    )
    a = on_dev.recommend([[1, 2, 3], [7, 8, 9, 10]], k=5, device=DEVICE)
    torch.testing.assert_close(a[1].cpu(), b[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "bert4rec", "bert4rec-cloze", "custom"])
def test_every_example_backbone_runs_both_stages_on_the_device(split, name):
    """Each backbone's own pieces (GRU4Rec's packing, BERT4Rec's mask draws and loss, the custom
    encoder's accessors) on the device; its trained weights then score the same on the CPU."""
    import argparse
    import runpy
    from pathlib import Path

    from raserec_adapter import AugmenterConfig, BankConfig, RAMConfig
    from raserec_adapter.experiments import BACKBONES
    from raserec_adapter.training.pretraining import evaluate_encoder

    args = argparse.Namespace(hidden_size=16, max_len=MAX_LEN)
    if name == "custom":  # the user's own encoder of the example script
        script = Path(__file__).resolve().parents[1] / "examples" / "custom_encoder.py"
        backbone = runpy.run_path(str(script), run_name="custom_encoder")["BACKBONE"]
    elif name == "bert4rec-cloze":
        backbone = BACKBONES["bert4rec"]
        args = argparse.Namespace(**vars(args), objective="cloze", readout="mask")
    else:
        backbone = BACKBONES[name]
    torch.manual_seed(0)
    model = backbone.build(N_ITEMS, args).to(DEVICE)
    cfg = AugmenterConfig(max_len=MAX_LEN, bank=BankConfig(kind="torch"), ram=RAMConfig(k=4))
    aug = RetrievalAugmenter(model, cfg, **backbone.augmenter_kwargs(model))
    res = aug.pretrain(
        split,
        PretrainConfig(epochs=2, batch_size=64, max_len=MAX_LEN),
        rec_loss=backbone.rec_loss(args),
        device=DEVICE,
        show_progress=False,
    )
    assert all(math.isfinite(r["loss_rec"]) for r in res.history)
    aug.build_bank(split, device=DEVICE, show_progress=False)
    aug.fit_raft(split, RAFTConfig(epochs=1, batch_size=64), device=DEVICE, show_progress=False)
    on_dev = aug.evaluate(split, "test", device=DEVICE)
    assert all(0.0 <= v <= 1.0 for variant in on_dev.values() for v in variant.values())
    plain_dev = evaluate_encoder(aug.encoder, split, "test", device=DEVICE)
    model.cpu()
    plain_cpu = evaluate_encoder(aug.encoder, split, "test")
    for metric, value in plain_dev.items():  # a tie flipped by float order, at most 2 users
        assert abs(value - plain_cpu[metric]) <= 2.0 / len(split.test), metric
