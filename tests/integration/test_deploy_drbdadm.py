"""Rendered files read by the real tools: DRBD's own parsers (drbdadm 8.3, 8.4, 9) and LVM's."""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from builder import proc
from builder.errors import CommandError
from tests.deploy_support import pool_data, render_pool

pytestmark = pytest.mark.integration

DRBDADM = {
    "8.3.16": "/usr/lib/drbd/drbdadm-83",
    "8.4.1": "/usr/lib/drbd/drbdadm-84",
    "9.2.5": "/usr/sbin/drbdadm",
}
HOSTS = {
    "xcp1": ("10.0.0.1", "/dev/disk/by-id/ata-DISK-ONE"),
    "xcp2": ("10.0.0.2", "/dev/disk/by-id/ata-DISK-TWO"),
}


def drbdadm(version: str) -> str:
    program = DRBDADM[version]
    if not os.access(program, os.X_OK):
        pytest.skip(f"{program} is not installed (Debian package drbd-utils)")
    return program


def parsed_resource(version: str, res_file: Path) -> ET.Element:
    # drbdadm-83 only dumps resources by name when this machine is neither host; 8.4 and 9
    # dump "all".
    which = "r0" if version.startswith("8.3") else "all"
    result = proc.run([drbdadm(version), "-c", res_file, "dump-xml", which], echo=False)
    root = ET.fromstring(result.stdout)  # noqa: S314 (our own tool's output)
    resource = root if root.tag == "resource" else root.find("resource")
    assert resource is not None, result.stdout
    return resource


def options(resource: ET.Element, section: str) -> dict[str, str | None]:
    found = resource.find(f"section[@name='{section}']")
    assert found is not None, f"no {section} section"
    return {o.attrib["name"]: o.get("value") for o in found.findall("option")}


@pytest.mark.parametrize("version", sorted(DRBDADM))
def test_drbd_parses_the_dual_primary_resource(tmp_path: Path, version: str) -> None:
    output = render_pool(tmp_path, pool_data(**{"drbd.version": version}))
    res_files = [output / host / "r0.res" for host in HOSTS]
    assert res_files[0].read_bytes() == res_files[1].read_bytes()
    resource = parsed_resource(version, res_files[0])
    assert resource.get("name") == "r0"
    net = options(resource, "net")
    disk = options(resource, "disk")
    handlers = options(resource, "handlers")
    if version.startswith("8.3"):
        assert resource.get("protocol") == "C"
        assert "allow-two-primaries" in net  # a flag without a value in 8.3
        assert disk["fencing"] == "resource-only"
        assert options(resource, "syncer")["rate"] == "40M"
    else:
        assert net["protocol"] == "C"
        assert net["allow-two-primaries"] == "yes"
        assert disk["resync-rate"] == "40M"
        fencing_section = net if version.startswith("9") else disk
        assert fencing_section["fencing"] == "resource-only"
    assert net["after-sb-0pri"] == "discard-zero-changes"
    assert net["after-sb-1pri"] == "discard-secondary"
    assert net["after-sb-2pri"] == "disconnect"
    assert handlers["split-brain"] == "/usr/lib/drbd/notify-split-brain.sh root"
    assert handlers["fence-peer"]
    hosts = {h.attrib["name"]: h for h in resource.findall("host")}
    assert set(hosts) == set(HOSTS)
    for name, (address, backing) in HOSTS.items():
        host = hosts[name]
        addr = host.find("address")
        assert addr is not None
        assert (addr.text, addr.get("port"), addr.get("family")) == (address, "7789", "ipv4")
        assert host.findtext(".//disk") == backing
        device = host.find(".//device")
        assert device is not None
        assert device.get("minor") == "1"


@pytest.mark.parametrize("version", sorted(DRBDADM))
@pytest.mark.parametrize("host", sorted(HOSTS))
def test_each_host_would_connect_over_the_replication_network(
    tmp_path: Path, version: str, host: str
) -> None:
    output = render_pool(tmp_path, pool_data(**{"drbd.version": version}))
    res_file = output / host / "r0.res"
    result = proc.run(
        [drbdadm(version), "-c", res_file, "-d", "up", "r0"],
        env={"__DRBD_NODE__": host},
        echo=False,
    )
    commands = result.stdout
    own_address, own_disk = HOSTS[host]
    peer_address = next(a for name, (a, _) in HOSTS.items() if name != host)
    # Local address first, then the peer's: the connection runs on the replication network.
    assert f"ipv4:{own_address}:7789 ipv4:{peer_address}:7789" in commands
    assert "192.168.1." not in commands  # never over the management network
    assert "allow-two-primaries" in commands
    assert "--after-sb-2pri=disconnect" in commands
    assert "--fencing=resource-only" in commands
    attach = [line for line in commands.splitlines() if own_disk in line]
    assert attach, commands
    assert all(HOSTS[other][1] not in commands for other in HOSTS if other != host)


def test_each_version_renders_the_syntax_only_its_own_parser_accepts(tmp_path: Path) -> None:
    output = render_pool(tmp_path, pool_data(**{"drbd.version": "8.4.1"}))
    with pytest.raises(CommandError):
        proc.run([drbdadm("8.3.16"), "-c", output / "xcp1" / "r0.res", "dump", "r0"], echo=False)
    # 8.4 reads 8.3 files (it is backwards compatible) but not 9's node-ids and net fencing.
    output9 = render_pool(tmp_path / "9", pool_data(**{"drbd.version": "9.2.5"}))
    with pytest.raises(CommandError):
        proc.run([drbdadm("8.4.1"), "-c", output9 / "xcp1" / "r0.res", "dump", "all"], echo=False)


def lvm_values(system_dir: Path) -> dict[str, str]:
    if shutil.which("lvmconfig") is None:
        pytest.skip("lvmconfig is not installed (Debian package lvm2)")
    result = proc.run(
        ["lvmconfig", "--type", "current", "devices/filter", "devices/write_cache_state"],
        env={"LVM_SYSTEM_DIR": str(system_dir)},
        echo=False,
    )
    assert "Failed to load" not in result.stderr, result.stderr
    values = {}
    for line in result.stdout.splitlines():
        key, _, value = line.strip().partition("=")
        values[key] = value
    return values


def test_lvm_reads_the_snippet(tmp_path: Path) -> None:
    output = render_pool(tmp_path, pool_data())
    system_dir = tmp_path / "lvm"
    system_dir.mkdir()
    shutil.copy(output / "xcp2" / "lvm.conf.snippet", system_dir / "lvm.conf")
    values = lvm_values(system_dir)
    assert values["write_cache_state"] == "0"
    assert values["filter"] == (
        '["a|^/dev/drbd[0-9]+$|","r|^/dev/disk/by-id/ata-DISK-TWO$|",'
        '"r|/dev/xvd.|","r|/dev/VG_Xen.*/.*|"]'
    )


XCP_LVM_CONF = """\
devices {
    dir = "/dev"
    scan = [ "/dev" ]
    filter = [ "r|/dev/xvd.|", "r|/dev/VG_Xen.*/*|" ]
    cache_dir = "/etc/lvm/cache"
    write_cache_state = 1
    sysfs_scan = 1
}
"""


def stub(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def block_device() -> str:
    for candidate in ("/dev/loop0", "/dev/loop1", "/dev/vda", "/dev/sda"):
        if Path(candidate).is_block_device():
            return candidate
    pytest.skip("no block device to stand in for the backing disk")


def run_runbook(
    runbook: Path, step: str, stubs: Path, env: dict[str, str], *, check: bool = True
) -> Any:
    return proc.run(
        ["sh", runbook, step],
        env={"PATH": f"{stubs}:{os.environ['PATH']}", **env},
        echo=False,
        check=check,
    )


def test_runbook_lvm_step_edits_lvm_conf_as_lvm_reads_it(tmp_path: Path) -> None:
    disk = block_device()
    output = render_pool(tmp_path, pool_data(**{"hosts.0.disk": disk}))
    system_dir = tmp_path / "etc-lvm"
    (system_dir / "cache").mkdir(parents=True)
    (system_dir / "cache" / ".cache").write_text("stale")
    (system_dir / "lvm.conf").write_text(XCP_LVM_CONF)
    stubs = tmp_path / "bin"
    stubs.mkdir()
    stub(stubs, "uname", "echo xcp1")
    stub(stubs, "vgscan", "echo vgscan >> " + str(tmp_path / "calls"))
    env = {"LVM_SYSTEM_DIR": str(system_dir)}
    for _ in range(2):  # a second run must give the same result
        run_runbook(output / "xcp1" / "runbook.sh", "lvm", stubs, env)
        values = lvm_values(system_dir)
        assert values["write_cache_state"] == "0"
        assert values["filter"] == (
            f'["a|^/dev/drbd[0-9]+$|","r|^{disk}$|","r|/dev/xvd.|","r|/dev/VG_Xen.*/.*|"]'
        )
    assert (system_dir / "lvm.conf.before-drbd").read_text() == XCP_LVM_CONF
    assert not (system_dir / "cache" / ".cache").exists()
    assert "sysfs_scan = 1" in (system_dir / "lvm.conf").read_text()  # the rest is untouched


def test_runbook_refuses_the_wrong_host_and_a_missing_disk(tmp_path: Path) -> None:
    output = render_pool(tmp_path, pool_data())
    stubs = tmp_path / "bin"
    stubs.mkdir()
    stub(stubs, "uname", "echo xcp2")
    wrong = run_runbook(output / "xcp1" / "runbook.sh", "metadata", stubs, {}, check=False)
    assert wrong.returncode == 1
    assert "this runbook is for xcp1, but this is xcp2" in wrong.stderr
    missing = run_runbook(output / "xcp2" / "runbook.sh", "metadata", stubs, {}, check=False)
    assert missing.returncode == 1
    assert "/dev/disk/by-id/ata-DISK-TWO is not a block device on xcp2" in missing.stderr


FAKE_XE = """\
echo "xe $*" >> "$XE_LOG"
case "$1" in
    host-list) echo "uuid-of-$(echo "$2" | cut -d= -f2)" ;;
    sr-list) cat "$XE_SR" 2>/dev/null || true ;;
    sr-create) echo sr-uuid-1 | tee "$XE_SR" ;;
    pbd-list) ;;
    pbd-create) echo pbd-uuid-2 ;;
esac
"""


def test_runbook_sr_steps_create_on_the_first_host_and_plug_on_the_second(tmp_path: Path) -> None:
    output = render_pool(tmp_path, pool_data(**{"drbd.version": "8.3.16", "drbd.minor": 3}))
    stubs = tmp_path / "bin"
    stubs.mkdir()
    stub(stubs, "xe", FAKE_XE)
    log = tmp_path / "xe.log"
    env = {"XE_LOG": str(log), "XE_SR": str(tmp_path / "sr")}
    stub(stubs, "uname", "echo xcp2")
    early = run_runbook(output / "xcp2" / "runbook.sh", "sr", stubs, env, check=False)
    assert early.returncode == 1
    assert "run the `sr` step on xcp1 first" in early.stderr
    stub(stubs, "uname", "echo xcp1")
    run_runbook(output / "xcp1" / "runbook.sh", "sr", stubs, env)
    stub(stubs, "uname", "echo xcp2")
    run_runbook(output / "xcp2" / "runbook.sh", "sr", stubs, env)
    calls = log.read_text().splitlines()
    assert calls == [
        "xe sr-list name-label=drbd-sr type=lvm --minimal",
        "xe host-list name-label=xcp1 --minimal",
        "xe sr-list name-label=drbd-sr --minimal",
        "xe sr-create host-uuid=uuid-of-xcp1 type=lvm content-type=user shared=false "
        "name-label=drbd-sr device-config:device=/dev/drbd3",
        "xe sr-param-set uuid=sr-uuid-1 shared=true",
        "xe sr-list name-label=drbd-sr type=lvm --minimal",
        "xe host-list name-label=xcp2 --minimal",
        "xe pbd-list sr-uuid=sr-uuid-1 host-uuid=uuid-of-xcp2 --minimal",
        "xe pbd-create sr-uuid=sr-uuid-1 host-uuid=uuid-of-xcp2 device-config:device=/dev/drbd3",
        "xe pbd-plug uuid=pbd-uuid-2",
    ]
    # Running the first host's step again must not create a second SR.
    stub(stubs, "uname", "echo xcp1")
    again = run_runbook(output / "xcp1" / "runbook.sh", "sr", stubs, env, check=False)
    assert again.returncode == 1
    assert "already exists" in again.stderr


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_runbooks_are_valid_shell(tmp_path: Path, shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    for version in DRBDADM:
        output = render_pool(tmp_path / version, pool_data(**{"drbd.version": version}))
        for host in HOSTS:
            proc.run([shell, "-n", output / host / "runbook.sh"], echo=False)
    usage = proc.run(["sh", output / "xcp1" / "runbook.sh"], echo=False, check=False)
    assert usage.returncode == 2
    assert "1. install" in usage.stderr
    assert "7. sr" in usage.stderr


def test_runbook_up_step_needs_the_replication_address(tmp_path: Path) -> None:
    output = render_pool(tmp_path, pool_data())
    stubs = tmp_path / "bin"
    stubs.mkdir()
    calls = tmp_path / "calls"
    stub(stubs, "uname", "echo xcp2")
    stub(stubs, "drbdadm", f'echo "drbdadm $*" >> {calls}')
    # Only the management address is up: DRBD must not be started.
    stub(stubs, "ip", 'echo "5: $4    inet 192.168.1.12/24 brd 192.168.1.255 scope global"')
    missing = run_runbook(output / "xcp2" / "runbook.sh", "up", stubs, {}, check=False)
    assert missing.returncode == 1
    assert "10.0.0.2 is not on xenbr1" in missing.stderr
    assert not calls.exists()
    stub(stubs, "ip", 'echo "6: $4    inet 10.0.0.2/24 brd 10.0.0.255 scope global $4"')
    run_runbook(output / "xcp2" / "runbook.sh", "up", stubs, {})
    assert calls.read_text() == "drbdadm up r0\n"
