"""Interop with other recommender libraries: their data, splits and trained models, unchanged.

:mod:`raserec_adapter.interop.recbole` reads RecBole's datasets and splits in RecBole's ids and
wraps its sequential models. Importing this package imports no other library; each function
imports its library when called (with an install hint where it is missing).

Examples:
    >>> import sys
    >>> from raserec_adapter.interop import split_from_recbole
    >>> "recbole" in sys.modules  # imported when a function is called, not before
    False
"""

from raserec_adapter.interop.recbole import (
    sequences_from_recbole,
    split_from_recbole,
    wrap_recbole,
)

__all__ = ["sequences_from_recbole", "split_from_recbole", "wrap_recbole"]
