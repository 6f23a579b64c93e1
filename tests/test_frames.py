"""Sequences from a pandas DataFrame: the same sequences as the file reader, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raserec_adapter import DataFormatError
from raserec_adapter.data import read_interactions
from raserec_adapter.data.frames import from_dataframe

REPO = Path(__file__).resolve().parents[1]


def brute_force(rows: list[tuple[str, int, int]]) -> dict[str, list[str]]:
    """Each user's items (as strings) in time order, ties in row order."""
    out: dict[str, list[tuple[int, int, str]]] = {}
    for n, (user, item, time) in enumerate(rows):
        out.setdefault(user, []).append((time, n, str(item)))
    return {u: [i for _, _, i in sorted(v)] for u, v in out.items()}


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", "7"]), st.integers(1, 6), st.integers(0, 3)),
        min_size=1,
        max_size=30,
    )
)
def test_a_dataframe_reads_as_its_file_and_as_written_out(tmp_path_factory, rows):
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    seqs = from_dataframe(df)
    want = brute_force(rows)
    got = {str(seqs.user_labels[u]): seqs.labels_of(seqs[u]).tolist() for u in range(len(want))}
    assert got == want and seqs.num_users == len(want)
    path = tmp_path_factory.mktemp("frame") / "rows.csv"
    df.to_csv(path, index=False)
    from_file = read_interactions(path)
    assert np.array_equal(from_file.items, seqs.items)
    assert np.array_equal(from_file.offsets, seqs.offsets)
    assert from_file.item_labels.tolist() == seqs.item_labels.tolist()
    assert from_file.user_labels.tolist() == seqs.user_labels.tolist()


def test_datetimes_order_like_their_numbers_and_recsys_names_are_found():
    times = pd.to_datetime(["2024-03-01 10:00", "2024-01-01 00:00", "2024-02-01 00:00"])
    df = pd.DataFrame({"user_id": [1, 1, 1], "item_id": ["x", "y", "z"], "datetime": times})
    assert from_dataframe(df).labels_of(from_dataframe(df)[0]).tolist() == ["y", "z", "x"]
    aware = df.assign(datetime=times.tz_localize("Europe/Berlin"))
    assert from_dataframe(aware).items.tolist() == from_dataframe(df).items.tolist()
    named = df.rename(columns={"user_id": "uid", "item_id": "iid", "datetime": "t"})
    again = from_dataframe(named, user_col="uid", item_col="iid", time_col="t")
    assert again.items.tolist() == from_dataframe(df).items.tolist()
    no_time = from_dataframe(df.drop(columns="datetime"))  # the rows' order
    assert no_time.labels_of(no_time[0]).tolist() == ["x", "y", "z"]


def test_a_vocabulary_numbers_the_frame_as_the_encoder_and_k_core_filters():
    df = pd.DataFrame({"user_id": ["u", "u", "v", "v"], "item_id": [5, 9, 9, 4],
                       "timestamp": [1, 2, 1, 2]})  # fmt: skip
    seqs = from_dataframe(df, item_vocab=["[PAD]", "4", "5", "9"])
    assert seqs[0].tolist() == [2, 3] and seqs[1].tolist() == [3, 1]
    with pytest.raises(DataFormatError, match="4"):
        from_dataframe(df, item_vocab={"5": 1, "9": 2})
    dropped = from_dataframe(df, item_vocab={"5": 1, "9": 2}, unknown="drop")
    assert dropped[1].tolist() == [2]
    with pytest.raises(DataFormatError, match="smaller k_core"):
        from_dataframe(df, k_core=2)
    cored = from_dataframe(pd.concat([df, df.assign(user_id="w")]), k_core=2)
    assert cored.num_users == 3 and cored.item_labels.tolist() == ["5", "9", "4"]


def test_bad_frames_say_what_is_wrong():
    good = pd.DataFrame({"user_id": [1, 2], "item_id": [3, 4], "timestamp": [1.0, 2.0]})
    with pytest.raises(DataFormatError, match=r"none of \['user_id', 'user'\].*columns: \['u'"):
        from_dataframe(good.rename(columns={"user_id": "u"}))
    with pytest.raises(DataFormatError, match="no item column 'iid'"):
        from_dataframe(good, item_col="iid")
    with pytest.raises(DataFormatError, match="user column is empty at row 1"):
        from_dataframe(good.assign(user_id=[1, None]))
    with pytest.raises(DataFormatError, match="time at row 0 is nan"):
        from_dataframe(good.assign(timestamp=[np.nan, 1.0]))
    with pytest.raises(DataFormatError, match="NaT"):
        from_dataframe(good.assign(timestamp=pd.to_datetime(["2024-01-01", None])))
    with pytest.raises(DataFormatError, match=r"dtype .*pd.to_datetime"):
        from_dataframe(good.assign(timestamp=["monday", "tuesday"]))
    with pytest.raises(DataFormatError, match="no rows"):
        from_dataframe(good.iloc[:0])
    with pytest.raises(TypeError, match="takes a pandas DataFrame, got dict"):
        from_dataframe({"user_id": [1]})


def test_pandas_is_optional(monkeypatch):
    code = "import raserec_adapter, raserec_adapter.data, sys; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"raserec-adapter\[dataframe\]"):
        from_dataframe(object())
