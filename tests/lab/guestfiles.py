"""The files the lab writes into its guests: init, the command channel, and dom0 stand-ins.

Each is shell text kept here, so the image cache key (``digest``) changes with any of them.
What a real dom0 has and Debian has no package for is a stand-in and says so in its header:
``rc`` (initscripts' runlevel runner), ``chkconfig``, the ``network`` and ``xapi`` init
scripts, a recording ``xe`` (there is no xapi here) and a fence-peer handler (no IPMI here).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

AGENT_PORT = "/dev/ttyS1"  # the second serial port: the command channel

# PID 1 of the initramfs: load the virtio block driver, mount the root disk, switch to it.
_INITRAMFS_INIT = """#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in {modules}; do
    insmod /modules/$module || echo "lab initramfs: insmod $module failed"
done
tries=0
while [ ! -b /dev/vda ] && [ $tries -lt 100 ]; do sleep 0.1; tries=$((tries + 1)); done
mount -t ext4 -o rw /dev/vda /newroot || {{ echo "lab initramfs: cannot mount /dev/vda"; exec sh; }}
umount /dev /sys /proc
exec switch_root /newroot /sbin/init
"""

# PID 1 of the root: what a dom0's init does before runlevel 3, then the command channel.
_INIT = """#!/bin/bash
# The lab guest's init: mounts, host name and disk names (as udev would make them), runlevel 3
# through /etc/rc.d/rc as a Red Hat dom0 boots, then the lab's command channel.
export PATH=/usr/sbin:/usr/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/lock /run/drbd /run/lvm
for word in $(cat /proc/cmdline); do
    case "$word" in
        lab.host=*) hostname "${word#lab.host=}" ;;
    esac
done
mkdir -p /dev/disk/by-id
for block in /sys/block/vd*; do
    serial=$(cat "$block/serial" 2>/dev/null) || continue
    [ -n "$serial" ] && ln -sf "../../${block##*/}" "/dev/disk/by-id/virtio-$serial"
done
ip link set lo up
echo "lab init: entering runlevel 3"
/etc/rc.d/rc 3
echo "lab init: runlevel 3 reached"
while :; do
    setsid /usr/sbin/lab-agent <{port} >{port} 2>&1
    sleep 1
done
"""

# The command channel: one line in (an id and a base64 script), the script's output and
# exit status out, each in a line of its own.
_AGENT = """#!/bin/bash
# The lab's command channel on the second serial port.
stty raw -echo 2>/dev/null
echo "@@READY $(cat /proc/sys/kernel/random/boot_id)"
while IFS= read -r line; do
    id=${line%% *}
    printf '%s' "${line#* }" | base64 -d >/tmp/lab-command.sh
    bash /tmp/lab-command.sh >/tmp/lab-out 2>/tmp/lab-err </dev/null
    rc=$?
    printf '@@OUT %s %s\\n' "$id" "$(base64 -w0 </tmp/lab-out)"
    printf '@@ERR %s %s\\n' "$id" "$(base64 -w0 </tmp/lab-err)"
    printf '@@END %s %s\\n' "$id" "$rc"
done
"""

_RC = """#!/bin/bash
# Stand-in for Red Hat initscripts' rc: run the S links of a runlevel in glob order.
for script in /etc/rc.d/rc"$1".d/S[0-9][0-9]*; do
    [ -x "$script" ] || continue
    echo "rc: ${script##*/} start"
    "$script" start
done
"""

# The dom0's network init script: bring up the management and replication interfaces (named
# after their bridges, as a dom0 names them) with the addresses on the kernel command line.
_NETWORK = """#!/bin/bash
# chkconfig: 2345 10 90
# description: Stand-in for a dom0's network script (the lab's two NICs).
[ "${1:-}" = start ] || exit 0
modprobe virtio_net
for tries in $(seq 1 50); do
    [ -e /sys/class/net/eth1 ] || [ -e /sys/class/net/xenbr1 ] && break
    sleep 0.1
done
for device in /sys/class/net/eth*; do
    [ -e "$device" ] || continue
    case "$(cat "$device/address")" in
        *:01) ip link set "${device##*/}" name xenbr0 ;;
        *:02) ip link set "${device##*/}" name xenbr1 ;;
        *:03) ip link set "${device##*/}" name lab-repo ;;
    esac
done
for word in $(cat /proc/cmdline); do
    case "$word" in
        lab.addr=*)
            for pair in $(echo "${word#lab.addr=}" | tr ',' ' '); do
                ip addr add "${pair#*:}" dev "${pair%%:*}"
            done ;;
    esac
done
ip link set xenbr0 up
ip link set xenbr1 up
[ ! -e /sys/class/net/lab-repo ] || ip link set lab-repo up
"""

_XAPI = """#!/bin/bash
# chkconfig: 2345 23 10
# description: Stand-in for xapi's init script (there is no xapi in the lab).
echo "xapi (stand-in): ${1:-}"
"""

# Red Hat's chkconfig, as far as the runbook's boot step uses it (--add NAME, NAME on).
_CHKCONFIG = """#!/bin/bash
# Stand-in for Red Hat's chkconfig: --add NAME and NAME on, from the script's chkconfig header.
set -eu
rc=/etc/rc.d
if [ "$1" = --add ]; then adding=1; name=$2; else adding=0; name=$1; fi
read -r levels start stop <<EOF
$(sed -n 's/^# chkconfig:[[:space:]]*//p' "$rc/init.d/$name" | head -n 1)
EOF
[ "$levels" = - ] && levels=""
for level in 0 1 2 3 4 5 6; do
    dir=$rc/rc$level.d
    mkdir -p "$dir"
    if [ "$adding" = 1 ]; then
        ls "$dir"/[SK][0-9][0-9]"$name" >/dev/null 2>&1 && continue
        case "$levels" in
            *$level*) ln -s "../init.d/$name" "$dir/S$start$name" ;;
            *) ln -s "../init.d/$name" "$dir/K$stop$name" ;;
        esac
    else
        case 2345 in *$level*) ;; *) continue ;; esac
        rm -f "$dir"/K[0-9][0-9]"$name"
        ls "$dir"/S[0-9][0-9]"$name" >/dev/null 2>&1 || ln -s "../init.d/$name" "$dir/S$start$name"
    fi
done
"""

# xe: a recording fake of one pool with the two lab hosts, the SR and its PBDs, and no VMs.
_XE = """#!/bin/bash
# Stand-in for xe (there is no xapi in the lab): records each call, answers for a pool of the
# two lab hosts with one LVM SR plugged on both and no VMs.
state=/var/lib/lab-xe
mkdir -p "$state"
echo "$(hostname): xe $*" >>/var/log/lab-xe.log
command=$1
shift
uuid="" param=""
for arg in "$@"; do
    case "$arg" in
        uuid=*) uuid=${arg#uuid=} ;;
        name-label=*) name=${arg#name-label=} ;;
        host-uuid=*) host=${arg#host-uuid=} ;;
        param-name=*) param=${arg#param-name=} ;;
        param-key=*) key=${arg#param-key=} ;;
    esac
done
case "$command" in
    host-list) echo "host-${name:-}" ;;
    pool-list) echo "host-xcp1" ;;
    sr-list) echo "sr-lab" ;;
    vdi-list | vbd-list) echo "" ;;
    pbd-list) echo "pbd-${host#host-}" ;;
    pbd-param-get) cat "$state/$uuid.attached" 2>/dev/null || echo true ;;
    pbd-plug) echo true >"$state/$uuid.attached" ;;
    pbd-unplug) echo false >"$state/$uuid.attached" ;;
    host-param-get)
        if [ "$param" = name-label ]; then
            echo "${uuid#host-}"
        elif ! cat "$state/$uuid.$key" 2>/dev/null; then
            echo "Error: Key $key not found in map" >&2
            exit 1
        fi ;;
    host-param-set)
        for arg in "$@"; do
            case "$arg" in
                other-config:*=*) k=${arg#other-config:}; echo "${k#*=}" >"$state/$uuid.${k%%=*}" ;;
            esac
        done ;;
    sr-create) echo "sr-lab" ;;
    sr-param-set | pbd-create) ;;
    *) echo "xe (stand-in): $command is not simulated" >&2; exit 1 ;;
esac
"""

_FENCE = """#!/bin/bash
# Stand-in fence-peer handler (no IPMI in the lab): records the call, reports the peer
# unreachable (exit 5), as a handler that cannot reach the peer's power switch does.
echo "$(date +%s) $(hostname) fence-peer $* ${DRBD_RESOURCE:-}" >>/var/log/lab-fence.log
exit 5
"""

# A dom0-like lvm.conf: the settings the runbook's lvm step edits are present, uncommented.
# No udev in the guest: LVM makes its own device nodes.
_LVM_CONF = """devices {
    dir = "/dev"
    scan = [ "/dev" ]
    filter = [ "a|.*|" ]
    write_cache_state = 1
    obtain_device_list_from_udev = 0
    use_devicesfile = 0
}
activation {
    udev_sync = 0
    udev_rules = 0
    monitoring = 0
}
"""

FENCE_HANDLER = "/usr/local/sbin/lab-fence-peer"

_FILES: dict[str, tuple[str, int]] = {
    "sbin/init": (_INIT.replace("{port}", AGENT_PORT), 0o755),
    "usr/sbin/lab-agent": (_AGENT, 0o755),
    "etc/rc.d/rc": (_RC, 0o755),
    "etc/rc.d/init.d/network": (_NETWORK, 0o755),
    "etc/rc.d/init.d/xapi": (_XAPI, 0o755),
    "usr/sbin/chkconfig": (_CHKCONFIG, 0o755),
    "usr/bin/xe": (_XE, 0o755),
    FENCE_HANDLER.lstrip("/"): (_FENCE, 0o755),
    "etc/lvm/lvm.conf": (_LVM_CONF, 0o644),
    "etc/hosts": ("127.0.0.1 localhost\n", 0o644),
    # drbd-utils' top configuration file, as the drbd package installs it on a dom0.
    "etc/drbd.conf": (
        'include "drbd.d/global_common.conf";\ninclude "drbd.d/*.res";\n',
        0o644,
    ),
    "etc/drbd.d/global_common.conf": ("global {\n    usage-count no;\n}\ncommon {\n}\n", 0o644),
}
# The links a dom0 has for its network and xapi at runlevels 2-5 (chkconfig --add would make).
_RC_LINKS = {"network": ("10", "90"), "xapi": ("23", "10")}


def initramfs_init(modules: list[str]) -> str:
    return _INITRAMFS_INIT.format(modules=" ".join(modules))


def write_root_files(root: Path) -> None:
    for name, (text, mode) in _FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        path.write_text(text)
        path.chmod(mode)
    for level in "0123456":
        directory = root / "etc/rc.d" / f"rc{level}.d"
        directory.mkdir(parents=True, exist_ok=True)
        for name, (start, stop) in _RC_LINKS.items():
            link = f"S{start}{name}" if level in "2345" else f"K{stop}{name}"
            (directory / link).symlink_to(f"../init.d/{name}")


def digest() -> str:
    text = "".join(f"{name}\0{mode}\0{body}" for name, (body, mode) in sorted(_FILES.items()))
    return hashlib.sha256((text + repr(_RC_LINKS) + _INITRAMFS_INIT).encode()).hexdigest()
