"""The runbook's day-two steps on a simulated dom0 pair, for each DRBD syntax.

Each scenario renders a pool, makes the two hosts (``tests/support/dom0pair.py``: isolated
environments with recording fakes of ``xe`` and DRBD's state, the real drbdadm of the version
checking every drbdadm command line against the rendered resource file), runs the steps under
bash as dom0 does, and asserts the commands run, in order, and what is refused.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from builder import proc
from builder.registry import load_registry
from tests.deploy_support import pool_data, render_pool
from tests.support.dom0pair import (
    SPLIT_BRAIN_LINE,
    START,
    Dom0Pair,
    Run,
    can_isolate,
    healthy_state,
)
from tests.support.needs import unavailable

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Case:
    version: str
    target: str
    drbdadm: str
    syntax: str
    init: str


CASES = {
    "8.3": Case("8.3.16", "xcp-1.5", "/usr/lib/drbd/drbdadm-83", "8.3", "sysvinit"),
    "8.4": Case("8.4.1", "xcp-1.5", "/usr/lib/drbd/drbdadm-84", "8.4", "sysvinit"),
    "9": Case("9.2.5", "xcp-ng-8.2", "/usr/sbin/drbdadm", "9", "systemd"),
}
DISCARD = {
    "8.3": "drbdadm -- --discard-my-data connect r0",
    "8.4": "drbdadm connect --discard-my-data r0",
    "9": "drbdadm connect --discard-my-data r0",
}
QUERIES = ("cstate", "dstate", "role", "show-gi", "dump", "status")
XE_CHANGES = (
    "pbd-plug", "pbd-unplug", "vm-migrate", "vm-shutdown", "host-param-set",
    "pool-designate-new-master", "sr-create", "pbd-create",
)  # fmt: skip


def actions(run: Run) -> list[str]:
    """The calls that change something, without the host prefix when one host ran."""
    changed = []
    for call in run.calls:
        _, program, *args = call.split()
        if program == "drbdadm" and next(a for a in args if not a.startswith("-")) in QUERIES:
            continue
        if program == "xe" and args[0] not in XE_CHANGES:
            continue
        if program in ("dmesg", "ip", "modinfo") or args[:1] in (["cat"], ["is-enabled"]):
            continue
        changed.append(call)
    return changed


def render(directory: Path, case: Case, **changes: Any) -> Path:
    data = pool_data(**{"target": case.target, "drbd.version": case.version, **changes})
    return render_pool(directory, data)


def make_pair(
    tmp_path: Path, case: Case, *, boot: bool = True, changes: dict[str, Any] | None = None
) -> Dom0Pair:
    if not os.access(case.drbdadm, os.X_OK):
        unavailable(f"{case.drbdadm} is not installed (Debian package drbd-utils)")
    if shutil.which("unshare") is None:
        unavailable("unshare is not installed (Debian package util-linux)")
    reason = can_isolate(tmp_path / "probe")
    if reason:
        unavailable(reason)
    base = tmp_path / "pair"
    hook = f"{base}/bin/page-oncall --team storage"
    output = render(tmp_path / "render", case, **{"guard.hook": hook, **(changes or {})})
    kernel = load_registry().target(case.target).kernel_release
    state = healthy_state(syntax=case.syntax, version=case.version, kernel=kernel)
    pair = Dom0Pair(base, output, drbdadm=case.drbdadm, state=state)
    if boot:
        for host in ("xcp1", "xcp2"):
            assert pair.run(host, "boot").returncode == 0
    return pair


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[str(request.param)]


@pytest.fixture
def pair(tmp_path: Path, case: Case) -> Dom0Pair:
    return make_pair(tmp_path, case)


@pytest.mark.parametrize("target", ["xcp-1.5", "xcp-ng-8.2"])
@pytest.mark.parametrize("version", ["8.3.16", "8.4.1", "8.4.11", "9.2.5"])
def test_shellcheck_passes_on_every_runbook(tmp_path: Path, target: str, version: str) -> None:
    if shutil.which("shellcheck") is None:
        unavailable("shellcheck is not installed (Debian package shellcheck)")
    data = pool_data(**{"target": target, "drbd.version": version})
    data["guard"] = {"hook": "/usr/local/sbin/page-oncall --team storage"}
    output = render_pool(tmp_path, data)
    runbooks = sorted(output.glob("*/runbook.sh"))
    assert len(runbooks) == 2
    # The runbooks say #!/bin/sh: shellcheck checks them as POSIX sh, so no bash-ism hides.
    result = proc.run(["shellcheck", "--severity=style", *runbooks], echo=False, check=False)
    assert result.returncode == 0, result.stdout
    for runbook in runbooks:
        proc.run(["bash", "-n", runbook], echo=False)


def test_a_healthy_pair_is_ok_on_both_hosts_and_nothing_changes(pair: Dom0Pair) -> None:
    for host in ("xcp1", "xcp2"):
        run = pair.run(host, "status")
        assert run.returncode == 0, run.stderr
        assert "connection Connected, disks UpToDate/UpToDate" in run.stdout
        assert "PBD on xcp1: pbd-xcp1, attached: true" in run.stdout
        assert "PBD on xcp2: pbd-xcp2, attached: true" in run.stdout
        assert "xcp1 vm-web web" in run.stdout
        assert "xcp1 vm-db db" in run.stdout
        assert "spare" not in run.stdout  # halted: it runs nowhere
        assert actions(run) == []


def test_status_reports_what_is_unsafe_with_exit_status_3(pair: Dom0Pair) -> None:
    pair.change(**{"pool.vms.vm-web.resident": "host-xcp2", "drbd.xcp2.cstate": "WFConnection"})
    run = pair.run("xcp2", "status")
    assert run.returncode == 3
    assert "r0 is WFConnection: xcp2 does not replicate to xcp1" in run.stderr
    assert "VMs of drbd-sr run on both hosts" in run.stderr
    assert "xcp2 vm-web web" in run.stdout
    assert actions(run) == []


def test_reboot_without_boot_order_then_the_boot_step(tmp_path: Path, case: Case) -> None:
    pair = make_pair(tmp_path, case, boot=False)
    # xcp2 rebooted: xapi started before DRBD was primary, so its PBD stayed unplugged.
    pair.change(
        **{"drbd.xcp2.role": "Secondary", "pool.pbds.host-xcp2": {"uuid": "pbd-xcp2",
                                                                  "attached": False}}
    )  # fmt: skip
    before = pair.run("xcp2", "status")
    assert before.returncode == 3
    assert "xcp2 is Secondary, not Primary" in before.stderr
    assert "the SR is not plugged on xcp2" in before.stderr
    assert "run sh runbook.sh boot" in before.stderr

    boot = pair.run("xcp2", "boot")
    assert boot.returncode == 0, boot.stderr
    if case.init == "sysvinit":
        assert actions(boot) == ["xcp2: chkconfig --add drbd", "xcp2: chkconfig drbd on"]
        listing = pair.run("xcp2", script="ls /etc/rc.d/rc3.d /etc/rc.d/rc0.d").stdout.split()
        starts = [name for name in listing if name.startswith("S")]
        # rc starts S links in name order: the network, then DRBD, then xapi.
        assert starts == sorted(starts)
        assert starts == ["S10network", "S22drbd", "S23xapi"]
        kills = sorted(name for name in listing if name.startswith("K"))
        assert kills == ["K10xapi", "K11drbd", "K90network"]  # DRBD stops after xapi
        again = pair.run("xcp2", "boot")  # idempotent: the same links, no duplicates
        assert again.returncode == 0
        relisted = pair.run("xcp2", script="ls /etc/rc.d/rc3.d /etc/rc.d/rc0.d").stdout.split()
        assert relisted == listing
    else:
        assert actions(boot) == [
            "xcp2: systemctl daemon-reload",
            "xcp2: systemctl enable drbd.service",
        ]
        dropin = pair.etc("xcp2") / "systemd/system/drbd.service.d/xcp-drbd-builder.conf"
        text = dropin.read_text()
        assert "Before=xapi.service" in text
        assert "After=network-online.target" in text
    after = pair.run("xcp2", "status")
    assert after.returncode == 3
    assert "runbook.sh boot" not in after.stderr
    assert "the SR is not plugged on xcp2" in after.stderr  # the boot step fixes the next boot


def test_guard_alarms_only_past_the_grace_period_and_only_on_the_master(pair: Dom0Pair) -> None:
    pair.change(**{"pool.vms.vm-web.resident": "host-xcp2"})  # a migration starts
    not_master = pair.run("xcp2", "guard")
    assert not_master.returncode == 0
    assert [c.split(" ", 2)[2] for c in not_master.calls] == [
        "pool-list params=master --minimal",
        "host-list name-label=xcp2 --minimal",
    ]
    for minutes, expected in ((0, 0), (5, 0), (9, 0), (11, 3), (12, 3)):
        pair.change(now=START + minutes * 60)
        run = pair.run("xcp1", "guard")
        assert run.returncode == expected, (minutes, run.stderr)
        logged = [c for c in run.calls if " logger " in c]
        hooked = [c for c in run.calls if " page-oncall " in c]
        if expected == 0:
            assert run.stdout + run.stderr == ""  # cron mails any output
            assert logged == hooked == []
        else:
            assert f"for {minutes} minutes, longer than the grace period of 10" in run.stderr
            assert len(logged) == 1
            assert "-p daemon.err" in logged[0]
            # The site hook runs once per episode; syslog and the exit status every minute.
            assert len(hooked) == (1 if minutes == 11 else 0)
    (hook,) = [c for c in pair.log.read_text().splitlines() if " page-oncall " in c]
    assert hook.startswith("xcp1: page-oncall --team storage VMs of SR drbd-sr have run")
    assert "xcp1: page-oncall-env 11" in pair.log.read_text()

    pair.change(**{"pool.vms.vm-web.resident": "host-xcp1", "now": START + 13 * 60})
    assert pair.run("xcp1", "guard").returncode == 0
    assert not (pair.var("xcp1") / "lib/xcp-drbd-builder/r0.apart-since").exists()
    # Apart again: a new episode, a new grace period.
    pair.change(**{"pool.vms.vm-web.resident": "host-xcp2", "now": START + 14 * 60})
    assert pair.run("xcp1", "guard").returncode == 0


def test_guard_install_puts_a_copy_of_the_runbook_into_cron(pair: Dom0Pair) -> None:
    run = pair.run("xcp1", "guard", "install")
    assert run.returncode == 0, run.stderr
    cron = (pair.etc("xcp1") / "cron.d/xcp-drbd-builder-guard-r0").read_text()
    (line,) = [ln for ln in cron.splitlines() if not ln.startswith("#")]
    assert line == "* * * * * root /bin/sh /etc/xcp-drbd-builder/r0-runbook.sh guard"
    assert not list((pair.etc("xcp1") / "cron.d").glob(".*"))  # no partial file left
    copy = pair.etc("xcp1") / "xcp-drbd-builder/r0-runbook.sh"
    assert copy.read_text() == (pair.output / "xcp1" / "runbook.sh").read_text()
    pair.change(**{"pool.vms.vm-web.resident": "host-xcp2", "now": START})
    assert pair.run("xcp1", script=line.split(" root ", 1)[1]).returncode == 0
    pair.change(now=START + 20 * 60)
    assert pair.run("xcp1", script=line.split(" root ", 1)[1]).returncode == 3


def test_split_brain_is_shown_then_recovered_keeping_the_named_host(
    pair: Dom0Pair, case: Case
) -> None:
    line = SPLIT_BRAIN_LINE["9" if case.syntax == "9" else "8"]
    pair.change(
        **{
            "diverged": True,
            "split_brain_line": line.format(peer="xcp2"),
            "drbd.xcp1.cstate": "StandAlone",
            "drbd.xcp1.kernel_log": [line.format(peer="xcp2")],
            "drbd.xcp2.cstate": "StandAlone",
            "drbd.xcp2.kernel_log": [line.format(peer="xcp1")],
            # Apart: not connected; the peer outdated by the fence handler (as the lab's were).
            "drbd.xcp2.gi": "5F00DEADBEEF0001:8C2D5D6B3E1F2A40:A1B2C3D4E5F60718:0000000000000004:"
            + ("1:1:1:1:0:0:0:0:1:1:0:1" if case.syntax == "9" else "1:1:1:0:0:1:0"),
            "pool.vms.vm-web.resident": "host-xcp2",
        }
    )
    status = pair.run("xcp1", "status")
    assert status.returncode == 3
    assert "split brain: r0 is StandAlone and the kernel log reports a split brain" in (
        status.stderr
    )

    shown = pair.run("xcp2", "split-brain")
    assert shown.returncode == 3
    assert "5F00DEADBEEF0001:8C2D5D6B3E1F2A40" in shown.stdout  # this side's data
    if case.syntax == "8.4":  # DRBD 8.4's diagram, as a real pair prints it, every line indented
        assert "\n           +--<  Current data generation UUID  >-\n" in shown.stdout
        assert "\n    flags: Primary, StandAlone, UpToDate, peer Outdated\n" in shown.stdout
    if case.syntax == "9":  # DRBD 9's diagram and twelve flags, as a real 9.2 pair prints them
        assert "\n           +--<  Current data generation UUID  >-\n" in shown.stdout
        assert ":1:1:1:1:0:0:0:0:1:1:0:1\n" in shown.stdout
        assert "saw this node with a backing device attached >--+\n" in shown.stdout
    assert "Split-Brain detected" in shown.stdout
    on_xcp2 = shown.stdout.split("running now on xcp2:")[1].split("VMs with")[0]
    on_xcp1 = shown.stdout.split("running now on xcp1:")[1]
    assert "vm-web" in on_xcp2
    assert "vm-db" not in on_xcp2
    assert "vm-db" in on_xcp1
    assert actions(shown) == []

    for refused_args, message in (
        (("--keep",), "--keep names the host whose data survives: xcp2 or xcp1, not ''"),
        (("--keep", "xcp3"), "not 'xcp3'"),
        (("--keep", "xcp1"), "VMs with disks on drbd-sr still run on xcp2"),
    ):
        refused = pair.run("xcp2", "split-brain", *refused_args)
        assert refused.returncode == 1, refused_args
        assert message in refused.stderr
        assert actions(refused) == []

    pair.run("xcp2", script="xe vm-shutdown uuid=vm-web")
    survivor = pair.run("xcp1", "split-brain", "--keep", "xcp1")
    assert survivor.returncode == 0, survivor.stderr
    assert actions(survivor) == ["xcp1: drbdadm connect r0"]
    victim = pair.run("xcp2", "split-brain", "--keep", "xcp1")
    assert victim.returncode == 0, victim.stderr
    assert actions(victim) == [
        "xcp2: xe pbd-unplug uuid=pbd-xcp2",
        "xcp2: drbdadm secondary r0",
        f"xcp2: {DISCARD[case.syntax]}",
        "xcp2: drbdadm primary r0",
        "xcp2: xe pbd-plug uuid=pbd-xcp2",
    ]
    # It waited for the resync before becoming primary again.
    looks = [c for c in victim.calls if c.endswith("dstate r0")]
    assert len(looks) >= 2
    assert pair.state["drbd"]["xcp2"]["gi"] == pair.state["drbd"]["xcp1"]["gi"]
    for host in ("xcp1", "xcp2"):
        assert pair.run(host, "status").returncode == 0


def test_split_brain_refuses_a_stand_alone_host_without_a_split_brain(pair: Dom0Pair) -> None:
    # Another DRBD device's split brain is not this resource's.
    other_device = "block drbd2: Split-Brain detected but unresolved, dropping connection!"
    pair.change(**{"drbd.xcp2.cstate": "StandAlone", "drbd.xcp2.kernel_log": [other_device]})
    run = pair.run("xcp2", "split-brain", "--keep", "xcp1")
    assert run.returncode == 1
    assert "the kernel log reports no split brain" in run.stderr
    assert actions(run) == []
    connected = pair.run("xcp1", "split-brain", "--keep", "xcp1")
    assert connected.returncode == 1
    assert "no split brain: r0 is Connected on xcp1" in connected.stderr


def test_master_change_checks_before_and_reconnects_after_the_interface_bounce(
    pair: Dom0Pair,
) -> None:
    for host in ("xcp1", "xcp2"):
        pre = pair.run(host, "master-change", "pre")
        assert pre.returncode == 0, pre.stderr
        assert actions(pre) == []
        assert [c.split(" ", 2)[1:] for c in pre.calls][:2] == [
            ["ip", "-o -4 addr show dev xenbr0"],
            ["ip", "route get " + ("10.0.0.2" if host == "xcp1" else "10.0.0.1")],
        ]
    pair.change(master_change_effect={"xcp1": "StandAlone", "xcp2": "WFConnection"})
    pair.run("xcp1", script="xe pool-designate-new-master host-uuid=host-xcp2")
    assert pair.run("xcp1", "status").returncode == 3

    post = pair.run("xcp1", "master-change", "post")
    assert post.returncode == 0, post.stderr
    assert actions(post) == ["xcp1: drbdadm adjust r0"]
    assert "r0 is StandAlone after the master change: reconnecting." in post.stdout
    other = pair.run("xcp2", "master-change", "post")
    assert other.returncode == 0, other.stderr
    assert actions(other) == []
    assert pair.run("xcp2", "status").returncode == 0


def test_master_change_is_refused_when_replication_would_break(pair: Dom0Pair) -> None:
    pair.change(**{"routes.xcp1": "10.0.0.2 via 192.168.1.1 dev xenbr0 src 192.168.1.11"})
    routed = pair.run("xcp1", "master-change", "pre")
    assert routed.returncode == 1
    assert "the route to xcp2's replication address is not via xenbr1" in routed.stderr
    pair.change(
        **{
            "routes.xcp1": "10.0.0.2 dev xenbr1 src 10.0.0.1",
            "addresses.xcp1.xenbr0": ["192.168.1.11/24", "10.0.0.1/24"],
        }
    )
    on_management = pair.run("xcp1", "master-change", "pre")
    assert on_management.returncode == 1
    assert "the replication address 10.0.0.1 is on xenbr0" in on_management.stderr
    pair.change(**{"addresses.xcp1.xenbr0": ["192.168.1.11/24"], "drbd.xcp2.disk": "Outdated"})
    outdated = pair.run("xcp1", "master-change", "pre")
    assert outdated.returncode == 1
    assert "disks UpToDate/Outdated" in outdated.stderr
    assert all(actions(r) == [] for r in (routed, on_management, outdated))


def test_upgrade_moves_the_vms_first_and_reconnects(pair: Dom0Pair, case: Case) -> None:
    run = pair.run("xcp1", "upgrade")
    assert run.returncode == 0, run.stderr
    packages = run.calls[[c.split()[1] for c in run.calls].index("yum")].split(" ", 4)[4]
    assert actions(run) == [
        "xcp1: xe vm-migrate uuid=vm-db host-uuid=host-xcp2 live=true",
        "xcp1: xe vm-migrate uuid=vm-web host-uuid=host-xcp2 live=true",
        "xcp1: xe pbd-unplug uuid=pbd-xcp1",
        "xcp1: drbdadm secondary r0",
        "xcp1: drbdadm down r0",
        "xcp1: modprobe -r drbd",
        f"xcp1: yum -y install {packages}",
        "xcp1: modprobe drbd",
        "xcp1: drbdadm up r0",
        "xcp1: drbdadm primary r0",
        "xcp1: xe pbd-plug uuid=pbd-xcp1",
        f"xcp1: xe host-param-set uuid=host-xcp1 "
        f"other-config:xcp-drbd-builder-r0-drbd-version={case.version}",
    ]
    assert "kmod-drbd" in packages if case.syntax == "9" else "drbd-km-" in packages
    vms = pair.state["pool"]["vms"]
    assert {vms["vm-web"]["resident"], vms["vm-db"]["resident"]} == {"host-xcp2"}
    assert pair.run("xcp2", "status").returncode == 0


def test_upgrade_refuses_an_unsafe_pair_and_an_incompatible_peer(
    pair: Dom0Pair, case: Case
) -> None:
    pair.change(**{"drbd.xcp1.cstate": "WFConnection"})
    disconnected = pair.run("xcp1", "upgrade")
    assert disconnected.returncode == 1
    assert "xcp2 must hold all data" in disconnected.stderr
    pair.change(
        **{
            "drbd.xcp1.cstate": "Connected",
            "pool.other_config": {
                "host-xcp2": {
                    "xcp-drbd-builder-r0-drbd-version": "8.4.11" if case.syntax == "9" else "9.2.5"
                }
            },
        }
    )
    incompatible = pair.run("xcp1", "upgrade")
    assert incompatible.returncode == 1
    assert f"DRBD {case.version} here cannot replicate with DRBD" in incompatible.stderr
    assert actions(disconnected) == actions(incompatible) == []


def test_upgrade_for_a_new_kernel_stops_before_the_reboot(pair: Dom0Pair) -> None:
    pair.change(running_kernel="2.6.32.12-0.7.1.xs1.4.90.530.170000xen")
    run = pair.run("xcp2", "upgrade")
    assert run.returncode == 0, run.stderr
    assert "Reboot into" in run.stdout
    assert [a.split(" ", 2)[1] for a in actions(run)][-2:] == ["modprobe", "yum"]
    assert pair.state["pool"]["pbds"]["host-xcp2"]["attached"] is False


def test_upgrade_takes_a_short_version_from_the_pool_file(tmp_path: Path) -> None:
    # drbd.version: 8.4 means any 8.4 release; the peer recorded the one it runs.
    pair = make_pair(tmp_path, CASES["8.4"], changes={"drbd.version": "8.4"})
    pair.change(
        **{"pool.other_config": {"host-xcp2": {"xcp-drbd-builder-r0-drbd-version": "8.4.1"}}}
    )
    run = pair.run("xcp1", "upgrade")
    assert run.returncode == 0, run.stderr
    # What it records is the release it installed, not the series.
    assert actions(run)[-1] == (
        "xcp1: xe host-param-set uuid=host-xcp1 other-config:xcp-drbd-builder-r0-drbd-version=8.4.1"
    )
