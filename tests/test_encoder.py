from __future__ import annotations

import pytest
import torch
from torch import nn

from raserec_adapter.encoder import EncoderError, wrap_encoder
from raserec_adapter.models import BERT4Rec, SASRec


class NoTable(nn.Module):
    def __init__(self):
        super().__init__()
        self.items = nn.Embedding(11, 8)

    def forward(self, seq, lens):
        return self.items(seq).mean(1)


class AllPositions(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.item_embedding = nn.Embedding(11, 8)
        self.proj = nn.Linear(8, d)

    def forward(self, seq, lens):
        return self.proj(self.item_embedding(seq))  # (B, T, d): one vector per position


def test_sasrec_is_causal_and_positions_count_from_start():
    torch.manual_seed(0)
    m = SASRec(num_items=20, hidden_size=16, max_len=10).eval()
    seq = torch.tensor([[3, 5, 7, 9, 11, 0], [4, 4, 2, 0, 0, 0]])
    lens = torch.tensor([5, 3])
    all_pos = m.forward_all(seq, lens)
    for t in range(1, 6):  # position t-1 equals encoding the prefix of length t on its own
        h = m(seq[:1, :t], torch.tensor([t]))
        torch.testing.assert_close(all_pos[0, t - 1], h[0], rtol=1e-5, atol=1e-5)
    # padding after the items does not change the representation
    torch.testing.assert_close(m(seq[1:, :3], torch.tensor([3])), m(seq[1:], lens[1:]))


def test_recbole_style_model_wraps_without_glue():
    enc = wrap_encoder(SASRec(num_items=20, hidden_size=16))
    assert enc.is_causal and enc.num_items == 20 and enc.hidden_size == 16


class ExtraRow(nn.Module):
    """A table with a special-token row after the items, declared by ``num_items``."""

    def __init__(self, num_items=10):
        super().__init__()
        self.num_items = num_items
        self.item_embedding = nn.Embedding(num_items + 2, 8, padding_idx=0)

    def forward(self, seq, lens):
        return self.item_embedding(seq).mean(1)


def test_item_table_with_extra_rows_is_not_taken_for_more_items():
    with pytest.raises(
        EncoderError, match=r"has 12 rows but ExtraRow.num_items = 10.*\[: 10 \+ 1\]"
    ):
        wrap_encoder(ExtraRow())
    model = ExtraRow()
    enc = wrap_encoder(model, item_weights=lambda: model.item_embedding.weight[:11])
    assert enc.num_items == 10
    # a model's own item_weights() method says which rows score items: BERT4Rec's [mask] row
    # is neither ranked nor accepted as an input id
    bert = BERT4Rec(num_items=20, hidden_size=16, max_len=8, readout="mask")
    enc = wrap_encoder(bert)
    assert enc.num_items == 20 and enc.score(torch.zeros(1, 16)).shape == (1, 21)
    with pytest.raises(ValueError, match=r"item ids must lie in 1\.\.20"):
        enc(torch.tensor([[bert.mask_token]]), torch.tensor([1]))


def test_missing_item_table_names_candidates():
    with pytest.raises(EncoderError, match=r"no `item_embedding`.*\['items'\].*item_weights="):
        wrap_encoder(NoTable())
    model = NoTable()
    enc = wrap_encoder(model, item_weights=lambda: model.items.weight)
    assert enc.num_items == 10


def test_all_positions_output_gets_a_hint():
    enc = wrap_encoder(AllPositions())
    with pytest.raises(EncoderError, match="one vector per position"):
        enc(torch.tensor([[1, 2]]), torch.tensor([2]))


def test_hidden_size_mismatch():
    class Wrong(AllPositions):
        def forward(self, seq, lens):
            return self.proj(self.item_embedding(seq)).mean(1)

    enc = wrap_encoder(Wrong(d=6))
    with pytest.raises(EncoderError, match="size 6 but the item table has size 8"):
        enc(torch.tensor([[1, 2]]), torch.tensor([2]))


def test_input_errors():
    enc = wrap_encoder(SASRec(num_items=20, hidden_size=16))
    with pytest.raises(TypeError, match="torch.long"):
        enc(torch.tensor([[1.0, 2.0]]), torch.tensor([2]))
    with pytest.raises(ValueError, match="1..20"):
        enc(torch.tensor([[1, 21]]), torch.tensor([2]))
    with pytest.raises(ValueError, match="empty sequences"):
        enc(torch.tensor([[0, 0]]), torch.tensor([0]))
    with pytest.raises(
        ValueError, match=r"exceed this model.s max_len = \d+; .*leave_one_out\(sequences, max_len="
    ):
        enc(torch.ones(1, 60, dtype=torch.long), torch.tensor([60]))
    with pytest.raises(EncoderError, match="nn.Module"):
        wrap_encoder(lambda s, n: s)


def test_trusted_inputs_skip_only_the_device_reading_value_checks():
    # a device whose values cannot be read back: the encoder and its inputs on "meta"
    enc = wrap_encoder(SASRec(5, hidden_size=8, max_len=4).to("meta"))
    on_cpu = wrap_encoder(SASRec(5, hidden_size=8, max_len=4))
    bad, one = torch.tensor([[9]]), torch.tensor([1])
    on_meta = bad.to("meta"), one.to("meta")
    with pytest.raises(RuntimeError):  # normally the check reads the values
        enc._check_input(*on_meta)
    with enc.trusted_inputs(), on_cpu.trusted_inputs():
        enc._check_input(*on_meta)  # nothing read from the device
        with pytest.raises(ValueError, match="expected item_seq"):  # shapes still checked
            enc._check_input(on_meta[0], on_meta[1][:0])
        with pytest.raises(ValueError, match="item ids must lie in 1..5"):  # CPU: in full
            on_cpu(bad, one)
    assert enc._trusted == 0 == on_cpu._trusted
    with pytest.raises(RuntimeError):
        enc._check_input(*on_meta)


def test_other_dtypes_are_refused_with_the_fix():
    class Double(AllPositions):
        def forward(self, seq, lens):
            return self.proj(self.item_embedding(seq)).mean(1).double()

    enc = wrap_encoder(Double())
    with pytest.raises(EncoderError, match=r"returned torch.float64 .* h.float\(\)"):
        enc(torch.tensor([[1, 2]]), torch.tensor([2]))
    causal = SASRec(num_items=20, hidden_size=16, max_len=10)
    causal.forward_all = lambda s, n: SASRec.forward_all(causal, s, n).half()
    with pytest.raises(EncoderError, match=r"encode_all returned torch.float16"):
        wrap_encoder(causal).forward_all(torch.tensor([[1, 2]]), torch.tensor([2]))
    with pytest.raises(EncoderError, match=r"item table is torch.float64.*model.float\(\)"):
        wrap_encoder(SASRec(num_items=20, hidden_size=16).double())

    class Mean(AllPositions):
        def forward(self, seq, lens):
            return self.proj(self.item_embedding(seq)).mean(1)

    mean = wrap_encoder(Mean())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # lower precision by autocast is fine
        assert mean(torch.tensor([[1, 2]]), torch.tensor([2])).dtype == torch.bfloat16
