"""A simulated dom0 pair for the runbook's day-two steps.

Each host is an isolated environment: the runbook runs under bash (dom0's ``/bin/sh``) in a
private mount namespace of its own, with an overlay over ``/etc`` (this machine's, plus the
host's dom0 files: rc links and init scripts on sysvinit dom0s) and the host's own ``/var``,
so whatever a step writes there (cron entries, rc links, a systemd drop-in, the guard's state)
stays in that host's directories.  The programs a dom0 has (``xe``, ``drbdadm``, ``chkconfig``,
``systemctl``, …) are the recording fakes of ``fake_dom0.py``, which share one state file:
the pool as xapi sees it and each host's DRBD resource.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FAKE = Path(__file__).with_name("fake_dom0.py")
PROGRAMS = (
    "xe", "drbdadm", "dmesg", "logger", "chkconfig", "systemctl", "sleep", "date", "ip",
    "uname", "modinfo", "modprobe", "yum", "page-oncall",
)  # fmt: skip
HOSTS = ("xcp1", "xcp2")
START = 1_700_000_000  # the simulated clock's first reading (epoch seconds)

# The init scripts of a sysvinit dom0, with the chkconfig headers chkconfig reads: the network
# first, xapi after it, and DRBD's own header (off by default, S70, K08).
INIT_SCRIPTS = {
    "network": "# chkconfig: 2345 10 90",
    "xapi": "# chkconfig: 2345 23 10",
    "drbd": "# chkconfig: - 70 08",
}

# The flags of `get-gi` on a healthy primary. DRBD 8.4: consistent, up-to-date, primary,
# connected, full sync, peer outdated, crashed primary. DRBD 9, in the order of the legend the
# lab's real 9.2 pair printed: consistent, up-to-date, primary, crashed primary, activity log
# applied, activity log disabled, primary that lost quorum, connected, peer outdated, fencing in
# use, full sync, backing device seen (the lab saw them after a split brain, where connected is
# 0 and crashed primary and peer outdated are 1; these healthy values follow from the legend).
GI_FLAGS = {"8": "1:1:1:1:0:0:0", "9": "1:1:1:0:0:0:0:1:0:1:0:1"}

SPLIT_BRAIN_LINE = {
    # DRBD 8.4.11's and DRBD 9.2's own lines, as the lab's split brains printed them
    # (tests/lab/).
    "8": "block drbd1: Split-Brain detected but unresolved, dropping connection!",
    "9": "drbd r0/0 drbd1 {peer}: Split-Brain detected but unresolved, dropping connection!",
}


def healthy_state(*, syntax: str, version: str, kernel: str) -> dict[str, Any]:
    """Both hosts connected, UpToDate and primary, the SR plugged on both, its VMs on xcp1."""
    hosts = {name: f"host-{name}" for name in HOSTS}
    drbd = {
        name: {
            "cstate": "Connected",
            "disk": "UpToDate",
            "role": "Primary",
            # `get-gi`: current, bitmap and two history UUIDs, then the flags (GI_FLAGS)
            "gi": f"8C2D5D6B3E1F2A4{index}:0000000000000000:A1B2C3D4E5F60718:0000000000000004"
            f":{GI_FLAGS['9' if syntax == '9' else '8']}",
            "kernel_log": [],
            "installed": version,
            "loaded": version,
        }
        for index, name in enumerate(HOSTS)
    }
    return {
        "syntax": syntax,
        "now": START,
        "running_kernel": kernel,
        "repo_version": version,
        "diverged": False,
        "split_brain_line": "",
        "pool": {
            "hosts": hosts,
            "master": hosts["xcp1"],
            "other_config": {},
            "sr": {"uuid": "sr-1", "name": "drbd-sr"},
            "pbds": {hosts[n]: {"uuid": f"pbd-{n}", "attached": True} for n in HOSTS},
            "vms": {
                "vm-web": {"name": "web", "power": "running", "resident": hosts["xcp1"],
                           "vdis": ["vdi-web"]},
                "vm-db": {"name": "db", "power": "running", "resident": hosts["xcp1"],
                          "vdis": ["vdi-db-1", "vdi-db-2"]},
                "vm-off": {"name": "spare", "power": "halted", "resident": "<not in database>",
                           "vdis": ["vdi-spare"]},
            },
        },
        "drbd": drbd,
        "addresses": {
            "xcp1": {"xenbr0": ["192.168.1.11/24"], "xenbr1": ["10.0.0.1/24"]},
            "xcp2": {"xenbr0": ["192.168.1.12/24"], "xenbr1": ["10.0.0.2/24"]},
        },
        "routes": {
            "xcp1": "10.0.0.2 dev xenbr1 src 10.0.0.1",
            "xcp2": "10.0.0.1 dev xenbr1 src 10.0.0.2",
        },
        "units": {name: {"drbd.service": "disabled", "xapi.service": "enabled"} for name in HOSTS},
    }  # fmt: skip


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str
    calls: list[str]  # "<host>: <program> <args>", in order, of this run only


class Dom0Pair:
    def __init__(self, base: Path, output: Path, *, drbdadm: str, state: dict[str, Any]) -> None:
        self.base = base
        self.output = output
        self.drbdadm = drbdadm
        self.bin = base / "bin"
        self.bin.mkdir(parents=True)
        fake = self.bin / "fake_dom0"
        fake.write_text(f"#!{sys.executable}\n" + FAKE.read_text())
        fake.chmod(0o755)
        for program in PROGRAMS:
            (self.bin / program).symlink_to(fake.name)
        self.state_file = base / "state.json"
        self.log = base / "calls.log"
        self.log.touch()
        self.save(state)
        for host in HOSTS:
            root = self.root(host)
            for name in ("upper", "work", "var/log", "var/lib", "dom0-etc"):
                (root / name).mkdir(parents=True)
            self._dom0_etc(root / "dom0-etc")

    def root(self, host: str) -> Path:
        return self.base / host

    def etc(self, host: str) -> Path:
        """What the steps wrote under the host's /etc (the overlay's upper directory)."""
        return self.root(host) / "upper"

    def var(self, host: str) -> Path:
        return self.root(host) / "var"

    @staticmethod
    def _dom0_etc(etc: Path) -> None:
        rc = etc / "rc.d"
        (rc / "init.d").mkdir(parents=True)
        for name, header in INIT_SCRIPTS.items():
            script = rc / "init.d" / name
            script.write_text(f"#!/bin/sh\n{header}\n")
            script.chmod(0o755)
        for level in "0123456":
            directory = rc / f"rc{level}.d"
            directory.mkdir()
            for name in ("network", "xapi"):
                levels, start, stop = INIT_SCRIPTS[name].split()[2:]
                kind, number = ("S", start) if level in levels else ("K", stop)
                (directory / f"{kind}{number}{name}").symlink_to(f"../init.d/{name}")

    @property
    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.state_file.read_text())
        return data

    def save(self, state: dict[str, Any]) -> None:
        self.state_file.write_text(json.dumps(state, indent=1, sort_keys=True))

    def change(self, **changes: Any) -> None:
        """Change the state with dotted paths: ``change(**{"drbd.xcp1.cstate": "StandAlone"})``."""
        state = copy.deepcopy(self.state)
        for dotted, value in changes.items():
            node = state
            *parts, last = dotted.split(".")
            for part in parts:
                node = node[part]
            node[last] = value
        self.save(state)

    def run(self, host: str, *step: str, script: str | None = None) -> Run:
        """``bash runbook.sh STEP…`` as root on ``host`` (or another command line there)."""
        root = self.root(host)
        env = {
            "PATH": f"{self.bin}:/usr/sbin:/usr/bin:/sbin:/bin",
            "FAKE_HOST": host,
            "FAKE_STATE": str(self.state_file),
            "FAKE_LOG": str(self.log),
            "FAKE_RES": str(self.output / host / "r0.res"),
            "FAKE_DRBDADM": self.drbdadm,
        }
        command = script or shlex.join(["bash", str(self.output / host / "runbook.sh"), *step])
        lower = f"{root / 'dom0-etc'}:/etc"
        overlay = f"lowerdir={lower},upperdir={root / 'upper'},workdir={root / 'work'}"
        inside = (
            f"mount -t overlay overlay -o {shlex.quote(overlay)} /etc && "
            f"mount --bind {shlex.quote(str(root / 'var'))} /var && "
            f"cd {shlex.quote(str(self.output / host))} && "
            f"exec env {' '.join(f'{k}={shlex.quote(v)}' for k, v in env.items())} {command}"
        )
        before = len(self.log.read_text().splitlines())
        result = subprocess.run(
            ["unshare", "--mount", "sh", "-c", inside],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        calls = self.log.read_text().splitlines()[before:]
        return Run(result.returncode, result.stdout, result.stderr, calls)


def can_isolate(base: Path) -> str | None:
    """Why a host environment cannot be made here (None when it can)."""
    for name in ("upper", "work", "var"):
        (base / name).mkdir(parents=True, exist_ok=True)
    overlay = f"lowerdir=/etc,upperdir={base / 'upper'},workdir={base / 'work'}"
    probe = subprocess.run(
        [
            "unshare",
            "--mount",
            "sh",
            "-c",
            f"mount -t overlay overlay -o {shlex.quote(overlay)} /etc && "
            f"mount --bind {shlex.quote(str(base / 'var'))} /var && touch /etc/.probe /var/.probe",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return (
            f"cannot overlay /etc and bind /var in a mount namespace here: {probe.stderr.strip()}"
        )
    if not os.access(base / "upper" / ".probe", os.F_OK):
        return "the overlay over /etc did not take the probe's write"
    return None
