"""Small HTTP file servers on 127.0.0.1: one with Range support and fault injection, and a
plain one for a published tree, as a web server would serve it.  Every test server, these and
tests/faults/faultserver.py's, runs through :func:`listening`."""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class ServerState:
    root: Path
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range)
    cut_after: int | None = None  # close the connection after this many body bytes, once
    fail_first: int = 0  # answer this many requests with 503 first
    wrong_range: bool = False  # answer the next Range request from byte 0 (206), once
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(state: ServerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            with state.lock:
                state.requests.append((self.path, self.headers.get("Range")))
                if state.fail_first > 0:
                    state.fail_first -= 1
                    self.send_error(503, "busy")
                    return
                cut, state.cut_after = state.cut_after, None
                wrong = state.wrong_range and self.headers.get("Range") is not None
                if wrong:
                    state.wrong_range = False
            path = state.root / self.path.lstrip("/")
            if not path.is_file():
                self.send_error(404, "Not Found")
                return
            size = path.stat().st_size
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if match:
                start = 0 if wrong else int(match.group(1))
                if start >= size:
                    self.send_error(416, "Range Not Satisfiable")
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(size - start))
            self.end_headers()
            with path.open("rb") as stream:
                stream.seek(start)
                sent = 0
                while chunk := stream.read(1 << 16):
                    if cut is not None and sent + len(chunk) > cut:
                        self.wfile.write(chunk[: cut - sent])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    self.wfile.write(chunk)
                    sent += len(chunk)

    return Handler


@contextmanager
def listening(handler: Callable[..., BaseHTTPRequestHandler]) -> Iterator[str]:
    """Answer HTTP with ``handler`` on a free port of 127.0.0.1, from a thread, until the block
    ends; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def serve(root: Path) -> Iterator[tuple[str, ServerState]]:
    """Serve ``root`` on 127.0.0.1; yields the base URL and the server's state."""
    state = ServerState(root=root)
    with listening(_handler(state)) as url:
        yield url, state


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve the files under ``directory`` on 127.0.0.1; yields the base URL."""
    directory.mkdir(parents=True, exist_ok=True)
    with listening(functools.partial(_QuietFiles, directory=str(directory))) as url:
        yield url
