"""The augmenter's checkpoint directory: ``config.json``, ``ram.pt`` and ``bank/``.

:meth:`RetrievalAugmenter.save <raserec_adapter.RetrievalAugmenter.save>` and
:meth:`~raserec_adapter.RetrievalAugmenter.load` use these functions; the format is documented
in ``docs/checkpoints.md``. Nothing is pickled: the metadata and config are JSON, the RAM
weights a state dict read with ``weights_only=True``, the bank its own directory format. A save
is atomic at every instant (a kill leaves the old or the new checkpoint at the path) and
``config.json`` records the SHA-256 of the other files, which a load verifies.

Examples:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from raserec_adapter import AugmenterConfig
    >>> path = Path(tempfile.mkdtemp()) / "ckpt"
    >>> meta = checkpoint_meta(AugmenterConfig(hidden_size=16), 30, "MyEncoder", None)
    >>> write_checkpoint(path, meta, {}, bank=None)
    >>> meta, saved = read_meta(path, config=None)
    >>> meta["num_items"], saved.hidden_size
    (30, 16)
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from raserec_adapter import _atomic
from raserec_adapter._checks import check_device
from raserec_adapter.config import AugmenterConfig
from raserec_adapter.encoder import WrappedEncoder
from raserec_adapter.memory.format import MemoryBankDamagedError, bank_incomplete
from raserec_adapter.memory.protocol import MemoryBank
from raserec_adapter.memory.torch_bank import TorchMemoryBank

__all__ = [
    "FORMAT_VERSION",
    "SAVE_STEPS",
    "CheckpointError",
    "check_encoder_fits",
    "checkpoint_meta",
    "load_bank",
    "load_ram_weights",
    "read_bank",
    "read_meta",
    "read_ram_state",
    "restore",
    "write_checkpoint",
]

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A saved augmenter does not match the encoder or config it is loaded with."""


logger = logging.getLogger("raserec_adapter")


def checkpoint_meta(
    config: AugmenterConfig,
    num_items: int,
    encoder_class: str,
    bank_phase: str | None,
    item_table: torch.Tensor | None = None,
) -> dict[str, Any]:
    """The content of ``config.json``: format version, config and what the RAM was fit to.

    With ``item_table`` it also holds :func:`table_fingerprint` of the encoder's item table, so
    that a load with another encoder (other weights, same shapes) is noticed.
    """
    meta = {
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "num_items": num_items,
        "encoder_class": encoder_class,
        "bank_phase": bank_phase,
    }
    if item_table is not None:
        meta["item_table_sha256"] = table_fingerprint(item_table)
    return meta


def table_fingerprint(item_table: torch.Tensor) -> str:
    """sha256 of the item table's float32 values (the same weights give the same string)."""
    data = item_table.detach().float().cpu().contiguous().numpy()
    return hashlib.sha256(data.tobytes()).hexdigest()


def write_checkpoint(
    path: str | Path,
    meta: dict[str, Any],
    ram_state: dict[str, torch.Tensor],
    bank: MemoryBank | None,
) -> None:
    """Writes ``config.json``, ``ram.pt`` and (with a bank) ``bank/`` as the directory ``path``.

    The directory is written beside ``path`` under a hidden name, synced to disk and put in
    place in one step (:mod:`raserec_adapter._atomic`), so at every instant, a kill included,
    ``path`` holds the complete earlier checkpoint or the complete new one. ``config.json``
    records the size and SHA-256 of ``ram.pt`` and ``bank/bank.json`` (which records the
    bank's other files) and of its own content; :func:`read_meta` and :func:`restore` verify
    them. Only an earlier checkpoint (a directory with ``config.json`` and nothing save() did
    not write) or an empty directory is replaced; the new directory keeps the old one's
    permissions (else the umask's). The leftovers of an interrupted earlier save of ``path``
    are removed first (or, if nothing is at ``path``, the complete copy is put back).

    Raises:
        FileExistsError: If ``path`` is a file, a directory that is not a checkpoint, or a
            checkpoint that holds other files too.
    """
    path = Path(path)
    _atomic.settle(path, _incomplete)
    _check_replaceable(path)
    tmp = _atomic.new_dir(path)  # the umask's permissions, as any new directory
    try:
        if path.exists():
            tmp.chmod(path.stat().st_mode & 0o7777)  # a replaced checkpoint keeps its own
        torch.save(ram_state, tmp / "ram.pt")
        _atomic.step("checkpoint.wrote ram.pt")
        names = ["ram.pt"]
        if bank is not None:
            bank.save(tmp / "bank")
            _atomic.step("checkpoint.wrote bank")
            names.append("bank/bank.json")
        sealed = _atomic.seal({**meta, "files": _atomic.record_files(tmp, names)})
        with open(tmp / "config.json", "w", encoding="utf-8") as fh:
            fh.write(json.dumps(sealed, indent=2, sort_keys=True) + "\n")
        _atomic.step("checkpoint.wrote config.json")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _atomic._ACTIVE.discard(tmp)
        raise
    _atomic.install_dir(tmp, path, "checkpoint")


SAVE_STEPS = ("checkpoint.wrote ram.pt", "checkpoint.wrote bank", "checkpoint.wrote config.json")
"""The steps of :func:`write_checkpoint` before :func:`~raserec_adapter._atomic.install_dir`'s
(``"checkpoint.wrote bank"`` only with a bank, after the bank's own steps)."""


def _incomplete(path: Path) -> str | None:
    """Why the directory ``path`` is not a complete checkpoint whose checksums all match
    (``None`` when it is one): what :func:`~raserec_adapter._atomic.settle` recovers."""
    try:
        meta = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"config.json cannot be read: {e}"
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        return "config.json records no checksums"
    why = _atomic.unsealed(meta) or "; ".join(_atomic.mismatches(path, meta["files"]))
    if why or not (path / "bank").is_dir():
        return why or None
    return bank_incomplete(path / "bank")


def _verify(path: Path, meta: dict[str, Any], name: str) -> None:
    """Refuses ``path/name`` if it differs from what ``config.json`` records of it."""
    files = meta.get("files")
    if not isinstance(files, dict):  # saved before checksums: read_meta has warned
        return
    if name not in files:
        problems = [f"{path / name} is not recorded in config.json (it was added after save())"]
    else:
        problems = _atomic.mismatches(path, {name: files[name]})
    if problems:
        raise CheckpointError(
            f"{problems[0]}: the checkpoint was changed or damaged after it was saved; "
            "restore it from a backup, or save the augmenter again (retrain it if it is lost)"
        )


def read_meta(
    path: str | Path, config: AugmenterConfig | None
) -> tuple[dict[str, Any], AugmenterConfig]:
    """``config.json``'s content and the saved config, checked against ``config`` when given.

    Raises:
        CheckpointError: If ``config.json`` is missing or malformed, has another format
            version, or ``config`` differs from the saved one (``hidden_size`` 0 matches any).
    """
    path = Path(path)
    _atomic.settle(path, _incomplete)  # an interrupted save: its leftovers, or recovery
    meta_file = path / "config.json"
    if not meta_file.is_file():
        raise CheckpointError(f"{path} is not an augmenter checkpoint: no config.json")
    try:
        meta = json.loads(meta_file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_file} is not valid JSON: {e}") from e
    damaged = _atomic.unsealed(meta) if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise CheckpointError(
            f"{meta_file} has format version {version!r}, this library reads {FORMAT_VERSION}"
            + (f" (and {damaged}: the file may be damaged)" if damaged else "")
            + ": load it with the raserec-adapter version that saved it, or retrain"
        )
    try:
        saved = AugmenterConfig.from_dict(meta["config"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{meta_file} is malformed: {e!r}") from e
    if damaged:
        raise CheckpointError(
            f"{meta_file}: {damaged}; restore the checkpoint from a backup, or save the "
            "augmenter again (retrain it if it is lost)"
        )
    if not isinstance(meta.get("files"), dict):
        logger.warning(
            "%s was saved without checksums (by a raserec-adapter before they were recorded): "
            "its files cannot be verified; save it again to add them",
            path,
        )
    if config is not None:
        if config.hidden_size not in (0, saved.hidden_size):
            raise CheckpointError(
                f"{path} was saved with hidden size {saved.hidden_size}, the given config asks "
                f"for {config.hidden_size}; pass hidden_size=0 (take the encoder's) or "
                f"{saved.hidden_size}, or retrain with the new size"
            )
        given = config.replace(hidden_size=saved.hidden_size)
        if given != saved:
            diff = _config_diff(saved.to_dict(), given.to_dict())
            raise CheckpointError(
                f"{path} was saved with another config ({'; '.join(diff)}); load it without "
                "`config` to use the saved one, or retrain with the new config"
            )
    return meta, saved


def read_ram_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The RAM's state dict from ``path/ram.pt``, never unpickling anything.

    Raises:
        CheckpointError: If the file is missing, truncated or not a tensor file, or a
            weight holds NaN or infinite values.
    """
    file = Path(path) / "ram.pt"
    try:
        state: dict[str, torch.Tensor] = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # missing, truncated or not a tensor file: never unpickle it
        raise CheckpointError(
            f"{file} cannot be read ({type(e).__name__}: {e}); the checkpoint is "
            "incomplete or damaged: save it again"
        ) from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{file} holds a {type(state).__name__}, not a state dict")
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(t.isfinite().all()):
            raise CheckpointError(
                f"{file}: the RAM weight {name!r} holds NaN or infinite values (saved from a "
                "run that diverged); train the RAM again (fit_raft) and save it"
            )
    return state


def read_bank(
    path: str | Path, config: AugmenterConfig, device: torch.device | str
) -> MemoryBank | None:
    """The bank saved in ``path/bank`` (of ``config.bank.kind``), ``None`` when there is none.

    Raises:
        CheckpointError: If the bank's files cannot be read or its dimension is not the
            config's hidden size.
        ImportError: If a Faiss bank is saved and faiss is not installed.
    """
    where = Path(path) / "bank"
    if not where.exists():
        return None
    dim = config.hidden_size or None  # a bank of another size does not fit the RAM
    try:
        if config.bank.kind == "torch":
            return TorchMemoryBank.load(where, device=device, dim=dim)
        if config.bank.kind == "milvus":
            from raserec_adapter.memory.milvus_bank import MilvusMemoryBank

            return MilvusMemoryBank.load(where, dim=dim)
        from raserec_adapter.memory.faiss_bank import FaissMemoryBank

        return FaissMemoryBank.load(where, dim=dim)
    except ImportError:  # e.g. faiss not installed: the environment, not the checkpoint
        raise
    except MemoryBankDamagedError as e:  # names the file and says what to do
        raise CheckpointError(f"the memory bank in {where} cannot be read: {e}") from e
    except Exception as e:
        why = str(e)
        if "allow_pickle" in why:  # numpy's advice to load pickles: never taken here
            why = f"{where / 'arrays.npz'} holds pickled objects or is damaged; never loaded"
        raise CheckpointError(
            f"the memory bank in {where} cannot be read ({why}); the checkpoint is "
            "incomplete or damaged: save it again or rebuild the bank with build_bank"
        ) from e


OWN = frozenset({"config.json", "ram.pt", "bank"})  # what a checkpoint directory holds


def _check_replaceable(path: Path) -> None:
    """Refuses a ``path`` that save() may not replace: only nothing, an empty directory or an
    earlier checkpoint holding nothing but its own parts."""
    if not path.exists():
        return
    names = {e.name for e in path.iterdir()} if path.is_dir() else None
    if names is None or (names and "config.json" not in names):
        what = "a file" if names is None else "a directory that is not a checkpoint"
        raise FileExistsError(
            f"{path} is {what}; save() replaces only an earlier augmenter checkpoint (a "
            "directory with config.json) or an empty directory: choose another path"
        )
    if foreign := sorted(names - OWN):
        raise FileExistsError(
            f"{path} holds files that save() did not write ({', '.join(foreign[:5])}); saving "
            "replaces the whole directory and would delete them: move them out (e.g. keep your "
            "encoder's weights next to the checkpoint, not inside it) or choose another path"
        )


def _config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: saved {va!r}, given {vb!r}")
    return out


def check_encoder_fits(
    path: Path,
    meta: dict[str, Any],
    saved: AugmenterConfig,
    encoder: WrappedEncoder,
    strict: bool,
) -> None:
    """The load policy: refuses an encoder the checkpoint cannot fit, warns of a changed one.

    Other item counts or hidden sizes are refused (the bank and RAM cannot be used). An encoder
    of another class, or with other item embeddings than at save time, fits the shapes but not
    the memories: a warning, or with ``strict=True`` a :class:`CheckpointError`.
    """
    if encoder.num_items != meta.get("num_items"):
        raise CheckpointError(
            f"{path} was trained for {meta.get('num_items')} items, the encoder has "
            f"{encoder.num_items}; load it with the encoder it was saved with (same "
            "dataset and item ids), or build a new bank and RAFT for this one"
        )
    if encoder.hidden_size != saved.hidden_size:
        raise CheckpointError(
            f"{path} was trained with hidden size {saved.hidden_size}, the encoder has "
            f"{encoder.hidden_size}; build the encoder with the settings it was saved "
            "with (e.g. hidden_size), or build a new bank and RAFT for this one"
        )
    mismatches = []
    saved_class, this_class = meta.get("encoder_class"), type(encoder.module).__name__
    if saved_class is not None and saved_class != this_class:
        mismatches.append(
            f"{path} was saved with a {saved_class} encoder, it is loaded with a "
            f"{this_class}: the bank's keys are that encoder's representations; rebuild the "
            "bank if the encoder changed"
        )
    saved_table = meta.get("item_table_sha256")
    table = encoder.item_weights().detach().float().cpu()
    if saved_table is not None and saved_table != table_fingerprint(table):
        mismatches.append(
            f"{path} was saved with an encoder whose item table differs from this "
            "encoder's (another training run or changed weights): the bank's keys and "
            "values and the RAM were fit to that encoder; load the encoder's own weights, "
            "or rebuild the bank (build_bank) and retrain the RAM (fit_raft)"
        )
    if mismatches and strict:
        raise CheckpointError(
            "; and ".join(mismatches) + " (strict=True; strict=False loads it with a warning)"
        )
    for message in mismatches:
        logger.warning("%s", message)


def load_ram_weights(path: Path, ram: torch.nn.Module) -> None:
    """Loads ``ram.pt`` into ``ram``, or a :class:`CheckpointError` saying why it does not fit."""
    try:
        ram.load_state_dict(read_ram_state(path))
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path / 'ram.pt'} does not fit the RAM of this config: {e}") from e


def load_bank(
    path: Path, meta: dict[str, Any], saved: AugmenterConfig, device: torch.device | str
) -> tuple[MemoryBank | None, str | None]:
    """The saved bank and its phase (``"train"``, ``"test"`` or ``"custom"``), or ``None``s."""
    bank = read_bank(path, saved, device)
    phase = meta.get("bank_phase")
    if bank is None and phase is not None:
        raise CheckpointError(
            f"{path / 'config.json'} records a memory bank (phase {phase!r}) but "
            f"{path / 'bank'} is missing; the checkpoint is incomplete: save it again, or "
            "load it and rebuild the bank with build_bank"
        )
    if bank is None:
        return None, None
    return bank, phase if phase in ("train", "test") else "custom"


def restore(
    path: Path,
    meta: dict[str, Any],
    saved: AugmenterConfig,
    encoder: WrappedEncoder,
    ram: torch.nn.Module,
    device: torch.device | str,
    strict: bool,
) -> tuple[MemoryBank | None, str | None]:
    """Checks the encoder fits, loads the RAM weights onto ``device``; the bank and its phase.

    ``ram.pt`` and ``bank/bank.json`` are verified against the sizes and SHA-256 that
    ``config.json`` records (the bank verifies its own files the same way).
    """
    check_encoder_fits(path, meta, saved, encoder, strict)
    load_ram_weights(path, ram)
    _verify(path, meta, "ram.pt")  # after the checks that say more of a foreign file
    check_device(device)
    ram.to(device)
    bank, phase = load_bank(path, meta, saved, device)  # the bank checks its own files
    if bank is not None:
        _verify(path, meta, "bank/bank.json")
    return bank, phase
