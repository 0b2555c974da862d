"""A Docker engine of its own beside the running one: another dockerd on a TCP port of
127.0.0.1, with its own data root, exec root, pid file, socket and bridge, that a test can
stop, kill and start again on the same data (an engine that goes away and comes back)."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import docker
import docker.errors

from builder import proc


class EngineFailed(Exception):
    pass


_started = itertools.count(1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SecondEngine:
    def __init__(self, root: Path, bridge: str) -> None:
        self.root = root
        self.bridge = bridge
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self._daemon: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.address.replace("tcp://", "http://"))

    def log_text(self) -> str:
        return (self.root / "dockerd.log").read_text(errors="replace")[-2000:]

    def start(self) -> None:
        dockerd = shutil.which("dockerd")
        assert dockerd is not None
        self._log = (self.root / "dockerd.log").open("ab")
        self._daemon = subprocess.Popen(
            [
                dockerd,
                f"--host={self.address}",
                f"--host=unix://{self.root}/docker.sock",
                f"--data-root={self.root}/data",
                f"--exec-root={self.root}/exec",
                f"--pidfile={self.root}/docker.pid",
                f"--bridge={self.bridge}",
                # The host's firewall is the running engine's: left alone.
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                # The SDK asks the engine's version as it is made: inside the retry loop.
                client = self.client()
                client.ping()
                client.close()
                return
            except (docker.errors.DockerException, OSError) as exc:
                if self._daemon.poll() is not None or time.monotonic() > deadline:
                    raise EngineFailed(
                        f"dockerd did not start ({exc}):\n{self.log_text()}"
                    ) from exc
                time.sleep(0.5)

    def kill(self) -> None:
        """Gone at once, as a machine that loses power: SIGKILL to dockerd and the containerd
        it started, no clean-up of their own."""
        assert self._daemon is not None
        killed = self._processes()
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._daemon.wait()
        self._close_log()
        # Until its containerd is reaped too (a zombie has no command line, but it still
        # answers kill 0): a dockerd started before that waits for it and times out.
        deadline = time.monotonic() + 60
        while any(Path(f"/proc/{pid}").exists() for pid in killed):
            if time.monotonic() > deadline:
                raise EngineFailed(f"processes {killed} of the killed engine are not reaped")
            time.sleep(0.1)

    def _processes(self) -> list[int]:
        """dockerd and what runs with its roots (containerd, shims)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(self.root).encode() in command:
                found.append(int(entry.name))
        return found

    def stop(self) -> None:
        if self._daemon is None or self._daemon.poll() is not None:
            self._close_log()
            return
        self._daemon.send_signal(signal.SIGTERM)
        try:
            self._daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._daemon.kill()
            self._daemon.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


@contextlib.contextmanager
def second_engine(*, data_mib: int | None = None) -> Iterator[SecondEngine]:
    """A started engine, stopped and removed on exit; with ``data_mib`` its data root is a
    tmpfs of that size (an engine whose disk fills)."""
    # Short: containerd's socket lives under the exec root, and unix socket paths are short.
    root = Path(tempfile.mkdtemp(prefix="xdb-d2-", dir="/tmp"))
    # A bridge of its own, never `--bridge=none`: dockerd started with that deletes the
    # interface docker0 on its way up, which is the running engine's bridge.  The address is
    # from TEST-NET-2 (RFC 5737), which no network routes.
    number = next(_started) % 16
    bridge = f"xdb{os.getpid() % 100_000}n{number}"
    subnet = f"198.51.100.{1 + 16 * number}/28"  # one of its own per engine
    main_bridge = Path("/sys/class/net/docker0")
    had_main_bridge = main_bridge.exists()
    engine = SecondEngine(root, bridge)
    proc.run(["ip", "link", "add", "name", bridge, "type", "bridge"], echo=False)
    try:
        proc.run(["ip", "addr", "add", subnet, "dev", bridge], echo=False)
        if data_mib is not None:
            (root / "data").mkdir()
            proc.run(
                ["mount", "-t", "tmpfs", "-o", f"size={data_mib}m", "tmpfs", str(root / "data")],
                echo=False,
            )
        engine.start()
        yield engine
    finally:
        engine.stop()
        # dockerd bind-mounts its data root onto itself (and a tmpfs may be there); one that
        # was killed leaves that mount, which no directory removal gets past.
        for mount_point in reversed(mounts_below(root)):
            proc.run(["umount", "-l", mount_point], echo=False, check=False)
        proc.run(["ip", "link", "delete", bridge], echo=False, check=False)
        shutil.rmtree(root, ignore_errors=True)
    assert main_bridge.exists() or not had_main_bridge, "the running engine lost docker0"


def can_run_second_engine() -> str | None:
    """Why no second engine can run here, or None."""
    if shutil.which("dockerd") is None or shutil.which("ip") is None or os.geteuid() != 0:
        return "a second engine needs dockerd, ip (iproute2) and root"
    return None


def mounts_below(root: Path) -> list[str]:
    """Mount points at or below ``root``, in the order they were mounted."""
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point == str(root) or point.startswith(f"{root}/"):
            found.append(point)
    return found
