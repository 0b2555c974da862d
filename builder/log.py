"""Human-facing progress output.

Everything here writes to stderr so that stdout stays clean for ``--json`` and other machine
output.  Nested :func:`step` blocks indent and report how long they took; :class:`Progress`
draws a bar on a terminal and prints a plain line every few seconds otherwise (CI logs).

Builds run in parallel threads: each thread keeps its own nesting, and :func:`prefixed` puts
the name of what the thread works on before each of its lines (``[xcp-1.5 8.4.1] …``), so
interleaved lines still say whose they are.  Whole lines are written under one lock.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO


class _State:
    quiet = False


class _Thread(threading.local):
    depth = 0
    prefix = ""


_thread = _Thread()
_write_lock = threading.Lock()


def set_quiet(quiet: bool) -> None:
    _State.quiet = quiet


def _stream() -> TextIO:
    return sys.stderr


def _indent() -> str:
    return _thread.prefix + "  " * _thread.depth


def _write(line: str) -> None:
    stream = _stream()
    with _write_lock:
        stream.write(line + "\n")
        stream.flush()


@contextlib.contextmanager
def prefixed(label: str) -> Iterator[None]:
    """Prefix this thread's lines with ``[label]`` (for work that runs beside other work)."""
    before = _thread.prefix
    _thread.prefix = f"[{label}] "
    try:
        yield
    finally:
        _thread.prefix = before


def info(message: str) -> None:
    if not _State.quiet:
        _write(f"{_indent()}{message}")


def warn(message: str) -> None:
    _write(f"{_indent()}warning: {message}")


def format_seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """Announce a unit of work, indent what happens inside it, and report its duration."""
    info(f"▸ {title}")
    started = time.monotonic()
    _thread.depth += 1
    ok = False
    try:
        yield
        ok = True
    finally:
        _thread.depth -= 1
        elapsed = format_seconds(time.monotonic() - started)
        if ok:
            info(f"✓ {title} ({elapsed})")
        else:
            info(f"✗ {title} (failed after {elapsed})")


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


class Progress:
    """Progress of a transfer or copy of ``total`` bytes (``None`` when unknown)."""

    PLAIN_INTERVAL = 5.0
    BAR_INTERVAL = 0.1

    def __init__(self, label: str, total: int | None, *, done: int = 0) -> None:
        self.label = label
        self.total = total
        self.done = done
        self._start = time.monotonic()
        self._last = 0.0
        stream = _stream()
        # A bar redrawn in place would mix with other threads' lines: plain lines then.
        self._tty = stream.isatty() and os.environ.get("TERM") != "dumb" and not _thread.prefix
        self._drawn = False

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        interval = self.BAR_INTERVAL if self._tty else self.PLAIN_INTERVAL
        if now - self._last >= interval:
            self._last = now
            self._show(final=False)

    def _describe(self) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-6)
        rate = format_bytes(self.done / elapsed) + "/s"
        if self.total:
            pct = 100.0 * self.done / self.total
            return (
                f"{self.label}: {format_bytes(self.done)} of {format_bytes(self.total)} "
                f"({pct:.0f} %, {rate})"
            )
        return f"{self.label}: {format_bytes(self.done)} ({rate})"

    def _show(self, *, final: bool) -> None:
        if _State.quiet:
            return
        stream = _stream()
        if self._tty:
            stream.write(f"\r\033[K{_indent()}{self._describe()}")
            if final:
                stream.write("\n")
            stream.flush()
            self._drawn = not final
        elif not final:
            _write(f"{_indent()}{self._describe()}")

    def finish(self) -> None:
        if self._tty and (self._drawn or self.done):
            self._show(final=True)
