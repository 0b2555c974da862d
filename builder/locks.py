"""Exclusive locks that wait a while and then say who holds them (exit code 14)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

from builder import log
from builder.errors import LockedError


@contextlib.contextmanager
def timed_lock(path: Path, *, timeout: float, what: str, waiting: str, hint: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path``; wait up to ``timeout`` seconds for it.

    The holder writes its pid into the file, so whoever waits can say which process is in the
    way: ``what`` (the error) and ``waiting`` (the notice) may name it as ``{pid}``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            if time.monotonic() >= deadline:
                raise LockedError(
                    f"{what.format(pid=holder)}; gave up after {timeout:g} s.", hint=hint
                )
            if not announced:
                log.info(waiting.format(pid=holder))
                announced = True
            time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs on this machine (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def file_lock(path: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on ``path`` (created if needed), held for the block: waited for as
    long as it takes, saying once which process holds it."""
    return timed_lock(
        path,
        timeout=math.inf,
        what=f"{path} is held by pid {{pid}}",
        waiting=f"waiting for {path}, held by pid {{pid}}",
        hint="",
    )
