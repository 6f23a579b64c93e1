"""Tests of raserec_adapter.data.datasets: registry, file resolution, checksums and downloads."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import raserec_adapter
from raserec_adapter.data import DataFormatError, datasets
from raserec_adapter.data.datasets import (
    DATASETS,
    ChecksumError,
    DatasetInfo,
    DatasetNotFoundError,
    checkout_root,
    dataset_path,
    default_cache_dir,
    development_data_dir,
    load_dataset,
)

SHARED_DATA = Path(
    os.environ.get("RASEREC_DATA_DIR")
    or Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
)
TINY = b"1 1 2 3\n2 2 3\n3 3 1 2\n"
REAL_URLOPEN = urllib.request.urlopen


def tiny_info(content: bytes = TINY, url: str = "https://example.invalid/tiny.txt") -> DatasetInfo:
    return DatasetInfo(
        name="tiny",
        filename="tiny.txt",
        url=url,
        sha256=hashlib.sha256(content).hexdigest(),
        users=3,
        items=3,
        interactions=8,
    )


def put(folder: Path, content: bytes = TINY, name: str = "tiny.txt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(content)
    return path


class FakeResponse(io.BytesIO):
    """What urlopen returns: a readable context manager with headers."""

    def __init__(self, content: bytes) -> None:
        super().__init__(content)
        self.headers = {"Content-Length": str(len(content))}


def fake_checkout(root: Path, name: str = "raserec-adapter") -> Path:
    """A checkout at ``root`` (a ``pyproject.toml`` naming ``name``); its package folder."""
    (root / "raserec_adapter").mkdir(parents=True)
    (root / "pyproject.toml").write_text(f'[project]\nname = "{name}"\nversion = "0"\n')
    return root / "raserec_adapter"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No env vars, a fresh working directory and home, no network, and the tiny dataset.

    The package is made to live in a fake checkout ``root/project`` (so the development
    fallback is ``root/shared/data``), and the working directory is elsewhere.
    """
    monkeypatch.delenv("RASEREC_DATA_DIR", raising=False)
    monkeypatch.delenv("RASEREC_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(datasets, "_PACKAGE_DIR", fake_checkout(tmp_path / "root" / "project"))
    work = tmp_path / "elsewhere" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("tests must not use the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setitem(DATASETS, "tiny", tiny_info())
    return tmp_path


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


def test_registry_matches_the_data_readme_and_the_papers_table_5() -> None:
    # users, items, interactions as the data folder's README and the paper's Table 5 give them
    expected = {
        "beauty": ("Beauty.txt", 22_363, 12_101, 198_502),
        "sports": ("Sports_and_Outdoors.txt", 35_598, 18_357, 296_337),
        "clothing": ("Clothing_Shoes_and_Jewelry.txt", 39_387, 23_033, 278_677),
    }
    for name, (filename, users, items, interactions) in expected.items():
        info = DATASETS[name]
        assert info.name == name and info.filename == filename
        assert (info.users, info.items, info.interactions) == (users, items, interactions)
        assert info.url.startswith("https://") and len(info.sha256) == 64
        int(info.sha256, 16)  # hex digits (the files themselves: the SHA256SUMS test below)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DATASETS["beauty"].users = 1  # type: ignore[misc]


@pytest.mark.skipif(not (SHARED_DATA / "SHA256SUMS").is_file(), reason="SHA256SUMS not found")
def test_registry_checksums_match_sha256sums() -> None:
    sums = dict(
        reversed(line.split()) for line in (SHARED_DATA / "SHA256SUMS").read_text().splitlines()
    )
    for name in ("beauty", "sports", "clothing"):
        assert DATASETS[name].sha256 == sums[DATASETS[name].filename]


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'movielens'") as err:
        load_dataset("movielens")
    assert "beauty" in str(err.value) and "clothing" in str(err.value)
    assert "sports" in str(err.value)


# --------------------------------------------------------------------------------------------
# resolution order
# --------------------------------------------------------------------------------------------


def test_resolution_order(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arg, env, cache = isolated / "arg", isolated / "env", isolated / "cache"
    shared = isolated / "root" / "shared" / "data"  # ../shared/data next to the checkout
    files = [put(d) for d in (arg, env, shared, cache)]
    monkeypatch.setenv("RASEREC_DATA_DIR", str(env))
    kwargs = {"data_dir": arg, "cache_dir": cache, "download": False}
    for expected in files:
        assert dataset_path("tiny", **kwargs) == expected.resolve()
        expected.unlink()
    with pytest.raises(DatasetNotFoundError):
        dataset_path("tiny", **kwargs)


def test_fallback_is_next_to_the_checkout_not_the_working_directory(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = put(isolated / "root" / "shared" / "data")
    near_cwd = put(isolated / "elsewhere" / "shared" / "data", b"1 1\n")  # ../shared/data of cwd
    for cwd in (isolated / "elsewhere" / "work", isolated, isolated / "root" / "project"):
        monkeypatch.chdir(cwd)
        assert dataset_path("tiny", download=False) == shared.resolve()
        assert load_dataset("tiny", download=False).num_interactions == 8
    assert near_cwd.is_file()  # there, but never looked at (its checksum would fail)


@pytest.mark.parametrize("pyproject", [None, "other-project"])
def test_no_fallback_outside_a_checkout_of_this_project(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, pyproject: str | None
) -> None:
    """An installed package (no pyproject.toml beside it, or another project's) has none."""
    if pyproject is None:
        package = isolated / "site-packages" / "raserec_adapter"
        package.mkdir(parents=True)
    else:
        package = fake_checkout(isolated / "other", name=pyproject)
    monkeypatch.setattr(datasets, "_PACKAGE_DIR", package)
    put(package.parent.parent / "shared" / "data")
    assert checkout_root() is None and development_data_dir() is None
    with pytest.raises(DatasetNotFoundError) as err:
        dataset_path("tiny", download=False)
    assert "shared" not in str(err.value)


def test_development_data_dir_of_this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real package location, as imported
    package = Path(raserec_adapter.__file__).resolve().parent
    if (package.parent / "pyproject.toml").is_file():  # tests run from a checkout
        assert checkout_root() == package.parent
        assert development_data_dir() == package.parents[1] / "shared" / "data"
    else:  # tests run against an installed wheel
        assert checkout_root() is None and development_data_dir() is None


def test_data_dir_without_file_falls_back_to_env(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = put(isolated / "env")
    monkeypatch.setenv("RASEREC_DATA_DIR", str(isolated / "env"))
    (isolated / "empty").mkdir()
    assert dataset_path("TINY", data_dir=isolated / "empty") == env_file.resolve()
    seqs = load_dataset("tiny", data_dir=isolated / "empty")
    assert [seqs[u].tolist() for u in range(3)] == [[1, 2, 3], [2, 3], [3, 1, 2]]


def test_cache_dir_from_env_and_home(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_cache_dir() == isolated / "home" / ".cache" / "raserec-adapter"
    home_file = put(default_cache_dir())
    assert dataset_path("tiny", download=False) == home_file.resolve()
    monkeypatch.setenv("RASEREC_CACHE_DIR", str(isolated / "c"))
    assert default_cache_dir() == isolated / "c"
    assert default_cache_dir(isolated / "x") == isolated / "x"
    env_file = put(isolated / "c")
    assert dataset_path("tiny", download=False) == env_file.resolve()


# --------------------------------------------------------------------------------------------
# checksums and counts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["data_dir", "env", "cache"])
def test_checksum_mismatch(isolated: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    bad = put(isolated / where, TINY + b"4 1\n")
    put(isolated / "later")  # a good copy further down the search order is not used
    kwargs: dict[str, Path] = {"cache_dir": isolated / "later"}
    if where == "data_dir":
        kwargs["data_dir"] = isolated / where
    elif where == "env":
        monkeypatch.setenv("RASEREC_DATA_DIR", str(isolated / where))
    else:
        kwargs["cache_dir"] = isolated / where
    with pytest.raises(ChecksumError) as err:
        load_dataset("tiny", **kwargs)  # type: ignore[arg-type]
    msg = str(err.value)
    assert str(bad) in msg
    assert DATASETS["tiny"].sha256 in msg
    assert hashlib.sha256(bad.read_bytes()).hexdigest() in msg
    assert "delete or replace" in msg and DATASETS["tiny"].url in msg


def test_count_mismatch(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DATASETS, "tiny", dataclasses.replace(tiny_info(), users=4))
    put(isolated / "d")
    with pytest.raises(DataFormatError, match="should have 4 users, 3 items and 8 interactions"):
        load_dataset("tiny", data_dir=isolated / "d")


# --------------------------------------------------------------------------------------------
# downloads
# --------------------------------------------------------------------------------------------


def test_download_from_file_url(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", REAL_URLOPEN)  # file:// needs no network
    source = put(isolated / "server")
    info = tiny_info(url=source.as_uri())
    cache = isolated / "cache"
    with caplog.at_level(logging.INFO, logger="raserec_adapter.data.datasets"):
        seqs = load_dataset(info, cache_dir=cache)
    assert seqs.num_interactions == 8
    assert (cache / "tiny.txt").read_bytes() == TINY
    assert sorted(p.name for p in cache.iterdir()) == ["tiny.txt"]  # no partial files left
    assert "downloading dataset 'tiny'" in caplog.text
    source.unlink()  # second time: from the cache, no download
    assert dataset_path(info, cache_dir=cache, download=False) == (cache / "tiny.txt").resolve()


def test_download_with_fake_urlopen(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    content = b"".join(b"%d 1 2 3\n" % u for u in range(1, 30_001))  # several chunks
    monkeypatch.setitem(DATASETS, "tiny", tiny_info(content))
    calls: list[str] = []

    def fake_urlopen(url: str, timeout: float = 0) -> FakeResponse:
        calls.append(url)
        return FakeResponse(content)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    monkeypatch.setenv("RASEREC_CACHE_DIR", str(isolated / "envcache"))
    with caplog.at_level(logging.INFO, logger="raserec_adapter.data.datasets"):
        path = dataset_path("tiny")
    assert path.resolve() == (isolated / "envcache" / "tiny.txt").resolve()
    assert path.read_bytes() == content
    assert calls == [DATASETS["tiny"].url]
    assert f"(65536 of {len(content)} bytes)" in caplog.text  # progress, chunk by chunk
    assert f"tiny.txt ({len(content)} bytes)" in caplog.text  # the final "downloaded" line
    assert dataset_path("tiny").resolve() == path.resolve() and len(calls) == 1


def test_download_checksum_mismatch_leaves_nothing(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=0: FakeResponse(b"1 1\n"))
    cache = isolated / "cache"
    with pytest.raises(ChecksumError) as err:
        dataset_path("tiny", cache_dir=cache)
    msg = str(err.value)
    assert DATASETS["tiny"].sha256 in msg and hashlib.sha256(b"1 1\n").hexdigest() in msg
    assert "RASEREC_DATA_DIR" in msg
    assert list(cache.iterdir()) == []


def test_download_failure_explains_what_to_do(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(url: str, timeout: float = 0) -> FakeResponse:
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    cache = isolated / "cache"
    with pytest.raises(DatasetNotFoundError) as err:
        dataset_path("tiny", data_dir=isolated / "nowhere", cache_dir=cache)
    msg = str(err.value)
    assert "no route to host" in msg and DATASETS["tiny"].url in msg
    assert str(isolated / "nowhere" / "tiny.txt") in msg
    assert "RASEREC_DATA_DIR" in msg and "data_dir=" in msg
    assert list(cache.iterdir()) == []


def test_not_found_without_download(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RASEREC_DATA_DIR", str(isolated / "envdir"))
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("tiny", data_dir=isolated / "argdir", download=False)
    msg = str(err.value)
    assert "download=False" in msg and DATASETS["tiny"].url in msg
    shared = isolated / "root" / "shared" / "data"
    for place in ("argdir", "envdir", str(shared), "raserec-adapter"):
        assert place in msg
    assert "RASEREC_DATA_DIR" in msg


# --------------------------------------------------------------------------------------------
# direct paths
# --------------------------------------------------------------------------------------------


def test_load_paths(isolated: Path) -> None:
    txt = put(isolated, name="seqs.txt")
    assert load_dataset(txt).num_interactions == 8
    assert load_dataset(str(txt)).num_users == 3
    assert dataset_path(txt) == txt
    csv = put(isolated, b"user_id,item_id,timestamp\na,x,2\na,y,1\n", name="t.csv")
    assert load_dataset(csv).item_labels.tolist() == ["y", "x"]
    tsv = put(isolated, b"user\titem\nb,c\tz\n", name="t.tsv")
    assert load_dataset(tsv).user_labels.tolist() == ["b,c"]
    other = put(isolated, b"{}", name="t.json")
    with pytest.raises(ValueError, match=r"unsupported extension '\.json'"):
        load_dataset(other)
    with pytest.raises(DatasetNotFoundError, match="no such data file"):
        load_dataset(isolated / "missing.txt")
    with pytest.raises(DatasetNotFoundError, match="no such data file"):
        load_dataset("missing.csv")


def test_load_gzip_paths(isolated: Path) -> None:
    txt = put(isolated, gzip.compress(TINY), name="seqs.txt.gz")
    assert load_dataset(txt).num_interactions == 8
    assert load_dataset(str(txt)).num_users == 3
    table = gzip.compress(b"user_id,item_id,timestamp\na,x,2\na,y,1\n")
    csv = put(isolated, table, name="t.CSV.gz")
    assert load_dataset(csv).item_labels.tolist() == ["y", "x"]
    with pytest.raises(ValueError, match=r"unsupported extension '\.json\.gz'"):
        load_dataset(put(isolated, gzip.compress(b"{}"), name="t.json.gz"))
    with pytest.raises(DatasetNotFoundError, match="no such data file"):
        load_dataset("missing.txt.gz")


# --------------------------------------------------------------------------------------------
# the real file
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not (SHARED_DATA / "Beauty.txt").is_file(), reason="Beauty.txt not found")
def test_real_beauty(monkeypatch: pytest.MonkeyPatch) -> None:
    seqs = load_dataset("beauty", data_dir=SHARED_DATA, download=False)
    assert (seqs.num_users, seqs.num_items, seqs.num_interactions) == (22_363, 12_101, 198_502)
    monkeypatch.setenv("RASEREC_DATA_DIR", str(SHARED_DATA))
    assert dataset_path("Beauty", download=False) == (SHARED_DATA / "Beauty.txt").resolve()


def test_a_data_file_name_is_found_under_data_dir(isolated: Path, tmp_path: Path) -> None:
    folder = tmp_path / "their-data"
    folder.mkdir()
    (folder / "Their_File.txt").write_bytes(TINY)
    assert load_dataset("Their_File.txt", data_dir=folder).num_interactions == 8
    assert dataset_path("Their_File.txt", data_dir=folder) == folder / "Their_File.txt"
    with pytest.raises(DatasetNotFoundError, match=r"(?s)looked at:.*data_dir argument"):
        load_dataset("Other_File.txt", data_dir=folder)
