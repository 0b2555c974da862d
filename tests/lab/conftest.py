"""The lab's fixtures: the guest image, the rendered pool, the running pair, the deployment.

The pair and its deployment live for a whole test module: the scenarios of a module run in
order on one DRBD pair, and each leaves it Connected, Primary/Primary and UpToDate, which the
next one checks before it starts.  Console logs, every command run and its output, the kernel
logs and the figures are written to ``$XDB_LAB_OUTPUT`` (default ``lab-output/`` in the
working directory) when the module ends, passed or failed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The build fixtures of the integration tests (the stand-in target, its kernel-devel, Debian's
# drbd-utils tarball): the module scenario builds what it installs.
from tests.integration.conftest import (  # noqa: F401
    binpkg_iso,
    debian_drbd_utils,
    docker_client,
    kernel_release,
    kernel_rpm,
    kernel_tree,
    spatch_base,
    standin_inputs,
    standin_root,
    standin_target,
)
from tests.lab import drbdlab, guest, vm
from tests.lab.labpool import HOSTS, lab_pool, render

# The module packages, published for the session, and the root the guests install them into.
from tests.lab.published import installed_image, published  # noqa: F401
from tests.support.needs import unavailable

pytestmark = pytest.mark.lab


@pytest.fixture(scope="session")
def lab_image() -> guest.GuestImage:
    try:
        return guest.guest_image()
    except guest.Unavailable as exc:
        unavailable(str(exc))
        raise AssertionError("unreachable") from exc


@pytest.fixture(scope="session")
def lab_output() -> Path:
    output = Path(os.environ.get("XDB_LAB_OUTPUT", "lab-output")).resolve()
    output.mkdir(parents=True, exist_ok=True)
    return output


@pytest.fixture(scope="module")
def figures(request: pytest.FixtureRequest, lab_output: Path) -> Iterator[dict[str, Any]]:
    found: dict[str, Any] = {}
    yield found
    name = Path(str(request.node.name)).stem
    (lab_output / f"{name}.figures.json").write_text(json.dumps(found, indent=1) + "\n")


@pytest.fixture(scope="module")
def pair(
    request: pytest.FixtureRequest,
    lab_image: guest.GuestImage,
    tmp_path_factory: pytest.TempPathFactory,
    lab_output: Path,
    figures: dict[str, Any],
) -> Iterator[vm.Pair]:
    directory = tmp_path_factory.mktemp("lab")
    module = Path(str(request.node.name)).stem
    with vm.running_pair(lab_image, directory, HOSTS) as running:
        figures["boot_seconds"] = round(running.boot_seconds, 1)
        try:
            yield running
        finally:
            problems = drbdlab.keep_output(running, lab_output / module)
            assert not problems, "the kernel reported a bug:\n" + "\n".join(problems)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render(tmp_path_factory.mktemp("pool"), lab_pool())


@pytest.fixture(scope="module")
def deployed(pair: vm.Pair, rendered: Path, figures: dict[str, Any]) -> vm.Pair:
    """The runbook's steps on both guests, in the documented order, up to both Primary."""
    first, second = pair
    clock = drbdlab.Stopwatch()
    for host in pair:
        drbdlab.deploy_files(host, rendered)
        # The install step's packages and key are a yum repository's business (the module
        # scenario installs from one); here drbd-utils is in the image and the in-tree 8.4
        # module is the kernel's. What the step does after yum, it does here.
        host.ok(
            f"mkdir -p /etc/drbd.d && cp {drbdlab.DEPLOY_DIR}/r0.res /etc/drbd.d/r0.res && "
            "drbdadm dump r0 >/dev/null && modprobe drbd"
        )
    figures["dd_over_replication_link"] = link_throughput(first, second)
    for step in ("lvm", "metadata", "up"):
        for host in pair:
            drbdlab.runbook(host, step).check(f"{host.name}: runbook {step}")
    for host in pair:
        drbdlab.wait_state(host, "cs:Connected", timeout=60, what="the first connection")
    sync = drbdlab.Stopwatch()
    drbdlab.runbook(first, "initial-sync").check("runbook initial-sync")
    for host in pair:
        drbdlab.wait_state(host, "ds:UpToDate/UpToDate", timeout=300, what="the initial sync")
    sync_seconds = sync.seconds()
    size = int(first.ok("blockdev --getsize64 /dev/drbd1"))
    figures["initial_sync"] = {
        "bytes": size,
        "seconds": round(sync_seconds, 2),
        "mib_per_second": round(size / drbdlab.MIB / sync_seconds, 1),
    }
    for host in pair:
        drbdlab.runbook(host, "promote").check(f"{host.name}: runbook promote")
    drbdlab.wait_healthy(pair)
    figures["deploy_seconds_to_both_primary"] = round(clock.seconds(), 1)
    figures["boot_to_both_primary_seconds"] = round(pair.boot_seconds + clock.seconds(), 1)
    # Day two starts with DRBD at boot (status reports a host without it as unsafe).
    for host in pair:
        drbdlab.runbook(host, "boot").check(f"{host.name}: runbook boot")
    return pair


def link_throughput(sender: vm.Guest, receiver: vm.Guest) -> dict[str, float]:
    """dd of the data disk's size from sender to receiver over the replication link (bash's
    /dev/tcp, busybox nc), before DRBD uses the link: what the initial sync is measured
    against."""
    size_mib = 64
    receiver.ok("setsid sh -c 'nc -l -p 7790 > /dev/null' >/dev/null 2>&1 </dev/null &")
    receiver.wait_for("netstat -ltn | grep -q ':7790 '", timeout=20, what="nc to listen")
    seconds = float(
        sender.ok(
            "start=$(date +%s.%N); "
            f"dd if=/dev/zero bs=1M count={size_mib} 2>/dev/null > /dev/tcp/192.0.2.2/7790; "
            'end=$(date +%s.%N); echo "$end - $start" | bc 2>/dev/null || '
            "awk -v s=$start -v e=$end 'BEGIN { print e - s }'"
        ).strip()
    )
    return {
        "mib": size_mib,
        "seconds": round(seconds, 2),
        "mib_per_second": round(size_mib / seconds, 1),
    }
