"""Tests of raserec_adapter.data.readers: text sequences, interaction tables, k-core filters."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raserec_adapter.data import DataFormatError, Sequences
from raserec_adapter.data.readers import k_core_filter, read_interactions, read_sequences_txt

SHARED_DATA = Path(
    os.environ.get("RASEREC_DATA_DIR")
    or Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
)
HYPO = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def as_lists(seqs: Sequences) -> list[list[int]]:
    return [seqs[u].tolist() for u in range(seqs.num_users)]


def labelled(seqs: Sequences) -> dict[str, list[str]]:
    """Sequences in original ids: user label -> item labels."""
    assert seqs.user_labels is not None and seqs.item_labels is not None
    return {
        str(seqs.user_labels[u]): [str(seqs.item_labels[i - 1]) for i in seqs[u]]
        for u in range(seqs.num_users)
    }


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, newline="")
    return path


# --------------------------------------------------------------------------------------------
# read_sequences_txt
# --------------------------------------------------------------------------------------------


def test_txt_contiguous_ids_are_kept(tmp_path: Path) -> None:
    path = write(tmp_path, "a.txt", "1 3 1 2\n2 2 4\n5 4 4 1\n")
    seqs = read_sequences_txt(path)
    assert as_lists(seqs) == [[3, 1, 2], [2, 4], [4, 4, 1]]
    assert seqs.num_items == 4
    assert seqs.offsets.tolist() == [0, 3, 5, 8]
    assert seqs.items.dtype == np.int64 and seqs.offsets.dtype == np.int64
    assert seqs.user_labels.tolist() == ["1", "2", "5"]
    assert seqs.item_labels.tolist() == ["1", "2", "3", "4"]


def test_txt_non_contiguous_ids_are_remapped_by_first_appearance(tmp_path: Path) -> None:
    path = write(tmp_path, "a.txt", "10 50 7 0\n20 7 99 50\n")
    seqs = read_sequences_txt(path)
    assert as_lists(seqs) == [[1, 2, 3], [2, 4, 1]]
    assert seqs.item_labels.tolist() == ["50", "7", "0", "99"]
    assert seqs.user_labels.tolist() == ["10", "20"]
    assert labelled(seqs) == {"10": ["50", "7", "0"], "20": ["7", "99", "50"]}


def test_renumbering_is_logged_and_labels_map_both_ways(tmp_path: Path, caplog) -> None:
    caplog.set_level("INFO", logger="raserec_adapter")
    read_sequences_txt(write(tmp_path, "kept.txt", "1 1 2\n2 2 1\n"))
    assert "renumbered" not in caplog.text  # ids already 1..N: nothing to say
    seqs = read_sequences_txt(write(tmp_path, "a.txt", "10 50 7 0\n20 7 99 50\n"))
    assert "a.txt: item ids are not exactly 1..N (they run from 0 to 99)" in caplog.text
    assert "renumbered 1..4" in caplog.text
    rng = np.random.default_rng(0)
    ids = rng.integers(1, seqs.num_items + 1, size=(3, 5))
    labels = seqs.labels_of(torch.from_numpy(ids))  # recommend's output is a tensor
    assert labels.shape == (3, 5)
    assert labels.tolist() == [[seqs.item_labels[i - 1] for i in row] for row in ids.tolist()]
    assert seqs.ids_of(labels.ravel()).tolist() == ids.ravel().tolist()  # a round trip
    assert seqs.ids_of(np.array([99, 0])).tolist() == [4, 3]  # labels compare as strings
    with pytest.raises(ValueError, match=r"2 item labels are not in the data, e.g. \['8', 'x'\]"):
        seqs.ids_of(["50", "8", "x"])
    for bad in ([0], [5], [1.5]):
        with pytest.raises(ValueError, match=r"item ids must be integers in 1..4"):
            seqs.labels_of(bad)
    with pytest.raises(DataFormatError, match=r"item_labels must be distinct.*\['a'\]"):
        Sequences.from_lists([[1, 2, 3]], item_labels=["a", "b", "a"])
    with pytest.raises(ValueError, match="carry no item_labels"):
        Sequences.from_lists([[1, 2]]).labels_of([1])


def test_txt_gap_in_ids_is_remapped(tmp_path: Path) -> None:
    seqs = read_sequences_txt(write(tmp_path, "a.txt", "1 1 3\n2 3 1\n"))  # no item 2
    assert as_lists(seqs) == [[1, 2], [2, 1]]
    assert seqs.num_items == 2 and seqs.item_labels.tolist() == ["1", "3"]


def test_txt_whitespace_variants(tmp_path: Path) -> None:
    text = "\ufeff1 1 2\r\n\r\n2\t2  3 \r\n\n3 1\n\n"
    path = tmp_path / "a.txt"
    path.write_bytes(text.encode("utf-8"))
    seqs = read_sequences_txt(path)
    assert as_lists(seqs) == [[1, 2], [2, 3], [1]]
    assert seqs.user_labels.tolist() == ["1", "2", "3"]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("1 1 2\n2 3 x4\n", 2, ["'x4'", "integer"]),
        ("1 1 2\n2 3 -4\n", 2, ["'-4'", "integer"]),
        ("1 1 2\r3 3 x\r", 2, ["'x'", "integer"]),  # old Mac line endings
        ("1 1 2\r\n\r\n3 3 y5\r\n", 3, ["'y5'", "integer"]),
        ("1 1 2.5\n", 1, ["'2.5'", "integer"]),
        ("u1 1 2\n", 1, ["'u1'", "read_interactions"]),
        ("1 1 2\n\n7\n3 1\n", 3, ["user 7 has no items", "remove the line"]),
        ("1 1 2\n2 3\n1 4\n", 3, ["user 1 already appeared on line 1", "one line"]),
        ("1 1\n" + "2 99999999999999999999\n", 2, ["too large"]),
    ],
)
def test_txt_malformed(tmp_path: Path, text: str, line: int, words: list[str]) -> None:
    path = write(tmp_path, "bad.txt", text)
    with pytest.raises(DataFormatError) as err:
        read_sequences_txt(path)
    msg = str(err.value)
    assert str(path) in msg and f"line {line}" in msg
    for word in words:
        assert word in msg


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_txt_empty(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "empty.txt", text)
    with pytest.raises(DataFormatError, match="is empty") as err:
        read_sequences_txt(path)
    assert str(path) in str(err.value)


@HYPO
@given(
    st.lists(st.lists(st.integers(0, 40), min_size=1, max_size=6), min_size=1, max_size=8).flatmap(
        lambda rows: st.tuples(
            st.just(rows),
            st.lists(st.integers(0, 10**12), min_size=len(rows), max_size=len(rows), unique=True),
        )
    )
)
def test_txt_roundtrip_random(tmp_path: Path, case: tuple[list[list[int]], list[int]]) -> None:
    rows, users = case
    path = tmp_path / "r.txt"
    path.write_text(
        "".join(f"{u} {' '.join(map(str, r))}\n" for u, r in zip(users, rows, strict=True))
    )
    seqs = read_sequences_txt(path)
    assert labelled(seqs) == {str(u): [str(i) for i in r] for u, r in zip(users, rows, strict=True)}
    distinct = sorted({i for r in rows for i in r})
    assert seqs.num_items == len(distinct)
    if distinct == list(range(1, len(distinct) + 1)):
        assert as_lists(seqs) == rows  # paper files keep their ids
    else:  # first appearance order
        first = list(dict.fromkeys(i for r in rows for i in r))
        assert seqs.item_labels.tolist() == [str(i) for i in first]


@pytest.mark.skipif(not (SHARED_DATA / "Beauty.txt").is_file(), reason="Beauty.txt not found")
def test_txt_beauty() -> None:
    seqs = read_sequences_txt(SHARED_DATA / "Beauty.txt")
    assert (seqs.num_users, seqs.num_items, seqs.num_interactions) == (22_363, 12_101, 198_502)
    assert seqs[0].tolist() == [1, 2, 3, 4, 5]  # ids kept as in the file
    assert seqs.user_labels[-1] == "22363"


# --------------------------------------------------------------------------------------------
# read_interactions
# --------------------------------------------------------------------------------------------


def test_csv_sorted_by_time_with_ties_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.csv",
        "user_id,item_id,rating,timestamp\n"
        "bob,pear,5,30\n"
        "amy,kiwi,4,20\n"
        "bob,fig,3,10\n"
        "amy,pear,1,20\n"  # tie with kiwi: file order
        "bob,kiwi,2,30\n"  # tie with pear: file order
        "amy,fig,2,5.5\n",
    )
    seqs = read_interactions(path)
    assert labelled(seqs) == {"bob": ["fig", "pear", "kiwi"], "amy": ["fig", "kiwi", "pear"]}
    assert seqs.user_labels.tolist() == ["bob", "amy"]  # order of first appearance in the file
    assert seqs.item_labels.tolist() == ["fig", "pear", "kiwi"]  # first in the sequences
    assert as_lists(seqs) == [[1, 2, 3], [1, 3, 2]]
    assert seqs.num_items == 3


def test_tsv_and_short_column_names(tmp_path: Path) -> None:
    path = write(tmp_path, "t.tsv", "user\titem\ttime\n1\t10\t2\n1\t11\t1\n2\t10\t0\n")
    seqs = read_interactions(path)
    assert labelled(seqs) == {"1": ["11", "10"], "2": ["10"]}


def test_recbole_inter(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "ml.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "196\t242\t3\t881250949\n"
        "186\t302\t3\t891717742\n"
        "196\t51\t2\t881250948\n",
    )
    seqs = read_interactions(path)
    assert labelled(seqs) == {"196": ["51", "242"], "186": ["302"]}
    assert as_lists(seqs) == [[1, 2], [3]]


def test_custom_columns_and_separator(tmp_path: Path) -> None:
    path = write(tmp_path, "t.dat", "who;what;when\na;x;2\na;y;1\n")
    assert labelled(read_interactions(path, user_col="who", item_col="what", time_col="when")) == {
        "a": ["y", "x"]
    }
    path2 = write(tmp_path, "t2.txt", "visitor|page|ts\na|x|2\na|y|1\n")
    seqs = read_interactions(path2, sep="|", user_col="visitor", item_col="page", time_col="ts")
    assert labelled(seqs) == {"a": ["y", "x"]}


def test_without_time_column_file_order_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "user_id,item_id\nu,b\nv,a\nu,a\n")
    assert labelled(read_interactions(path)) == {"u": ["b", "a"], "v": ["a"]}


def test_k_core_in_reader(tmp_path: Path) -> None:
    rows = ["user_id,item_id,timestamp"]
    # users a, b, c rate x and y; user d rates z (rated once) and x -> z, then d dropped
    pairs = ["ax", "ay", "by", "bx", "cx", "cy", "dz", "dx"]
    for t, (u, i) in enumerate(pairs):
        rows.append(f"{u},{i},{t}")
    path = write(tmp_path, "t.csv", "\n".join(rows) + "\n")
    seqs = read_interactions(path, k_core=2)
    assert labelled(seqs) == {"a": ["x", "y"], "b": ["y", "x"], "c": ["x", "y"]}
    assert seqs.num_users == 3 and seqs.num_items == 2
    assert read_interactions(path).num_users == 4


@pytest.mark.parametrize(
    ("text", "kwargs", "words"),
    [
        ("uid,iid,timestamp\n1,2,3\n", {}, ["no user column", "['uid', 'iid', 'timestamp']"]),
        ("user_id,iid,timestamp\n1,2,3\n", {}, ["no item column", "'item_id' or 'item'"]),
        ("user_id,item_id\n1,2\n", {"time_col": "ts"}, ["no time column 'ts'", "time_col"]),
        ("user_id\titem_id\n1\t2\n", {}, ["no user column", "sep="]),
    ],
)
def test_missing_columns(
    tmp_path: Path, text: str, kwargs: dict[str, str], words: list[str]
) -> None:
    path = write(tmp_path, "t.csv", text)
    with pytest.raises(DataFormatError) as err:
        read_interactions(path, **kwargs)  # type: ignore[arg-type]
    msg = str(err.value)
    assert str(path) in msg
    for word in words:
        assert word in msg


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("user_id,item_id,timestamp\n1,2,3\n1,3,2015-01-01\n", 3, ["'2015-01-01'", "numeric"]),
        ("user_id,item_id,timestamp\n1,2,3\n\n1,3,\n", 4, ["''", "not a number"]),
        ("user_id,item_id,timestamp\n1,2,nan\n", 2, ["'nan'", "finite"]),
        ("user_id,item_id,timestamp\n1,2,3\n1,2\n", 3, ["at least 3", "found 2"]),
        ("user_id,item_id,timestamp\n1,2,3\n,2,4\n", 3, ["empty user id"]),
    ],
)
def test_bad_rows(tmp_path: Path, text: str, line: int, words: list[str]) -> None:
    path = write(tmp_path, "t.csv", text)
    with pytest.raises(DataFormatError) as err:
        read_interactions(path)
    msg = str(err.value)
    assert str(path) in msg and f"line {line}" in msg
    for word in words:
        assert word in msg


@pytest.mark.parametrize(
    ("text", "words"),
    [("", ["is empty", "header"]), ("user_id,item_id\n\n", ["no interactions"])],
)
def test_empty_tables(tmp_path: Path, text: str, words: list[str]) -> None:
    path = write(tmp_path, "t.csv", text)
    with pytest.raises(DataFormatError) as err:
        read_interactions(path)
    for word in words:
        assert word in str(err.value)


def test_empty_after_k_core(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "user_id,item_id,timestamp\n1,2,3\n1,3,4\n2,2,5\n")
    with pytest.raises(DataFormatError, match="no interactions left after 5-core") as err:
        read_interactions(path, k_core=5)
    assert "smaller k_core" in str(err.value) and str(path) in str(err.value)


def test_unknown_separator(tmp_path: Path) -> None:
    path = write(tmp_path, "t.dat", "user_id item_id\n1 2\n")
    with pytest.raises(DataFormatError, match="sep="):
        read_interactions(path)


def test_a_stray_quote_is_named_with_its_line(tmp_path: Path) -> None:
    """An unmatched '"' would swallow the following lines into one id: refused, with the line."""
    rows = "".join(f"u{k},i{k},{k}\n" for k in range(5))
    path = write(tmp_path, "t.csv", "user_id,item_id,timestamp\n" + rows + 'u7,"i3,5\nu8,i4,6\n')
    with pytest.raises(DataFormatError, match=r"line 7: a user or item field runs over lines 7-8"):
        read_interactions(path)
    # a stray quote with more than csv's field limit behind it: a DataFormatError, not csv.Error
    big = "".join(f"u{k % 50},i{k % 97},{k}\n" for k in range(20_000))
    path = write(tmp_path, "big.csv", 'user_id,item_id,timestamp\nu1,"i1,1\n' + big)
    with pytest.raises(DataFormatError, match=r"after line 1: cannot read the table.*stray quote"):
        read_interactions(path)
    # quoted fields that close are read as usual
    path = write(tmp_path, "ok.csv", 'user_id,item_id,timestamp\n"u1","i,1",1\nu1,i2,2\n')
    assert read_interactions(path).item_labels.tolist() == ["i,1", "i2"]


@pytest.mark.parametrize("sep", ["::", "", "\n", 3])
def test_a_separator_that_is_not_one_character_is_refused(tmp_path: Path, sep: object) -> None:
    path = write(tmp_path, "t.dat", "user_id::item_id\n1::2\n")
    with pytest.raises(ValueError, match=r"sep must be one character"):
        read_interactions(path, sep=sep)  # type: ignore[arg-type]


tables = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 6), st.integers(0, 4)), min_size=1, max_size=40
)


@HYPO
@given(tables, st.sampled_from([".csv", ".tsv", ".inter"]))
def test_interactions_match_brute_force(
    tmp_path: Path, rows: list[tuple[int, int, int]], ext: str
) -> None:
    sep = "," if ext == ".csv" else "\t"
    header = ["user_id", "item_id", "timestamp"]
    if ext == ".inter":
        header = ["user_id:token", "item_id:token", "timestamp:float"]
    lines = [sep.join(header)] + [sep.join([f"u{u}", f"i{i}", str(t)]) for u, i, t in rows]
    path = tmp_path / f"t{ext}"
    path.write_text("\n".join(lines) + "\n")
    seqs = read_interactions(path)

    expected: dict[str, list[tuple[int, str]]] = {}
    for u, i, t in rows:  # dict keeps first-appearance order; sorted() is stable
        expected.setdefault(f"u{u}", []).append((t, f"i{i}"))
    want = {u: [i for _, i in sorted(v, key=lambda x: x[0])] for u, v in expected.items()}
    assert labelled(seqs) == want
    assert list(labelled(seqs)) == list(want)  # users in order of first appearance
    first = list(dict.fromkeys(i for v in want.values() for i in v))
    assert seqs.item_labels.tolist() == first
    assert seqs.num_interactions == len(rows)


# --------------------------------------------------------------------------------------------
# k-core
# --------------------------------------------------------------------------------------------


def brute_force_k_core(pairs: list[tuple[int, int]], k: int) -> list[bool]:
    """Drops one offending user or item at a time until none is left (independent reference)."""
    alive = [True] * len(pairs)
    while True:
        users: dict[int, int] = {}
        items: dict[int, int] = {}
        for (u, i), a in zip(pairs, alive, strict=True):
            if a:
                users[u] = users.get(u, 0) + 1
                items[i] = items.get(i, 0) + 1
        weak_users = [u for u, c in users.items() if c < k]
        weak_items = [i for i, c in items.items() if c < k]
        if not weak_users and not weak_items:
            return alive
        if weak_users:
            alive = [a and u != weak_users[0] for (u, _), a in zip(pairs, alive, strict=True)]
        else:
            alive = [a and i != weak_items[0] for (_, i), a in zip(pairs, alive, strict=True)]


@HYPO
@given(
    st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8)), max_size=80),
    st.integers(0, 5),
)
def test_k_core_matches_brute_force(pairs: list[tuple[int, int]], k: int) -> None:
    users = np.array([u for u, _ in pairs], dtype=np.int64)
    items = np.array([i for _, i in pairs], dtype=np.int64)
    mask = k_core_filter(users, items, k)
    assert mask.dtype == bool and mask.tolist() == brute_force_k_core(pairs, k)


@HYPO
@given(tables, st.integers(2, 4))
def test_reader_k_core_matches_brute_force(
    tmp_path: Path, rows: list[tuple[int, int, int]], k: int
) -> None:
    path = tmp_path / "t.csv"
    body = "".join(f"{u},{i},{t}\n" for u, i, t in rows)
    path.write_text("user,item,time\n" + body)
    keep = brute_force_k_core([(u, i) for u, i, _ in rows], k)
    kept = [r for r, a in zip(rows, keep, strict=True) if a]
    if not kept:
        with pytest.raises(DataFormatError, match="no interactions left"):
            read_interactions(path, k_core=k)
        return
    seqs = read_interactions(path, k_core=k)
    assert seqs.num_interactions == len(kept)
    assert int(seqs.lengths.min()) >= k
    assert int(np.bincount(seqs.items)[1:].min()) >= k
    want: dict[str, list[tuple[int, str]]] = {}
    for u, i, t in kept:
        want.setdefault(str(u), []).append((t, str(i)))
    assert labelled(seqs) == {
        u: [i for _, i in sorted(v, key=lambda x: x[0])] for u, v in want.items()
    }


def test_k_core_string_ids_and_bad_input() -> None:
    users = np.array(["a", "a", "b", "b", "c"])
    items = np.array(["x", "y", "x", "y", "x"])
    assert k_core_filter(users, items, 2).tolist() == [True] * 4 + [False]
    assert k_core_filter(users, items, 3).tolist() == [False] * 5
    assert k_core_filter(users[:0], items[:0], 3).tolist() == []
    with pytest.raises(ValueError, match="same length"):
        k_core_filter(users, items[:2], 2)
    with pytest.raises(ValueError, match="k must be"):
        k_core_filter(users, items, -1)


# --------------------------------------------------------------------------------------------
# compression and encodings
# --------------------------------------------------------------------------------------------

TABLE = "user_id,item_id,timestamp\nu1,caf\u00e9,3\nu1,b,1\nu2,caf\u00e9,5\n"


@pytest.mark.parametrize("name", ["t.csv.gz", "t.CSV.GZ", "t.tsv.gz", "t.inter.gz", "t.gz"])
def test_gzip_tables_are_read(tmp_path: Path, name: str) -> None:
    text = TABLE.replace(",", "\t") if ".csv" not in name.lower() else TABLE
    (tmp_path / name).write_bytes(gzip.compress(text.encode("utf-8")))
    plain = write(tmp_path, "plain.csv", TABLE)
    got = read_interactions(tmp_path / name)
    assert (
        labelled(got)
        == labelled(read_interactions(plain))
        == {
            "u1": ["b", "caf\u00e9"],
            "u2": ["caf\u00e9"],
        }
    )


def test_gzip_sequences_are_read(tmp_path: Path) -> None:
    path = tmp_path / "s.txt.gz"
    path.write_bytes(gzip.compress(b"\xef\xbb\xbf1 1 2\n2 2 3\n"))
    assert as_lists(read_sequences_txt(path)) == [[1, 2], [2, 3]]


@pytest.mark.parametrize("reader", [read_interactions, read_sequences_txt])
@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("t.csv", gzip.compress(TABLE.encode()), ["gzip-compressed", ".gz", "gunzip"]),
        ("t.csv", TABLE.encode("utf-16"), ["UTF-16", "re-encode", "UTF-8"]),
        ("t.csv", TABLE.encode("utf-16-le"), ["NUL", "UTF-16", "UTF-8"]),
        ("t.csv.gz", TABLE.encode(), ["not gzip-compressed", "rename"]),
        ("t.csv.gz", gzip.compress(TABLE.encode())[:-12], ["cannot decompress", "gzip"]),
    ],
    ids=["gzip-without-gz", "utf16-bom", "utf16le-no-bom", "gz-not-gzip", "truncated-gz"],
)
def test_compressed_or_not_utf8(
    tmp_path: Path, reader: Callable[[Path], Sequences], name: str, data: bytes, words: list[str]
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DataFormatError) as err:
        reader(path)
    msg = str(err.value)
    assert str(path) in msg
    for word in words:
        assert word in msg


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz"])
def test_latin1_table_names_line_and_fix(tmp_path: Path, name: str) -> None:
    data = ("user_id,item_id\n" + "u,a\n" * 5000 + "u,caf\u00e9\n").encode("latin-1")
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    with pytest.raises(DataFormatError) as err:
        read_interactions(path)
    msg = str(err.value)
    assert str(path) in msg and "line 5002" in msg and "0xe9" in msg
    assert "not valid UTF-8" in msg and "re-encode" in msg
