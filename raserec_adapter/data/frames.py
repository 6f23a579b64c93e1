"""Sequences from a pandas DataFrame of interactions (pandas is an optional dependency).

The columns follow the convention of RecTools' ``Dataset.construct``: ``user_id``, ``item_id``
and ``datetime`` (``timestamp`` and ``time`` are found too). Users and items are numbered as
:func:`~raserec_adapter.data.read_interactions` numbers a file's rows, or in a given vocabulary
(an encoder trained elsewhere, e.g. by RecBole).

Examples:
    >>> import pandas as pd
    >>> df = pd.DataFrame({"user_id": ["u7", "u7", "u8"], "item_id": [30, 10, 30],
    ...                    "datetime": pd.to_datetime(["2024-01-02", "2024-01-01", "2024-01-01"])})
    >>> seqs = from_dataframe(df)
    >>> seqs[0].tolist(), seqs.item_labels.tolist(), seqs.user_labels.tolist()
    ([1, 2], ['10', '30'], ['u7', 'u8'])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from raserec_adapter.data.readers import sequences_from_codes
from raserec_adapter.data.sequences import DataFormatError, Sequences
from raserec_adapter.data.vocabulary import Vocabulary

__all__ = ["from_dataframe"]

_TIME_COLS = ("datetime", "timestamp", "time")
_INSTALL = 'from_dataframe needs pandas: pip install "raserec-adapter[dataframe]" (or pandas)'


def _pandas() -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise ImportError(_INSTALL) from None
    return pd


def _column(df: Any, name: str | None, defaults: tuple[str, ...], what: str) -> str | None:
    if name is not None:
        if name not in df.columns:
            raise DataFormatError(
                f"the DataFrame has no {what} column {name!r}; its columns: {list(df.columns)}"
            )
        return name
    found = next((c for c in defaults if c in df.columns), None)
    if found is None and what != "time":
        raise DataFormatError(
            f"the DataFrame has none of {list(defaults)} for the {what}; its columns: "
            f"{list(df.columns)}; name it with {what}_col=..."
        )
    return found


def _codes(pd: Any, column: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Codes in order of first appearance, and the ids as strings."""
    missing = column.isna().to_numpy()
    if missing.any():
        row = column.index[int(np.flatnonzero(missing)[0])]
        raise DataFormatError(
            f"the DataFrame's {what} column is empty at row {row!r}; fill it in or drop the row"
        )
    labels = column.astype(str)
    codes, uniques = pd.factorize(labels, sort=False)
    return codes.astype(np.int64), np.asarray(uniques, dtype=str)


def _times(pd: Any, column: Any) -> np.ndarray:
    """Timestamps as float64 (datetimes as nanoseconds); NaN, NaT or text refused."""
    if pd.api.types.is_datetime64_any_dtype(column):
        if column.isna().any():
            row = column.index[int(np.flatnonzero(column.isna().to_numpy())[0])]
            raise DataFormatError(f"the DataFrame's time is missing (NaT) at row {row!r}")
        values = column.dt.tz_localize(None) if column.dt.tz is not None else column
        return values.astype("datetime64[ns]").astype(np.int64).to_numpy().astype(np.float64)
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        raise DataFormatError(
            f"the DataFrame's time column has dtype {column.dtype}; give numbers (e.g. Unix "
            "seconds) or datetimes (pd.to_datetime(df[col]))"
        )
    stamps = column.to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(stamps))
    if len(bad):
        row = column.index[int(bad[0])]
        raise DataFormatError(
            f"the DataFrame's time at row {row!r} is {stamps[bad[0]]}; fill it in or drop the row"
        )
    return stamps


def from_dataframe(
    df: Any,
    *,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    k_core: int | None = None,
    item_vocab: Vocabulary | None = None,
    user_vocab: Vocabulary | None = None,
    unknown: str = "error",
) -> Sequences:
    """Each user's interactions, in time order, from a DataFrame with one row per interaction.

    Args:
        df: A ``pandas.DataFrame``.
        user_col: User column; default ``user_id`` (or ``user``).
        item_col: Item column; default ``item_id`` (or ``item``).
        time_col: Time column: numbers or datetimes; default the first of ``datetime``,
            ``timestamp``, ``time`` present, else the rows' order. Ties keep the rows' order.
        k_core: As :func:`~raserec_adapter.data.read_interactions`'.
        item_vocab: Items numbered as a given vocabulary (token -> id, or tokens in id order);
            ids are compared as strings.
        user_vocab: Users ordered as a given vocabulary.
        unknown: ``"error"`` or ``"drop"``: what tokens outside a vocabulary get.

    Returns:
        The sequences, the original ids in ``user_labels`` and ``item_labels``.

    Raises:
        DataFormatError: A missing column (the message lists the columns), an empty id, a
            missing or non-numeric time, or no rows.
        ImportError: pandas is not installed.
    """
    pd = _pandas()
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"from_dataframe takes a pandas DataFrame, got {type(df).__name__}")
    if len(df) == 0:
        raise DataFormatError("the DataFrame has no rows: there are no interactions")
    ucol = _column(df, user_col, ("user_id", "user"), "user")
    icol = _column(df, item_col, ("item_id", "item"), "item")
    tcol = _column(df, time_col, _TIME_COLS, "time")
    assert ucol is not None and icol is not None
    users, user_names = _codes(pd, df[ucol], "user")
    items, item_names = _codes(pd, df[icol], "item")
    stamps = None if tcol is None else _times(pd, df[tcol])
    return sequences_from_codes(
        "the DataFrame", users, items, stamps, user_names, item_names, k_core=k_core,
        item_vocab=item_vocab, user_vocab=user_vocab, unknown=unknown,
    )  # fmt: skip
