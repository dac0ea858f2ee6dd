"""Progress of long work: a live bar on a terminal, a few plain lines in a log.

A tqdm bar redrawn with carriage returns is what a person at a terminal wants; written to a file
(a nohup log, CI, a service's journal) it is hundreds of kilobytes of overwritten lines. So
:func:`progress` draws tqdm's bar when its stream is a terminal and otherwise writes one line at
every 10% of the work (and at the end): ``pull: 120/1200 task (10%, 4 s, loss=0.31)``. Work
without a known total writes one line every ``every`` items. ``log_lines=False`` keeps a bar
silent in a log (the steps inside an epoch, whose epoch has its own line).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

__all__ = ["progress"]


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _LogLines:
    """tqdm's interface (iterate, ``update``, ``set_postfix``, ``close``), printing lines."""

    def __init__(self, iterable: Iterable[Any] | None, total: int | None, desc: str, unit: str, stream: IO[str],
                 initial: int = 0, every: int = 100) -> None:
        self.iterable, self.desc, self.unit, self.stream = iterable, desc, unit, stream
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.every = total, initial, every
        self.postfix = ""
        self.start = time.monotonic()
        self._next = self._step_after(initial)
        self._written = initial  # the count of the last line (none at the start)
        self._closed = False

    def _step_after(self, n: int) -> int:
        if not self.total:
            return (n // self.every + 1) * self.every
        tenth = max(1, -(-self.total // 10))
        return min(self.total, (n // tenth + 1) * tenth)

    def _line(self) -> None:
        seconds = time.monotonic() - self.start
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f"{100 * self.n // self.total}%, " if self.total else ""
        extra = f", {self.postfix}" if self.postfix else ""
        self.stream.write(f"{self.desc}: {count} {self.unit} ({pct}{seconds:.0f} s{extra})\n")
        self.stream.flush()
        self._written = self.n

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n >= self._next:
            self._line()
            self._next = self._step_after(self.n)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self._closed and self.n != self._written:
            self._line()  # where the work ended, unless that line was just written
        self._closed = True

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> _LogLines:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Silent(_LogLines):
    def _line(self) -> None:
        pass


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True, log_lines: bool = True, leave: bool = True, initial: int = 0,
             stream: IO[str] | None = None) -> Any:
    """A progress reporter over ``iterable`` (or updated by hand with ``total``): tqdm on a
    terminal, a line per 10% in a log, nothing when ``enabled`` is false (or in a log with
    ``log_lines`` false)."""
    stream = stream or sys.stderr
    if enabled and _is_terminal(stream):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, initial=initial, file=stream)
    cls = _LogLines if enabled and log_lines else _Silent
    return cls(iterable, total, desc, unit, stream, initial=initial)
