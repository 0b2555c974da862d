"""Two QEMU guests joined only to each other, and a driver for each.

Each guest has a root disk (a copy of the cached root image), a data disk, and two NICs: the
management link and the replication link.  Each link is a QEMU ``socket`` netdev over UDP on
127.0.0.1 between the two QEMU processes, so the guests' addresses exist only inside those
tunnels and no frame leaves them.  A guest that installs packages has a third NIC on QEMU's
user network, isolated (``restrict=on``) but for one forwarded address, the package
repository, which leads to an HTTP server on 127.0.0.1.  The first serial port is the
console (kept in a file); the second is the command channel (a unix socket; the guest's
agent runs one script per line and answers with its output and exit status).  QMP, on a third
socket, cuts links and resets.

Every wait has a timeout.  A guest that does not come up, a lost channel or a command past its
time raises :class:`LabError` with the console's last lines; the pair's context manager kills
both QEMU processes whatever happens, Ctrl-C included.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab.guest import GuestImage, cache_dir

BOOT_TIMEOUT = 180.0  # seconds from start to the agent's first line (TCG, a busy machine)
PROBE_TIMEOUT = 30.0  # how long a KVM boot may take before KVM counts as not working here
ACCELERATORS = {
    "tcg": ("-accel", "tcg,tb-size=256", "-cpu", "max"),
    "kvm": ("-accel", "kvm", "-cpu", "host"),
}
COMMAND_TIMEOUT = 120.0
DATA_DISK_BYTES = 64 * 1024 * 1024
CONSOLE_TAIL = 25
# The package repository, as a guest given one sees it: QEMU's user network on TEST-NET-3,
# whose only way out is this address's port 80, carried to the HTTP server on 127.0.0.1.
REPO_NET = "203.0.113.0/24"
REPO_ADDRESS = "203.0.113.80"
REPO_GUEST_ADDRESS = "lab-repo:203.0.113.15/24"  # every guest's own: each has its own network


class LabError(Exception):
    """The lab itself failed: a guest, its channel or QEMU (the message says which and why)."""


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str

    def check(self, what: str) -> Result:
        if self.returncode != 0:
            raise AssertionError(
                f"{what}: exit code {self.returncode}\nstdout:\n{self.stdout}\n"
                f"stderr:\n{self.stderr}"
            )
        return self


@dataclass(frozen=True)
class GuestSpec:
    name: str
    index: int  # 1 or 2: MAC addresses and ports follow it
    addresses: tuple[str, ...]  # "xenbr0:198.51.100.1/24", ...


def free_udp_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            handle = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            handle.bind(("127.0.0.1", 0))
            sockets.append(handle)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for handle in sockets:
            handle.close()


def _no_orphans() -> None:
    """In the QEMU child: die with the test process, even when it is killed outright."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


@dataclass
class Guest:
    spec: GuestSpec
    image: GuestImage
    directory: Path
    links: dict[str, tuple[int, int]]  # netdev id -> (local port, peer port)
    process: subprocess.Popen[bytes] | None = None
    channel: socket.socket | None = None
    pending: bytes = b""
    counter: int = 0
    boot_id: str = ""
    boots: int = 0
    log: list[str] = field(default_factory=list)
    accel: str = "tcg"
    repository: int | None = None  # port on 127.0.0.1 that http://REPO_ADDRESS/ leads to

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def console(self) -> Path:
        return self.directory / "console.log"

    @property
    def data_disk(self) -> Path:
        return self.directory / "data.raw"

    def console_tail(self, lines: int = CONSOLE_TAIL) -> str:
        try:
            text = self.console.read_text(errors="replace")
        except FileNotFoundError:
            return "(no console output)"
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, message: str) -> LabError:
        return LabError(
            f"{self.name}: {message}\n--- last console lines of {self.name} ---\n"
            f"{self.console_tail()}"
        )

    # ---- start and stop -------------------------------------------------------------------

    def prepare(self, root_image: Path) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        root = self.directory / "root.ext4"
        subprocess.run(
            ["cp", "--sparse=always", str(root_image), str(root)], check=True, timeout=120
        )
        with self.data_disk.open("wb") as disk:
            disk.truncate(DATA_DISK_BYTES)

    def argv(self) -> list[str]:
        index = self.spec.index
        addresses = self.spec.addresses
        if self.repository is not None:
            addresses = (*addresses, REPO_GUEST_ADDRESS)
        args = [
            "qemu-system-x86_64", "-name", self.name, "-machine", "pc",
            *ACCELERATORS[self.accel], "-smp", "1", "-m", "512",
            "-nodefaults", "-no-user-config", "-display", "none",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", (
                f"console=ttyS0 panic=-1 lab.host={self.name} "
                f"lab.addr={','.join(addresses)}"
            ),
            "-drive", f"file={self.directory / 'root.ext4'},if=none,id=root,format=raw",
            "-device", "virtio-blk-pci,drive=root,serial=xdb-root",
            "-drive", f"file={self.data_disk},if=none,id=data,format=raw",
            "-device", f"virtio-blk-pci,drive=data,serial=xdb-data-{index}",
        ]  # fmt: skip
        for number, (netdev, (local, peer)) in enumerate(self.links.items(), start=1):
            args += [
                "-netdev",
                f"socket,id={netdev},udp=127.0.0.1:{peer},localaddr=127.0.0.1:{local}",
                "-device",
                f"virtio-net-pci,netdev={netdev},mac=52:54:00:00:{index:02x}:{number:02x}",
            ]
        if self.repository is not None:
            relay = f"{sys.executable} {Path(__file__).with_name('relay.py')} {self.repository}"
            args += [
                "-netdev",
                f"user,id=repo,restrict=on,net={REPO_NET},guestfwd=tcp:{REPO_ADDRESS}:80-cmd:{relay}",
                "-device",
                f"virtio-net-pci,netdev=repo,mac=52:54:00:00:{index:02x}:03",
            ]
        args += [
            "-chardev", f"file,id=console,path={self.console}", "-serial", "chardev:console",
            "-chardev", f"socket,id=agent,path={self.directory / 'agent.sock'},server=on,wait=on",
            "-serial", "chardev:agent",
            "-qmp", f"unix:{self.directory / 'qmp.sock'},server=on,wait=off",
        ]  # fmt: skip
        return args

    def start(self) -> None:
        self.launch()
        self.wait_ready(BOOT_TIMEOUT)

    def launch(self) -> None:
        """Start QEMU and connect the command channel (QEMU waits for it before booting)."""
        for name in ("agent.sock", "qmp.sock"):
            (self.directory / name).unlink(missing_ok=True)
        self.console.unlink(missing_ok=True)
        with (self.directory / "qemu.log").open("wb") as qemu_output:
            self.process = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=qemu_output,
                stderr=subprocess.STDOUT,
                preexec_fn=_no_orphans,  # noqa: PLW1509 - QEMU must not outlive a killed test
            )
        agent = self.directory / "agent.sock"
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                qemu_log = (self.directory / "qemu.log").read_text(errors="replace")
                raise self.fail(f"QEMU exited with {self.process.returncode}: {qemu_log}")
            if agent.exists():
                channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    channel.connect(str(agent))
                except OSError:
                    channel.close()
                else:
                    self.channel = channel
                    break
            if time.monotonic() > deadline:
                raise self.fail("QEMU did not open its command channel within 30 s")
            time.sleep(0.05)

    def wait_ready(self, timeout: float) -> float:
        """Wait for the agent's first line after a boot; returns the seconds it took."""
        started = time.monotonic()
        line = self._read_line(timeout, waiting_for="the guest to boot")
        while not line.startswith("@@READY "):
            line = self._read_line(
                timeout - (time.monotonic() - started), waiting_for="the guest to boot"
            )
        self.boot_id = line.split()[1]
        self.boots += 1
        return time.monotonic() - started

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    # ---- the command channel -------------------------------------------------------------

    def _read_line(self, timeout: float, *, waiting_for: str) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            if self.channel is None:
                raise self.fail("the command channel is closed")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.fail(f"timed out after {timeout:.0f} s waiting for {waiting_for}")
            if self.process is not None and self.process.poll() is not None:
                raise self.fail(f"QEMU exited with {self.process.returncode}")
            self.channel.settimeout(min(remaining, 1.0))
            try:
                chunk = self.channel.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise self.fail(f"the command channel was lost while waiting for {waiting_for}")
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return line.decode(errors="replace").strip("\r")

    def sh(self, script: str, *, timeout: float = COMMAND_TIMEOUT) -> Result:
        """Run ``script`` with bash on the guest; its output and exit status."""
        if self.channel is None:
            raise self.fail("the command channel is closed")
        self.counter += 1
        ident = f"{self.boots}.{self.counter}"
        payload = base64.b64encode(script.encode()).decode()
        try:
            # A large script crosses the emulated UART slowly: the command's time bounds it.
            self.channel.settimeout(timeout)
            self.channel.sendall(f"{ident} {payload}\n".encode())
        except OSError as exc:
            state = "" if self.process is None else f" (QEMU exit status {self.process.poll()})"
            raise self.fail(f"the command channel was lost: {exc}{state}") from exc
        started = time.monotonic()
        out = err = ""
        while True:
            left = timeout - (time.monotonic() - started)
            line = self._read_line(left, waiting_for=f"`{_short(script)}`")
            kind, _, rest = line.partition(" ")
            got, _, value = rest.partition(" ")
            if kind == "@@READY":
                raise self.fail(f"the guest rebooted while running `{_short(script)}`")
            if got != ident:
                continue
            if kind == "@@OUT":
                out = base64.b64decode(value).decode(errors="replace")
            elif kind == "@@ERR":
                err = base64.b64decode(value).decode(errors="replace")
            elif kind == "@@END":
                result = Result(int(value), out, err)
                self.log.append(f"$ {script}\n{out}{err}[exit {result.returncode}]")
                return result

    def ok(self, script: str, *, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run ``script``; fail the test when it fails; its standard output."""
        return self.sh(script, timeout=timeout).check(f"{self.name}: {_short(script)}").stdout

    def wait_for(self, script: str, *, timeout: float, step: float = 0.5, what: str = "") -> str:
        """Run ``script`` until it succeeds; its last output.  The guest polls, not the host."""
        loop = (
            f"end=$(($(date +%s) + {int(timeout)})); "
            f"while ! out=$( {script} ) ; do "
            f'[ "$(date +%s)" -lt "$end" ] || {{ echo "$out"; exit 1; }}; sleep {step}; done; '
            'echo "$out"'
        )
        result = self.sh(loop, timeout=timeout + 30)
        if result.returncode != 0:
            raise AssertionError(
                f"{self.name}: {what or script} did not happen within {timeout:.0f} s; last "
                f"output:\n{result.stdout}{result.stderr}"
            )
        return result.stdout

    # ---- QMP -----------------------------------------------------------------------------

    def qmp(self, command: str, **arguments: object) -> object:
        path = self.directory / "qmp.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as handle:
            handle.settimeout(20)
            handle.connect(str(path))
            stream = handle.makefile("rwb")
            json.loads(stream.readline())  # the greeting
            for name, args in (("qmp_capabilities", {}), (command, arguments)):
                stream.write(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
                stream.flush()
                while True:
                    answer = json.loads(stream.readline())
                    if "event" not in answer:
                        break
                if "error" in answer:
                    raise self.fail(f"QMP {name} failed: {answer['error']}")
            return answer.get("return")

    def set_link(self, netdev: str, *, up: bool) -> None:
        self.qmp("set_link", name=netdev, up=up)


def accelerator(image: GuestImage, scratch: Path) -> str:
    """TCG, or KVM where a probe showed that KVM boots this guest here.

    ``$XDB_LAB_ACCEL`` (tcg or kvm) decides when set. Otherwise the answer of the last probe
    for this kernel, QEMU and CPU is reused from the image cache; a new probe boots one guest
    with KVM and waits PROBE_TIMEOUT seconds for its agent (a nested ``kvm_pvm`` cannot run an
    unmodified kernel: QEMU aborts, or the boot stalls)."""
    chosen = os.environ.get("XDB_LAB_ACCEL", "")
    if chosen:
        if chosen not in ACCELERATORS:
            raise LabError(f"XDB_LAB_ACCEL={chosen}: use one of {', '.join(ACCELERATORS)}")
        return chosen
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    version = subprocess.run(
        ["qemu-system-x86_64", "--version"], capture_output=True, text=True, check=False
    ).stdout
    flags = next(
        (
            line
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        ),
        "",
    )
    key = hashlib.sha256(f"{image.kernel}\0{version}\0{flags}".encode()).hexdigest()[:16]
    remembered = cache_dir() / f"accel-{key}"
    if remembered.is_file():
        return remembered.read_text().strip()
    probe = Guest(GuestSpec("kvm-probe", 3, ()), image, scratch, {}, accel="kvm")
    probe.prepare(image.root)
    answer = "kvm"
    try:
        probe.launch()
        probe.wait_ready(PROBE_TIMEOUT)
    except LabError:
        answer = "tcg"
    finally:
        probe.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    remembered.write_text(answer + "\n")
    return answer


def _short(script: str) -> str:
    first = script.strip().splitlines()[0] if script.strip() else ""
    return first if len(first) <= 100 else first[:97] + "..."


class Pair:
    """Two guests joined by a management link (``mgmt``) and a replication link (``repl``)."""

    def __init__(
        self,
        image: GuestImage,
        directory: Path,
        specs: tuple[GuestSpec, GuestSpec],
        repository: int | None = None,
    ):
        ports = free_udp_ports(4)
        first_links = {"mgmt": (ports[0], ports[1]), "repl": (ports[2], ports[3])}
        second_links = {name: (peer, local) for name, (local, peer) in first_links.items()}
        self.guests = (
            Guest(specs[0], image, directory / specs[0].name, first_links, repository=repository),
            Guest(specs[1], image, directory / specs[1].name, second_links, repository=repository),
        )
        self.image = image
        self.boot_seconds = 0.0
        accel = accelerator(image, directory / "kvm-probe")
        for guest in self.guests:
            guest.accel = accel

    def __iter__(self) -> Iterator[Guest]:
        return iter(self.guests)

    def __getitem__(self, name: str) -> Guest:
        return next(g for g in self.guests if g.name == name)

    def start(self) -> None:
        started = time.monotonic()
        for guest in self.guests:
            guest.prepare(self.image.root)
        # Both boot side by side: each QEMU waits for its channel, then boots.
        for guest in self.guests:
            guest.launch()
        for guest in self.guests:
            guest.wait_ready(BOOT_TIMEOUT)
        self.boot_seconds = time.monotonic() - started

    def stop(self) -> None:
        for guest in self.guests:
            guest.stop()


@contextlib.contextmanager
def running_pair(
    image: GuestImage,
    directory: Path,
    specs: tuple[GuestSpec, GuestSpec],
    repository: int | None = None,
) -> Iterator[Pair]:
    """Both guests booted; each reaches the package repository at ``repository`` (a port on
    127.0.0.1) when given one."""
    pair = Pair(image, directory, specs, repository)
    try:
        pair.start()
        yield pair
    finally:
        pair.stop()


def qemu_processes_of(directory: Path) -> list[int]:
    """PIDs of QEMU processes whose command line names ``directory`` (for leak checks)."""
    found = []
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            cmdline = (proc_dir / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            cmdline
            and cmdline[0].endswith(b"qemu-system-x86_64")
            and any(str(directory).encode() in part for part in cmdline)
        ):
            found.append(int(proc_dir.name))
    return found
