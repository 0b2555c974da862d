# systemd (XCP-ng 8.x): drbd.service (drbd-utils) brings the resources up; the drop-in orders it
# after the network and before xapi, which plugs the SR's PBD as it starts. systemd stops units
# in the reverse order, so DRBD also stops after xapi.
dropin_text() {
    cat <<'EOF'
# Written by the runbook's boot step (xcp-drbd-builder): DRBD up before xapi plugs the SR.
[Unit]
Wants=network-online.target
After=network-online.target xcp-networkd.service
Before=xapi.service
EOF
}

boot_enable() {
    systemctl cat drbd.service >/dev/null 2>&1 ||
        die "systemd knows no drbd.service: run the install step first"
    mkdir -p "$(dirname "$SYSTEMD_DROPIN")"
    dropin_text >"$SYSTEMD_DROPIN.partial"
    mv -f "$SYSTEMD_DROPIN.partial" "$SYSTEMD_DROPIN"
    systemctl daemon-reload
    systemctl enable drbd.service
    echo "drbd.service is enabled and ordered before xapi.service ($SYSTEMD_DROPIN)."
}

boot_check() {
    # Why DRBD would not start before xapi at the next boot (empty when it would).
    enabled=$(systemctl is-enabled drbd.service 2>/dev/null) || true
    [ "$enabled" = enabled ] || echo "drbd.service is not enabled (${enabled:-unknown})"
    dropin_text | cmp -s - "$SYSTEMD_DROPIN" ||
        echo "drbd.service is not ordered before xapi.service ($SYSTEMD_DROPIN)"
}
