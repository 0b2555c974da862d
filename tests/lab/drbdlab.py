"""What the lab's scenarios say, in a few words each: DRBD's state, patterns, the runbook.

The scenarios read like the operator's story (cut the link, write on both, reconnect, heal);
the machinery is here.  DRBD's state is read from ``/proc/drbd`` by the guest itself in a
loop (under TCG a ``drbdadm`` call costs a second), a bounce is watched through DRBD's own
event stream (``drbdsetup events2``), and data is compared with ``dd
iflag=direct | sha256sum`` on each host, never by trusting a read that returned nothing:
DRBD 8.4 refuses to open its device on a Secondary, and that refusal fails the test.
"""

from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.lab.vm import Guest, LabError, Pair, Result

DEVICE = "/dev/drbd1"
MINOR = 1
RESOURCE = "r0"
DEPLOY_DIR = "/root/deploy"
MIB = 1024 * 1024


@dataclass(frozen=True)
class DrbdState:
    cs: str  # connection state
    ro: str  # roles, local/peer
    ds: str  # disk states, local/peer
    line: str

    @property
    def healthy(self) -> bool:
        return (self.cs, self.ro, self.ds) == (
            "Connected", "Primary/Primary", "UpToDate/UpToDate",
        )  # fmt: skip


def state(guest: Guest) -> DrbdState:
    text = guest.ok("cat /proc/drbd")
    match = re.search(rf"^ *{MINOR}: cs:(\S+) ro:(\S+) ds:(\S+)", text, re.M)
    if match is None:
        raise AssertionError(f"{guest.name}: /proc/drbd shows no minor {MINOR}:\n{text}")
    return DrbdState(match.group(1), match.group(2), match.group(3), match.group(0).strip())


def wait_state(guest: Guest, pattern: str, *, timeout: float, what: str = "") -> DrbdState:
    """Wait until minor 1's line in /proc/drbd matches ``pattern`` (an extended regex)."""
    guest.wait_for(
        f"grep -E '^ *{MINOR}: .*{pattern}' /proc/drbd",
        timeout=timeout,
        what=what or f"/proc/drbd to match {pattern!r}",
    )
    return state(guest)


def wait_healthy(pair: Pair, *, timeout: float = 120) -> None:
    for guest in pair:
        wait_state(
            guest,
            "cs:Connected ro:Primary/Primary ds:UpToDate/UpToDate",
            timeout=timeout,
            what="Connected, Primary/Primary, UpToDate/UpToDate",
        )


def wait_events(guest: Guest, *patterns: str, timeout: float, what: str) -> str:
    """Wait until ``drbdsetup events2 --now`` has a line matching each extended regex."""
    checks = " && ".join(f"echo \"$s\" | grep -qE '{pattern}'" for pattern in patterns)
    return guest.wait_for(
        f's=$(drbdsetup events2 --now {RESOURCE}) && {checks} && echo "$s"',
        timeout=timeout,
        what=what,
    )


# Both Primary, Connected, both disks UpToDate (DRBD 9's events2 words).
HEALTHY_9 = (
    "^exists resource .* role:Primary",
    "^exists connection .* connection:Connected role:Primary",
    "^exists device .* disk:UpToDate",
    "^exists peer-device .* replication:Established peer-disk:UpToDate",
)


def put(guest: Guest, path: str, content: bytes, mode: int = 0o644) -> None:
    encoded = base64.b64encode(content).decode()
    guest.ok(
        f"mkdir -p \"$(dirname '{path}')\" && echo '{encoded}' | base64 -d > '{path}' "
        f"&& chmod {mode:o} '{path}'"
    )


def deploy_files(guest: Guest, rendered: Path) -> None:
    """The host's rendered directory, copied to DEPLOY_DIR as an operator would."""
    for path in sorted((rendered / guest.name).iterdir()):
        put(guest, f"{DEPLOY_DIR}/{path.name}", path.read_bytes(), path.stat().st_mode & 0o777)


def runbook(guest: Guest, step: str, *args: str, timeout: float = 300) -> Result:
    """``sh runbook.sh STEP ARGS`` as root on the host, as the operator runs it."""
    words = " ".join([step, *args])
    return guest.sh(f"cd {DEPLOY_DIR} && sh runbook.sh {words}", timeout=timeout)


def runbook_on_both(pair: Pair, step: str, *args: str, timeout: float = 600) -> list[Result]:
    """The same runbook step on both hosts at once (two operators, or two terminals): the
    second host's in the background, the first's in the foreground."""
    first, second = pair
    words = " ".join([step, *args])
    second.ok(
        f"rm -f /tmp/both.rc; cd {DEPLOY_DIR} && setsid bash -c 'sh runbook.sh {words} "
        ">/tmp/both.out 2>/tmp/both.err; echo $? >/tmp/both.rc' >/dev/null 2>&1 </dev/null &"
    )
    mine = runbook(first, step, *args, timeout=timeout)
    code = second.wait_for("cat /tmp/both.rc", timeout=timeout, what=f"{step} on {second.name}")
    theirs = Result(int(code), second.ok("cat /tmp/both.out"), second.ok("cat /tmp/both.err"))
    return [mine, theirs]


def write_pattern(guest: Guest, *, offset_mib: int, size_mib: int) -> str:
    """Write fresh random data at ``offset_mib`` through the DRBD device; its sha256."""
    return guest.ok(
        f"dd if=/dev/urandom of=/tmp/pattern bs=1M count={size_mib} 2>/dev/null && "
        f"dd if=/tmp/pattern of={DEVICE} bs=1M seek={offset_mib} oflag=direct conv=fsync "
        "2>/dev/null && sha256sum < /tmp/pattern | cut -d' ' -f1"
    ).strip()


def read_sum(guest: Guest, *, offset_mib: int, size_mib: int, device: str = DEVICE) -> str:
    """sha256 of a region read from ``device`` with O_DIRECT (no page cache to fool us)."""
    return guest.ok(
        f"dd if={device} bs=1M skip={offset_mib} count={size_mib} iflag=direct 2>/dev/null "
        "| sha256sum | cut -d' ' -f1"
    ).strip()


def device_sum(guest: Guest) -> str:
    return guest.ok(f"dd if={DEVICE} bs=1M iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1")


def load_module(guest: Guest, name: str) -> str:
    """``modprobe NAME``; on failure the error names the module file and the kernel's words."""
    loaded = guest.sh(f"modprobe {name}")
    if loaded.returncode != 0:
        path = guest.sh(f"modinfo -n {name}").stdout.strip() or "(modinfo finds no file)"
        said = guest.sh("dmesg | tail -n 5").stdout.strip()
        raise AssertionError(
            f"{guest.name}: modprobe {name} failed with exit code {loaded.returncode}: "
            f"{loaded.stderr.strip()}\n  module file: {path}\n  kernel: {said}"
        )
    return guest.ok(f"modinfo -n {name}").strip()


def kernel_log(guest: Guest) -> str:
    return guest.ok("dmesg")


def start_watcher(guest: Guest, name: str) -> None:
    """Record DRBD's own account of the resource, ``drbdsetup events2 --timestamps``, in the
    guest: its current state first, then every change, until :func:`stop_watcher`."""
    guest.ok(
        f"rm -f /tmp/{name}.log; setsid drbdsetup events2 --timestamps {RESOURCE} "
        f"> /tmp/{name}.log 2>&1 < /dev/null & echo $! > /tmp/{name}.pid"
    )
    # The current state comes first and ends with "exists -": from then on nothing is missed.
    guest.wait_for(
        f"grep -qx '.*exists -' /tmp/{name}.log", timeout=30, what="drbdsetup events2 to start"
    )


def stop_watcher(guest: Guest, name: str) -> list[str]:
    return guest.ok(f"kill $(cat /tmp/{name}.pid); sleep 0.3; cat /tmp/{name}.log").splitlines()


CONNECTION = re.compile(r" connection:(\S+)")


def connection_states(events: list[str]) -> list[str]:
    """The connection states in an events2 log, in order (``connection:Connected`` ...)."""
    return [match.group(1) for line in events for match in [CONNECTION.search(line)] if match]


def start_writer(guest: Guest, *, offset_mib: int, seconds: int) -> None:
    """Write 64 KiB blocks through the device for ``seconds``, cycling over 4 MiB, and keep
    the count of writes and the longest one (in ms)."""
    blocks = 4 * MIB // (64 * 1024)
    guest.ok(
        "rm -f /tmp/writer.done /tmp/writer.errors; setsid bash -c '"
        f"end=$(($(date +%s) + {seconds})); i=0; n=0; longest=0; "
        'while [ "$(date +%s)" -lt "$end" ]; do t0=$(date +%s%N); '
        f"dd if=/dev/urandom of={DEVICE} bs=64K count=1 seek=$(({offset_mib} * 16 + i)) "
        'oflag=direct 2>/dev/null || echo "write $n failed" >> /tmp/writer.errors; '
        "took=$((($(date +%s%N) - t0) / 1000000)); [ $took -le $longest ] || longest=$took; "
        f"i=$(((i + 1) % {blocks})); n=$((n + 1)); done; echo $n $longest > /tmp/writer.done' "
        ">/dev/null 2>&1 </dev/null &"
    )


def wait_writer(guest: Guest, *, timeout: float) -> tuple[int, int]:
    """The writer's count of writes and its longest write in ms, once it ended; fails on any
    failed write."""
    done = guest.wait_for("cat /tmp/writer.done", timeout=timeout, what="the writer to end")
    errors = guest.sh("cat /tmp/writer.errors").stdout
    assert not errors, f"{guest.name}: writes failed:\n{errors}"
    count, longest = done.split()
    return int(count), int(longest)


def bounce_management(guest: Guest, interface: str, *, down_seconds: int) -> None:
    """What a management reconfiguration does to the management interface: down, addresses
    flushed, up again and re-addressed after ``down_seconds``.  Runs in the background."""
    guest.ok(
        f"ip -o -4 addr show dev {interface} | awk '{{print $4}}' > /tmp/bounce.addresses; "
        "rm -f /tmp/bounce.done; setsid bash -c '"
        f'echo "$(date +%s.%N) down" > /tmp/bounce.log; ip link set {interface} down; '
        f"ip addr flush dev {interface}; sleep {down_seconds}; ip link set {interface} up; "
        f"for a in $(cat /tmp/bounce.addresses); do ip addr add $a dev {interface}; done; "
        'echo "$(date +%s.%N) up" >> /tmp/bounce.log; touch /tmp/bounce.done\' '
        ">/dev/null 2>&1 </dev/null &"
    )


def wait_bounce(guest: Guest, *, timeout: float) -> None:
    guest.wait_for("test -e /tmp/bounce.done", timeout=timeout, what="the bounce to end")


def bounce_experiment(
    pair: Pair,
    figures: dict[str, Any],
    lab_output: Path,
    name: str,
    *,
    offset_mib: int,
    down_seconds: int = 8,
) -> list[str]:
    """Bounce xenbr0 on both hosts while xcp1 writes at ``offset_mib``; the event log of both
    connections (each host's kept as ``<name>-<host>.log``), the writes in ``figures``."""
    first = pair["xcp1"]
    for host in pair:
        start_watcher(host, name)
    start_writer(first, offset_mib=offset_mib, seconds=down_seconds + 17)
    for host in pair:
        bounce_management(host, "xenbr0", down_seconds=down_seconds)
    for host in pair:
        wait_bounce(host, timeout=down_seconds + 60)
    writes, longest = wait_writer(first, timeout=down_seconds + 120)
    events: list[str] = []
    for host in pair:
        logged = stop_watcher(host, name)
        (lab_output / f"{name}-{host.name}.log").write_text("\n".join(logged) + "\n")
        events += [f"{host.name} {line}" for line in logged]
    figures[name] = {"writes": writes, "longest_write_ms": longest, "events": events}
    return events


def bounce_around_master_change(
    pair: Pair, figures: dict[str, Any], lab_output: Path, name: str, *, offset_mib: int
) -> None:
    """The bounce of :func:`bounce_experiment` between ``master-change pre`` and ``post`` on
    both hosts, with replication on its own link: DRBD's connection must not notice at all,
    and both devices hold the same data after."""
    for host in pair:
        runbook(host, "master-change", "pre").check(f"{host.name}: master-change pre")
    events = bounce_experiment(pair, figures, lab_output, name, offset_mib=offset_mib)
    for host in pair:
        runbook(host, "master-change", "post").check(f"{host.name}: master-change post")
    states = connection_states(events)
    assert states and set(states) == {"Connected"}, events
    # Nothing of the connection changed at all: its only events are the initial "exists".
    assert not [line for line in events if " connection name:" in line and " exists " not in line]
    first, second = pair
    assert device_sum(first) == device_sum(second)


def split_brain_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "Split-Brain" in line]


def bugs(log: str) -> list[str]:
    return [line for line in log.splitlines() if re.search(r"BUG:|Oops|general protection", line)]


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def seconds(self) -> float:
        return time.monotonic() - self.started


def keep_output(pair: Pair, directory: Path) -> list[str]:
    """Each guest's commands, kernel log and console into ``directory/<host>/``; the kernel's
    bug reports among them (a test fails on any)."""
    problems = []
    for host in pair:
        kept = directory / host.name
        kept.mkdir(parents=True, exist_ok=True)
        (kept / "commands.log").write_text("\n\n".join(host.log) + "\n")
        try:
            log = kernel_log(host)
        except (LabError, AssertionError) as exc:
            log = f"(no kernel log: {exc})"
        (kept / "dmesg.log").write_text(log)
        problems += [f"{host.name}: {line}" for line in bugs(log)]
        if host.console.exists():
            (kept / "console.log").write_bytes(host.console.read_bytes())
    return problems
