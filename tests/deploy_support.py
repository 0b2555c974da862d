"""Pool files for the deploy tests: a safe baseline and a way to change one key of it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from builder.cli import main

BASE_POOL: dict[str, Any] = {
    "target": "xcp-1.5",
    "sr_name": "drbd-sr",
    "repo": {"url": "file:///nonexistent/xcp-drbd"},
    "drbd": {
        "version": "8.4.1",
        "resource": "r0",
        "minor": 1,
        "port": 7789,
        "resync_rate": "40M",
        "initial_sync_from": "xcp1",
        # drbd-utils' crm-fence-peer needs Pacemaker; a site's own handler is the safe baseline.
        "fence_peer_handler": "/usr/local/sbin/fence-drbd-peer --ipmi",
    },
    "guard": {"grace_minutes": 10, "migration_minutes": 5},
    "hosts": [
        {
            "name": "xcp1",
            "management": {"address": "192.168.1.11/24", "interface": "xenbr0"},
            "replication": {"address": "10.0.0.1/24", "interface": "xenbr1"},
            "disk": "/dev/disk/by-id/ata-DISK-ONE",
        },
        {
            "name": "xcp2",
            "management": {"address": "192.168.1.12/24", "interface": "xenbr0"},
            "replication": {"address": "10.0.0.2/24", "interface": "xenbr1"},
            "disk": "/dev/disk/by-id/ata-DISK-TWO",
        },
    ],
}


def pool_data(**changes: Any) -> dict[str, Any]:
    """The baseline with changes given as dotted paths: ``pool_data(**{"drbd.port": 0})``.

    A value of ``...`` removes the key.
    """
    data = copy.deepcopy(BASE_POOL)
    for dotted, value in changes.items():
        node: Any = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        elif value is ...:
            del node[last]
        else:
            node[last] = value
    return data


def write_pool(directory: Path, data: dict[str, Any], name: str = "pool.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def render_pool(directory: Path, data: dict[str, Any] | None = None, *extra: str) -> Path:
    """``deploy render`` (quiet, no repository check, then ``extra``) of ``data`` (default: the
    baseline) written to ``directory/pool.yaml``; checks it succeeds; the output directory."""
    pool = write_pool(directory, pool_data() if data is None else data)
    output = directory / "out"
    argv = ["deploy", "render", "--pool", str(pool), "--output", str(output), "--no-repo-check"]
    assert main([*argv, "-q", *extra]) == 0
    return output
