"""The configuration files of a deployment: the DRBD resource, LVM's filter and the yum
``.repo`` file, rendered from a validated :class:`Pool` (pure functions of the pool and the
header that names it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from builder.builds.recipes import Syntax
from builder.deploy.pool import Fencing, Host, Pool
from builder.publish import layout

# The .repo file an EL5 host without pygpgme installs, rendered only when the pool allows it.
REPO_FILE_WITHOUT_PYGPGME = f"{layout.REPO_ID}.repo.without-pygpgme"
# What XCP's own lvm.conf rejects: VM disks (xvd*) and the logical volumes inside SRs, which
# dom0 must never scan for nested volume groups.
XCP_LVM_REJECTS = ("r|/dev/xvd.|", "r|/dev/VG_Xen.*/.*|")


def _lvm_regex(path: str) -> str:
    # Character classes instead of backslashes: no escaping rules of lvm.conf strings to get wrong.
    return re.sub(r"([.+])", r"[\1]", path)


def lvm_filter(host: Host) -> list[str]:
    """LVM sees DRBD devices, never the backing disk (it would find the SR's VG twice)."""
    return [
        "a|^/dev/drbd[0-9]+$|",
        f"r|^{_lvm_regex(host.disk)}$|",
        *XCP_LVM_REJECTS,
    ]


def lvm_list(patterns: Sequence[str]) -> str:
    return "[ " + ", ".join(f'"{p}"' for p in patterns) + " ]"


def render_lvm(pool: Pool, host: Host, header: str) -> str:
    return (
        f"{header}"
        f"#\n"
        f"# lvm.conf settings for {host.name}: merge into the devices section of\n"
        f"# /etc/lvm/lvm.conf (the runbook's `lvm` step does it and keeps a backup).\n"
        f"# There is no catch-all accept at the end on purpose: LVM accepts a device when any of\n"
        f"# its names matches an accept pattern first, and `a|.*|` would match /dev/sdX, the\n"
        f"# backing disk's other name. Devices that match nothing (dom0's local disks) stay\n"
        f"# visible. write_cache_state = 0: a stale device cache could point LVM at the\n"
        f"# backing disk after a reboot.\n"
        f"devices {{\n"
        f"    filter = {lvm_list(lvm_filter(host))}\n"
        f"    write_cache_state = 0\n"
        f"}}\n"
    )


def _q(value: str) -> str:
    return '"' + value + '"'


# Seconds the DRBD init script waits at boot for the peer (a peer that was there, or one that
# was already gone before the reboot); then it goes on alone.
WFC_TIMEOUT = 120
DEGR_WFC_TIMEOUT = 60


def render_resource(pool: Pool, header: str) -> str:
    """The DRBD resource file, the same on both hosts, in the syntax of the pool's version."""
    drbd = pool.drbd
    syntax = drbd.syntax
    out: list[str] = [
        header,
        "#\n",
        f"# DRBD {drbd.version} resource {drbd.resource} ({syntax.value} syntax): one device,\n",
        "# primary on both hosts, under an LVM storage repository shared by the pool.\n",
        "# Protocol C: a write completes only when it is on both disks (dual-primary needs it).\n",
        f"resource {drbd.resource} {{\n",
    ]
    if syntax is Syntax.V83:
        out.append("    protocol C;\n")
    out.append("    handlers {\n")
    if drbd.split_brain_handler:
        out.append(f"        split-brain {_q(drbd.split_brain_handler)};\n")
    if drbd.fence_peer_handler and drbd.fencing is not Fencing.DONT_CARE:
        out.append(f"        fence-peer {_q(drbd.fence_peer_handler)};\n")
    out.append("    }\n")
    # A peer that is down must not hold up the boot for ever: DRBD starts before xapi, and the
    # init script's default is to wait for the peer without end.
    startup = [f"wfc-timeout {WFC_TIMEOUT};", f"degr-wfc-timeout {DEGR_WFC_TIMEOUT};"]
    if syntax is Syntax.V9:
        # 9 has no become-primary-on: it promotes a host when xapi's LVM opens the device.
        out.append("    options {\n        auto-promote yes;\n    }\n")
    else:
        # 8.x: the init script promotes both sides at boot, before xapi plugs the SR.
        startup.append("become-primary-on both;")
    out.append("    startup {\n" + "".join(f"        {line}\n" for line in startup) + "    }\n")
    disk: list[str] = []
    net: list[str] = []
    fencing = drbd.fencing is not Fencing.DONT_CARE
    if syntax is Syntax.V83:
        if fencing:
            disk.append(f"fencing {drbd.fencing.value};")
        net.append("allow-two-primaries;")
    else:
        net.append("protocol C;")
        net.append("allow-two-primaries yes;")
        if fencing:
            (net if syntax is Syntax.V9 else disk).append(f"fencing {drbd.fencing.value};")
        disk.append(f"resync-rate {drbd.resync_rate};")
    net += [
        f"after-sb-0pri {drbd.after_sb_0pri};",
        f"after-sb-1pri {drbd.after_sb_1pri};",
        f"after-sb-2pri {drbd.after_sb_2pri};",
    ]
    if disk:
        out.append("    disk {\n" + "".join(f"        {line}\n" for line in disk) + "    }\n")
    out.append("    net {\n" + "".join(f"        {line}\n" for line in net) + "    }\n")
    if syntax is Syntax.V83:
        out.append(f"    syncer {{\n        rate {drbd.resync_rate};\n    }}\n")
    for node_id, host in enumerate(pool.hosts):
        out.append(_host_section(pool, host, node_id))
    out.append("}\n")
    return "".join(out)


def _host_section(pool: Pool, host: Host, node_id: int) -> str:
    drbd = pool.drbd
    lines = []
    if drbd.syntax is Syntax.V9:
        lines.append(f"node-id {node_id};")
    if drbd.syntax is Syntax.V83:
        lines.append(f"device {drbd.device};")
        lines.append(f"address {host.replication.ip}:{drbd.port};")
    else:
        lines.append(f"device {drbd.device} minor {drbd.minor};")
        lines.append(f"address ipv4 {host.replication.ip}:{drbd.port};")
    lines.append(f"disk {host.disk};")
    lines.append("meta-disk internal;")
    return f"    on {host.name} {{\n" + "".join(f"        {line}\n" for line in lines) + "    }\n"


def render_repo_file(pool: Pool, header: str, *, repo_gpgcheck: bool = True) -> str:
    why = ""
    if not repo_gpgcheck:
        why = (
            "#\n"
            "# repo_gpgcheck=0: for a host where python cannot import gpgme (pygpgme), which\n"
            "# yum 3.2.22 needs to check repomd.xml.asc. The pool file allows it\n"
            "# (repo.without_pygpgme); every package's signature is still checked\n"
            "# (gpgcheck=1). Install pygpgme and run the runbook's install step again to\n"
            "# check the metadata too.\n"
        )
    return layout.render_repo_file(
        name=f"DRBD for {pool.target.name} (xcp-drbd-builder)",
        baseurl=pool.repo_baseurl,
        gpgkey=f"file://{layout.INSTALLED_KEY_FILE}",
        repo_gpgcheck=repo_gpgcheck,
        comment=f"{header}#\n"
        f"# Install as {layout.INSTALLED_REPO_FILE} after importing the key to "
        f"{layout.INSTALLED_KEY_FILE}.\n"
        f"{why}",
    )
