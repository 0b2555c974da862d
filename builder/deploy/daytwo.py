"""The runbook's day-two steps: status, guard, split-brain, master-change, boot and upgrade.

The steps are shell functions appended to each host's ``runbook.sh``.  They use only the
variables that ``runbook.render_runbook`` assigns (the one place where pool values are quoted
for the shell), so nothing here interpolates a pool value into shell text.  What differs by
DRBD configuration syntax (8.3, 8.4, 9) or by the dom0's init system (sysvinit on XCP 1.x and
XenServer 6.x, systemd on XCP-ng 8.x) is chosen here, once, as whole shell functions.  The
shell that is the same for every pool lives beside this module as shell files:
``daytwo-steps.sh`` (the steps) and ``boot-sysvinit.sh`` or ``boot-systemd.sh`` (how the boot
step orders DRBD between the network and xapi).

The scripts stay POSIX sh (``shellcheck`` checks them as such); dom0 runs them with bash,
its ``/bin/sh``.
"""

from __future__ import annotations

import enum
import importlib.resources
import re

from builder.builds.recipes import Syntax
from builder.deploy.pool import Pool
from builder.specs import Consumer

STATE_DIR = "/var/lib/xcp-drbd-builder"
INSTALL_DIR = "/etc/xcp-drbd-builder"
SYSTEMD_DROPIN_DIR = "/etc/systemd/system/drbd.service.d"
UNSAFE_EXIT = 3  # status, guard and split-brain: something is unsafe

# (step, who runs it, what it does): the runbook's usage text and the rendered README list them.
DAY_TWO_STEPS = (
    ("status", "any host", "DRBD, the SR's PBDs, its VMs, the next boot's module; 3 if unsafe"),
    ("guard", "cron, both", "alarm when the SR's VMs stay on both hosts past the grace period"),
    ("guard install", "both", "install the guard into cron (only the pool master checks)"),
    ("split-brain", "both", "show what each side holds; --keep HOST recovers"),
    ("master-change pre|post", "both", "check before pool-designate-new-master, reconnect after"),
    ("boot", "both", "start DRBD at boot, after the network and before xapi"),
    ("upgrade", "one host at a time", "move the VMs away, new DRBD packages, reconnect"),
    ("kernel-check", "both", "after a kernel update: is there a module built for the next boot?"),
)


class InitSystem(enum.StrEnum):
    SYSVINIT = "sysvinit"  # XCP 1.x, XenServer 6.x (CentOS 5): rc links in /etc/rc.d/rc?.d
    SYSTEMD = "systemd"  # XCP-ng 8.x (CentOS 7)


def init_system(pool: Pool) -> InitSystem:
    """The dom0's init system follows its userland generation (CentOS 5 or 7)."""
    return InitSystem.SYSVINIT if pool.target.consumer is Consumer.EL5 else InitSystem.SYSTEMD


def _file_name(text: str) -> str:
    # cron skips files in /etc/cron.d whose names have a dot; resource names may have one.
    return re.sub(r"[^A-Za-z0-9_-]", "-", text)


def paths(pool: Pool) -> dict[str, str]:
    """The files the day-two steps write on a host, as runbook variables."""
    resource = pool.drbd.resource
    files = {
        "STATE_DIR": STATE_DIR,
        "INSTALLED_RUNBOOK": f"{INSTALL_DIR}/{resource}-runbook.sh",
        "CRON_FILE": f"/etc/cron.d/xcp-drbd-builder-guard-{_file_name(resource)}",
        # other-config key of each host in xapi's database: the DRBD version it runs, so the
        # upgrade step on one host can see the other's.
        "VERSION_KEY": f"xcp-drbd-builder-{_file_name(resource)}-drbd-version",
    }
    if init_system(pool) is InitSystem.SYSTEMD:
        files["SYSTEMD_DROPIN"] = f"{SYSTEMD_DROPIN_DIR}/xcp-drbd-builder.conf"
    return files


def _syntax_functions(syntax: Syntax) -> str:
    if syntax is Syntax.V83:
        connect_discarding = 'drbdadm -- --discard-my-data connect "$RESOURCE"'
    else:
        connect_discarding = 'drbdadm connect --discard-my-data "$RESOURCE"'
    if syntax is Syntax.V9:
        show_sync = 'drbdadm status "$RESOURCE" || true'
        # DRBD 9 has no become-primary-on: auto-promote makes a host primary when xapi's LVM
        # opens the device for writing.
        promotion = """\
boot_promotion() {
    # DRBD 9: auto-promote (the resource file sets it) makes this host primary when xapi's
    # LVM opens the device; DRBD 9 has no become-primary-on.
    drbdadm dump "$RESOURCE" | grep -Eq 'auto-promote[[:space:]]+yes' ||
        die "the installed $RESOURCE.res does not set auto-promote yes; run the install step again"
}
"""
    else:
        show_sync = "[ ! -r /proc/drbd ] || cat /proc/drbd"
        promotion = """\
boot_promotion() {
    # DRBD 8: the init script promotes the hosts named by become-primary-on (both) at boot.
    drbdadm dump "$RESOURCE" | grep -Eq 'become-primary-on[[:space:]]+both' ||
        die "the installed $RESOURCE.res lacks become-primary-on both; run the install step again"
}
"""
    return f"""
connect_discarding_my_data() {{
    # DRBD {syntax.value}'s documented split-brain recovery on the side whose changes are dropped.
    {connect_discarding}
}}

show_sync() {{
    {show_sync}
}}

{promotion}"""


def _shell(name: str) -> str:
    """One of the shell files beside this module (shipped in the package), as the runbook
    carries it: after a blank line."""
    return "\n" + importlib.resources.files("builder.deploy").joinpath(name).read_text()


def day_two_functions(pool: Pool) -> str:
    """The shell functions of the day-two steps for this pool's DRBD syntax and init system."""
    boot = "boot-sysvinit.sh" if init_system(pool) is InitSystem.SYSVINIT else "boot-systemd.sh"
    # The steps themselves are the same for every DRBD syntax and init system.
    return _syntax_functions(pool.drbd.syntax) + _shell(boot) + _shell("daytwo-steps.sh")


def usage_lines() -> str:
    """The runbook header's list of day-two steps (``sh runbook.sh`` prints it)."""
    return "".join(f"#   - {step:<22} {who}: {what}\n" for step, who, what in DAY_TWO_STEPS)
