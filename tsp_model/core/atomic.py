"""Atomic file writes: a reader sees the old file or the complete new one, never half of one.

Every file the project writes (checkpoints, score files, COCO snapshots, slices, plots) goes
through :func:`atomic_path`: a temporary file beside the target (hidden, ``.<name>.*``, so model
and image globs never match it), flushed and fsync'ed, then ``os.replace``'d over the target and
the directory fsync'ed. On any error the temporary file is removed and the target is left as
it was. Ctrl-C (SIGINT) during the write is held until the file is in place, then raised as
``KeyboardInterrupt``: interrupting a writer midway (``torch.save``'s zip writer, for one) makes
its cleanup fail with an unrelated error instead of a clean interrupt. Files get the mode a plain ``open`` would give (``mkstemp`` makes them
0600), so a backend running as another user can read what the CLI wrote.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_mode(path: str | Path, directory: bool = False) -> None:
    """Give a mkstemp/mkdtemp result (0600/0700) the mode a plain open/mkdir would give."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def fsync_dir(directory: str | Path) -> None:
    """Persist a rename itself (POSIX); best effort where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold SIGINT (Ctrl-C) until the block ends, then deliver it to the previous handler.

    With Python's default handler that raises ``KeyboardInterrupt`` after the block. Signal
    handlers live in the main thread only; in other threads this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous in (signal.SIG_IGN, None):
        yield
        return
    received: list[Any] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(signal.SIGINT, received[-1])
            else:  # SIG_DFL: terminate as an undisturbed SIGINT would have
                signal.raise_signal(signal.SIGINT)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on normal exit it replaces ``path``.

    Write the temporary file any way you like (``Image.save``, ``fig.savefig``, ``torch.save``);
    the parent directory is created. Ctrl-C is held until the block ends (keep it to writing).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with sigint_deferred():
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            default_mode(tmp)
            yield tmp
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """``open`` for writing whose result appears at ``path`` only when the block completes."""
    binary = "b" in mode
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if binary else encoding) as fh:
        yield fh


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_open(path, "w") as fh:
        fh.write(text)
    return Path(path)


def atomic_save(path: str | Path, save: Callable[[Path], Any], suffix: str = ".tmp") -> Path:
    """``save(tmp_path)`` (e.g. ``lambda p: image.save(p, format="PNG")``), then move into place."""
    with atomic_path(path, suffix) as tmp:
        save(tmp)
    return Path(path)
