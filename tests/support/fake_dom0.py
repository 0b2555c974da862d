"""The programs of a simulated dom0 pair: ``xe``, ``drbdadm`` and the rest the runbook calls.

One script, installed under each program's name.  Every call is recorded in ``$FAKE_LOG`` as
``<host>: <program> <arguments>``.  Both hosts share one state file (``$FAKE_STATE``, JSON):
the pool as xapi knows it (hosts, the SR, its PBDs, the VMs and where they run) and each
host's DRBD resource (connection state, disk, role), which changes the way DRBD's own would
when the runbook connects, disconnects or discards.

``drbdadm`` also runs the real drbdadm of the resource's DRBD version (``$FAKE_DRBDADM``) in
dry-run mode against the rendered resource file, pretending to be this host: a command line
that the real parser refuses fails here too, with the real message.
"""

# A dispatcher of simulated programs: one branch per command is the clearest shape here.
# ruff: noqa: PLR0911, PLR0912

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HOST = os.environ.get("FAKE_HOST", "")
STATE = Path(os.environ.get("FAKE_STATE", "/nonexistent"))
RESYNC_LOOKS = 2  # how many looks at dstate a resync takes


# `drbdadm show-gi` as the lab's real pairs printed it on a split brain: the generation
# identifiers (`get-gi`: four UUIDs, then the flags: seven on DRBD 8.4, twelve on DRBD 9) under
# a diagram and above a legend; DRBD 8.4 then prints the device's state.  DRBD 8.3's form was
# not seen running: the fake prints its identifiers alone.
SHOW_GI_HEAD = (
    "",
    "       +--<  Current data generation UUID  >-",
    "       |               +--<  Bitmap's base data generation UUID  >-",
    "       |               |                 +--<  younger history UUID  >-",
    "       |               |                 |         +-<  older history  >-",
    "       V               V                 V         V",
)
SHOW_GI_84_LEGEND = (
    "                                                                    ^ ^ ^ ^ ^ ^ ^",
    "                                      -<  Data consistency flag  >--+ | | | | | |",
    "                             -<  Data was/is currently up-to-date  >--+ | | | | |",
    "                                  -<  Node was/is currently primary  >--+ | | | |",
    "                                  -<  Node was/is currently connected  >--+ | | |",
    "         -<  Node was in the progress of setting all bits in the bitmap  >--+ | |",
    "                        -<  The peer's disk was out-dated or inconsistent  >--+ |",
    "      -<  This node was a crashed primary, and has not seen its peer since   >--+",
)
SHOW_GI_9_LEGEND = (
    "                                                                    ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^ ^",
    "                                      -<  Data consistency flag  >--+ | | | | | | | | | | |",
    "                             -<  Data was/is currently up-to-date  >--+ | | | | | | | | | |",
    "                                  -<  Node was/is currently primary  >--+ | | | | | | | | |",
    " -<  This node was a crashed primary, and has not seen its peer since  >--+ | | | | | | | |",
    "             -<  The activity-log was applied, the disk can be attached  >--+ | | | | | | |",
    "        -<  The activity-log was disabled, peer is completely out of sync  >--+ | | | | | |",
    "                              -<  This node was primary when it lost quorum  >--+ | | | | |",
    "                                          -<  Node was/is currently connected  >--+ | | | |",
    "                              -<  The peer's disk was out-dated or inconsistent  >--+ | | |",
    "                                 -<   A fence policy other the dont-care was used  >--+ | |",
    "                  -<  Node was in the progress of marking all blocks as out of sync  >--+ |",
    "                     -<  At least once we saw this node with a backing device attached >--+",
)
PEER_OUTDATED_FLAG = 5  # on DRBD 8.4, the sixth flag after the UUIDs


def show_gi(state: dict[str, Any], me: dict[str, Any]) -> str:
    if state["syntax"] == "9":
        return "\n".join([*SHOW_GI_HEAD, str(me["gi"]), *SHOW_GI_9_LEGEND, ""])
    if state["syntax"] != "8.4":
        return str(me["gi"])
    flags = str(me["gi"]).split(":")[4:]
    peer = ", peer Outdated" if flags[PEER_OUTDATED_FLAG : PEER_OUTDATED_FLAG + 1] == ["1"] else ""
    return "\n".join(
        [
            *SHOW_GI_HEAD,
            str(me["gi"]),
            *SHOW_GI_84_LEGEND,
            "",
            f"flags: {me['role']}, {me['cstate']}, {me['disk']}{peer}",
            "meta-data: need apply-al",
        ]
    )


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(STATE.read_text())
    return data


def save(state: dict[str, Any]) -> None:
    temp = STATE.with_suffix(".partial")
    temp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(temp, STATE)


def record(program: str, args: list[str]) -> None:
    with open(os.environ["FAKE_LOG"], "a", encoding="utf-8") as log:
        log.write(" ".join([f"{HOST}:", program, *args]) + "\n")


def fail(message: str, code: int = 1) -> int:
    print(message, file=sys.stderr)
    return code


def options(args: list[str]) -> dict[str, str]:
    """xe's ``key=value`` arguments."""
    return dict(a.split("=", 1) for a in args if "=" in a)


def host_name(state: dict[str, Any], uuid: str) -> str:
    return next(str(n) for n, u in state["pool"]["hosts"].items() if u == uuid)


# ---- xe ------------------------------------------------------------------------------------


def xe(args: list[str]) -> int:
    state = load()
    pool = state["pool"]
    command, opts = args[0], options(args[1:])
    if command == "host-list":
        print(pool["hosts"].get(opts.get("name-label", ""), ""))
    elif command == "pool-list":
        print(pool["master"])
    elif command == "pool-designate-new-master":
        pool["master"] = opts["host-uuid"]
        # Moving the master bounces both hosts' management interfaces (the scenario says
        # what that does to replication).
        for name, effect in state.get("master_change_effect", {}).items():
            state["drbd"][name]["cstate"] = effect
        save(state)
    elif command == "host-param-get":
        uuid = opts["uuid"]
        if opts["param-name"] == "name-label":
            print(host_name(state, uuid))
        else:
            value = pool["other_config"].get(uuid, {}).get(opts.get("param-key", ""))
            if value is None:
                return fail(f"Error: Key {opts.get('param-key')} not found in map")
            print(value)
    elif command == "host-param-set":
        for key, value in opts.items():
            if key.startswith("other-config:"):
                pool["other_config"].setdefault(opts["uuid"], {})[key.split(":", 1)[1]] = value
        save(state)
    elif command == "sr-list":
        sr = pool["sr"]
        print(sr["uuid"] if sr and opts.get("name-label") == sr["name"] else "")
    elif command == "vdi-list":
        vdis = [v for vm in pool["vms"].values() for v in vm["vdis"]]
        print(",".join(vdis) if pool["sr"] and opts.get("sr-uuid") == pool["sr"]["uuid"] else "")
    elif command == "vbd-list":
        vms = [u for u, vm in pool["vms"].items() if opts["vdi-uuid"] in vm["vdis"]]
        print(",".join(vms))
    elif command == "vm-param-get":
        vm = pool["vms"][opts["uuid"]]
        field = {"power-state": "power", "resident-on": "resident", "name-label": "name"}
        print(vm[field[opts["param-name"]]])
    elif command == "vm-migrate":
        pool["vms"][opts["uuid"]]["resident"] = opts["host-uuid"]
        save(state)
    elif command == "vm-shutdown":
        pool["vms"][opts["uuid"]].update(power="halted", resident="<not in database>")
        save(state)
    elif command == "pbd-list":
        pbd = pool["pbds"].get(opts.get("host-uuid", ""))
        print(pbd["uuid"] if pbd else "")
    elif command in ("pbd-param-get", "pbd-plug", "pbd-unplug"):
        pbd = next(p for p in pool["pbds"].values() if p["uuid"] == opts["uuid"])
        if command == "pbd-param-get":
            print("true" if pbd["attached"] else "false")
        else:
            pbd["attached"] = command == "pbd-plug"
            save(state)
    else:
        return fail(f"fake xe: {command} is not simulated")
    return 0


# ---- DRBD ----------------------------------------------------------------------------------


def peer_of(state: dict[str, Any]) -> str:
    return next(str(h) for h in state["drbd"] if h != HOST)


def is_connected(cstate: str) -> bool:
    return cstate in ("Connected", "SyncSource", "SyncTarget")


def try_connect(state: dict[str, Any]) -> None:
    """Both sides connecting: they connect, resync, or detect the split brain again."""
    me, peer = state["drbd"][HOST], state["drbd"][peer_of(state)]
    if me["cstate"] != "WFConnection" or peer["cstate"] != "WFConnection":
        return
    if state.get("diverged"):
        victims = [d for d in (me, peer) if d.get("discard")]
        if not victims:
            for side in (me, peer):
                side["cstate"] = "StandAlone"
                side["kernel_log"].append(state["split_brain_line"])
            return
        victim = victims[0]
        survivor = peer if victim is me else me
        state["diverged"] = False
        victim.update(disk="Inconsistent", resync=RESYNC_LOOKS, discard=False, gi=survivor["gi"])
        syncing = state["syntax"] != "9"
        victim["cstate"] = "SyncTarget" if syncing else "Connected"
        survivor["cstate"] = "SyncSource" if syncing else "Connected"
        return
    me["cstate"] = peer["cstate"] = "Connected"


def look_at_resync(state: dict[str, Any]) -> None:
    for side in state["drbd"].values():
        if side.get("resync"):
            side["resync"] -= 1
            if side["resync"] == 0:
                side["disk"] = "UpToDate"
                for each in state["drbd"].values():
                    each["cstate"] = "Connected"
            save(state)
            return


def query(state: dict[str, Any], what: str) -> str:
    me, peer = state["drbd"][HOST], state["drbd"][peer_of(state)]
    if me["cstate"] == "Unconfigured":
        return "Unconfigured"
    connected = is_connected(me["cstate"])
    if what == "cstate":
        return str(me["cstate"])
    if what == "dstate":
        look_at_resync(state)
        return f"{me['disk']}/{peer['disk'] if connected else 'DUnknown'}"
    if state["syntax"] == "9":
        return str(me["role"])
    return f"{me['role']}/{peer['role'] if connected else 'Unknown'}"


def real_drbdadm(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [os.environ["FAKE_DRBDADM"], "-c", os.environ["FAKE_RES"], *args],
        env={**os.environ, "__DRBD_NODE__": HOST, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )


def drbdadm(args: list[str]) -> int:
    words = [a for a in args if a != "--"]
    command = next(w for w in words if not w.startswith("-"))
    if command == "dump":
        real = real_drbdadm(args)
        sys.stdout.write(real.stdout)
        return real.returncode if real.returncode else 0
    dry = real_drbdadm(["-d", *args])
    if dry.returncode != 0:
        sys.stderr.write(dry.stderr)
        return dry.returncode
    state = load()
    me = state["drbd"][HOST]
    peer = state["drbd"][peer_of(state)]
    if command in ("cstate", "dstate", "role"):
        print(query(state, command))
        return 0
    if command == "show-gi":
        print(show_gi(state, me))
        return 0
    if command == "status":  # DRBD 9's overview
        peer_name = peer_of(state)
        print(f"r0 role:{me['role']}\n  disk:{me['disk']} open:no")
        if me["cstate"] == "Connected":  # as the lab's real 9.2 pair printed it
            print(f"  {peer_name} role:{peer['role']}\n    peer-disk:{peer['disk']}\n")
        else:  # not seen running
            print(f"  {peer_name} connection:{me['cstate']}\n")
        return 0
    if command == "connect":
        if me["cstate"] != "StandAlone":
            return fail(f"{me['cstate']}: Failure: (125) Device has a net-config", 10)
        me["cstate"] = "WFConnection"
        me["discard"] = "--discard-my-data" in words
        try_connect(state)
    elif command == "disconnect":
        me["cstate"] = "StandAlone"
    elif command in ("adjust", "up"):
        if me["cstate"] in ("StandAlone", "Unconfigured"):
            if me["cstate"] == "Unconfigured":
                me["role"] = "Secondary"
            me["cstate"] = "WFConnection"
            try_connect(state)
    elif command == "down":
        me.update(cstate="Unconfigured", role="Unconfigured")
        if is_connected(peer["cstate"]):
            peer["cstate"] = "WFConnection"
    elif command == "secondary":
        me["role"] = "Secondary"
    elif command == "primary":
        if me["disk"] != "UpToDate":
            return fail("State change failed: (-2) Need access to UpToDate data", 11)
        me["role"] = "Primary"
    else:
        return fail(f"fake drbdadm: {command} is not simulated")
    save(state)
    return 0


# ---- the rest of dom0 ----------------------------------------------------------------------


def other(program: str, args: list[str]) -> int:
    state = load()
    me = state["drbd"].get(HOST, {})
    if program == "uname":
        print({"-n": HOST, "-r": state["running_kernel"]}.get(args[0] if args else "", "Linux"))
    elif program == "dmesg":
        print("\n".join(me.get("kernel_log", [])))
    elif program == "date" and args == ["+%s"]:
        print(state["now"])
    elif program == "date":
        return subprocess.run(["/bin/date", *args], check=False).returncode
    elif program == "ip":
        if args[:2] == ["route", "get"]:
            print(state["routes"][HOST])
        else:  # ip -o -4 addr show dev IFACE
            for address in state["addresses"][HOST].get(args[-1], []):
                print(f"6: {args[-1]}    inet {address} scope global {args[-1]}")
    elif program == "modinfo":
        version = me["installed"] if "-k" in args else me["loaded"] or me["installed"]
        print(version)
    elif program == "yum":
        me["installed"] = state["repo_version"]
        save(state)
    elif program == "modprobe":
        me["loaded"] = "" if "-r" in args else me["installed"]
        save(state)
    elif program == "chkconfig":
        return chkconfig(args)
    elif program == "systemctl":
        return systemctl(state, args)
    return 0


def chkconfig(args: list[str]) -> int:
    """Red Hat's chkconfig, as far as the boot step uses it: --add NAME and NAME on."""
    rc = Path("/etc/rc.d")
    adding = args[0] == "--add"
    name = args[1] if adding else args[0]
    levels, start, stop = next(
        line.split()[2:]
        for line in (rc / "init.d" / name).read_text().splitlines()
        if line.startswith("# chkconfig:")
    )
    for level in "0123456":
        directory = rc / f"rc{level}.d"
        links = list(directory.glob(f"[SK][0-9][0-9]{name}"))
        if adding:
            if not links:
                kind, number = ("S", start) if level in levels else ("K", stop)
                (directory / f"{kind}{number}{name}").symlink_to(f"../init.d/{name}")
        elif level in "2345":  # NAME on
            for link in links:
                if link.name.startswith("K"):
                    link.unlink()
            if not any(link.name.startswith("S") for link in links):
                (directory / f"S{start}{name}").symlink_to(f"../init.d/{name}")
    return 0


def systemctl(state: dict[str, Any], args: list[str]) -> int:
    units = state["units"][HOST]
    if args[0] == "cat":
        return 0 if args[1] in units else fail(f"No files found for {args[1]}.")
    if args[0] == "is-enabled":
        print(units.get(args[1], "not-found"))
        return 0 if units.get(args[1]) == "enabled" else 1
    if args[0] == "enable":
        units[args[1]] = "enabled"
        save(state)
    return 0


def main() -> int:
    program = Path(sys.argv[0]).name
    args = sys.argv[1:]
    if program not in ("uname", "date", "sleep"):
        record(program, args)
    if program == "xe":
        return xe(args)
    if program == "drbdadm":
        return drbdadm(args)
    if program in ("sleep", "logger", "page-oncall"):
        if program == "page-oncall":
            record("page-oncall-env", [os.environ.get("XDB_MINUTES_APART", "")])
        return 0
    return other(program, args)


if __name__ == "__main__":
    sys.exit(main())
