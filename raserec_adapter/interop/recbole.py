"""RecBole interop: RecBole's data, split and trained sequential models, used unchanged.

A model trained by RecBole scores item ``i`` with row ``i`` of its item table, and RecBole
numbers items (and users) in the order they first appear in the ``.inter`` file's rows, while
this library's readers number them per user in time order. With the rows of a file in any
other order than by user and time, the two numberings differ, and a RecBole model evaluated on
the library's own reading of the file ranks the wrong items without any error. The functions
here take everything from RecBole's objects instead:

* :func:`sequences_from_recbole`: every user's interactions in RecBole's order, in RecBole's
  item and user ids (row ``u`` is RecBole's user ``u``; row 0, RecBole's padding user, stays
  empty);
* :func:`split_from_recbole`: the :class:`~raserec_adapter.LeaveOneOutSplit` equal to
  RecBole's leave-one-out split (``eval_args``: ``split: {LS: valid_and_test}``,
  ``order: TO``), inputs cut to ``MAX_ITEM_LIST_LENGTH`` as RecBole cuts them;
* :func:`wrap_recbole`: a RecBole ``SequentialRecommender`` as an encoder, its sizes checked
  against the dataset, encoding all positions in one pass where the model allows it.

RecBole's full-sort evaluation of a sequential model keeps the user's earlier items in the
ranking (it masks only the padding id 0): it is this library's ``"full"`` protocol, the
default of :meth:`~raserec_adapter.RetrievalAugmenter.evaluate`. RecBole is imported only when
a function is called; RecBole 1.2.1 needs ``numpy<2``, so it lives in an environment of its
own (``bash scripts/recbole_env.sh``; ``docs/recbole.md``).

The examples need RecBole's objects (``dataset`` from ``create_dataset(config)``, ``model``
trained on it, the dataloaders of ``data_preparation``), so they are skipped here and run in
RecBole's environment by ``tests/recbole_check.py``.

Examples:
    >>> from raserec_adapter.interop.recbole import ALL_POSITIONS, split_from_recbole, wrap_recbole
    >>> ALL_POSITIONS["SASRec"]  # where SASRec holds the representation at every position
    'trm_encoder'
    >>> split = split_from_recbole(dataset)  # doctest: +SKIP
    >>> encoder = wrap_recbole(model, dataset)  # doctest: +SKIP
    >>> split.max_len == encoder.module.max_seq_length  # doctest: +SKIP
    True
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from raserec_adapter._modes import modes_kept
from raserec_adapter.data.sequences import (
    DataFormatError,
    LeaveOneOutSplit,
    PrefixSet,
    Sequences,
    leave_one_out,
)
from raserec_adapter.encoder import EncoderError, WrappedEncoder, wrap_encoder

__all__ = ["INSTALL_HINT", "sequences_from_recbole", "split_from_recbole", "wrap_recbole"]

logger = logging.getLogger("raserec_adapter")

INSTALL_HINT = (
    "RecBole is not installed in this environment. RecBole 1.2.1 needs numpy<2 (it uses "
    "np.float_), so give it an environment of its own: in a clone of this repository, "
    "`bash scripts/recbole_env.sh` makes one (.venv-recbole/, pins in constraints-recbole.txt); "
    'elsewhere: pip install recbole==1.2.1 "numpy<2" "scipy<1.14" "pandas<2.3" in a new '
    "virtual environment (see docs/recbole.md)"
)
"""What to do when RecBole cannot be imported."""

ALL_POSITIONS = {"SASRec": "trm_encoder", "GRU4Rec": "dense"}
"""Per RecBole model class, the submodule whose output holds the representation at every
position (causal models: position ``t`` sees only items ``<= t``)."""

MIN_ITEMS = 4
"""RecBole's leave-one-out gives a user with 3 interactions no validation row, and one with 2
no test row; the library's split gives every user both, so they agree from 4 interactions."""


def _recbole() -> Any:
    try:
        import recbole
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return recbole


def _require_dataset(dataset: Any, what: str) -> Any:
    _recbole()
    from recbole.data.dataset import Dataset

    if not isinstance(dataset, Dataset):
        raise TypeError(
            f"{what} takes the RecBole dataset of create_dataset(config), got "
            f"{type(dataset).__name__}; for a RecBole dataloader pass its dataset "
            "(train_data.dataset)"
        )
    if dataset.time_field is None or dataset.time_field not in dataset.inter_feat:
        raise DataFormatError(
            f"the RecBole dataset has no timestamp field, so neither RecBole nor {what} can order "
            "each user's interactions in time: load it, e.g. load_col: {inter: [user_id, "
            "item_id, timestamp]} in RecBole's config (TIME_FIELD names the column)"
        )
    return dataset


def _column(feat: Any, field: str) -> np.ndarray:
    values = feat[field]
    return values.numpy() if isinstance(values, torch.Tensor) else values.to_numpy()


def _from_augmented(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(users, items)`` in sequence order from RecBole's augmented rows (``data_preparation``
    has run): a user's first item, then each row's target; every row's item list is checked."""
    feat = dataset.inter_feat
    list_field = getattr(dataset, "item_id_list_field", None)
    length_field = dataset.item_list_length_field
    if list_field is None or list_field not in feat or length_field not in feat:
        raise DataFormatError(
            "this RecBole dataset holds neither raw interactions nor RecBole's sequential "
            "training rows (item_id_list); pass the dataset of create_dataset(config) with a "
            "sequential model's config (benchmark_filename is not supported)"
        )
    users = _column(feat, dataset.uid_field).astype(np.int64)
    targets = _column(feat, dataset.iid_field).astype(np.int64)
    lists = feat[list_field].numpy().astype(np.int64)
    lengths = feat[length_field].numpy().astype(np.int64)
    order = np.argsort(users, kind="stable")  # RecBole's sorts are stable: rows stay in order
    users, targets, lists, lengths = users[order], targets[order], lists[order], lengths[order]
    new = np.concatenate([[True], users[1:] != users[:-1]]) if len(users) else np.zeros(0, bool)
    if (lengths[new] != 1).any():
        raise DataFormatError(
            "a user's first RecBole row does not start at the user's first item: this is a "
            "split part (train_data.dataset?); pass the whole dataset of create_dataset(config)"
        )
    firsts = np.flatnonzero(new)
    seq_users = np.insert(users, firsts, users[firsts])
    seq_items = np.insert(targets, firsts, lists[firsts, 0])
    # check: each row's list is the last `length` items before its target
    row_pos = np.arange(len(users)) + np.searchsorted(firsts, np.arange(len(users)), "right")
    width = lists.shape[1]
    cols = np.arange(width)
    take = row_pos[:, None] - lengths[:, None] + cols
    inside = cols < lengths[:, None]
    expected = np.where(inside, seq_items[np.clip(take, 0, len(seq_items) - 1)], 0)
    if len(users) and not np.array_equal(np.where(inside, lists, 0), expected):
        raise DataFormatError(
            "RecBole's training rows are not the prefixes of one sequence per user; pass the "
            "whole dataset of create_dataset(config), before or after data_preparation"
        )
    return seq_users, seq_items


def sequences_from_recbole(dataset: Any) -> Sequences:
    """Every user's interactions in RecBole's order and ids, as :class:`Sequences`.

    Items keep RecBole's internal ids (``1..item_num - 1``, 0 the padding), so the item table of
    a model RecBole trained on ``dataset`` lines up; ``item_labels`` are RecBole's tokens
    (``dataset.field2id_token``). Row ``u`` is RecBole's user ``u``, ``user_labels`` its token;
    row 0 (RecBole's ``[PAD]`` user) is empty. Each user's items follow RecBole's order: by
    timestamp, ties in the order of the file's rows (RecBole's stable sorts).

    Args:
        dataset: RecBole's dataset from ``create_dataset(config)``, before or after
            ``data_preparation`` (which replaces its rows by training rows: users with a
            single interaction then have none and get an empty row here). Not a part of
            RecBole's split such as ``train_data.dataset``: it lacks the last items
            (``split_from_recbole(..., check_against=...)`` would refuse the result).

    Raises:
        ImportError: RecBole is not installed (:data:`INSTALL_HINT`).
        TypeError: ``dataset`` is not a RecBole dataset.
        DataFormatError: The dataset has no timestamp field, or is a part of RecBole's split.

    Examples:
        >>> seqs = sequences_from_recbole(dataset)  # doctest: +SKIP
        >>> seqs.num_items == dataset.item_num - 1  # doctest: +SKIP
        True
    """
    dataset = _require_dataset(dataset, "sequences_from_recbole")
    feat = dataset.inter_feat
    uid, iid = dataset.uid_field, dataset.iid_field
    if hasattr(feat, "to_numpy"):  # pandas: create_dataset's rows, in the file's order
        users = _column(feat, uid).astype(np.int64)
        items = _column(feat, iid).astype(np.int64)
        order = np.lexsort((_column(feat, dataset.time_field), users))  # stable, as RecBole
        users, items = users[order], items[order]
    else:
        users, items = _from_augmented(dataset)
    num_users = int(dataset.user_num)
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=num_users), out=offsets[1:])
    return Sequences(
        items,
        offsets,
        int(dataset.item_num) - 1,
        np.asarray(dataset.field2id_token[uid], dtype=str),
        np.asarray(dataset.field2id_token[iid][1:], dtype=str),
    )


def _check_eval_args(config: Any) -> None:
    args = config["eval_args"]
    split, order = args.get("split"), args.get("order")
    if split != {"LS": "valid_and_test"} or order != "TO":
        raise ValueError(
            f"RecBole's eval_args split {split} with order {order!r} is not a leave-one-out "
            "split in time order; set eval_args: {split: {LS: valid_and_test}, order: TO, "
            "mode: full} in RecBole's config (the split RecBole uses for sequential models)"
        )


def split_from_recbole(
    dataset: Any, *, check_against: Sequence[Any] | None = None
) -> LeaveOneOutSplit:
    """The :class:`LeaveOneOutSplit` equal to RecBole's ``LS``/``TO`` split of ``dataset``.

    Per user (every user needs at least 4 interactions, :data:`MIN_ITEMS`), the last
    interaction is the test target, the one before the validation target and the earlier ones
    the training targets, inputs cut to ``MAX_ITEM_LIST_LENGTH`` (the split's ``max_len``), as
    RecBole's ``data_preparation`` makes them. Item ids are RecBole's; split row ``r`` is
    RecBole's user ``r + 1`` (``user_labels`` keep the tokens; RecBole's user 0 is padding).

    Args:
        dataset: RecBole's dataset from ``create_dataset(config)``, before or after
            ``data_preparation``.
        check_against: Optionally RecBole's ``(train_data, valid_data, test_data)`` (dataloaders
            or their datasets): each row is compared with the split's (user, input items,
            target), and any difference is an error.

    Raises:
        ImportError: RecBole is not installed.
        ValueError: The config's ``eval_args`` are not ``LS: valid_and_test`` with order ``TO``,
            or RecBole's rows differ from the split's (``check_against``).
        DataFormatError: A user has fewer than 4 interactions (the message says how to filter),
            or no timestamp field was loaded.

    Examples:
        >>> split = split_from_recbole(dataset, check_against=(train_data, valid_data, test_data))
        ... # doctest: +SKIP
        >>> split.max_len == dataset.config["MAX_ITEM_LIST_LENGTH"]  # doctest: +SKIP
        True
    """
    seqs = sequences_from_recbole(dataset)
    config = dataset.config
    _check_eval_args(config)
    lengths = seqs.lengths[1:]
    short = np.flatnonzero(lengths < MIN_ITEMS)
    if len(short):
        raise DataFormatError(
            f"{len(short)} RecBole users have fewer than {MIN_ITEMS} interactions (e.g. user "
            f"{seqs.user_labels[short[0] + 1]!r} with {lengths[short[0]]}). RecBole's "
            "leave-one-out gives a user with 3 interactions no validation row and one with 2 "
            "no test row, while this library's split gives every user both: keep users with "
            f'at least {MIN_ITEMS} interactions, e.g. user_inter_num_interval: "[{MIN_ITEMS},'
            "inf)\" in RecBole's config"
        )
    users = Sequences(
        seqs.items, seqs.offsets[1:] - seqs.offsets[1], seqs.num_items, seqs.user_labels[1:],
        seqs.item_labels,
    )  # fmt: skip
    split = leave_one_out(users, max_len=int(config["MAX_ITEM_LIST_LENGTH"]), min_length=3)
    if check_against is not None:
        parts = list(check_against)
        if len(parts) != 3:
            raise ValueError("check_against takes RecBole's (train_data, valid_data, test_data)")
        for name, part in zip(("train", "valid", "test"), parts, strict=True):
            _compare_rows(split, getattr(split, name), getattr(part, "_dataset", part), name)
    return split


def _compare_rows(split: LeaveOneOutSplit, prefixes: PrefixSet, part: Any, name: str) -> None:
    """Refuses a RecBole split part whose rows differ from the split's ``prefixes``."""
    feat = part.inter_feat
    list_field = getattr(part, "item_id_list_field", None)
    if list_field is None or hasattr(feat, "to_numpy") or list_field not in feat:
        raise TypeError(f"check_against[{name!r}] is not a part of RecBole's sequential split")
    users = _column(feat, part.uid_field).astype(np.int64)
    order = np.argsort(users, kind="stable")
    targets = _column(feat, part.iid_field).astype(np.int64)[order]
    lists = feat[list_field].numpy().astype(np.int64)[order]
    lengths = feat[part.item_list_length_field].numpy().astype(np.int64)[order]
    seqs, t = split.sequences, split.max_len
    ours_len = np.minimum(prefixes.lengths, t)
    width = max(lists.shape[1], 1)
    cols = np.arange(width)
    ends = seqs.offsets[prefixes.users] + prefixes.lengths
    inside = cols < ours_len[:, None]
    take = np.clip(ends[:, None] - ours_len[:, None] + cols, 0, max(len(seqs.items) - 1, 0))
    ours = np.where(inside, seqs.items[take], 0)
    same = (
        len(users) == len(prefixes)
        and np.array_equal(users[order] - 1, prefixes.users)
        and np.array_equal(targets, prefixes.targets)
        and np.array_equal(lengths, ours_len)
        and np.array_equal(np.where(cols < lengths[:, None], lists, 0), ours)
    )
    if not same:
        raise ValueError(
            f"RecBole's {name} rows ({len(users)}) differ from the split's ({len(prefixes)}): "
            "the RecBole dataloaders come from another dataset or config than `dataset`"
        )


def _representation_module(model: nn.Module, all_positions: str | None) -> nn.Module | None:
    name = ALL_POSITIONS.get(type(model).__name__) if all_positions == "auto" else all_positions
    if name is None:
        return None
    sub = getattr(model, name, None)
    if not isinstance(sub, nn.Module):
        raise EncoderError(
            f"{type(model).__name__} has no submodule {name!r} to read all positions from; "
            "pass all_positions=None to encode each prefix separately"
        )
    return sub


def _encode_all(model: nn.Module, sub: nn.Module):
    """``(item_seq, lengths) -> (B, T, d)``: ``sub``'s output (its last element for a list,
    e.g. SASRec's layers) during one ``model`` forward pass."""

    def encode_all(item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        seen: list[Any] = []
        handle = sub.register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            model(item_seq, item_seq_len)
        finally:
            handle.remove()
        out = seen[-1] if seen else None
        return out[-1] if isinstance(out, (list, tuple)) else out

    return encode_all


@torch.no_grad()
def _all_positions_agree(encoder: WrappedEncoder) -> bool:
    """Whether the all-positions output at position ``t`` equals encoding the prefix of
    ``t + 1`` items (causal and read from the right place), on a few random sequences."""
    gen = torch.Generator().manual_seed(0)
    width = min(encoder.module.max_seq_length, 6)
    seq = torch.randint(1, encoder.num_items + 1, (3, width), generator=gen)
    device = encoder.item_weights().device
    seq = seq.to(device)
    with modes_kept(encoder.module):
        encoder.module.eval()
        full = encoder.forward_all(seq, torch.full((3,), width, device=device))
        for t in range(width):
            one = encoder(seq[:, : t + 1], torch.full((3,), t + 1, device=device))
            if not torch.allclose(full[:, t], one, rtol=1e-4, atol=1e-5):
                return False
    return True


def wrap_recbole(
    model: nn.Module, dataset: Any = None, *, all_positions: str | None = "auto"
) -> WrappedEncoder:
    """A RecBole ``SequentialRecommender`` as the library's encoder, the model unchanged.

    The representation is the model's ``forward(item_seq, item_seq_len)``, the items are
    scored by its ``item_embedding`` (``n_items`` rows, row 0 the padding), as RecBole's
    ``full_sort_predict`` scores them, and the longest input is its ``max_seq_length``.
    ``all_positions`` names the submodule whose output holds every position's representation
    (``"auto"``: ``trm_encoder`` for SASRec, ``dense`` for GRU4Rec, see :data:`ALL_POSITIONS`);
    bank building then encodes all prefixes of a sequence in one pass. It is checked on a few
    random sequences against encoding each prefix; where it disagrees (a model that is not
    causal), ``"auto"`` falls back to encoding each prefix, a named submodule is an error.

    Args:
        model: The RecBole model (e.g. ``SASRec(config, train_data.dataset)``), trained or not.
        dataset: Optionally RecBole's dataset, to check the model was built for it.
        all_positions: ``"auto"``, a submodule name, or ``None`` (encode each prefix).

    Raises:
        ImportError: RecBole is not installed.
        EncoderError: Not a RecBole sequential model, a ``forward`` without
            ``(item_seq, item_seq_len)``, an item table with fewer rows than ``n_items``, a
            dataset with another item count or ``MAX_ITEM_LIST_LENGTH`` than the model's, or a
            named ``all_positions`` submodule that does not give each prefix's representation.

    Examples:
        >>> encoder = wrap_recbole(model, dataset)  # doctest: +SKIP
        >>> encoder.num_items == dataset.item_num - 1, encoder.is_causal  # doctest: +SKIP
        (True, True)
    """
    _recbole()
    from recbole.model.abstract_recommender import SequentialRecommender

    name = type(model).__name__
    if not isinstance(model, SequentialRecommender):
        raise EncoderError(
            f"wrap_recbole takes a RecBole SequentialRecommender (e.g. SASRec(config, dataset)), "
            f"got {name}; wrap other models with raserec_adapter.wrap_encoder"
        )
    params = list(inspect.signature(model.forward).parameters)
    if params[:2] != ["item_seq", "item_seq_len"]:
        raise EncoderError(
            f"{name}.forward takes {params}, not (item_seq, item_seq_len): pass your own encode= "
            "(item_seq, lengths) -> (B, d) to raserec_adapter.wrap_encoder (docs/custom-encoder.md)"
        )
    table, n_items = getattr(model, "item_embedding", None), int(model.n_items)
    if not isinstance(table, nn.Embedding) or table.num_embeddings < n_items:
        rows = table.num_embeddings if isinstance(table, nn.Embedding) else None
        raise EncoderError(
            f"{name}.item_embedding must be an nn.Embedding with n_items = {n_items} rows (ids "
            f"0..{n_items - 1}, 0 the padding), got {rows} rows"
        )
    positions = getattr(model, "position_embedding", None)
    if isinstance(positions, nn.Embedding) and positions.num_embeddings < model.max_seq_length:
        raise EncoderError(
            f"{name}.position_embedding has {positions.num_embeddings} rows but max_seq_length "
            f"= {model.max_seq_length}: inputs that long would not fit"
        )
    if dataset is not None:
        dataset = _require_dataset(dataset, "wrap_recbole")
        if int(dataset.item_num) != n_items:
            raise EncoderError(
                f"{name} was built for {n_items} item ids but the dataset numbers "
                f"{int(dataset.item_num)} (with [PAD]): the model was trained on another dataset "
                "or another filtering of it; rebuild the dataset with the model's config"
            )
        own = int(dataset.config["MAX_ITEM_LIST_LENGTH"])
        if own != model.max_seq_length:
            raise EncoderError(
                f"the dataset cuts inputs to MAX_ITEM_LIST_LENGTH = {own} but {name} was built "
                f"with max_seq_length = {model.max_seq_length}; use one config for both"
            )
    sub = _representation_module(model, all_positions)
    encoder = wrap_encoder(
        model,
        encode=model,
        item_weights=lambda: table.weight[:n_items],
        encode_all=None if sub is None else _encode_all(model, sub),
    )
    if sub is not None and not _all_positions_agree(encoder):
        if all_positions != "auto":
            raise EncoderError(
                f"the output of {name}.{all_positions} at position t differs from encoding the "
                "first t + 1 items: it is not a causal per-position representation; pass "
                "all_positions=None"
            )
        logger.warning("%s: all-positions output disagrees with prefixes; encoding each", name)
        encoder = wrap_encoder(model, encode=model, item_weights=lambda: table.weight[:n_items])
    return encoder
