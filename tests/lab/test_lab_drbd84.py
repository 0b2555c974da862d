"""A real DRBD 8.4 pair: two QEMU guests, the rendered resource and runbook, the kernel's
in-tree DRBD 8.4.11 module, drbd-utils, LVM.  Only ``xe`` is a recording stand-in.

The scenarios run in this order on one pair, each starting from and returning to
Connected, Primary/Primary, UpToDate/UpToDate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.lab import drbdlab
from tests.lab.labpool import lab_pool, render
from tests.lab.vm import Pair

pytestmark = pytest.mark.lab

# Regions of the 64 MiB device each scenario writes (MiB offsets), apart from the SR's VG.
REPLICATED = 40
REVERSE = 44
SPLIT = 48
WRITER = 52
REBOOT = 56


def test_runbook_brings_both_hosts_to_primary(deployed: Pair, figures: dict[str, Any]) -> None:
    for host in deployed:
        current = drbdlab.state(host)
        assert current.healthy, current.line
        assert "version: 8.4.11" in host.ok("cat /proc/drbd")
        # The in-tree module of the kernel the guest runs: what a dom0 has before our packages.
        assert host.ok("modinfo -n drbd").strip().endswith("kernel/drivers/block/drbd/drbd.ko")
    sync = figures["initial_sync"]
    assert sync["bytes"] > 60 * drbdlab.MIB


def test_dual_primary_replicates_both_ways(deployed: Pair) -> None:
    first, second = deployed
    written = drbdlab.write_pattern(first, offset_mib=REPLICATED, size_mib=4)
    assert drbdlab.read_sum(second, offset_mib=REPLICATED, size_mib=4) == written
    back = drbdlab.write_pattern(second, offset_mib=REVERSE, size_mib=4)
    assert drbdlab.read_sum(first, offset_mib=REVERSE, size_mib=4) == back
    assert drbdlab.device_sum(first) == drbdlab.device_sum(second)


def test_lvm_sees_the_sr_volume_group_on_drbd_only(deployed: Pair) -> None:
    first, second = deployed
    # What XCP's LVM SR does to the device: a PV, the VG_XenStorage-<uuid> volume group, a LV.
    first.ok(
        "pvcreate -q /dev/drbd1 && vgcreate -q VG_XenStorage-lab /dev/drbd1 && "
        "lvcreate -q -L 8M -n VHD-lab VG_XenStorage-lab && vgchange -q -an VG_XenStorage-lab"
    )
    for host in deployed:
        host.ok("vgscan -q >/dev/null 2>&1 || true")
        pvs = host.ok("pvs --noheadings -o pv_name,vg_name 2>/dev/null").split()
        assert pvs == ["/dev/drbd1", "VG_XenStorage-lab"], pvs
        # Without the rendered filter the backing disk shows the same PV: the reason for it.
        unfiltered = host.sh(
            "pvs --noheadings -o pv_name --config 'devices { filter = [ \"a|.*|\" ] }' 2>&1"
        ).stdout
        assert "/dev/vdb" in unfiltered or "Duplicate" in unfiltered or "duplicate" in unfiltered, (
            unfiltered
        )
    lvs = second.ok("lvs --noheadings -o lv_name VG_XenStorage-lab 2>/dev/null").split()
    assert lvs == ["VHD-lab"]


def test_split_brain_is_detected_reported_and_healed_as_chosen(deployed: Pair) -> None:
    first, second = deployed
    drbdlab.wait_healthy(deployed)
    before = drbdlab.device_sum(first)
    # The replication cable is pulled; both primaries go on writing the same region.
    for host in deployed:
        host.set_link("repl", up=False)
    for host in deployed:
        drbdlab.wait_state(host, "cs:(WFConnection|StandAlone)", timeout=90, what="the cut")
    kept = drbdlab.write_pattern(first, offset_mib=SPLIT, size_mib=1)
    lost = drbdlab.write_pattern(second, offset_mib=SPLIT, size_mib=1)
    assert kept != lost
    for host in deployed:
        host.set_link("repl", up=True)
    for host in deployed:
        drbdlab.wait_state(host, "cs:StandAlone", timeout=120, what="the split brain")
        log = drbdlab.split_brain_lines(drbdlab.kernel_log(host))
        assert any("Split-Brain detected but unresolved, dropping connection!" in line
                   for line in log), log  # fmt: skip

    status = drbdlab.runbook(first, "status")
    assert status.returncode == 3, status
    assert "split brain: r0 is StandAlone" in status.stderr
    for host in deployed:
        shown = drbdlab.runbook(host, "split-brain")
        assert shown.returncode == 3, shown
        assert "Split-Brain detected" in shown.stdout
        assert "DRBD generation identifiers" in shown.stdout

    # Keep xcp1's data: first on the survivor, then on the victim.
    drbdlab.runbook(first, "split-brain", "--keep", "xcp1").check("split-brain on the survivor")
    healed = drbdlab.runbook(second, "split-brain", "--keep", "xcp1", timeout=600)
    healed.check("split-brain on the victim")
    assert "Recovered: xcp2 holds xcp1's data again" in healed.stdout
    drbdlab.wait_healthy(deployed)
    for host in deployed:
        assert drbdlab.read_sum(host, offset_mib=SPLIT, size_mib=1) == kept
    assert drbdlab.device_sum(first) == drbdlab.device_sum(second)
    # Nothing but the split region changed: the rest of the device is as it was.
    assert drbdlab.read_sum(first, offset_mib=0, size_mib=SPLIT) == drbdlab.read_sum(
        second, offset_mib=0, size_mib=SPLIT
    )
    assert before != drbdlab.device_sum(first)
    assert "Split-Brain detected, 1 primaries, automatically solved. Sync from peer node" in (
        drbdlab.kernel_log(second)
    ) or "Sync from peer node" in drbdlab.kernel_log(second)
    assert drbdlab.runbook(first, "status").returncode == 0


def test_a_management_bounce_leaves_replication_on_its_own_link_connected(
    deployed: Pair, figures: dict[str, Any], lab_output: Path
) -> None:
    drbdlab.wait_healthy(deployed)
    drbdlab.bounce_around_master_change(
        deployed, figures, lab_output, "bounce-own-link", offset_mib=WRITER
    )


def test_a_hard_reset_comes_back_through_the_boot_step_and_resyncs(
    deployed: Pair, figures: dict[str, Any]
) -> None:
    first, second = deployed
    drbdlab.wait_healthy(deployed)
    # The deployment ran the boot step: DRBD starts between the network and xapi.
    links = second.ok("ls /etc/rc.d/rc3.d").split()
    assert (
        links.index(next(n for n in links if n.endswith("network")))
        < links.index(next(n for n in links if n.endswith("drbd")))
        < links.index(next(n for n in links if n.endswith("xapi")))
    )
    second.qmp("system_reset")
    drbdlab.wait_state(first, "cs:WFConnection", timeout=90, what="xcp1 to lose xcp2")
    meanwhile = drbdlab.write_pattern(first, offset_mib=REBOOT, size_mib=2)
    clock = drbdlab.Stopwatch()
    second.wait_ready(300)
    figures["reset_to_agent_seconds"] = round(clock.seconds(), 1)
    drbdlab.wait_healthy(deployed, timeout=300)
    figures["reset_to_healthy_seconds"] = round(clock.seconds(), 1)
    console = second.console_tail(400)
    assert "rc: S" in console and "drbd start" in console, console
    assert drbdlab.read_sum(second, offset_mib=REBOOT, size_mib=2) == meanwhile
    assert not [
        line for line in drbdlab.split_brain_lines(drbdlab.kernel_log(second)) if "detected" in line
    ]
    assert drbdlab.device_sum(first) == drbdlab.device_sum(second)


def test_the_same_bounce_with_replication_on_the_management_link(
    deployed: Pair, figures: dict[str, Any], lab_output: Path, tmp_path: Path
) -> None:
    """The counter-case, an experiment: what it does is recorded, not arranged."""
    first, second = deployed
    drbdlab.wait_healthy(deployed)
    changes = {
        "hosts.0.replication.address": "198.51.100.11/24",
        "hosts.1.replication.address": "198.51.100.12/24",
        "hosts.0.replication.interface": "xenbr0",
        "hosts.1.replication.interface": "xenbr0",
    }
    output = render(
        tmp_path,
        lab_pool(**changes),
        "replication-on-management-network",
        "replication-on-management-interface",
    )
    for host, address in ((first, "198.51.100.11/24"), (second, "198.51.100.12/24")):
        host.ok(f"ip addr add {address} dev xenbr0")
        drbdlab.deploy_files(host, output)
        host.ok(f"cp {drbdlab.DEPLOY_DIR}/r0.res /etc/drbd.d/r0.res")
    # A connected pair of primaries refuses to disconnect (each would outdate a primary):
    # moving the link takes one host to Secondary first, as an operator would.
    second.ok("drbdadm secondary r0")
    for host in deployed:
        host.ok("drbdadm adjust r0")
    drbdlab.wait_state(second, "cs:Connected .*ds:UpToDate/UpToDate", timeout=120)
    second.ok("drbdadm primary r0")
    drbdlab.wait_healthy(deployed)
    assert "192.0.2." not in first.ok("drbdsetup-84 show r0 2>/dev/null || drbdadm sh-ip r0")
    refused = drbdlab.runbook(first, "master-change", "pre")
    assert refused.returncode == 1
    assert "replication runs over the management interface xenbr0" in refused.stderr
    # Two bounces: as long as the one above, and longer than DRBD's ping interval (10 s).
    for down_seconds in (8, 20):
        name = f"bounce-management-link-{down_seconds}s"
        events = drbdlab.bounce_experiment(
            deployed, figures, lab_output, name, offset_mib=WRITER, down_seconds=down_seconds
        )
        figures[name]["states"] = drbdlab.connection_states(events)
        # post waits until the peer is connected again, so it runs on both hosts at once.
        posts = drbdlab.runbook_on_both(deployed, "master-change", "post")
        figures[name]["post"] = [p.returncode for p in posts]
        if any(p.returncode for p in posts):
            # Whatever the bounce did, recorded above. A post that fails must say why: the
            # only failure seen here is a split brain, which post reports at once (exit 3).
            figures[name]["post_output"] = [p.stdout + p.stderr for p in posts]
            for post in posts:
                assert post.returncode in (0, 3), post
                assert post.returncode == 0 or "split brain on r0" in post.stderr, post
            # The pair is brought back for the comparison below, keeping the writing host.
            drbdlab.runbook(first, "split-brain", "--keep", "xcp1")
            drbdlab.runbook(second, "split-brain", "--keep", "xcp1", timeout=600)
        drbdlab.wait_healthy(deployed, timeout=300)
        assert drbdlab.device_sum(first) == drbdlab.device_sum(second)
