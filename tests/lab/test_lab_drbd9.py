"""A real DRBD 9 pair: LINBIT's release built by the tool, installed by the runbook, replicating.

It runs when ``XDB_LAB_DRBD9_SOURCE`` and ``XDB_LAB_UTILS_SOURCE`` name LINBIT release
tarballs (CI has none within reach; the DRBD 9-shaped test source loads but cannot replicate).
Both guests boot the root with what the dom0 brings, install the packages from the published
repository with the runbook's ``install`` step, and run its steps in the documented order up
to both Primary.  Then, on that one pair: a pattern written through one host's device reads
back on the other, both ways; the management interfaces bounce while one host writes, and
replication on its own link does not notice; a split brain is made, detected, reported and
healed as chosen.  DRBD 9's state is read from ``drbdsetup events2 --now`` (9 has no state
lines in /proc/drbd).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab import drbdlab, guest, vm
from tests.lab.labpool import HOSTS
from tests.lab.published import REAL_SOURCE, REAL_UTILS, VERSION

pytestmark = [
    pytest.mark.lab,
    pytest.mark.docker,
    pytest.mark.skipif(
        not (REAL_SOURCE and REAL_UTILS),
        reason="a replicating DRBD 9 pair needs LINBIT's release tarballs: set "
        "XDB_LAB_DRBD9_SOURCE and XDB_LAB_UTILS_SOURCE",
    ),
]

REPLICATED = 40
REVERSE = 44
SPLIT = 48
WRITER = 52


@pytest.fixture(scope="module")
def pair9(
    installed_image: guest.GuestImage,
    published: tuple[Path, str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    lab_output: Path,
) -> Iterator[vm.Pair]:
    _rendered, url, _build = published
    port = urllib.parse.urlsplit(url).port
    directory = tmp_path_factory.mktemp("drbd9")
    with vm.running_pair(installed_image, directory, HOSTS, port) as running:
        try:
            yield running
        finally:
            problems = drbdlab.keep_output(running, lab_output / "test_lab_drbd9")
            assert not problems, "the kernel reported a bug:\n" + "\n".join(problems)


@pytest.fixture(scope="module")
def deployed9(
    pair9: vm.Pair, published: tuple[Path, str, Path], figures: dict[str, Any]
) -> vm.Pair:
    """The runbook's steps on both guests, in the documented order, up to both Primary."""
    rendered = published[0]
    first, _second = pair9
    clock = drbdlab.Stopwatch()
    for host in pair9:
        drbdlab.deploy_files(host, rendered)
        drbdlab.runbook(host, "install", timeout=1200).check(f"{host.name}: runbook install")
    figures["install_seconds"] = round(clock.seconds(), 1)
    for step in ("lvm", "metadata", "up"):
        for host in pair9:
            drbdlab.runbook(host, step).check(f"{host.name}: runbook {step}")
    for host in pair9:
        drbdlab.wait_events(
            host, "connection:Connected", timeout=90, what=f"{host.name}: the first connection"
        )
    sync = drbdlab.Stopwatch()
    drbdlab.runbook(first, "initial-sync").check("runbook initial-sync")
    for host in pair9:
        drbdlab.wait_events(
            host, " disk:UpToDate", "peer-disk:UpToDate", timeout=300, what="the initial sync"
        )
    figures["initial_sync_seconds"] = round(sync.seconds(), 2)
    for host in pair9:
        drbdlab.runbook(host, "promote").check(f"{host.name}: runbook promote")
    for host in pair9:
        drbdlab.wait_events(host, *drbdlab.HEALTHY_9, timeout=120, what="both Primary")
    figures["deploy_seconds_to_both_primary"] = round(clock.seconds(), 1)
    # No boot step: the lab target's dom0 runs systemd, the guests the lab's rc stand-in.
    return pair9


def status_problems(host: vm.Guest) -> tuple[str, list[str]]:
    """The runbook's status report and the problems it lists, less the one this guest always
    has: no systemd, so no drbd.service to order before xapi (the boot step's business)."""
    status = drbdlab.runbook(host, "status")
    problems = [line for line in status.stderr.splitlines() if line.startswith("  - ")]
    assert (status.returncode == 3) == bool(problems), status
    return status.stdout, [p for p in problems if "drbd.service" not in p]


def test_the_runbook_brings_a_drbd9_pair_to_primary(deployed9: vm.Pair, lab_output: Path) -> None:
    for host in deployed9:
        log = drbdlab.kernel_log(host)
        assert f"drbd: initialized. Version: {VERSION} " in log, log[-3000:]
        assert host.ok("modinfo -n drbd").strip().endswith("/extra/drbd/drbd.ko")
        report, problems = status_problems(host)
        # What the runbook and the day-two tests' fake read, as DRBD 9 prints it.
        queries = host.ok("for q in status cstate dstate role; do drbdadm $q r0; done")
        (lab_output / f"drbd9-status-{host.name}.txt").write_text(report + "\n" + queries)
        assert "connection Connected, disks UpToDate/UpToDate" in report, report
        assert problems == [], problems


def test_dual_primary_replicates_both_ways(deployed9: vm.Pair) -> None:
    first, second = deployed9
    written = drbdlab.write_pattern(first, offset_mib=REPLICATED, size_mib=4)
    assert drbdlab.read_sum(second, offset_mib=REPLICATED, size_mib=4) == written
    back = drbdlab.write_pattern(second, offset_mib=REVERSE, size_mib=4)
    assert drbdlab.read_sum(first, offset_mib=REVERSE, size_mib=4) == back
    assert drbdlab.device_sum(first) == drbdlab.device_sum(second)


def test_a_management_bounce_leaves_replication_on_its_own_link_connected(
    deployed9: vm.Pair, figures: dict[str, Any], lab_output: Path
) -> None:
    drbdlab.bounce_around_master_change(
        deployed9, figures, lab_output, "drbd9-bounce-own-link", offset_mib=WRITER
    )


def test_split_brain_is_detected_reported_and_healed_as_chosen(
    deployed9: vm.Pair, lab_output: Path
) -> None:
    first, second = deployed9
    before = drbdlab.device_sum(first)
    for host in deployed9:
        host.set_link("repl", up=False)
    for host in deployed9:
        drbdlab.wait_events(host, "connection:(Connecting|StandAlone)", timeout=90, what="the cut")
    kept = drbdlab.write_pattern(first, offset_mib=SPLIT, size_mib=1)
    lost = drbdlab.write_pattern(second, offset_mib=SPLIT, size_mib=1)
    assert kept != lost
    for host in deployed9:
        host.set_link("repl", up=True)
    for host in deployed9:
        drbdlab.wait_events(host, "connection:StandAlone", timeout=120, what="the split brain")
    lines = {host.name: drbdlab.split_brain_lines(drbdlab.kernel_log(host)) for host in deployed9}
    (lab_output / "drbd9-split-brain-kernel.log").write_text(
        "".join(f"{name}: {line}\n" for name, found in lines.items() for line in found)
    )
    assert all(lines.values()), lines

    _report, problems = status_problems(first)
    assert any("split brain" in problem for problem in problems), problems
    for host in deployed9:
        shown = drbdlab.runbook(host, "split-brain")
        (lab_output / f"drbd9-split-brain-{host.name}.txt").write_text(shown.stdout)
        assert shown.returncode == 3, shown
        assert "DRBD generation identifiers" in shown.stdout, shown

    drbdlab.runbook(first, "split-brain", "--keep", "xcp1").check("split-brain on the survivor")
    healed = drbdlab.runbook(second, "split-brain", "--keep", "xcp1", timeout=600)
    healed.check("split-brain on the victim")
    for host in deployed9:
        drbdlab.wait_events(host, *drbdlab.HEALTHY_9, timeout=300, what="healed, both Primary")
    for host in deployed9:
        assert drbdlab.read_sum(host, offset_mib=SPLIT, size_mib=1) == kept
    assert drbdlab.device_sum(first) == drbdlab.device_sum(second)
    assert drbdlab.read_sum(first, offset_mib=0, size_mib=SPLIT) == drbdlab.read_sum(
        second, offset_mib=0, size_mib=SPLIT
    )
    assert before != drbdlab.device_sum(first)
    assert status_problems(first)[1] == []
