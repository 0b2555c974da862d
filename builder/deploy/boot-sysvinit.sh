# sysvinit (XCP 1.x, XenServer 6.x): rc runs /etc/rc.d/rc<level>.d/S<NN>name in glob order at
# boot and K<NN>name at shutdown. DRBD must start after the network (replication) and before
# xapi, which plugs the SR's PBD as it starts, and stop after xapi.
link_number() {
    # link_number LINK NAME: the two digits of S<NN>NAME or K<NN>NAME, without a leading zero
    number=${1##*/}
    number=${number#?}
    number=${number%"$2"}
    echo "${number#0}"
}

rc_number() {
    # rc_number DIR S|K NAME: the number of NAME's first S or K link in DIR; fails without one
    for link in "$1/$2"[0-9][0-9]"$3"; do
        if [ -L "$link" ] || [ -e "$link" ]; then
            link_number "$link" "$3"
            return 0
        fi
    done
    return 1
}

order_link() {
    # order_link MODE DIR S|K LOW HIGH WANT: DRBD's S or K link must lie between LOW and HIGH;
    # MODE fix moves (or makes) it at WANT and removes others, MODE check reports in BOOT_PROBLEMS
    kept=""
    for link in "$2/$3"[0-9][0-9]drbd; do
        [ -L "$link" ] || [ -e "$link" ] || continue
        number=$(link_number "$link" drbd)
        if [ -z "$kept" ] && [ "$number" -gt "$4" ] && [ "$number" -lt "$5" ]; then
            kept=$link
        elif [ "$1" = fix ]; then
            rm -f "$link"
        else
            BOOT_PROBLEMS="$BOOT_PROBLEMS ${link##*/}"
        fi
    done
    if [ -z "$kept" ]; then
        if [ "$1" = fix ]; then
            ln -s ../init.d/drbd "$2/$3$(printf '%02d' "$6")drbd"
        else
            BOOT_PROBLEMS="$BOOT_PROBLEMS $2:no-$3-link-between-$4-and-$5"
        fi
    fi
}

boot_order() {
    # boot_order fix|check
    BOOT_PROBLEMS=""
    for dir in /etc/rc.d/rc[0-6].d; do
        [ -d "$dir" ] || continue
        if xapi=$(rc_number "$dir" S xapi); then
            network=$(rc_number "$dir" S network) || network=0
            [ $((xapi - 1)) -gt "$network" ] ||
                die "$dir: no start position between network (S$network) and xapi (S$xapi)"
            order_link "$1" "$dir" S "$network" "$xapi" $((xapi - 1))
        fi
        if xapi=$(rc_number "$dir" K xapi) && rc_number "$dir" K drbd >/dev/null; then
            [ "$xapi" -lt 99 ] || die "$dir: xapi stops last (K$xapi); DRBD cannot stop after it"
            order_link "$1" "$dir" K "$xapi" 100 $((xapi + 1))
        fi
    done
    [ -z "$BOOT_PROBLEMS" ]
}

boot_enable() {
    [ -x /etc/rc.d/init.d/drbd ] || die "no /etc/rc.d/init.d/drbd: run the install step first"
    ls /etc/rc.d/rc[2345].d/S[0-9][0-9]xapi >/dev/null 2>&1 ||
        die "xapi does not start in runlevels 2-5 here; is this a dom0?"
    chkconfig --add drbd
    chkconfig drbd on
    boot_order fix
    boot_order check || die "DRBD's rc links are still out of order:$BOOT_PROBLEMS"
    echo "Boot order (runlevel 3):"
    for link in /etc/rc.d/rc3.d/S[0-9][0-9]*; do
        case "${link##*/}" in
            S[0-9][0-9]network | S[0-9][0-9]drbd | S[0-9][0-9]xapi) echo "    ${link##*/}" ;;
        esac
    done
}

boot_check() {
    # Why DRBD would not start before xapi at the next boot (empty when it would).
    if ! boot_order check; then
        echo "DRBD does not start between the network and xapi (rc links:$BOOT_PROBLEMS)"
    fi
}
