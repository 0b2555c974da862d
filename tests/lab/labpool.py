"""The lab's two hosts and their pool file: what the scenarios render and deploy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.deploy_support import pool_data, render_pool
from tests.lab import guestfiles, vm

HOSTS = (
    vm.GuestSpec("xcp1", 1, ("xenbr0:198.51.100.1/24", "xenbr1:192.0.2.1/24")),
    vm.GuestSpec("xcp2", 2, ("xenbr0:198.51.100.2/24", "xenbr1:192.0.2.2/24")),
)
# Each guest's data disk by its id (QEMU's serial=), as a dom0 operator names it.
DATA_DISKS = ("/dev/disk/by-id/virtio-xdb-data-1", "/dev/disk/by-id/virtio-xdb-data-2")


def lab_pool(**changes: Any) -> dict[str, Any]:
    """The pool file of the two lab guests: management on xenbr0 (198.51.100.0/24, TEST-NET-2),
    replication on its own link xenbr1 (192.0.2.0/24, TEST-NET-1), the data disk by its id."""
    return pool_data(
        **{
            "hosts.0.management.address": "198.51.100.1/24",
            "hosts.1.management.address": "198.51.100.2/24",
            "hosts.0.replication.address": "192.0.2.1/24",
            "hosts.1.replication.address": "192.0.2.2/24",
            "hosts.0.disk": DATA_DISKS[0],
            "hosts.1.disk": DATA_DISKS[1],
            "drbd.fence_peer_handler": guestfiles.FENCE_HANDLER,
            **changes,
        }
    )


def render(directory: Path, data: dict[str, Any], *overrides: str) -> Path:
    return render_pool(directory, data, *[a for f in overrides for a in ("--override", f)])
