"""GRU4Rec, BERT4Rec and a user's own encoder through both stages, and the example scripts."""

from __future__ import annotations

import argparse
import json
import math
import runpy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import synthetic_sequences, write_dataset_file

from raserec_adapter import (
    AugmenterConfig,
    BankConfig,
    EncoderError,
    PretrainConfig,
    RAFTConfig,
    RAMConfig,
    RetrievalAugmenter,
    leave_one_out,
    wrap_encoder,
)
from raserec_adapter.experiments import BACKBONES, Backbone, build_parser, parse_args
from raserec_adapter.experiments import runner as runner_module
from raserec_adapter.models import BERT4Rec, GRU4Rec
from raserec_adapter.models._fast import dropout
from raserec_adapter.training.pretraining import evaluate_encoder

NUM_ITEMS = 30
MAX_LEN = 10
HIDDEN = 16
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# the user's own encoder of examples/custom_encoder.py (a script, not a package: loaded by path)
CUSTOM = runpy.run_path(str(EXAMPLES / "custom_encoder.py"), run_name="custom_encoder")
ProductSequenceModel = CUSTOM["ProductSequenceModel"]
SCRIPTS = ["sasrec", "gru4rec", "bert4rec", "custom_encoder"]


def run_script(name: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs ``examples/<name>.py`` as ``python examples/<name>.py ARGV`` would."""
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / f"{name}.py"), *argv])
    runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="__main__")


def backbone_of(script: str) -> Backbone:
    return CUSTOM["BACKBONE"] if script == "custom_encoder" else BACKBONES[script]


@pytest.fixture(scope="module")
def split():
    return leave_one_out(synthetic_sequences(120, NUM_ITEMS, seed=1), max_len=MAX_LEN)


# BERT4Rec's cloze task only sees the items through attention from the appended [mask] (no
# residual path from the last item, unlike SASRec and GRU4Rec), so it needs more steps and a
# wider model to learn "attend to the previous item" on this toy data.
CLOZE = argparse.Namespace(objective="cloze", readout="mask", head=True, positions="start")


@pytest.mark.parametrize(
    ("name", "options", "hidden", "schedule"),
    [
        ("gru4rec", {}, HIDDEN, {"epochs": 8, "batch_size": 64}),
        ("bert4rec", {}, HIDDEN, {"epochs": 8, "batch_size": 64}),
        ("bert4rec", vars(CLOZE), 32, {"epochs": 16, "batch_size": 32, "lr": 3e-3}),
        ("custom_encoder", {}, HIDDEN, {"epochs": 8, "batch_size": 64}),
    ],
    ids=["gru4rec", "bert4rec", "bert4rec-cloze", "custom"],
)
def test_both_stages_beat_an_untrained_model(split, name, options, hidden, schedule):
    torch.manual_seed(0)
    backbone = backbone_of(name)
    args = argparse.Namespace(hidden_size=hidden, max_len=MAX_LEN, **options)
    model = backbone.build(NUM_ITEMS, args)
    cfg = AugmenterConfig(max_len=MAX_LEN, bank=BankConfig(kind="torch"), ram=RAMConfig(k=4))
    aug = RetrievalAugmenter(model, cfg, **backbone.augmenter_kwargs(model))
    assert aug.encoder.num_items == NUM_ITEMS
    assert (backbone.rec_loss(args) is not None) == (options.get("objective") == "cloze")
    untrained = evaluate_encoder(aug.encoder, split, "valid")["HR@10"]
    res = aug.pretrain(
        split,
        PretrainConfig(max_len=MAX_LEN, **schedule),
        rec_loss=backbone.rec_loss(args),
        show_progress=False,
    )
    assert all(math.isfinite(r["loss_rec"]) and math.isfinite(r["loss_ret"]) for r in res.history)
    aug.build_bank(split, show_progress=False)
    assert len(aug.bank) == len(split.train)
    aug.fit_raft(split, RAFTConfig(epochs=2, batch_size=64), show_progress=False)
    valid = aug.evaluate(split, "valid")
    assert valid["plain"]["HR@10"] > untrained + 0.25
    assert valid["raserec"]["HR@10"] > untrained + 0.25
    test = aug.evaluate(split, "test")
    assert all(0.0 <= v <= 1.0 for variant in test.values() for v in variant.values())


def test_gru4rec_all_positions_equal_prefix_encodings():
    torch.manual_seed(0)
    model = GRU4Rec(NUM_ITEMS, hidden_size=HIDDEN).eval()
    seq = torch.randint(1, NUM_ITEMS + 1, (4, 7))
    full = model.forward_all(seq, torch.full((4,), 7))
    for t in range(1, 8):
        prefix = model(seq[:, :t], torch.full((4,), t))
        torch.testing.assert_close(full[:, t - 1], prefix)
        # trailing padding does not change the encoding either
        padded = F.pad(seq[:, :t], (0, 3))
        torch.testing.assert_close(model(padded, torch.full((4,), t)), prefix)
    assert wrap_encoder(model).is_causal


def test_bert4rec_ignores_padding_and_reads_the_whole_sequence():
    torch.manual_seed(0)
    model = BERT4Rec(NUM_ITEMS, hidden_size=HIDDEN, max_len=MAX_LEN, readout="mask").eval()
    seq = torch.tensor([[3, 4, 5, 6, 7], [9, 8, 7, 0, 0], [2, 0, 0, 0, 0]])
    lengths = torch.tensor([5, 3, 1])
    h = model(seq, lengths)
    assert h.shape == (3, HIDDEN)
    torch.testing.assert_close(model(F.pad(seq, (0, 5)), lengths), h)  # up to T = max_len
    torch.testing.assert_close(model(seq[:, :3].clone(), torch.tensor([3, 3, 1]))[1:], h[1:])
    # bidirectional: the first item matters, and changing it changes nothing in other rows
    changed = seq.clone()
    changed[0, 0] = 11
    h2 = model(changed, lengths)
    assert not torch.allclose(h2[0], h[0])
    torch.testing.assert_close(h2[1:], h[1:])
    # the representation is the output at a [mask] appended after the last item, through the
    # prediction head
    tokens = torch.tensor([[3, 4, 5, 6, 7, 31], [9, 8, 7, 31, 0, 0], [2, 31, 0, 0, 0, 0]])
    torch.testing.assert_close(model.head(model.encode_tokens(tokens)[torch.arange(3), lengths]), h)
    assert not getattr(model, "is_causal", False)
    enc = wrap_encoder(model, **BACKBONES["bert4rec"].augmenter_kwargs(model))
    assert enc.num_items == NUM_ITEMS and not enc.is_causal
    with pytest.raises(
        ValueError, match=r"exceed this model.s max_len = \d+; .*leave_one_out\(sequences, max_len="
    ):
        model(torch.ones(1, MAX_LEN + 1, dtype=torch.long), torch.tensor([MAX_LEN + 1]))


@pytest.mark.parametrize(
    "settings", [{"readout": "mask"}, {"positions": "end", "readout": "mask"}, {"readout": "last"}]
)
def test_bert4rec_never_sees_ids_behind_the_stated_length(settings):
    """Bidirectional attention must not reach ids left after ``item_seq_len`` (say a user's
    later items in a row cut by its length alone): the output equals that of the zero-padded row."""
    torch.manual_seed(0)
    model = BERT4Rec(NUM_ITEMS, hidden_size=HIDDEN, max_len=MAX_LEN, **settings).eval()
    seq = torch.tensor([[3, 4, 5, 6, 7], [9, 8, 7, 0, 0]])
    lengths = torch.tensor([3, 3])
    with_future = model(seq, lengths)
    padded = seq * (torch.arange(5) < 3)  # [[3, 4, 5, 0, 0], [9, 8, 7, 0, 0]]
    torch.testing.assert_close(with_future, model(padded, lengths))
    if settings.get("readout") != "last":
        torch.manual_seed(1)
        a = model.train().cloze_loss(seq, lengths, targets=torch.tensor([1, 2]))
        torch.manual_seed(1)
        b = model.cloze_loss(padded, lengths, targets=torch.tensor([1, 2]))
        torch.testing.assert_close(a, b)


def test_bert4rec_cloze_loss_is_finite_and_decreases():
    torch.manual_seed(0)
    model = BERT4Rec(
        NUM_ITEMS,
        hidden_size=HIDDEN,
        max_len=MAX_LEN,
        dropout=0.0,
        attn_dropout=0.0,
        readout="mask",
    )
    seqs = synthetic_sequences(16, NUM_ITEMS, min_len=4, max_len=MAX_LEN, seed=2)
    seq = torch.zeros(16, MAX_LEN, dtype=torch.long)
    lengths = torch.tensor([len(seqs[u]) for u in range(16)])
    for u in range(16):
        seq[u, : lengths[u]] = torch.from_numpy(seqs[u])

    def loss() -> torch.Tensor:
        return model.cloze_loss(seq, lengths, generator=torch.Generator().manual_seed(0))

    first = loss().detach()
    assert torch.isfinite(first)
    assert abs(float(first) - math.log(NUM_ITEMS)) < 0.5  # near uniform at initialisation
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert float(loss().detach()) < float(first) - 1.0
    # the [mask] row never receives a score: the scoring table stops at item N
    assert model.item_weights().shape == (NUM_ITEMS + 1, HIDDEN)


def test_bert4rec_cloze_with_targets_trains_on_prefix_then_target():
    # passing a prefix's next item is the same as the cloze task on the prefix extended by it
    model = BERT4Rec(
        NUM_ITEMS,
        hidden_size=HIDDEN,
        max_len=MAX_LEN,
        dropout=0.0,
        attn_dropout=0.0,
        readout="mask",
    )
    seq = torch.tensor([[3, 4, 5, 0], [7, 8, 9, 10]])
    lengths = torch.tensor([3, 4])
    targets = torch.tensor([6, 11])
    extended = torch.tensor([[3, 4, 5, 6, 0], [7, 8, 9, 10, 11]])

    def gen() -> torch.Generator:
        return torch.Generator().manual_seed(5)

    with_targets = model.cloze_loss(seq, lengths, gen(), targets=targets)
    torch.testing.assert_close(with_targets, model.cloze_loss(extended, lengths + 1, gen()))
    assert seq[0, 3] == 0 and lengths.tolist() == [3, 4]  # the caller's batch is untouched
    # the target is a label: the last-item copy predicts it from the prefix and [mask]
    assert not torch.allclose(with_targets, model.cloze_loss(seq, lengths, gen()))
    # a prefix of max_len items still fits with its target (positions cover max_len + 1)
    full = torch.arange(1, MAX_LEN + 1)[None, :]
    loss = model.cloze_loss(full, torch.tensor([MAX_LEN]), gen(), targets=torch.tensor([12]))
    assert torch.isfinite(loss)


def test_custom_encoder_needs_its_accessors():
    model = ProductSequenceModel(NUM_ITEMS, dim=HIDDEN)
    with pytest.raises(EncoderError, match=r"no `item_embedding`.*\['products'\]"):
        wrap_encoder(model)
    # an encoder returning one vector per position gets told how to pick one per sequence
    enc = wrap_encoder(
        model,
        encode=lambda s, n: model({"items": s, "mask": s > 0}),
        item_weights=lambda: model.products.weight,
    )
    with pytest.raises(EncoderError, match="one vector per position"):
        enc(torch.tensor([[1, 2, 0]]), torch.tensor([2]))
    enc = wrap_encoder(model, **CUSTOM["wrap"](model))
    assert enc.is_causal and enc.num_items == NUM_ITEMS
    model.eval()
    seq = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    all_pos = enc.forward_all(seq, torch.tensor([4, 2]))
    torch.testing.assert_close(enc(seq[:, :2].clone(), torch.tensor([2, 2])), all_pos[:, 1])


@pytest.fixture(scope="module")
def dataset_file(tmp_path_factory):
    seqs = synthetic_sequences(60, 20, seed=3)
    return write_dataset_file(tmp_path_factory.mktemp("data") / "toy.txt", seqs)


TINY = ["--max-len", "10", "--hidden-size", "16", "--pretrain.batch-size", "64"]


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("plain", [False, True], ids=["raserec", "plain"])
def test_example_script_runs_end_to_end(script, plain, dataset_file, tmp_path, capsys, monkeypatch):
    argv = ["--dataset", str(dataset_file), "--pretrain.epochs", "2", "--raft.epochs", "1"]
    argv += ["--out", str(tmp_path), *TINY, "--bank.kind", "torch"]
    run_script(script, [*argv, "--plain"] if plain else argv, monkeypatch)
    name = backbone_of(script).name
    variants = ["plain"] if plain else ["pretrained-plain", "raserec"]
    for variant in variants:
        for suffix in ("", "-seen_removed"):
            path = tmp_path / f"toy-{name}-{variant}{suffix}-seed0.json"
            result = json.loads(path.read_text())
            assert result["backbone"] == name and result["seeds"] == [0]
            assert result["protocol"] == (suffix[1:] or "full")
            batching = result["per_seed_details"][0]["pretrain"]["config"]["batching"]
            assert batching == ("random" if script == "sasrec" else "windows")
            assert result["command"].split()[1].endswith(f"examples/{script}.py")
    out = capsys.readouterr().out
    # one table per protocol, naming it; the frozen encoder and, after stage 2, the RAM
    for protocol in ("full (seen items kept)", "seen_removed (seen items removed)"):
        assert out.count(f"toy / {name} / seed 0 / test split / protocol {protocol}") == 1
    assert out.count("\nfrozen encoder " if not plain else "\nplain encoder ") == 2  # table rows
    assert out.count("\nwith the RAM ") == (0 if plain else 2)  # a table row per protocol
    assert out.count("\nlift with the RAM, 95% interval") == (0 if plain else 2)
    assert f"to {tmp_path}/" in out
    if not plain:
        assert (tmp_path / f"toy-{name}-raserec-seed0" / "augmenter" / "ram.pt").is_file()


@pytest.mark.parametrize(
    ("argv", "objective"),
    [(["--readout", "mask", "--objective", "cloze"], "cloze"), ([], "next-item")],
)
def test_bert4rec_example_records_its_stage1_objective(
    argv, objective, dataset_file, tmp_path, monkeypatch
):
    argv = [*argv, "--dataset", str(dataset_file), "--pretrain.epochs", "1"]
    argv += ["--out", str(tmp_path), *TINY, "--plain"]
    calls: list[object] = []
    cloze = BERT4Rec.cloze_loss

    def spy(self, *args, **kwargs):
        calls.append(args)
        return cloze(self, *args, **kwargs)

    monkeypatch.setattr(BERT4Rec, "cloze_loss", spy)
    run_script("bert4rec", argv, monkeypatch)
    result = json.loads((tmp_path / "toy-bert4rec-plain-seed0.json").read_text())
    readout = "mask" if objective == "cloze" else "last"
    assert result["backbone_settings"] == {"objective": objective, "readout": readout}
    assert bool(calls) == (objective == "cloze")  # next-item never calls the cloze loss


def recbole_layer(block, x, p, attn_p=0.0):
    """RecBole's TransformerLayer written out: dropout on the attention weights, the attention
    output and the feed-forward output only, each output one before residual + LayerNorm."""
    b, t, d = x.shape
    q, k, v = block.qkv(x).view(b, t, 3, block.heads, d // block.heads).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // block.heads)
    future = torch.ones(t, t, dtype=torch.bool).triu(1)
    weights = dropout(scores.masked_fill(future, float("-inf")).softmax(-1), attn_p)
    a = (weights @ v).transpose(1, 2).reshape(b, t, d)
    x = block.norm1(x + dropout(block.out(a), p))
    hidden = block.ff2(F.gelu(block.ff1(x)))
    return block.norm2(x + dropout(hidden, p))


def test_transformer_block_drops_out_where_recbole_does():
    from raserec_adapter.models._fast import use_fast_paths
    from raserec_adapter.models.layers import TransformerBlock

    torch.manual_seed(0)
    block = TransformerBlock(8, 2, 32, dropout=0.5, attn_dropout=0.0, eps=1e-12).train()
    use_fast_paths(block)  # as the models do: the reference draws the same cheap masks
    x = torch.randn(3, 5, 8)
    torch.manual_seed(1)
    got = block(x, causal=True)
    torch.manual_seed(1)  # the same dropout masks, drawn in the same order
    torch.testing.assert_close(got, recbole_layer(block, x, 0.5))
    block.attn_dropout = 0.5  # on a CPU the attention is written out to use the cheaper masks
    torch.manual_seed(2)
    got = block(x, causal=True)
    torch.manual_seed(2)
    torch.testing.assert_close(got, recbole_layer(block, x, 0.5, attn_p=0.5))


@pytest.mark.parametrize("causal", [True, False])
def test_attention_with_dropout_is_sdpa_with_dropout(causal):
    """The written-out attention of the example Transformers' CPU training: without dropout it
    is F.scaled_dot_product_attention (causal, or with a key mask); with dropout, reading the
    weights through identity values, each weight is 0 or w / (1 - p) at rate 1 - p, and masked
    keys stay at 0."""
    from raserec_adapter.models._fast import _attention_with_dropout

    torch.manual_seed(0)
    b, h, t = 64, 2, 6
    q, k = torch.randn(b, h, t, 8), torch.randn(b, h, t, 8)
    key_mask = None
    if not causal:  # random keys masked, never the first (no row without keys)
        key_mask = (torch.rand(b, 1, 1, t) < 0.7).index_fill_(3, torch.tensor([0]), True)
    v = torch.randn(b, h, t, 8)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, is_causal=causal)
    got = _attention_with_dropout(q, k, v, causal, key_mask, 0.0)
    torch.testing.assert_close(got, ref)
    eye = torch.eye(t).expand(b, h, t, t)  # values = one-hot keys: the output is the weights
    w = F.scaled_dot_product_attention(q, k, eye, attn_mask=key_mask, is_causal=causal)
    dropped = _attention_with_dropout(q, k, eye, causal, key_mask, 0.5)
    zero = dropped == 0
    torch.testing.assert_close(dropped[~zero], 2 * w[~zero])
    assert torch.all(zero[w == 0])
    rate = float((~zero[w > 0]).float().mean())
    n = int((w > 0).sum())
    assert abs(rate - 0.5) < 5 * math.sqrt(0.25 / n)


def test_example_resume_continues_stage1(dataset_file, tmp_path, monkeypatch):
    argv = ["--dataset", str(dataset_file), "--out", str(tmp_path), *TINY]
    argv += ["--plain", "--pretrain.patience", "50"]
    result_file = tmp_path / "toy-sasrec-plain-seed0.json"

    def pretrain_details():
        return json.loads(result_file.read_text())["per_seed_details"][0]["pretrain"]

    run_script("sasrec", [*argv, "--pretrain.epochs", "1", "--resume"], monkeypatch)  # no state yet
    assert (tmp_path / "toy-sasrec-plain-seed0" / "pretrain-state.pt").is_file()
    assert pretrain_details()["epochs_run"] == 1 and pretrain_details()["resumed"] is False
    # the model is recorded, so that tools/merge_seeds.py can compare it between seeds
    recorded = json.loads(result_file.read_text())["per_seed_details"][0]["encoder"]
    built = BACKBONES["sasrec"].build(20, parse_args("sasrec", argv))
    assert recorded == {
        "class": "SASRec",
        "hidden_size": 16,
        "parameters": sum(p.numel() for p in built.parameters()),
    }
    run_script("sasrec", [*argv, "--pretrain.epochs", "3", "--resume"], monkeypatch)
    resumed = pretrain_details()
    assert resumed["epochs_run"] == 3 and resumed["resumed"] is True
    # each call's epochs and command, so the file tells how the run was pieced together
    calls = resumed["invocations"]
    assert [(c["first_epoch"], c["last_epoch"]) for c in calls] == [(1, 1), (2, 3)]
    record = json.loads(result_file.read_text())
    assert calls[1]["command"] == record["command"]  # each call's own command line
    assert calls[0]["command"].endswith("--pretrain.epochs 1 --resume")
    assert record["command"].endswith("--pretrain.epochs 3 --resume")
    assert calls[1]["git_commit"] == record["git_commit"]
    with pytest.raises(ValueError, match="different settings"):
        run_script(
            "sasrec",
            [*argv, "--pretrain.epochs", "3", "--resume", "--pretrain.lr", "0.01"],
            monkeypatch,
        )


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_dropout_flags_reach_the_model(script):
    backbone = backbone_of(script)
    parser = build_parser(backbone)
    model = backbone.build(20, parser.parse_args(["--dropout", "0.35"]))
    rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.35}
    if script in ("sasrec", "bert4rec"):
        args = parser.parse_args(["--attn-dropout", "0.15"])
        assert {layer.attn_dropout for layer in backbone.build(20, args).layers} == {0.15}
    else:
        with pytest.raises(SystemExit, match="no attention"):
            backbone.build(20, parser.parse_args(["--attn-dropout", "0.15"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--dropout", "1.5"])


def spy_runner(monkeypatch) -> dict:
    """Replaces the pipeline: what the scripts would run, with which options."""
    seen: dict = {}
    monkeypatch.setattr(
        runner_module, "run", lambda backbone, args: seen.update(b=backbone, a=args)
    )
    return seen


@pytest.mark.parametrize(
    ("script", "default"),
    [("sasrec", "random"), ("gru4rec", "windows"), ("bert4rec", "windows")],
)
def test_example_batching_default_and_override(script, default, monkeypatch):
    """SASRec's example parses to uniformly drawn batches by default (the released code's, which
    its five-seed comparison chose), the others to the recorded runs' batches;
    ``--pretrain.batching`` overrides either (that the parsed value reaches PretrainConfig: the
    end-to-end test)."""
    seen = spy_runner(monkeypatch)
    run_script(script, ["--dataset", "beauty"], monkeypatch)
    assert seen["b"] is BACKBONES[script]
    assert vars(seen["a"])["pretrain.batching"] == default
    run_script(script, ["--dataset", "beauty", "--pretrain.batching", "bucketed"], monkeypatch)
    assert vars(seen["a"])["pretrain.batching"] == "bucketed"
    run_script(script, ["--demo"], monkeypatch)  # the demo's fast batches, whatever the default
    assert vars(seen["a"])["pretrain.batching"] == "windows"


def _bert4rec_cli(monkeypatch, argv: list[str]) -> tuple[dict, BERT4Rec]:
    """The settings examples/bert4rec.py records for ``argv`` and the model it builds."""
    seen = spy_runner(monkeypatch)
    run_script("bert4rec", argv, monkeypatch)
    return seen["b"].settings(seen["a"]), seen["b"].build(12, seen["a"])


def test_bert4rec_without_head_scores_the_last_layer(monkeypatch):
    torch.manual_seed(0)
    plain = BERT4Rec(num_items=12, hidden_size=8, max_len=5, head=False, readout="mask").eval()
    seq, lens = torch.tensor([[3, 4, 5, 0], [7, 0, 0, 0]]), torch.tensor([3, 1])
    tokens = torch.tensor([[3, 4, 5, 13, 0], [7, 13, 0, 0, 0]])  # [mask] = 13 after the items
    expected = plain.encode_tokens(tokens)[torch.arange(2), lens]
    assert torch.allclose(plain(seq, lens), expected)
    with_head = BERT4Rec(num_items=12, hidden_size=8, max_len=5, readout="mask").eval()
    with_head.load_state_dict(plain.state_dict(), strict=False)  # same encoder, plus a head
    assert not torch.allclose(with_head(seq, lens), expected, atol=1e-3)

    settings, model = _bert4rec_cli(monkeypatch, ["--objective", "next-item", "--no-head"])
    assert settings == {"objective": "next-item", "readout": "last", "head": False}
    assert isinstance(model.head, torch.nn.Identity)
    settings, model = _bert4rec_cli(monkeypatch, [])
    assert settings == {"objective": "next-item", "readout": "last"}  # the defaults
    assert isinstance(model.head, torch.nn.Sequential)
    assert (model.readout, model.positions) == ("last", "start")


def test_bert4rec_last_readout_is_bidirectional_output_at_the_last_item(monkeypatch):
    torch.manual_seed(0)
    model = BERT4Rec(num_items=12, hidden_size=8, max_len=5, readout="last").eval()
    seq, lens = torch.tensor([[3, 4, 5, 0], [7, 0, 0, 0]]), torch.tensor([3, 1])
    # by hand, row by row: no [mask] appended, the last real item's output through the head
    h = model(seq, lens)
    for row, n in enumerate(lens.tolist()):
        x = model.norm(
            model.item_embedding(seq[row : row + 1, :n]) + model.position_embedding.weight[:n]
        )
        for layer in model.layers:
            x = layer(x, causal=False)
        torch.testing.assert_close(h[row : row + 1], model.head(x[:, -1]))
    torch.testing.assert_close(model(F.pad(seq, (0, 2)), lens), h)  # padding changes nothing
    changed = seq.clone()
    changed[0, 0] = 11  # bidirectional: an earlier item still reaches the last position
    assert not torch.allclose(model(changed, lens)[0], h[0])
    mask = BERT4Rec(num_items=12, hidden_size=8, max_len=5, readout="mask").eval()
    mask.load_state_dict(model.state_dict())  # same weights, the [mask] readout differs
    assert not torch.allclose(mask(seq, lens), h, atol=1e-3)
    with pytest.raises(ValueError, match="next-item"):
        model.cloze_loss(seq, lens)
    with pytest.raises(ValueError, match="readout must be"):
        BERT4Rec(num_items=12, readout="first")  # type: ignore[arg-type]

    settings, model = _bert4rec_cli(monkeypatch, ["--readout", "mask"])
    assert settings == {"objective": "next-item", "readout": "mask"}
    assert model.readout == "mask"
    settings, model = _bert4rec_cli(monkeypatch, ["--readout", "mask", "--objective", "cloze"])
    assert settings == {"objective": "cloze", "readout": "mask"}
    with pytest.raises(SystemExit):  # the cloze objective trains at [mask], not the last item
        _bert4rec_cli(monkeypatch, ["--objective", "cloze"])


def test_bert4rec_positions_from_the_end_fix_the_readout_position(monkeypatch):
    torch.manual_seed(0)
    model = BERT4Rec(num_items=12, hidden_size=8, max_len=5, positions="end", readout="mask").eval()
    last = BERT4Rec(num_items=12, hidden_size=8, max_len=5, readout="last", positions="end").eval()
    last.load_state_dict(model.state_dict())
    seq, lens = torch.tensor([[3, 4, 5, 0], [7, 0, 0, 0]]), torch.tensor([3, 1])
    # by hand, row by row: the history (+ [mask] for the mask readout), position ids counting
    # down to 0 at the readout token
    for enc, extra in ((model, [model.mask_token]), (last, [])):
        for row, n in enumerate(lens.tolist()):
            tokens = torch.tensor([[*seq[row, :n].tolist(), *extra]])
            pos = torch.arange(tokens.shape[1] - 1, -1, -1)
            x = enc.norm(enc.item_embedding(tokens) + enc.position_embedding(pos))
            for layer in enc.layers:
                x = layer(x, causal=False)
            got = enc(seq[row : row + 1], lens[row : row + 1])
            torch.testing.assert_close(got, enc.head(x[:, -1]))
    h = model(seq, lens)
    torch.testing.assert_close(model(F.pad(seq, (0, 1)), lens), h)  # padding changes nothing
    start = BERT4Rec(num_items=12, hidden_size=8, max_len=5, readout="mask").eval()
    start.load_state_dict(model.state_dict())  # same weights, positions counted from the start
    assert not torch.allclose(start(seq[:1], lens[:1]), h[:1], atol=1e-3)
    loss = model.train().cloze_loss(seq, lens, targets=torch.tensor([6, 8]))
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="positions must be"):
        BERT4Rec(num_items=12, positions="middle", readout="mask")  # type: ignore[arg-type]

    settings, model = _bert4rec_cli(monkeypatch, ["--objective", "next-item", "--positions", "end"])
    assert settings == {"objective": "next-item", "readout": "last", "positions": "end"}
    assert model.positions == "end"


def test_example_seed_flags_take_seeds_torch_and_numpy_accept(capsys):
    parser = build_parser("sasrec", "")
    assert parser.parse_args(["--seed", "3"]).seed == 3
    assert parser.parse_args(["--seeds", "0", "1"]).seeds == [0, 1]
    for argv in (["--seed", "-1"], ["--seeds", "0", "x"], ["--seed", str(2**63)]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert "a seed" in capsys.readouterr().err
