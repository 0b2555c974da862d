"""The runbook of a deployment (``runbook.sh``), its README, and the day-two steps' texts,
rendered from a validated :class:`Pool`: the first-day steps in order across both hosts, then
the day-two steps of :mod:`builder.deploy.daytwo`.
"""

from __future__ import annotations

import shlex

from builder.builds.recipes import Syntax
from builder.deploy.checks import kernel_module_package
from builder.deploy.configs import REPO_FILE_WITHOUT_PYGPGME, WFC_TIMEOUT, lvm_filter, lvm_list
from builder.deploy.daytwo import (
    DAY_TWO_STEPS,
    InitSystem,
    day_two_functions,
    init_system,
    paths,
    usage_lines,
)
from builder.deploy.pool import Host, Pool, WithoutPygpgme
from builder.inputs.kernels import RELEASE_CHARACTERS, per_kernel
from builder.publish import layout
from builder.publish.consumers import profile

# yum 3.2.22's misc.valid_detached_sig returns False when `import gpgme` fails, so with
# repo_gpgcheck=1 every metadata download of the repository fails on such a host.
_PYGPGME_STOP = """\
    cat >&2 <<'EOF'
runbook: python cannot import gpgme (pygpgme). yum 3.2.22 checks the signature of this
repository's metadata (repo_gpgcheck=1) only through it: every download would fail.
Nothing was changed. Install pygpgme from the CentOS 5 base repository of the dom0's
CentOS-Base.repo, the one the build tools come from (--enablerepo turns it on for this one
command), then run this step again:
    yum --enablerepo=base install pygpgme
    python -c 'import gpgme' && echo pygpgme works
If the CentOS 5 mirrors are gone, point [base] in /etc/yum.repos.d/CentOS-Base.repo at the
vault first: baseurl=http://vault.centos.org/5.11/os/$basearch/
Only if pygpgme cannot be installed: set `without_pygpgme: repo_gpgcheck=0` under repo: in
the pool file and render again (package signatures stay checked; the metadata's are not).
EOF
    exit 1
"""

_PYGPGME_FALLBACK = f"""\
    echo "runbook: WARNING: python cannot import gpgme (pygpgme); installing $REPO_FILE with" >&2
    echo "runbook: repo_gpgcheck=0, as repo.without_pygpgme in the pool file allows. Package" >&2
    echo "runbook: signatures are still checked (gpgcheck=1); the metadata signature is not." >&2
    logger -t xcp-drbd-builder "$REPO_FILE: repo_gpgcheck=0 on $HOST, no pygpgme," \\
        "allowed by repo.without_pygpgme in the pool file" 2>/dev/null || true
    REPO_SOURCE="$HERE/{REPO_FILE_WITHOUT_PYGPGME}"
"""


def _pygpgme_check(pool: Pool) -> str:
    """The shell function that picks the .repo file an EL5 host can use (empty where the
    consumer's yum checks metadata signatures without pygpgme)."""
    if not profile(pool.target.consumer).metadata_check_needs_pygpgme:
        return ""
    missing = (
        _PYGPGME_FALLBACK
        if pool.repo.without_pygpgme is WithoutPygpgme.REPO_GPGCHECK_OFF
        else _PYGPGME_STOP
    )
    return f"""
check_pygpgme() {{
    # yum 3.2.22 (EL5) checks repomd.xml.asc only through python's gpgme module (pygpgme):
    # without it, every metadata download of a repo_gpgcheck=1 repository fails.
    if python -c 'import gpgme' >/dev/null 2>&1; then
        return 0
    fi
{missing}}}
"""


def packages(pool: Pool) -> list[str]:
    return [*pool.drbd.recipe.userland.install, kernel_module_package(pool)]


def _initial_sync_command(pool: Pool) -> str:
    resource = shlex.quote(pool.drbd.resource)
    if pool.drbd.syntax is Syntax.V83:
        return f"drbdadm -- --overwrite-data-of-peer primary {resource}"
    return f"drbdadm primary --force {resource}"


RUNBOOK_STEPS = (
    ("install", "both", "import the signing key, add the yum repo, install DRBD, install config"),
    ("lvm", "both", "filter the backing disk out of LVM, turn the LVM device cache off"),
    ("metadata", "both", "create DRBD metadata on the backing disk"),
    ("up", "both", "attach the disk and connect to the peer"),
    ("initial-sync", "first", "make this host's data the data of both (overwrites the peer)"),
    ("promote", "both", "after the sync finished: become primary"),
    ("sr", "first-then-second", "create the LVM SR here / plug it on the second host"),
)


def render_runbook(pool: Pool, host: Host, header: str) -> str:
    drbd = pool.drbd
    first, second = pool.first, pool.second
    is_first = host.name == first.name
    peer = pool.peer(host)
    order = []
    for number, (name, who, what) in enumerate(RUNBOOK_STEPS, start=1):
        where = {
            "both": f"on {first.name}, then on {second.name}",
            "first": f"on {first.name} only",
            "first-then-second": f"on {first.name}, then on {second.name}",
        }[who]
        order.append(f"#   {number}. {name:<13} {where}: {what}\n")
    order_text = "".join(order)
    overwritten = (
        "DRBD metadata, then the SR"
        if is_first
        else f"DRBD metadata, then the initial sync from {first.name}"
    )
    needs_pygpgme = profile(pool.target.consumer).metadata_check_needs_pygpgme
    pygpgme_call = "    check_pygpgme\n" if needs_pygpgme else ""
    variables = {
        "HOST": host.name,
        "PEER": peer.name,
        "RESOURCE": drbd.resource,
        "DEVICE": drbd.device,
        "DISK": host.disk,
        "REPLICATION_ADDRESS": str(host.replication.ip),
        "REPLICATION_INTERFACE": host.replication_interface,
        "MANAGEMENT_INTERFACE": host.management_interface,
        "PEER_REPLICATION_ADDRESS": str(peer.replication.ip),
        "MINOR": str(drbd.minor),
        "DRBD_VERSION": drbd.version,
        "KERNEL_RELEASE": pool.target.kernel_release,
        "KERNEL_PACKAGE": pool.target.kernel_runtime,
        "MODULE_PACKAGE": kernel_module_package(pool),
        "PER_KERNEL": "yes" if per_kernel(pool.target) else "no",
        "RELEASE_CHARACTERS": RELEASE_CHARACTERS,
        "TARGET": pool.target.id,
        "GRACE_MINUTES": str(pool.guard.grace_minutes),
        "GUARD_HOOK": pool.guard.hook or "",
        "SR_NAME": pool.sr_name,
        "GPGKEY_URL": pool.repo.gpgkey,
        "KEY_FILE": layout.INSTALLED_KEY_FILE,
        "REPO_FILE": layout.INSTALLED_REPO_FILE,
        "PACKAGES": " ".join(packages(pool)),
        "LVM_FILTER": lvm_list(lvm_filter(host)),
        **paths(pool),
    }
    if not is_first:
        variables["FIRST"] = first.name  # the second host's steps point at the first
    assignments = "".join(f"{key}={shlex.quote(value)}\n" for key, value in variables.items())
    if is_first:
        sync_body = f"""\
    # This host's disk content wins: the peer's disk is overwritten block by block.
    # DRBD refuses to sync if the peer is not connected; run `up` on both hosts first.
    {_initial_sync_command(pool)}
    echo "Initial sync started. Wait until both disks are UpToDate before \\`promote\\`:"
    echo "    cat /proc/drbd    (8.x)   or   drbdadm status $RESOURCE    (9)"
"""
        sr_body = """\
    # xe talks to the pool master from any host of the pool. The SR is created unshared (only
    # this host's PBD), then marked shared; the second host gets its own PBD in its `sr` step.
    # sr-create formats $DEVICE as an LVM volume group: everything on it is lost.
    host_uuid=$(xe host-list name-label="$HOST" --minimal)
    [ -n "$host_uuid" ] || die "xe knows no host named $HOST (see: xe host-list)"
    existing=$(xe sr-list name-label="$SR_NAME" --minimal)
    [ -z "$existing" ] || die "an SR named $SR_NAME already exists: $existing"
    sr_uuid=$(xe sr-create host-uuid="$host_uuid" type=lvm content-type=user shared=false \\
        name-label="$SR_NAME" device-config:device="$DEVICE")
    xe sr-param-set uuid="$sr_uuid" shared=true
    echo "SR $SR_NAME is $sr_uuid. Now run the \\`sr\\` step on $PEER."
"""
    else:
        sync_body = """\
    die "the initial sync runs on $FIRST (its data wins); nothing to do on $HOST"
"""
        sr_body = """\
    # The SR exists (created by $FIRST); give this host a PBD for the same DRBD device and plug
    # it. This host's DRBD must be primary (the `promote` step) or the plug fails.
    sr_uuid=$(xe sr-list name-label="$SR_NAME" type=lvm --minimal)
    [ -n "$sr_uuid" ] || die "no LVM SR named $SR_NAME yet: run the \\`sr\\` step on $FIRST first"
    case "$sr_uuid" in *,*) die "several SRs are named $SR_NAME: $sr_uuid" ;; esac
    host_uuid=$(xe host-list name-label="$HOST" --minimal)
    [ -n "$host_uuid" ] || die "xe knows no host named $HOST (see: xe host-list)"
    existing=$(xe pbd-list sr-uuid="$sr_uuid" host-uuid="$host_uuid" --minimal)
    if [ -z "$existing" ]; then
        existing=$(xe pbd-create sr-uuid="$sr_uuid" host-uuid="$host_uuid" \\
            device-config:device="$DEVICE")
    fi
    xe pbd-plug uuid="$existing"
    echo "SR $SR_NAME ($sr_uuid) is plugged on $HOST."
"""
    return f"""#!/bin/sh
{header}#
# Runbook for {host.name}: dual-primary DRBD resource {drbd.resource} ({drbd.device}) with
# {peer.name}, under the shared LVM storage repository {pool.sr_name}.
# Run one step at a time as root on {host.name}:  sh runbook.sh STEP
# The two hosts' runbooks interleave; this is the order:
{order_text}# Day two, once the SR is in use (see README.txt):
{usage_lines()}#
# Before step 1: {host.name} needs {host.replication} on {host.replication_interface}, configured
#   as a dedicated storage interface, as the XCP documentation describes:
#     xe pif-reconfigure-ip uuid=<PIF> mode=static IP={host.replication.ip} \\
#         netmask={host.replication.netmask}
#     xe pif-param-set uuid=<PIF> disallow-unplug=true other-config:management_purpose=Storage
#
# Read before running:
# - VMs whose disks are on {pool.sr_name} should all run on ONE host. Run them on both hosts only
#   for the time of a live migration. Two hosts writing through dual-primary DRBD are safe for
#   a migration; long-term, a broken link (split brain) leaves two diverged copies of the same
#   VM disks, and one side's writes must then be thrown away.
# - Replication runs over {host.replication_interface} ({host.replication.ip} to {peer.name}'s
#   {peer.replication.ip}), not over the management interface: a pool-master change
#   bounces that interface.
# - The backing disk {host.disk} is overwritten ({overwritten}).
#   Make sure it is the right, unused disk.
set -eu

{assignments}HERE=$(cd "$(dirname "$0")" && pwd)

die() {{
    echo "runbook: $*" >&2
    exit 1
}}

require_host() {{
    # DRBD matches its `on NAME` sections against `uname -n`: this runbook is for one host only.
    [ "$(uname -n)" = "$HOST" ] || die "this runbook is for $HOST, but this is $(uname -n)"
}}

require_replication_address() {{
    # DRBD binds to this address; without it `up` fails, or worse, the address is elsewhere.
    ip -o -4 addr show dev "$REPLICATION_INTERFACE" | grep -q " $REPLICATION_ADDRESS/" ||
        die "$REPLICATION_ADDRESS is not on $REPLICATION_INTERFACE (see the top of this file)"
}}

require_disk() {{
    [ -b "$DISK" ] || die "$DISK is not a block device on $HOST; fix hosts[].disk in the pool file"
}}
{_pygpgme_check(pool)}
step_install() {{
    require_replication_address
    REPO_SOURCE="$HERE/{layout.REPO_ID}.repo"
{pygpgme_call}    # The key first: yum checks the repository metadata and every package against it.
    mkdir -p "$(dirname "$KEY_FILE")"
    curl -fsS -o "$KEY_FILE.part" "$GPGKEY_URL"
    mv "$KEY_FILE.part" "$KEY_FILE"
    echo "Compare this fingerprint with the one published with the repository:"
    # From the machine-readable listing: gpg 2.1 and later print no fingerprint in the
    # human one when only given a file, whatever --with-fingerprint says.
    gpg --quiet --with-colons --with-fingerprint "$KEY_FILE" |
        awk -F: '$1 == "fpr" {{ print "    " $10 }}'
    rpm --import "$KEY_FILE"
    cp "$REPO_SOURCE" "$REPO_FILE"
    # shellcheck disable=SC2086 # PACKAGES is a list
    yum -y install $PACKAGES
    mkdir -p /etc/drbd.d
    cp "$HERE/$RESOURCE.res" "/etc/drbd.d/$RESOURCE.res"
    # The installed drbdadm must parse the file before anything touches a disk.
    drbdadm dump "$RESOURCE" >/dev/null
    modprobe drbd
}}

step_lvm() {{
    # Without this, dom0's LVM finds the SR's volume group both on $DISK and on $DEVICE and may
    # write to the backing disk behind DRBD's back.
    # LVM_SYSTEM_DIR is LVM's own variable for its configuration directory.
    conf="${{LVM_SYSTEM_DIR:-/etc/lvm}}/lvm.conf"
    [ -f "$conf.before-drbd" ] || cp -p "$conf" "$conf.before-drbd"
    grep -Eq '^[[:space:]]*filter[[:space:]]*=' "$conf" ||
        die "$conf has no 'filter =' line; add the settings of lvm.conf.snippet by hand"
    grep -Eq '^[[:space:]]*write_cache_state[[:space:]]*=' "$conf" ||
        die "$conf has no 'write_cache_state =' line; add it from lvm.conf.snippet by hand"
    filter=$LVM_FILTER
    # Reject the disk under its kernel name too: LVM accepts a device if any name is accepted.
    require_disk
    real=$(readlink -f "$DISK")
    if [ "$real" != "$DISK" ]; then
        filter="${{filter% ]}}, \\"r|^$real\\$|\\" ]"
    fi
    sed -i \\
        -e "s#^\\([[:space:]]*\\)filter[[:space:]]*=.*\\$#\\1filter = $filter#" \\
        -e 's#^\\([[:space:]]*\\)write_cache_state[[:space:]]*=.*$#\\1write_cache_state = 0#' \\
        "$conf"
    rm -f "${{LVM_SYSTEM_DIR:-/etc/lvm}}/cache/.cache"
    lvm dumpconfig devices/filter devices/write_cache_state
    vgscan
}}

step_metadata() {{
    # Internal metadata lives at the end of $DISK.
    require_disk
    drbdadm create-md "$RESOURCE"
}}

step_up() {{
    require_replication_address
    drbdadm up "$RESOURCE"
    echo "Waiting for $PEER is normal until its \\`up\\` step has run."
}}

step_initial_sync() {{
{sync_body}}}

step_promote() {{
    state=$(drbdadm dstate "$RESOURCE")
    case "$state" in
        *Inconsistent* | *DUnknown* | *Outdated* | *Diskless*)
            die "disks are $state; wait until both are UpToDate (sync still running?)" ;;
    esac
    drbdadm primary "$RESOURCE"
    cat /proc/drbd
}}

step_sr() {{
{sr_body}}}
{day_two_functions(pool)}
usage() {{
    echo "usage: sh runbook.sh STEP   (STEP is one of the steps below, in this order)" >&2
    sed -n -e 's/^#   \\([0-9]\\. \\)/  \\1/p' -e 's/^#   \\(- \\)/  \\1/p' "$0" >&2
    exit 2
}}

case "${{1:-}}" in
    install) require_host; step_install ;;
    lvm) require_host; step_lvm ;;
    metadata) require_host; step_metadata ;;
    up) require_host; step_up ;;
    initial-sync) require_host; step_initial_sync ;;
    promote) require_host; step_promote ;;
    sr) require_host; step_sr ;;
    status) require_host; step_status ;;
    guard) require_host; shift; step_guard "$@" ;;
    split-brain) require_host; shift; step_split_brain "$@" ;;
    master-change) require_host; shift; step_master_change "$@" ;;
    boot) require_host; step_boot ;;
    upgrade) require_host; step_upgrade ;;
    kernel-check) require_host; step_kernel_check ;;
    *) usage ;;
esac
"""


def render_readme(pool: Pool, header: str) -> str:
    first, second = pool.first, pool.second
    return (
        f"{header}"
        f"\n"
        f"Dual-primary DRBD {pool.drbd.version} resource {pool.drbd.resource} "
        f"({pool.drbd.device}) for {pool.target.name},\n"
        f"under the shared LVM storage repository {pool.sr_name}.\n"
        f"\n"
        f"Copy each host's directory to that host and follow its runbook.sh step by step:\n"
        f"`sh runbook.sh` lists the steps and on which host each runs. {first.name} supplies the\n"
        f"initial data and creates the SR; {second.name} is overwritten by the initial sync.\n"
        f"\n"
        f"Run the VMs that use {pool.sr_name} on one host; have them on both hosts only during\n"
        f"a migration.\n"
        f"{render_day_two(pool)}"
    )


def render_day_two(pool: Pool) -> str:
    """README.txt's day-two section: what each step checks, refuses and does."""
    drbd = pool.drbd
    guard = pool.guard
    alarm = f"runs `{guard.hook}` once and exits" if guard.hook else "exits"
    if init_system(pool) is InitSystem.SYSVINIT:
        boot = (
            "`chkconfig drbd on`, then DRBD's rc links are moved between the network's and\n"
            "  xapi's (S<NN>drbd just before S<NN>xapi, K<NN>drbd just after K<NN>xapi). An\n"
            "  update of the drbd package can add its own links again: `status` notices, and\n"
            "  `boot` puts them right."
        )
    else:
        boot = (
            "`systemctl enable drbd.service` and a drop-in that orders drbd.service after the\n"
            "  network and before xapi.service."
        )
    if drbd.syntax is Syntax.V9:
        promote = "DRBD 9 promotes a host when xapi's LVM opens the device (auto-promote yes)."
    else:
        promote = "DRBD's init script makes both hosts primary (become-primary-on both)."
    steps = "".join(f"  {step:<24} {who}: {what}\n" for step, who, what in DAY_TWO_STEPS)
    return f"""
Day two: sh runbook.sh STEP on a host (exit status 0 fine, 1 refused, 3 unsafe)
{steps}
status: {drbd.resource}'s connection, disk states and role (drbdadm cstate, dstate,
  role), the SR's PBD on each host and whether it is attached, and each running VM with a
  disk on {pool.sr_name} with the host it runs on. Exit status 3, with the list of what
  is wrong, when DRBD is not connected, in split brain, not UpToDate on both sides, not
  primary here, when the SR is not plugged on a host, when its VMs run on both hosts, when
  DRBD would not start before xapi at the next boot, or when the next boot's kernel is not
  the one its DRBD module was built against (kernel-check).

guard: from cron on both hosts (`guard install`); only the pool master checks, so a master
  change needs nothing. VMs of {pool.sr_name} on both hosts for longer than
  {guard.grace_minutes} minutes (guard.grace_minutes; a live migration here takes up to
  {guard.migration_minutes}) are logged to syslog (daemon.err, tag xcp-drbd-builder) every
  minute; the guard {alarm} with status 3, which cron mails to root.

split-brain: without --keep it only shows, on this host, the kernel log's split-brain
  line, this side's DRBD generation identifiers (drbdadm show-gi) and the VMs running on
  each host. Run it on both hosts, decide which host's data to keep, shut down the VMs of
  the other host (their writes are discarded), then run `split-brain --keep HOST` first
  on the host you keep (drbdadm connect), then on the other: it unplugs its PBD, becomes
  secondary, connects discarding its own data, waits for the resync, becomes primary and
  plugs the PBD again. There is no default for --keep. It refuses a host that is
  StandAlone without a split brain in the kernel log, and VMs still running on the side
  whose data goes.

master-change pre|post: before `xe pool-designate-new-master`, `pre` refuses unless the
  replication address is on its own interface and the route to the peer uses it, and DRBD
  is Connected and UpToDate/UpToDate. After it, `post` reconnects DRBD if the bounce of the
  management interface dropped it (drbdadm adjust, then connect) and waits until both disks
  are UpToDate; run it on both hosts.

boot: xapi plugs the SR's PBD as it starts, so DRBD must be up and primary by then:
  {boot}
  {promote}
  A peer that does not come is waited for {WFC_TIMEOUT} s (wfc-timeout), then the boot
  goes on.

upgrade: one host at a time, for a new DRBD module (a new dom0 kernel) or release. It
  refuses unless DRBD is Connected and UpToDate/UpToDate, and unless the new DRBD
  ({drbd.version}, rendered from the pool file) can replicate with the peer's (recorded in
  xapi's other-config by the peer's own upgrade, or else this host's current one): within
  8.3, 8.3 to 8.4, within 8.4, within 9. It live-migrates this host's VMs of the SR to the
  peer, unplugs the PBD, stops DRBD, installs the packages, reconnects, waits for the
  resync, becomes primary and plugs the PBD again. For a new kernel it stops before the
  reboot into it. Then run it on the peer, which moves the VMs back. It refuses to start
  when kernel-check finds no module for the kernel this host boots next.

kernel-check: after the vendor's kernel update (on targets whose kernel is updated in place
  under one uname -r, such as XCP-ng). Compares the kernel package this host boots next
  with the one its DRBD module package was built against; where they differ it exits 3 and
  says whether the repository already has the matching module (run upgrade) or what to
  build and publish first. The module built for the older kernel stays installed meanwhile.
"""
