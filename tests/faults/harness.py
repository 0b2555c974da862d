"""Running the real command line as a child process and looking at what it left behind.

Every fault case runs ``python -m builder …`` exactly as an operator would, measures the
child's peak memory (``wait4``'s rusage, so other children of the test process do not count),
and compares snapshots of the directories it may and may not touch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[2]
BUILDER = (sys.executable, "-m", "builder")


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    max_rss: int  # bytes, the child's peak resident set
    timed_out: bool = False

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.args)}\nexit {self.returncode}\n"
            f"--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}"
        )


def _environment(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CI", None)  # the tool itself must not behave differently under CI
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


PEAK = Path(__file__).with_name("peak.py")


def builder(
    *args: str | Path,
    timeout: float = 300,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO,
    measure: bool = False,
) -> Result:
    """Run ``python -m builder ARGS`` to its end; a child that overruns ``timeout`` is killed.

    ``measure`` runs it under ``peak.py``, so that ``max_rss`` is the tool's own peak memory
    and not the test process's, which a forked child inherits in its rusage.
    """
    if not measure:
        return finish(spawn(*args, env=env, cwd=cwd), timeout=timeout)
    with tempfile.TemporaryDirectory() as scratch:
        figure = Path(scratch) / "peak"
        process = subprocess.Popen(
            (sys.executable, "-S", PEAK, figure, *BUILDER, *(str(a) for a in args)),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_environment(env),
            start_new_session=True,
        )
        result = finish(process, timeout=timeout)
        return dataclasses.replace(result, args=result.args[4:], max_rss=int(figure.read_text()))


def spawn(
    *args: str | Path, env: Mapping[str, str] | None = None, cwd: Path = REPO
) -> subprocess.Popen[bytes]:
    """Start ``python -m builder ARGS`` in a process group of its own; see :func:`finish`."""
    return subprocess.Popen(
        (*BUILDER, *(str(a) for a in args)),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_environment(env),
        start_new_session=True,
    )


def running(process: subprocess.Popen[bytes]) -> bool:
    """Whether the child still runs, without reaping it (Popen.poll would, and then its
    rusage and process group are gone)."""
    return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None


def signal_child(process: subprocess.Popen[bytes], sent: signal.Signals) -> None:
    """Send ``sent`` to the child itself (Popen.send_signal polls, and so reaps, first)."""
    os.kill(process.pid, sent)


def finish(process: subprocess.Popen[bytes], *, timeout: float = 300) -> Result:
    """Wait for a child started by :func:`spawn` and collect its output and peak memory.

    What it left running in its group (rpmsign, gpg or createrepo_c orphaned by a SIGKILL) is
    killed while the child is still a zombie, so the group id cannot belong to anyone else.
    """
    output: dict[str, bytes] = {}

    def read(name: str, stream: IO[bytes] | None) -> None:
        if stream is None:
            output[name] = b""
            return
        with stream:
            output[name] = stream.read()

    readers = [
        threading.Thread(target=read, args=("out", process.stdout)),
        threading.Thread(target=read, args=("err", process.stderr)),
    ]
    for reader in readers:
        reader.start()
    timed_out = threading.Event()

    def overrun() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, overrun)
    timer.start()
    try:
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
    finally:
        timer.cancel()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    # wait4 rather than Popen.wait: it gives this child's own rusage.
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    return Result(
        args=tuple(str(a) for a in process.args),  # type: ignore[union-attr]
        returncode=process.returncode,
        stdout=output["out"].decode("utf-8", "replace"),
        stderr=output["err"].decode("utf-8", "replace"),
        max_rss=usage.ru_maxrss * 1024,
        timed_out=timed_out.is_set(),
    )


@dataclass(frozen=True)
class Node:
    kind: str  # "file", "dir", "link"
    size: int
    digest: str  # file content sha256, or a link's target


def snapshot(root: Path) -> dict[str, Node]:
    """Every path under ``root`` (relative), with what it is and what it holds."""
    found: dict[str, Node] = {}
    if not root.exists():
        return found
    for directory, dirs, files in os.walk(root):
        here = Path(directory)
        for name in [*dirs, *files]:
            path = here / name
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[relative] = Node("link", 0, os.readlink(path))
            elif path.is_dir():
                found[relative] = Node("dir", 0, "")
            else:
                found[relative] = Node("file", path.stat().st_size, _sha256(path))
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def changes(before: Mapping[str, Node], after: Mapping[str, Node]) -> dict[str, list[str]]:
    """Paths added, removed and changed between two snapshots."""
    return {
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "changed": sorted(p for p in set(before) & set(after) if before[p] != after[p]),
    }


def only_under(paths: Sequence[str], *allowed: str) -> list[str]:
    """The paths in ``paths`` that are not below one of the ``allowed`` prefixes."""
    return [p for p in paths if not any(p == a or p.startswith(f"{a}/") for a in allowed)]


MIB = 1 << 20
