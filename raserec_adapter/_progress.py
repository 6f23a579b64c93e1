"""A dependency-free progress bar: redrawn in place on a terminal, logged sparsely otherwise."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
logger = logging.getLogger("raserec_adapter")


def progress(items: Iterable[T], total: int | None, desc: str, enabled: bool = True) -> Iterator[T]:
    """Yields ``items`` while showing ``desc  done/total  rate``.

    On a terminal the bar is redrawn on stderr at most 5 times a second; otherwise (logs, CI) a
    line is logged at INFO level every ~25%. ``enabled=False`` turns it off.
    """
    if not enabled:
        yield from items
        return
    tty = sys.stderr.isatty()
    start = last = time.perf_counter()
    next_log = 0.25
    for done, item in enumerate(items, start=1):
        yield item
        now = time.perf_counter()
        if tty and (now - last > 0.2 or done == total):
            last = now
            frac = done / total if total else 0.0
            bar = "#" * int(20 * frac)
            rate = done / max(now - start, 1e-9)
            sys.stderr.write(f"\r{desc} [{bar:<20}] {done}/{total or '?'} {rate:.1f} it/s")
            sys.stderr.flush()
        elif not tty and total and done / total >= next_log:
            logger.info("%s: %d/%d (%.1f s)", desc, done, total, now - start)
            next_log += 0.25
    if tty:
        sys.stderr.write("\n")
        sys.stderr.flush()
