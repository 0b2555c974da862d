# ---- Day two -----------------------------------------------------------------------------
# Exit status: 0 fine, 1 refused (nothing changed, or stopped where it says), 2 usage,
# 3 unsafe (status, guard, split-brain).
UNSAFE=3
WAIT_STEP=5  # seconds between two looks at DRBD's state
CONNECT_TRIES=60  # how many looks before giving up on a connection (5 minutes)

drbd_query() {
    # drbd_query cstate|dstate|role: drbdadm's answer (first line); Unconfigured when not up
    answer=$(drbdadm "$1" "$RESOURCE" 2>/dev/null) || answer=""
    answer=$(printf '%s\n' "$answer" | sed -n 1p)
    echo "${answer:-Unconfigured}"
}

local_part() {
    echo "${1%%/*}"
}

connected() {
    # DRBD 8 shows a running resync in the connection state; DRBD 9 stays Connected.
    case "$1" in
        Connected | SyncSource | SyncTarget | PausedSync? | Verify?) return 0 ;;
    esac
    return 1
}

split_brain_lines() {
    # DRBD 8 names the device (block drbd1: ...), DRBD 9 the resource, volume and device.
    { dmesg 2>/dev/null; cat /var/log/messages 2>/dev/null; } | grep 'Split-Brain detected' |
        grep -F -e "drbd$MINOR:" -e "drbd$MINOR " -e "drbd $RESOURCE/" -e "drbd $RESOURCE:" |
        tail -n 5 || true
}

wait_connected() {
    # Fails at once on a split brain (StandAlone with the kernel's line): waiting cannot help.
    tries=0
    while [ "$tries" -lt "$CONNECT_TRIES" ]; do
        cstate=$(drbd_query cstate)
        connected "$cstate" && return 0
        [ "$cstate" != StandAlone ] || [ -z "$(split_brain_lines)" ] || return 2
        tries=$((tries + 1))
        sleep "$WAIT_STEP"
    done
    return 1
}

wait_uptodate() {
    # Until both disks are UpToDate (the resync is over); fails when the connection is lost.
    looks=0
    while :; do
        [ "$(drbd_query dstate)" = UpToDate/UpToDate ] && return 0
        cstate=$(drbd_query cstate)
        connected "$cstate" || {
            echo "runbook: the connection to $PEER was lost during the resync ($cstate)" >&2
            return 1
        }
        looks=$((looks + 1))
        [ $((looks % 12)) -ne 1 ] || show_sync
        sleep "$WAIT_STEP"
    done
}

host_uuid_of() {
    found=$(xe host-list name-label="$1" --minimal)
    [ -n "$found" ] || die "xe knows no host named $1 (see: xe host-list)"
    echo "$found"
}

find_sr() {
    # SR_UUID: the SR's uuid; fails when there is none.
    SR_UUID=$(xe sr-list name-label="$SR_NAME" type=lvm --minimal)
    case "$SR_UUID" in
        "") return 1 ;;
        *,*) die "several SRs are named $SR_NAME: $SR_UUID" ;;
    esac
}

find_sr_vms() {
    # SR_VMS: one line per running VM with a disk on the SR: "<host name> <vm uuid> <vm name>".
    SR_VMS=""
    vm_uuids=""
    for vdi in $(xe vdi-list sr-uuid="$SR_UUID" --minimal | tr ',' ' '); do
        vm_uuids="$vm_uuids $(xe vbd-list vdi-uuid="$vdi" params=vm-uuid --minimal | tr ',' ' ')"
    done
    # shellcheck disable=SC2086 # a list of uuids
    for vm in $(printf '%s\n' $vm_uuids | sort -u); do
        case "$(xe vm-param-get uuid="$vm" param-name=power-state)" in
            running | paused) ;;
            *) continue ;;
        esac
        resident=$(xe vm-param-get uuid="$vm" param-name=resident-on)
        where=$(xe host-param-get uuid="$resident" param-name=name-label)
        name=$(xe vm-param-get uuid="$vm" param-name=name-label)
        SR_VMS="$SR_VMS$where $vm $name
"
    done
}

vm_hosts() {
    printf '%s' "$SR_VMS" | cut -d ' ' -f 1 | sort -u
}

vms_on() {
    printf '%s' "$SR_VMS" | awk -v host="$1" '$1 == host { print $2 }'
}

show_vms() {
    if [ -z "$SR_VMS" ]; then
        echo "    (no running VM has a disk on $SR_NAME)"
    else
        printf '%s' "$SR_VMS" | sort | sed 's/^/    /'
    fi
}

pbd_on() {
    # The SR's PBD on host $1 (a name); empty when it has none.
    xe pbd-list sr-uuid="$SR_UUID" host-uuid="$(host_uuid_of "$1")" --minimal
}

PROBLEMS=""
problem() {
    PROBLEMS="$PROBLEMS  - $*
"
}

step_status() {
    cstate=$(drbd_query cstate)
    dstate=$(drbd_query dstate)
    role=$(drbd_query role)
    echo "DRBD $RESOURCE ($DEVICE) on $HOST: connection $cstate, disks $dstate, role $role"
    if connected "$cstate"; then
        :
    elif [ "$cstate" = StandAlone ] && [ -n "$(split_brain_lines)" ]; then
        problem "split brain: $RESOURCE is StandAlone and the kernel log reports a split brain" \
            "(see: sh runbook.sh split-brain)"
    else
        problem "$RESOURCE is $cstate: $HOST does not replicate to $PEER"
    fi
    case "$dstate" in
        UpToDate/UpToDate) ;;
        *Inconsistent*)
            problem "disks are $dstate: a resync is running, one side's data is not complete"
            show_sync ;;
        *) problem "disks are $dstate, not UpToDate/UpToDate" ;;
    esac
    [ "$(local_part "$role")" = Primary ] ||
        problem "$HOST is $(local_part "$role"), not Primary: the SR cannot be used here"
    if find_sr; then
        echo "SR $SR_NAME ($SR_UUID):"
        for name in "$HOST" "$PEER"; do
            pbd=$(pbd_on "$name")
            attached=false
            [ -z "$pbd" ] || attached=$(xe pbd-param-get uuid="$pbd" param-name=currently-attached)
            echo "    PBD on $name: ${pbd:-none}, attached: $attached"
            [ "$attached" = true ] || problem "the SR is not plugged on $name"
        done
        find_sr_vms
        echo "VMs with disks on $SR_NAME (host, uuid, name):"
        show_vms
        [ "$(vm_hosts | wc -l)" -le 1 ] ||
            problem "VMs of $SR_NAME run on both hosts: keep them on one, apart only to migrate"
    else
        problem "there is no LVM SR named $SR_NAME (the sr step creates it)"
    fi
    boot=$(boot_check)
    [ -z "$boot" ] || problem "$boot: run sh runbook.sh boot"
    module_problem=$(kernel_module_problem) || true
    [ -z "$module_problem" ] || problem "$module_problem"
    if [ -n "$PROBLEMS" ]; then
        printf 'UNSAFE on %s:\n%s' "$HOST" "$PROBLEMS" >&2
        exit "$UNSAFE"
    fi
    echo "OK: connected, both disks UpToDate, the SR plugged on both hosts, its VMs on one host."
}

guard_install() {
    # Both hosts carry the cron entry; only the pool master checks, so a master change needs
    # nothing. The entry runs a copy of this runbook: the rendered directory may go away.
    mkdir -p "$(dirname "$INSTALLED_RUNBOOK")" "$STATE_DIR"
    cp "$HERE/$(basename "$0")" "$INSTALLED_RUNBOOK.partial"
    chmod 0755 "$INSTALLED_RUNBOOK.partial"
    mv -f "$INSTALLED_RUNBOOK.partial" "$INSTALLED_RUNBOOK"
    # cron reads every file in /etc/cron.d but those whose names start with a dot.
    partial="$(dirname "$CRON_FILE")/.$(basename "$CRON_FILE").partial"
    cat >"$partial" <<EOF
# The guard of SR $SR_NAME (DRBD $RESOURCE): once a minute; only the pool master checks.
# Written by: sh runbook.sh guard install
* * * * * root /bin/sh $INSTALLED_RUNBOOK guard
EOF
    chmod 0644 "$partial"
    mv -f "$partial" "$CRON_FILE"
    echo "Installed $CRON_FILE (runs $INSTALLED_RUNBOOK guard every minute)."
}

step_guard() {
    case "${1:-}" in
        install) guard_install; return ;;
        "") ;;
        *) usage ;;
    esac
    [ "$(xe pool-list params=master --minimal)" = "$(host_uuid_of "$HOST")" ] || exit 0
    find_sr || die "guard: there is no LVM SR named $SR_NAME to guard"
    find_sr_vms
    since_file="$STATE_DIR/$RESOURCE.apart-since"
    if [ "$(vm_hosts | wc -l)" -le 1 ]; then
        rm -f "$since_file" "$since_file.hook-ran"
        exit 0
    fi
    now=$(date +%s)
    since=$(cat "$since_file" 2>/dev/null) || since=""
    case "$since" in
        "" | *[!0-9]*)
            mkdir -p "$STATE_DIR"
            echo "$now" >"$since_file.partial"
            mv -f "$since_file.partial" "$since_file"
            since=$now ;;
    esac
    apart=$(((now - since) / 60))
    # Within the grace period this is a migration.
    [ "$apart" -ge "$GRACE_MINUTES" ] || exit 0
    hosts=$(vm_hosts | tr '\n' ' ')
    message="VMs of SR $SR_NAME have run on both hosts (${hosts% }) for $apart minutes,"
    message="$message longer than the grace period of $GRACE_MINUTES: move them to one host;"
    message="$message a split brain now would cost one host's writes"
    logger -t xcp-drbd-builder -p daemon.err "guard: $message"
    echo "guard: $message" >&2
    show_vms >&2
    if [ -n "$GUARD_HOOK" ] && [ ! -e "$since_file.hook-ran" ]; then
        # Once per episode; syslog and the exit status repeat every minute.
        # shellcheck disable=SC2086 # the hook is a command with plain arguments
        if XDB_RESOURCE=$RESOURCE XDB_SR_NAME=$SR_NAME XDB_MINUTES_APART=$apart \
            $GUARD_HOOK "$message"; then
            : >"$since_file.hook-ran"
        else
            logger -t xcp-drbd-builder -p daemon.err "guard: the hook $GUARD_HOOK failed"
        fi
    fi
    exit "$UNSAFE"
}

step_split_brain() {
    keep=""
    case "${1:-}" in
        "") ;;
        --keep) keep=${2:-} ;;
        --keep=*) keep=${1#--keep=} ;;
        *) usage ;;
    esac
    if [ "${1:-}" != "" ] && [ "$keep" != "$HOST" ] && [ "$keep" != "$PEER" ]; then
        die "--keep names the host whose data survives: $HOST or $PEER, not '$keep'"
    fi
    cstate=$(drbd_query cstate)
    lines=$(split_brain_lines)
    if connected "$cstate"; then
        die "no split brain: $RESOURCE is $cstate on $HOST; nothing to recover"
    fi
    if [ "$cstate" = StandAlone ] && [ -z "$lines" ]; then
        die "$RESOURCE is StandAlone on $HOST, but the kernel log reports no split brain for" \
            "drbd$MINOR: disconnected by hand? (drbdadm connect $RESOURCE); not discarding data"
    fi
    if [ "$cstate" != StandAlone ] && [ -z "$keep" ]; then
        die "$RESOURCE is $cstate on $HOST, not StandAlone: no split brain to show here"
    fi
    find_sr || die "there is no LVM SR named $SR_NAME"
    find_sr_vms
    if [ -z "$keep" ]; then
        echo "Split brain on $RESOURCE ($DEVICE): $HOST is StandAlone. Kernel log:"
        printf '%s\n' "$lines" | sed 's/^/    /'
        echo "Data on $HOST (DRBD generation identifiers: current, bitmap, history):"
        drbdadm show-gi "$RESOURCE" | sed 's/^/    /'
        for name in "$HOST" "$PEER"; do
            echo "VMs with disks on $SR_NAME running now on $name:"
            vms=$(vms_on "$name")
            printf '%s\n' "${vms:-(none)}" | sed 's/^/    /'
        done
        cat <<EOF
Run this step on $PEER too, to see its generation identifiers. Then decide which host's
data to KEEP: the other host's writes since the split are thrown away, for good.
Shut down the VMs on the host whose data goes (their writes go with it), then run
    first on the host you keep:  sh runbook.sh split-brain --keep HOST
    then on the other host:      sh runbook.sh split-brain --keep HOST
EOF
        exit "$UNSAFE"
    fi
    if [ "$keep" = "$HOST" ]; then
        # The survivor: reconnect; the peer discards its changes and resyncs from here.
        if [ "$cstate" = StandAlone ]; then
            drbdadm connect "$RESOURCE"
        fi
        echo "$HOST keeps its data and waits for $PEER. Now run on $PEER:"
        echo "    sh runbook.sh split-brain --keep $HOST"
        return
    fi
    # The victim: its changes since the split are discarded.
    here=$(vms_on "$HOST")
    if [ -n "$here" ]; then
        die "VMs with disks on $SR_NAME still run on $HOST, on the data being discarded:" \
            "$(echo "$here" | tr '\n' ' ')- shut them down first (xe vm-shutdown uuid=...)"
    fi
    pbd=$(pbd_on "$HOST")
    attached=false
    [ -z "$pbd" ] || attached=$(xe pbd-param-get uuid="$pbd" param-name=currently-attached)
    [ "$attached" != true ] || xe pbd-unplug uuid="$pbd"
    [ "$(local_part "$(drbd_query role)")" = Secondary ] || drbdadm secondary "$RESOURCE"
    [ "$cstate" = StandAlone ] || drbdadm disconnect "$RESOURCE"
    connect_discarding_my_data
    wait_connected ||
        die "not connected to $PEER after $((CONNECT_TRIES * WAIT_STEP)) s: run" \
            "sh runbook.sh split-brain --keep $PEER on $PEER, then this step again"
    echo "Connected; $HOST resyncs from $PEER."
    wait_uptodate || die "the resync did not finish; see: sh runbook.sh status"
    drbdadm primary "$RESOURCE"
    [ -z "$pbd" ] || xe pbd-plug uuid="$pbd"
    echo "Recovered: $HOST holds $PEER's data again, is primary and has the SR plugged."
}

replication_route_problem() {
    # Why replication would go through the management interface (empty when it would not).
    if [ "$REPLICATION_INTERFACE" = "$MANAGEMENT_INTERFACE" ]; then
        echo "replication runs over the management interface $MANAGEMENT_INTERFACE"
        return
    fi
    if ip -o -4 addr show dev "$MANAGEMENT_INTERFACE" | grep -q " $REPLICATION_ADDRESS/"; then
        echo "the replication address $REPLICATION_ADDRESS is on $MANAGEMENT_INTERFACE"
        return
    fi
    route=$(ip route get "$PEER_REPLICATION_ADDRESS")
    case " $route " in
        *" dev $REPLICATION_INTERFACE "*) ;;
        *) echo "the route to $PEER's replication address is not via" \
            "$REPLICATION_INTERFACE: $route" ;;
    esac
}

step_master_change() {
    case "${1:-}" in
        pre)
            route=$(replication_route_problem)
            [ -z "$route" ] || die "not safe to change the pool master: $route; a master change" \
                "bounces the management interface and would break replication"
            cstate=$(drbd_query cstate)
            dstate=$(drbd_query dstate)
            if [ "$cstate" != Connected ] || [ "$dstate" != UpToDate/UpToDate ]; then
                die "not safe to change the pool master: $RESOURCE is $cstate with disks" \
                    "$dstate; wait for Connected and UpToDate/UpToDate (sh runbook.sh status)"
            fi
            echo "DRBD is Connected and UpToDate over $REPLICATION_INTERFACE: safe to change"
            echo "the pool master. Run master-change pre on $PEER too, then"
            echo "    xe pool-designate-new-master host-uuid=<the new master's uuid>"
            echo "then sh runbook.sh master-change post on both hosts at once (each waits for"
            echo "the other to connect)."
            ;;
        post)
            cstate=$(drbd_query cstate)
            if [ "$cstate" = StandAlone ] || [ "$cstate" = Unconfigured ]; then
                echo "$RESOURCE is $cstate after the master change: reconnecting."
                drbdadm adjust "$RESOURCE"
                [ "$(drbd_query cstate)" != StandAlone ] || drbdadm connect "$RESOURCE"
            fi
            waited=0
            wait_connected || waited=$?
            if [ "$waited" = 2 ]; then
                echo "runbook: split brain on $RESOURCE after the master change: $HOST is" \
                    "StandAlone and the kernel log reports a split brain (see: sh runbook.sh" \
                    "split-brain)" >&2
                exit "$UNSAFE"
            fi
            [ "$waited" = 0 ] ||
                die "$RESOURCE is still $(drbd_query cstate) on $HOST: run sh runbook.sh" \
                    "master-change post on $PEER; if it stays so, check the replication link" \
                    "(ping $PEER_REPLICATION_ADDRESS)"
            wait_uptodate || die "the resync after the reconnect did not finish"
            echo "$RESOURCE is connected to $PEER again and both disks are UpToDate."
            ;;
        *) usage ;;
    esac
}

step_boot() {
    # After a reboot xapi plugs the SR's PBD as it starts: DRBD must be up and primary by then.
    boot_promotion
    boot_enable
}

kernel_next() {
    # The version-release of dom0's kernel package: what the next boot runs (XCP-ng updates it
    # in place under the same uname -r; the kernel of XCP 1.x never changes).
    kernel_evrs=$(rpm -q --qf '%{VERSION}-%{RELEASE}\n' "$KERNEL_PACKAGE" 2>/dev/null) || return 0
    printf '%s\n' "$kernel_evrs" | sed -n '$p'
}

module_built_for() {
    # The kernel version-release the installed DRBD module package was built against: its
    # requirement on the kernel package ("= V-R" exact, ">= V-R" on kernel-uname-r targets).
    rpm -q --requires "$MODULE_PACKAGE" 2>/dev/null |
        sed -n "s/^$KERNEL_PACKAGE [<>=]* \([^ ]*\)\$/\1/p" | sed -n 1p
}

module_offered_for() {
    # Whether the repository has a module package built against kernel version-release $1
    # (its release ends with .k<version-release>, as the builder names it).
    suffix=".k$(printf '%s' "$1" | sed "s/[^$RELEASE_CHARACTERS]/_/g")"
    yum -q --showduplicates list available "$MODULE_PACKAGE" 2>/dev/null |
        awk '{ print $2 }' | grep -qF -- "$suffix"
}

booted_before_kernel_update() {
    # True when the kernel package was installed after this boot: the running kernel is an
    # older build, even under the same uname -r.
    kernel_time=$(rpm -q --qf '%{INSTALLTIME}\n' "$KERNEL_PACKAGE" 2>/dev/null) || return 1
    kernel_time=$(printf '%s\n' "$kernel_time" | sed -n '$p')
    boot_time=$(sed -n 's/^btime //p' /proc/stat)
    [ -n "$boot_time" ] && [ "$kernel_time" -gt "$boot_time" ]
}

kernel_module_problem() {
    # Why the next boot would run a DRBD module built against another kernel (empty if not);
    # status 1 when the repository has no module built for that kernel either.
    [ "$PER_KERNEL" = yes ] || return 0
    next_kernel=$(kernel_next)
    built_for=$(module_built_for)
    [ -n "$next_kernel" ] && [ -n "$built_for" ] && [ "$next_kernel" != "$built_for" ] || return 0
    if module_offered_for "$next_kernel"; then
        echo "$HOST boots $KERNEL_PACKAGE $next_kernel next, but its $MODULE_PACKAGE was" \
            "built against $built_for; the repository has one built against $next_kernel:" \
            "run sh runbook.sh upgrade (one host at a time)"
    else
        echo "$HOST boots $KERNEL_PACKAGE $next_kernel next, but its $MODULE_PACKAGE was" \
            "built against $built_for and the repository has none built against" \
            "$next_kernel yet. The module for $built_for stays installed and the next boot" \
            "loads it (uname -r stays $KERNEL_RELEASE; it loads while $next_kernel keeps the" \
            "symbols it uses). Build and publish one: python -m builder build --xcp" \
            "$TARGET --kernel $next_kernel, then publish; then run sh runbook.sh upgrade"
        return 1
    fi
}

step_kernel_check() {
    next=$(kernel_next)
    built=$(module_built_for)
    echo "$KERNEL_PACKAGE ${next:-not installed}; $MODULE_PACKAGE built against" \
        "${built:-unknown (not installed)}"
    module_problem=$(kernel_module_problem) || true
    if [ -n "$module_problem" ]; then
        echo "runbook: $module_problem" >&2
        exit "$UNSAFE"
    fi
    if booted_before_kernel_update; then
        echo "The running kernel is older than $KERNEL_PACKAGE $next: reboot into it (with" \
            "the VMs moved away; DRBD starts at boot)."
    fi
    echo "The next boot runs a DRBD module built for its kernel."
}

compatible() {
    # compatible OLD NEW: can a host run DRBD NEW next to a peer that runs OLD?
    case "$1" in
        8.3 | 8.3.*) case "$2" in 8.3 | 8.3.* | 8.4 | 8.4.*) return 0 ;; esac ;;
        8.4 | 8.4.*) case "$2" in 8.4 | 8.4.*) return 0 ;; esac ;;
        9 | 9.*) case "$2" in 9 | 9.*) return 0 ;; esac ;;
    esac
    return 1
}

step_upgrade() {
    # One host at a time: this host's VMs move to the peer, DRBD here stops, the new packages
    # come in, DRBD reconnects and resyncs; then the same on the peer.
    module_problem=$(kernel_module_problem) || die "not upgrading: $module_problem"
    cstate=$(drbd_query cstate)
    dstate=$(drbd_query dstate)
    if [ "$cstate" != Connected ] || [ "$dstate" != UpToDate/UpToDate ]; then
        die "not upgrading: $RESOURCE is $cstate with disks $dstate; $PEER must hold all data" \
            "(Connected, UpToDate/UpToDate) before DRBD stops here"
    fi
    running=$(modinfo -F version drbd 2>/dev/null) || running=""
    me=$(host_uuid_of "$HOST")
    peer=$(host_uuid_of "$PEER")
    peer_version=$(xe host-param-get uuid="$peer" param-name=other-config \
        param-key="$VERSION_KEY" 2>/dev/null) || peer_version=""
    if [ -z "$peer_version" ]; then
        # Connected, so the peer speaks with the DRBD this host runs now.
        peer_version=$running
        echo "$PEER has not recorded its DRBD version; it runs with this host's $running."
    fi
    [ -n "$peer_version" ] || die "cannot tell which DRBD $PEER runs (modinfo drbd failed here)"
    compatible "$peer_version" "$DRBD_VERSION" ||
        die "not upgrading: DRBD $DRBD_VERSION here cannot replicate with DRBD $peer_version on" \
            "$PEER (a change between 8.4 and 9 needs new metadata and a new resource file for" \
            "both hosts at once, and no version goes back to an older family)"
    find_sr || die "there is no LVM SR named $SR_NAME"
    find_sr_vms
    for vm in $(vms_on "$HOST"); do
        echo "Moving VM $vm to $PEER."
        xe vm-migrate uuid="$vm" host-uuid="$peer" live=true
    done
    find_sr_vms
    [ -z "$(vms_on "$HOST")" ] || die "VMs with disks on $SR_NAME still run on $HOST"
    pbd=$(pbd_on "$HOST")
    [ -z "$pbd" ] || xe pbd-unplug uuid="$pbd"
    drbdadm secondary "$RESOURCE"
    drbdadm down "$RESOURCE"
    modprobe -r drbd
    # shellcheck disable=SC2086 # PACKAGES is a list
    yum -y install $PACKAGES
    installed=$(modinfo -k "$KERNEL_RELEASE" -F version drbd) ||
        die "no DRBD module for kernel $KERNEL_RELEASE after yum; see yum's output above"
    case "$installed" in
        "$DRBD_VERSION" | "$DRBD_VERSION"[-_.]*) ;;
        *) die "the DRBD module for $KERNEL_RELEASE is $installed, not $DRBD_VERSION" ;;
    esac
    if [ "$(uname -r)" != "$KERNEL_RELEASE" ] || booted_before_kernel_update; then
        # A module built against the installed kernel may need symbols the running one lacks.
        echo "DRBD $DRBD_VERSION is installed for $KERNEL_PACKAGE $(kernel_next)"
        echo "($KERNEL_RELEASE); this host runs an older kernel. Reboot into it: DRBD starts"
        echo "at boot (the boot step). Then wait for sh runbook.sh status to say OK before"
        echo "running upgrade on $PEER."
        return
    fi
    modprobe drbd
    drbdadm up "$RESOURCE"
    wait_connected || die "not connected to $PEER after the upgrade; see: sh runbook.sh status"
    wait_uptodate || die "the resync after the upgrade did not finish"
    drbdadm primary "$RESOURCE"
    [ -z "$pbd" ] || xe pbd-plug uuid="$pbd"
    # The release really installed: the pool file may name a series (8.4).
    xe host-param-set uuid="$me" other-config:"$VERSION_KEY"="$installed"
    echo "$HOST runs DRBD $installed, connected and UpToDate; its VMs are on $PEER."
    echo "Now run sh runbook.sh upgrade on $PEER (it moves them here)."
}
