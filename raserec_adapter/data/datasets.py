"""Registry of the paper's benchmark datasets, with lookup, download and checksum checks.

The three Amazon datasets of the RaSeRec paper (Beauty, Sports and Outdoors, Clothing Shoes
and Jewelry) in the preprocessed 5-core ``user item item ...`` form of S3-Rec / ICLRec / DuoRec.
:func:`load_dataset` finds a dataset file, in order, in

1. the ``data_dir`` argument,
2. the folder named by the environment variable ``RASEREC_DATA_DIR``,
3. in a development checkout only, ``../shared/data`` next to the checkout (see
   :func:`development_data_dir`; never relative to the working directory),
4. the cache folder (``cache_dir`` argument, else ``RASEREC_CACHE_DIR``, else
   ``~/.cache/raserec-adapter``),

and otherwise downloads it from its public URL into the cache. Every file's SHA-256 checksum
is verified, and the loaded counts are checked against the paper's table.

Examples:
    >>> seqs = load_dataset("beauty")  # doctest: +SKIP
    >>> seqs.num_users, seqs.num_items, seqs.num_interactions  # doctest: +SKIP
    (22363, 12101, 198502)
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from raserec_adapter.data._files import _format_suffix
from raserec_adapter.data.readers import read_interactions, read_sequences_txt
from raserec_adapter.data.sequences import DataFormatError, Sequences
from raserec_adapter.data.vocabulary import Vocabulary, apply_vocabulary

__all__ = [
    "DATASETS",
    "ChecksumError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "checkout_root",
    "dataset_path",
    "default_cache_dir",
    "development_data_dir",
    "load_dataset",
]

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "RASEREC_DATA_DIR"
CACHE_DIR_ENV = "RASEREC_CACHE_DIR"
_TABLE_SUFFIXES = (".csv", ".tsv", ".inter")
_CHUNK = 1 << 16
_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the imported raserec_adapter/ folder
_PROJECT_NAME = re.compile(r'^name\s*=\s*["\']raserec-adapter["\']\s*$', re.MULTILINE)


class ChecksumError(DataFormatError):
    """A dataset file does not have the expected SHA-256 checksum."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file is neither on disk nor downloadable."""


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset: where to get it, how to verify it, and its size.

    Attributes:
        name: Registry key (lower case), e.g. ``"beauty"``.
        filename: File name looked for in the data folders and the cache.
        url: Public URL of the file.
        sha256: Expected SHA-256 hex digest of the file.
        users: Number of users (lines).
        items: Number of distinct items.
        interactions: Number of interactions.
    """

    name: str
    filename: str
    url: str
    sha256: str
    users: int
    items: int
    interactions: int


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            name="beauty",
            filename="Beauty.txt",
            url="https://raw.githubusercontent.com/salesforce/ICLRec/master/data/Beauty.txt",
            sha256="226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
            users=22_363,
            items=12_101,
            interactions=198_502,
        ),
        DatasetInfo(
            name="sports",
            filename="Sports_and_Outdoors.txt",
            url=(
                "https://raw.githubusercontent.com/salesforce/ICLRec/master/data/"
                "Sports_and_Outdoors.txt"
            ),
            sha256="2a095e0648872beb9982408958290f5d655db5be2911c3756b5446de9f0b8de2",
            users=35_598,
            items=18_357,
            interactions=296_337,
        ),
        DatasetInfo(
            name="clothing",
            filename="Clothing_Shoes_and_Jewelry.txt",
            url="https://raw.githubusercontent.com/recocrea/IDEADLRec/main/data/Clothing.txt",
            sha256="9f5051aa601de52a922e6ff51fe879960ff3bf48559d81110478f0f5cc63561e",
            users=39_387,
            items=23_033,
            interactions=278_677,
        ),
    )
}


def default_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The download cache: ``cache_dir``, else ``$RASEREC_CACHE_DIR``, else the user cache.

    Args:
        cache_dir: Explicit folder, returned as is when given.

    Returns:
        The cache folder (not created).

    Examples:
        >>> default_cache_dir("/tmp/my-cache").as_posix()
        '/tmp/my-cache'
    """
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env)
    return Path.home() / ".cache" / "raserec-adapter"


def checkout_root() -> Path | None:
    """The source checkout this package is imported from, or ``None`` when it is installed.

    A checkout is the folder holding the imported ``raserec_adapter/`` package when that folder
    also has a ``pyproject.toml`` naming this project (``name = "raserec-adapter"``); an
    installed wheel (``site-packages``) has none.

    Examples:
        >>> root = checkout_root()
        >>> root is None or (root / "pyproject.toml").is_file()
        True
    """
    root = _PACKAGE_DIR.parent
    try:
        text = (root / "pyproject.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return root if _PROJECT_NAME.search(text) else None


def development_data_dir() -> Path | None:
    """The development fallback ``../shared/data``, next to the checkout, or ``None``.

    Found relative to the checkout the package is imported from (:func:`checkout_root`), so the
    same folder is searched from any working directory; an installed package has no fallback.

    Examples:
        >>> folder = development_data_dir()
        >>> folder is None or folder.parts[-2:] == ("shared", "data")
        True
    """
    root = checkout_root()
    return None if root is None else root.parent / "shared" / "data"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, info: DatasetInfo, origin: str) -> None:
    """Raises :class:`ChecksumError` if ``path`` does not hash to ``info.sha256``."""
    found = _sha256(path)
    if found != info.sha256:
        raise ChecksumError(
            f"{path} ({origin}) is not the expected {info.name!r} file: SHA-256 is {found}, "
            f"expected {info.sha256}. The file is corrupt or a different version; delete or "
            f"replace it with the file from {info.url}"
        )


def _lookup(name: str | DatasetInfo) -> DatasetInfo:
    if isinstance(name, DatasetInfo):
        return name
    info = DATASETS.get(name.lower())
    if info is None:
        raise ValueError(
            f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}, or pass "
            "the path of a .txt/.csv/.tsv/.inter file"
        )
    return info


def _as_file(name: str | os.PathLike[str] | DatasetInfo) -> Path | None:
    """The path when ``name`` refers to a file rather than a registered dataset, else ``None``."""
    if isinstance(name, DatasetInfo):
        return None
    if isinstance(name, os.PathLike):
        return Path(name)
    if name.lower() in DATASETS:
        return None
    path = Path(name)
    suffix = _format_suffix(path)
    if path.is_file() or suffix in (".txt", *_TABLE_SUFFIXES) or len(path.parts) > 1:
        return path
    return None


def _data_folders(data_dir: str | os.PathLike[str] | None) -> list[tuple[Path, str]]:
    """The folders searched for data files, in order, each with where it comes from."""
    places: list[tuple[Path, str]] = []
    if data_dir is not None:
        places.append((Path(data_dir), "data_dir argument"))
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        places.append((Path(env), f"${DATA_DIR_ENV}"))
    shared = development_data_dir()
    if shared is not None:
        places.append((shared, "../shared/data next to the checkout"))
    return places


def _find_file(path: Path, data_dir: str | os.PathLike[str] | None) -> Path:
    """A user's data file: ``path`` as given, else (a relative one) under the data folders."""
    places = [(path, "as given")]
    if not path.is_absolute():
        places += [(folder / path, origin) for folder, origin in _data_folders(data_dir)]
    for candidate, _ in places:
        if candidate.is_file():
            return candidate
    looked = "\n".join(f"  - {p.resolve()} ({o})" for p, o in places)
    raise DatasetNotFoundError(
        f"no such data file: {path}; looked at:\n{looked}\nPass the file's path, or its name "
        f"with data_dir=<its folder>; registered dataset names: {', '.join(sorted(DATASETS))}"
    )


def dataset_path(
    name: str | os.PathLike[str] | DatasetInfo,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Path:
    """Finds (or downloads) the file of a dataset and verifies its checksum.

    Looks in ``data_dir``, then ``$RASEREC_DATA_DIR``, then (in a development checkout only)
    ``../shared/data`` next to the checkout (:func:`development_data_dir`), then the cache
    folder (see :func:`default_cache_dir`); if the file is in none of them and ``download`` is
    true, downloads it into the cache (to a temporary file that is renamed once complete and
    verified).

    Args:
        name: A registered name (see :data:`DATASETS`, case-insensitive), a
            :class:`DatasetInfo`, or the path of a data file (returned as is when it exists; a
            relative one is also looked for under ``data_dir``, ``$RASEREC_DATA_DIR`` and
            ``../shared/data``, in that order).
        data_dir: Folder searched first.
        cache_dir: Download cache; default ``$RASEREC_CACHE_DIR`` or
            ``~/.cache/raserec-adapter``.
        download: Whether to download a missing file.

    Returns:
        Path of the verified file.

    Raises:
        ValueError: If ``name`` is not a registered dataset (the message lists them).
        ChecksumError: If the first file found, or the download, has the wrong checksum.
        DatasetNotFoundError: If the file is nowhere and cannot be downloaded; the message
            lists the places looked at and the URL.

    Examples:
        >>> dataset_path("beauty").name  # doctest: +SKIP
        'Beauty.txt'
    """
    path = _as_file(name)
    if path is not None:
        return _find_file(path, data_dir)
    assert not isinstance(name, os.PathLike)  # handled by _as_file
    info = _lookup(name)
    places = _data_folders(data_dir)
    cache = default_cache_dir(cache_dir)
    places.append((cache, "cache"))

    for folder, origin in places:
        candidate = folder / info.filename
        if candidate.is_file():
            _verify(candidate, info, origin)
            logger.debug("dataset %r found at %s (%s)", info.name, candidate, origin)
            return candidate.resolve()

    looked = "\n".join(f"  - {(f / info.filename).resolve()} ({o})" for f, o in places)
    fix = (
        f"Download {info.url} into one of these folders, set {DATA_DIR_ENV} to the folder "
        "holding it, or pass data_dir=..."
    )
    if not download:
        raise DatasetNotFoundError(
            f"dataset {info.name!r} ({info.filename}) not found and download=False. Looked at:\n"
            f"{looked}\n{fix}"
        )
    try:
        return _download(info, cache)
    except (urllib.error.URLError, OSError) as e:
        raise DatasetNotFoundError(
            f"dataset {info.name!r} ({info.filename}) not found and downloading {info.url} "
            f"failed ({e}). Looked at:\n{looked}\n{fix}"
        ) from e


def _download(info: DatasetInfo, cache: Path) -> Path:
    """Downloads ``info.url`` into ``cache`` atomically, verifying the checksum."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / info.filename
    logger.info("downloading dataset %r from %s to %s", info.name, info.url, target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{info.filename}.", suffix=".part", dir=cache)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        done = 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(info.url, timeout=60) as resp:
            total = int(resp.headers.get("Content-Length") or 0) if resp.headers else 0
            next_report = 0.1
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                h.update(chunk)
                done += len(chunk)
                if total and done / total >= next_report:
                    pct = 100 * done / total
                    logger.info("%s: %.0f%% (%d of %d bytes)", info.filename, pct, done, total)
                    next_report = done / total + 0.1
        found = h.hexdigest()
        if found != info.sha256:
            raise ChecksumError(
                f"downloaded {info.url} ({done} bytes) but its SHA-256 is {found}, expected "
                f"{info.sha256}; the file at the URL changed or the download was corrupted. "
                f"Try again, or get the right file and set {DATA_DIR_ENV} to its folder"
            )
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("downloaded %s (%d bytes)", target, done)
    return target.resolve()


def load_dataset(
    name: str | os.PathLike[str] | DatasetInfo,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    *,
    item_vocab: Vocabulary | None = None,
    user_vocab: Vocabulary | None = None,
    unknown: str = "error",
) -> Sequences:
    """Loads a registered dataset (verified) or a data file.

    Args:
        name: A registered name (``"beauty"``, ``"sports"``, ``"clothing"``), a
            :class:`DatasetInfo`, or a path: ``.txt`` files are read with
            :func:`~raserec_adapter.data.readers.read_sequences_txt`, ``.csv``/``.tsv``/``.inter``
            files with :func:`~raserec_adapter.data.readers.read_interactions` (default columns);
            the same names ending in ``.gz`` are decompressed while reading.
        data_dir: Folder searched first (see :func:`dataset_path` for the search order).
        cache_dir: Download cache.
        download: Whether to download a missing registered dataset.
        item_vocab: Optional item vocabulary, to number items as an encoder trained elsewhere
            does (``token -> id``, or the tokens in id order with the padding first; see
            :func:`~raserec_adapter.data.vocabulary.apply_vocabulary`).
        user_vocab: Optional user vocabulary; rows then follow its ids.
        unknown: With a vocabulary: ``"error"`` refuses tokens it lacks, ``"drop"`` drops
            their interactions.

    Returns:
        The sequences, with the original ids as labels.

    Raises:
        ValueError: Unknown dataset name or unsupported file extension.
        ChecksumError: The file found or downloaded has the wrong checksum.
        DatasetNotFoundError: The file is nowhere and cannot be downloaded.
        DataFormatError: The file is malformed, or a registered dataset's users, items or
            interactions differ from the registry.

    Examples:
        >>> seqs = load_dataset("beauty")  # doctest: +SKIP
        >>> seqs.describe()["users"]  # doctest: +SKIP
        22363
    """
    path = dataset_path(name, data_dir=data_dir, cache_dir=cache_dir, download=download)
    shared = {"item_vocab": item_vocab, "user_vocab": user_vocab, "unknown": unknown}
    if isinstance(name, os.PathLike) or _as_file(name) is not None:
        suffix = _format_suffix(path)
        if suffix == ".txt":
            return read_sequences_txt(path, **shared)
        if suffix in _TABLE_SUFFIXES:
            return read_interactions(path, **shared)
        extension = path.suffix if suffix == path.suffix.lower() else suffix + path.suffix
        raise ValueError(
            f"{path}: unsupported extension {extension!r}; use .txt ('user item item ...' "
            "lines) or .csv/.tsv/.inter (user/item/timestamp tables), optionally gzip-compressed "
            "(.txt.gz, .csv.gz, ...), or call read_sequences_txt / read_interactions directly"
        )
    info = _lookup(name)
    seqs = read_sequences_txt(path)
    expected = (info.users, info.items, info.interactions)
    found = (seqs.num_users, seqs.num_items, seqs.num_interactions)
    if found != expected:
        raise DataFormatError(
            f"{path}: dataset {info.name!r} should have {expected[0]} users, {expected[1]} "
            f"items and {expected[2]} interactions, found {found[0]}, {found[1]} and "
            f"{found[2]}; the file is not the registered version, replace it with {info.url}"
        )
    return apply_vocabulary(seqs, item_vocab, user_vocab, unknown=unknown)
