"""A download server on 127.0.0.1 that misbehaves on cue.

Each request takes the next fault from a queue (or the standing fault, when the queue is
empty): drop the connection part-way, flip bytes, answer a resume from the wrong offset,
refuse with a status, stall, or trickle.  Every request is recorded with its ``Range`` header
and the status it got, so a test can tell a resume from a fresh start.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from tests.support.http import listening


@dataclass(frozen=True)
class Fault:
    """What one answer does wrong; the defaults do nothing wrong."""

    status: int | None = None  # answer with this status and no body
    drop_after: int | None = None  # close the connection after this many body bytes
    flip: tuple[int, ...] = ()  # file offsets whose byte is sent inverted
    range_start: int | None = None  # answer a Range request from this offset instead
    stall_after: int | None = None  # after this many body bytes, send nothing for stall_for s
    stall_for: float = 0.0
    trickle: float = 0.0  # seconds between 64 KiB chunks


OK = Fault()


@dataclass(frozen=True)
class Request:
    path: str
    range: str | None
    status: int


@dataclass
class FaultServer:
    root: Path
    url: str = ""
    queue: collections.deque[Fault] = field(default_factory=collections.deque)
    standing: Fault = OK
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_fault(self) -> Fault:
        with self.lock:
            return self.queue.popleft() if self.queue else self.standing

    def record(self, request: Request) -> None:
        with self.lock:
            self.requests.append(request)

    @property
    def ranges(self) -> list[str | None]:
        return [r.range for r in self.requests]


CHUNK = 1 << 16


def _handler(server: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _refuse(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True

        def do_GET(self) -> None:
            fault = server.next_fault()
            asked = self.headers.get("Range")
            path = server.root / self.path.lstrip("/")
            if fault.status is not None or not path.is_file():
                status = fault.status or 404
                server.record(Request(self.path, asked, status))
                self._refuse(status)
                return
            data = bytearray(path.read_bytes())
            for offset in fault.flip:
                data[offset] ^= 0xFF
            size = len(data)
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", asked or "")
            if match:
                start = int(match.group(1)) if fault.range_start is None else fault.range_start
                if start >= size:
                    server.record(Request(self.path, asked, 416))
                    self._refuse(416)
                    return
            status = 206 if match else 200
            server.record(Request(self.path, asked, status))
            self.send_response(status)
            if match:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.send_header("Content-Length", str(size - start))
            self.end_headers()
            self._body(bytes(data[start:]), fault)

        def _body(self, body: bytes, fault: Fault) -> None:
            sent = 0
            stalled = False
            try:
                while sent < len(body):
                    end = min(sent + CHUNK, len(body))
                    for limit in (fault.drop_after, fault.stall_after):
                        if limit is not None and sent < limit < end:
                            end = limit
                    self.wfile.write(body[sent:end])
                    self.wfile.flush()
                    sent = end
                    if fault.drop_after is not None and sent >= fault.drop_after:
                        self.close_connection = True
                        return
                    if fault.stall_after is not None and sent >= fault.stall_after and not stalled:
                        stalled = True
                        time.sleep(fault.stall_for)
                    if fault.trickle:
                        time.sleep(fault.trickle)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    return Handler


@contextmanager
def serving(root: Path) -> Iterator[FaultServer]:
    """Serve the files under ``root`` on 127.0.0.1 until the block ends."""
    state = FaultServer(root=root)
    with listening(_handler(state)) as url:
        state.url = url
        yield state
