"""The original recipe's dangers as checks on a valid pool.

Each :class:`Finding` has a stable id (used with ``render --override ID``), a severity, what is
wrong, why it matters and how to fix it.  Errors stop ``render`` unless overridden by id;
warnings are printed.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from builder.deploy.pool import RECOMMENDED_AFTER_SB, Fencing, Pool
from builder.deploy.repo import Package, RepoNotFound, RepoUnreachable, local_path, read_packages


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, kw_only=True)
class Finding:
    id: str
    severity: Severity
    message: str
    reason: str
    fix: str

    def format(self, *, severity: bool = True) -> str:
        prefix = f"{self.severity.value} " if severity else ""
        return f"{prefix}[{self.id}]: {self.message}\n    why: {self.reason}\n    fix: {self.fix}"


# Every finding id, for ``render --override ID`` (an unknown id is a typo, not a pass).
CHECK_IDS = (
    "replication-on-management-network",
    "replication-on-management-interface",
    "replication-networks-differ",
    "duplicate-address",
    "same-disk",
    "unstable-disk-name",
    "fencing-missing",
    "fence-handler-missing",
    "fence-handler-needs-cluster-manager",
    "split-brain-handler-missing",
    "split-brain-policy",
    "drbd-packages-missing",
    "repo-unreachable",
    "guard-grace-too-short",
    "guard-grace-too-long",
)

# fence-peer handlers from drbd-utils that only work with Pacemaker (crm, stonith) or cman (rhcs).
CLUSTER_FENCE_HANDLER = re.compile(
    r"/(?:crm-fence-peer[^/ ]*|stonith_admin-fence-peer\.sh|rhcs_fence)(?: |$)"
)

# Kernel names such as /dev/sdb are handed out in probe order and can change between boots.
KERNEL_DISK_NAME = re.compile(r"^/dev/(?:sd|hd|xvd|vd)[a-z]+[0-9]*$|^/dev/nvme[0-9]+n[0-9]+")
STABLE_DISK_NAME = re.compile(r"^/dev/disk/by-(?:id|uuid|partuuid|path|label)/|^/dev/mapper/")
BRIDGE = re.compile(r"^xenbr([0-9]+)$")
NIC = re.compile(r"^eth([0-9]+)$")


def _nic_index(interface: str) -> str | None:
    """XCP bridges xenbrN sit on ethN: both names mean the same NIC."""
    match = BRIDGE.match(interface) or NIC.match(interface)
    return match.group(1) if match else None


def _same_link(a: str, b: str) -> bool:
    if a == b:
        return True
    index_a, index_b = _nic_index(a), _nic_index(b)
    return index_a is not None and index_a == index_b


def check_networks(pool: Pool) -> list[Finding]:
    findings: list[Finding] = []
    for host in pool.hosts:
        # Overlap, not only membership: a wide replication prefix that covers the management
        # network makes the kernel route replication traffic over management, too.
        overlapping = sorted(
            {
                h.management.network
                for h in pool.hosts
                if host.replication.network.overlaps(h.management.network)
            }
        )
        if overlapping:
            findings.append(
                Finding(
                    id="replication-on-management-network",
                    severity=Severity.ERROR,
                    message=(
                        f"{host.name}: replication address {host.replication} is on the "
                        f"management network {overlapping[0]}."
                    ),
                    reason=(
                        "A management reconfiguration takes the management interface down and "
                        "flushes its addresses. Measured with DRBD 8.4 in two VMs: every write "
                        "froze while it was down (13 s for an 8 s outage), and a 20 s outage "
                        "left both hosts StandAlone and, once reconnected, in split brain, "
                        "though only one of them had written."
                    ),
                    fix=(
                        "Give replication its own interface and subnet (a dedicated NIC or a "
                        "direct cable), e.g. 10.0.0.1/24 and 10.0.0.2/24 on xenbr1."
                    ),
                )
            )
        if _same_link(host.replication_interface, host.management_interface):
            findings.append(
                Finding(
                    id="replication-on-management-interface",
                    severity=Severity.ERROR,
                    message=(
                        f"{host.name}: replication interface {host.replication_interface} is the "
                        f"management interface {host.management_interface} (or the same NIC)."
                    ),
                    reason=(
                        "A management reconfiguration takes this interface down and with it "
                        "the replication link: writes freeze while it is down, and a longer "
                        "outage ends in a split brain (measured with DRBD 8.4 in two VMs)."
                    ),
                    fix="Replicate over a different NIC (e.g. xenbr1/eth1) than management.",
                )
            )
    first, second = pool.hosts
    if first.replication.network != second.replication.network:
        findings.append(
            Finding(
                id="replication-networks-differ",
                severity=Severity.WARNING,
                message=(
                    f"The replication addresses are on different networks "
                    f"({first.replication.network} and {second.replication.network})."
                ),
                reason=(
                    "Replication traffic then goes through a router, which adds a failure point "
                    "and latency to every write (protocol C waits for the peer)."
                ),
                fix="Put both replication addresses on one dedicated subnet.",
            )
        )
    addresses: dict[str, str] = {}
    for host in pool.hosts:
        for role, iface in (("management", host.management), ("replication", host.replication)):
            where = f"{host.name} {role}"
            key = str(iface.ip)
            if key in addresses:
                findings.append(
                    Finding(
                        id="duplicate-address",
                        severity=Severity.ERROR,
                        message=f"{where} address {key} is also the {addresses[key]} address.",
                        reason=(
                            "Two roles or hosts on one address cannot both work: DRBD would "
                            "connect to itself or to the wrong host."
                        ),
                        fix="Give each host its own management and replication address.",
                    )
                )
            else:
                addresses[key] = where
    return findings


def check_disks(pool: Pool) -> list[Finding]:
    findings: list[Finding] = []
    first, second = pool.hosts
    if first.disk == second.disk and STABLE_DISK_NAME.match(first.disk):
        findings.append(
            Finding(
                id="same-disk",
                severity=Severity.ERROR,
                message=f"Both hosts use the same disk {first.disk}.",
                reason=(
                    "A stable disk name that is the same on both hosts is one shared disk (a SAN "
                    "LUN), not two: DRBD would replicate a disk onto itself and destroy it."
                ),
                fix="Name each host's own local disk (ls -l /dev/disk/by-id/ on each host).",
            )
        )
    for host in pool.hosts:
        if KERNEL_DISK_NAME.match(host.disk):
            findings.append(
                Finding(
                    id="unstable-disk-name",
                    severity=Severity.WARNING,
                    message=f"{host.name}: disk {host.disk} is a kernel name.",
                    reason=(
                        "Kernel disk names follow probe order and can change after a reboot or a "
                        "new disk; DRBD would then attach, and overwrite, the wrong disk."
                    ),
                    fix=f"Use the disk's name under /dev/disk/by-id/ (ls -l it on {host.name}).",
                )
            )
    return findings


def check_safety_policies(pool: Pool) -> list[Finding]:
    drbd = pool.drbd
    findings: list[Finding] = []
    if drbd.fencing is Fencing.DONT_CARE:
        findings.append(
            Finding(
                id="fencing-missing",
                severity=Severity.ERROR,
                message="drbd.fencing is dont-care: DRBD will not fence a lost peer.",
                reason=(
                    "With two primaries and no fencing, both sides keep writing after the "
                    "replication link fails: split brain with diverged data on both hosts."
                ),
                fix="Set drbd.fencing to resource-only (or resource-and-stonith).",
            )
        )
    elif drbd.fence_peer_handler is None:
        findings.append(
            Finding(
                id="fence-handler-missing",
                severity=Severity.ERROR,
                message=f"drbd.fencing is {drbd.fencing.value} but no fence_peer_handler is set.",
                reason="Fencing without a handler cannot outdate the peer.",
                fix="Set drbd.fence_peer_handler (the default is drbd-utils' crm-fence-peer).",
            )
        )
    elif CLUSTER_FENCE_HANDLER.search(drbd.fence_peer_handler):
        findings.append(
            Finding(
                id="fence-handler-needs-cluster-manager",
                severity=Severity.WARNING,
                message=(
                    f"drbd.fence_peer_handler {drbd.fence_peer_handler} needs a cluster manager."
                ),
                reason=(
                    "The crm/stonith/rhcs handlers drive Pacemaker or cman, which dom0 does not "
                    "run by default; without one the handler fails and DRBD only logs it, so a "
                    "lost peer is not really fenced."
                ),
                fix=(
                    "Run a cluster manager on both hosts, or point fence_peer_handler at a script "
                    "that can outdate or power off the peer in your setup (IPMI, PDU)."
                ),
            )
        )
    if drbd.split_brain_handler is None:
        findings.append(
            Finding(
                id="split-brain-handler-missing",
                severity=Severity.ERROR,
                message="drbd.split_brain_handler is empty: nobody is told about a split brain.",
                reason=(
                    "A split brain that is resolved by `disconnect` leaves the hosts running "
                    "apart; unnoticed, every later write widens the gap."
                ),
                fix="Set drbd.split_brain_handler: /usr/lib/drbd/notify-split-brain.sh root",
            )
        )
    dangerous = {
        "discard-younger-primary",
        "discard-older-primary",
        "discard-least-changes",
        "violently-as0p",
    }
    for key, recommended in RECOMMENDED_AFTER_SB.items():
        value = getattr(drbd, key)
        if value == recommended:
            continue
        if key == "after_sb_2pri" or value in dangerous:
            findings.append(
                Finding(
                    id="split-brain-policy",
                    severity=Severity.ERROR,
                    message=f"drbd.{key} is {value}.",
                    reason=(
                        "This policy resolves a split brain by throwing away writes that a "
                        "running VM already saw as done; with two primaries only an operator "
                        "can decide which side wins."
                    ),
                    fix=f"Use {recommended} (the recipe's policy).",
                )
            )
        else:
            findings.append(
                Finding(
                    id="split-brain-policy",
                    severity=Severity.WARNING,
                    message=f"drbd.{key} is {value}, not the recommended {recommended}.",
                    reason=(
                        "The recommended policies resolve the harmless cases on their own and "
                        "disconnect otherwise; this one needs more manual recovery or reboots a "
                        "primary."
                    ),
                    fix=f"Use {recommended} unless you have a reason.",
                )
            )
    return findings


# cron starts the guard once a minute, so it sees a migration up to a minute late.
CRON_STEP_MINUTES = 1


def check_guard(pool: Pool) -> list[Finding]:
    """The guard's grace period against how long a live migration takes on this pool."""
    guard = pool.guard
    grace, migration = guard.grace_minutes, guard.migration_minutes
    if grace < migration + CRON_STEP_MINUTES:
        return [
            Finding(
                id="guard-grace-too-short",
                severity=Severity.WARNING,
                message=(
                    f"guard.grace_minutes is {grace}, but a live migration here takes up to "
                    f"{migration} minute(s) (guard.migration_minutes)."
                ),
                reason=(
                    "During every migration the VMs run on both hosts for a moment; a grace "
                    "period shorter than a migration plus cron's one-minute step raises the "
                    "alarm for a normal migration, and alarms that are always wrong get ignored."
                ),
                fix=f"Set guard.grace_minutes to at least {migration + CRON_STEP_MINUTES}.",
            )
        ]
    longest = 2 * migration + 5 * CRON_STEP_MINUTES
    if grace > longest:
        return [
            Finding(
                id="guard-grace-too-long",
                severity=Severity.WARNING,
                message=(
                    f"guard.grace_minutes is {grace}, longer than a live migration here can take "
                    f"({migration} minute(s), guard.migration_minutes)."
                ),
                reason=(
                    "VMs of the SR left on both hosts after a migration went wrong stay unnoticed "
                    "that long; if the replication link fails meanwhile, both sides keep writing "
                    "and the split brain costs one side's writes of all that time."
                ),
                fix=(
                    f"Set guard.grace_minutes to at most {longest} (twice the longest migration "
                    "plus five minutes), or correct guard.migration_minutes."
                ),
            )
        ]
    return []


def kernel_module_package(pool: Pool) -> str:
    """The name of the kernel module package the hosts need."""
    return pool.drbd.recipe.module_package(pool.target.kernel_release)


USERLAND_PACKAGES = ("drbd", "drbd-utils")


def _version_matches(wanted: str, version: str) -> bool:
    return version == wanted or version.startswith(wanted + ".") or version.startswith(wanted + "_")


def check_packages(
    pool: Pool, reader: Callable[[str], Sequence[Package]] = read_packages
) -> list[Finding]:
    base = pool.repo_baseurl
    try:
        packages = reader(base)
    except RepoNotFound as exc:
        if _root_is_reachable(pool.repo.url):
            return [
                Finding(
                    id="drbd-packages-missing",
                    severity=Severity.ERROR,
                    message=(
                        f"The repository {pool.repo.url} has nothing for {pool.target.id} "
                        f"({pool.target.consumer.value}/{pool.target.basearch}): {exc}."
                    ),
                    reason="yum on the hosts would find no DRBD packages.",
                    fix=(
                        f"Publish DRBD {pool.drbd.version} built for {pool.target.id}, or "
                        "correct repo.url or target."
                    ),
                )
            ]
        return [_unreachable(pool, base, exc)]
    except RepoUnreachable as exc:
        return [_unreachable(pool, base, exc)]
    return _check_package_list(pool, base, packages)


def _root_is_reachable(url: str) -> bool:
    """A 404 answer means the server is there; a missing local file counts if its root exists."""
    if url.startswith(("http://", "https://")):
        return True
    try:
        return local_path(url).is_dir()
    except RepoUnreachable:
        return False


def _unreachable(pool: Pool, base: str, exc: Exception) -> Finding:
    return Finding(
        id="repo-unreachable",
        severity=Severity.WARNING,
        message=f"Could not read the repository at {base}: {exc}.",
        reason=f"Whether it carries DRBD {pool.drbd.version} for the hosts is unchecked.",
        fix="Run the check where the repository is reachable, or check it by hand.",
    )


def _check_package_list(pool: Pool, base: str, packages: Sequence[Package]) -> list[Finding]:
    module = kernel_module_package(pool)
    version = pool.drbd.version
    findings: list[Finding] = []
    modules = [p for p in packages if p.name == module]
    if not any(_version_matches(version, p.version) for p in modules):
        have = ", ".join(p.nvra for p in modules) or "none"
        findings.append(
            Finding(
                id="drbd-packages-missing",
                severity=Severity.ERROR,
                message=(
                    f"The repository {base} has no {module} for DRBD {version} "
                    f"(kernel module packages found: {have})."
                ),
                reason=(
                    f"The hosts run {pool.target.id} (kernel {pool.target.kernel_release}); "
                    "yum would fail, or install a module that does not match the resource syntax."
                ),
                fix=(
                    f"Build and publish DRBD {version} for {pool.target.id} "
                    f"(python -m builder build --xcp {pool.target.id} --drbd {version}), or set "
                    "drbd.version to one the repository has."
                ),
            )
        )
    if not any(p.name in USERLAND_PACKAGES for p in packages):
        findings.append(
            Finding(
                id="drbd-packages-missing",
                severity=Severity.ERROR,
                message=f"The repository {base} has no DRBD userland package (drbd or drbd-utils).",
                reason="Without drbdadm the hosts cannot configure the resource.",
                fix=f"Publish the DRBD userland packages for {pool.target.id}.",
            )
        )
    return findings


def run_checks(
    pool: Pool, *, reader: Callable[[str], Sequence[Package]] = read_packages
) -> list[Finding]:
    findings = [
        *check_networks(pool),
        *check_disks(pool),
        *check_safety_policies(pool),
        *check_guard(pool),
        *check_packages(pool, reader),
    ]
    return sorted(findings, key=lambda f: (f.severity is not Severity.ERROR, f.id))
