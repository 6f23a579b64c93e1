"""Progress bars for the long phases, from ``tqdm.auto`` (widgets in notebooks)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], total: int | None, desc: str, enabled: bool = True) -> Iterator[T]:
    """Yields ``items`` under a tqdm bar named ``desc``; ``enabled=False`` shows none.

    On a terminal the bar redraws in place; in a log file (CI) it writes a line at most every
    30 seconds, so logs stay short.
    """
    if not enabled:
        yield from items
        return
    tty = sys.stderr.isatty()
    yield from tqdm(items, total=total, desc=desc, leave=False, mininterval=0.2 if tty else 30.0)
