from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.cli import main
from builder.deploy.checks import CHECK_IDS, Finding, Severity, kernel_module_package, run_checks
from builder.deploy.pool import Pool, parse_pool
from builder.deploy.repo import Package, RepoUnreachable
from builder.registry import load_registry
from tests.deploy_support import pool_data, write_pool

KM = "drbd-km-2.6.32.12_0.7.1.xs1.4.90.530.170661xen"
GOOD_REPO = [
    Package(name="drbd", version="8.4.1", release="1", arch="i386"),
    Package(name=KM, version="8.4.1", release="1", arch="i686"),
]


KMOD9 = [
    Package(name="drbd-utils", version="9.22.0", release="1", arch="x86_64"),
    Package(name="kmod-drbd", version="9.2.5_4.19.0+1", release="1", arch="x86_64"),
]


def parse(data: dict[str, Any]) -> Pool:
    return parse_pool(Path("/srv/pool.yaml"), yaml.safe_dump(data), load_registry())


def repo(packages: Sequence[Package]) -> Any:
    def reader(base: str) -> Sequence[Package]:
        return packages

    return reader


def findings(data: dict[str, Any], packages: Sequence[Package] = GOOD_REPO) -> list[Finding]:
    return run_checks(parse(data), reader=repo(packages))


def ids(found: list[Finding], severity: Severity) -> set[str]:
    return {f.id for f in found if f.severity is severity}


def test_safe_pool_has_no_findings() -> None:
    assert findings(pool_data()) == []


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        (
            {"hosts.0.replication.address": "192.168.1.21/24"},
            "replication-on-management-network",
        ),
        # The peer's management network counts too: its pool-master moves bounce it as well.
        (
            {
                "hosts.1.management.address": "10.0.0.12/24",
                "hosts.1.replication.address": "10.0.1.2/24",
            },
            "replication-on-management-network",
        ),
        # A replication prefix so wide that it covers the management network.
        (
            {
                "hosts.0.replication.address": "192.168.200.1/16",
                "hosts.1.replication.address": "192.168.200.2/16",
            },
            "replication-on-management-network",
        ),
        ({"hosts.1.replication.interface": "xenbr0"}, "replication-on-management-interface"),
        # xenbr0 is the bridge on eth0: same NIC under another name.
        ({"hosts.1.replication.interface": "eth0"}, "replication-on-management-interface"),
        ({"hosts.1.replication.address": "10.0.0.1/24"}, "duplicate-address"),
        ({"hosts.1.management.address": "192.168.1.11/24"}, "duplicate-address"),
        (
            {"hosts.1.disk": "/dev/disk/by-id/ata-DISK-ONE"},
            "same-disk",
        ),
        ({"drbd.fencing": "dont-care"}, "fencing-missing"),
        ({"drbd.fence_peer_handler": ""}, "fence-handler-missing"),
        ({"drbd.split_brain_handler": ""}, "split-brain-handler-missing"),
        ({"drbd.after_sb_2pri": "violently-as0p"}, "split-brain-policy"),
        ({"drbd.after_sb_0pri": "discard-least-changes"}, "split-brain-policy"),
        ({"drbd.after_sb_1pri": "violently-as0p"}, "split-brain-policy"),
    ],
)
def test_each_danger_is_an_error_with_reason_and_fix(changes: dict[str, Any], error: str) -> None:
    found = findings(pool_data(**changes))
    assert error in ids(found, Severity.ERROR)
    finding = next(f for f in found if f.id == error)
    assert finding.reason
    assert finding.fix
    text = finding.format()
    assert text.startswith(f"error [{error}]")
    assert "why:" in text
    assert "fix:" in text


@pytest.mark.parametrize(
    ("changes", "warning"),
    [
        ({"hosts.0.disk": "/dev/sdb", "hosts.1.disk": "/dev/sdb"}, "unstable-disk-name"),
        ({"hosts.1.replication.address": "10.0.5.2/24"}, "replication-networks-differ"),
        ({"drbd.after_sb_0pri": "disconnect"}, "split-brain-policy"),
        # Alarms during every migration: the grace period must outlast a migration and cron.
        ({"guard.grace_minutes": 5}, "guard-grace-too-short"),
        ({"guard.grace_minutes": 10, "guard.migration_minutes": 12}, "guard-grace-too-short"),
        # Longer than a migration can take: VMs left apart go unnoticed.
        ({"guard.grace_minutes": 16}, "guard-grace-too-long"),
        ({"guard.grace_minutes": 240, "guard.migration_minutes": 30}, "guard-grace-too-long"),
    ],
)
def test_risky_but_workable_settings_are_warnings(changes: dict[str, Any], warning: str) -> None:
    found = findings(pool_data(**changes))
    assert ids(found, Severity.WARNING) == {warning}
    assert ids(found, Severity.ERROR) == set()


@pytest.mark.parametrize("version", ["8.4.1", "9.2.5"])
def test_default_fence_handler_warns_that_it_needs_a_cluster_manager(version: str) -> None:
    data = pool_data(**{"drbd.fence_peer_handler": ..., "drbd.version": version})
    pool = parse(data)
    assert pool.drbd.fence_peer_handler is not None
    assert "crm-fence-peer" in pool.drbd.fence_peer_handler
    found = run_checks(pool, reader=repo([*GOOD_REPO, *KMOD9]))
    assert [(f.id, f.severity) for f in found] == [
        ("fence-handler-needs-cluster-manager", Severity.WARNING)
    ]


def test_same_kernel_disk_name_on_both_hosts_is_not_a_shared_disk() -> None:
    found = findings(pool_data(**{"hosts.0.disk": "/dev/sdb", "hosts.1.disk": "/dev/sdb"}))
    assert "same-disk" not in {f.id for f in found}


def test_missing_module_for_the_pool_version_is_an_error() -> None:
    older = [
        p if p.name != KM else Package(name=KM, version="8.3.16", release="1", arch="i686")
        for p in GOOD_REPO
    ]
    found = findings(pool_data(), older)
    assert ids(found, Severity.ERROR) == {"drbd-packages-missing"}
    message = next(f.message for f in found)
    assert KM in message
    assert "8.3.16" in message  # what the repository has instead


def test_module_for_another_kernel_does_not_count() -> None:
    other = [
        Package(name="drbd", version="8.4.1", release="1", arch="i386"),
        Package(
            name="drbd-km-2.6.32.43_0.4.1.xs1.6.10.734.170748xen",
            version="8.4.1",
            release="1",
            arch="i686",
        ),
    ]
    assert ids(findings(pool_data(), other), Severity.ERROR) == {"drbd-packages-missing"}


def test_missing_userland_is_an_error() -> None:
    only_module = [p for p in GOOD_REPO if p.name == KM]
    found = findings(pool_data(), only_module)
    assert any("userland" in f.message for f in found if f.severity is Severity.ERROR)


def test_short_version_matches_any_release_of_that_series() -> None:
    assert findings(pool_data(**{"drbd.version": "8.4"})) == []


def test_drbd9_needs_kmod_drbd() -> None:
    pool = parse(pool_data(**{"drbd.version": "9.2.5"}))
    assert kernel_module_package(pool) == "kmod-drbd"
    assert run_checks(pool, reader=repo(KMOD9)) == []


def test_unreachable_repo_is_a_warning_not_an_error() -> None:
    def unreachable(base: str) -> Sequence[Package]:
        raise RepoUnreachable("connection refused")

    found = run_checks(parse(pool_data()), reader=unreachable)
    assert [(f.id, f.severity) for f in found] == [("repo-unreachable", Severity.WARNING)]
    assert "connection refused" in found[0].message
    assert "file:///nonexistent/xcp-drbd/el5/i386/" in found[0].message


def test_every_finding_id_is_overridable() -> None:
    produced = set()
    for changes in (
        {"hosts.0.replication.address": "192.168.1.21/24", "hosts.0.replication.interface": "eth0"},
        {"drbd.fencing": "dont-care", "drbd.split_brain_handler": ""},
        {"hosts.1.disk": "/dev/disk/by-id/ata-DISK-ONE", "drbd.after_sb_2pri": "violently-as0p"},
        {"guard.grace_minutes": 1},
        {"guard.grace_minutes": 100},
    ):
        produced |= {f.id for f in findings(pool_data(**changes), [])}
    assert produced <= set(CHECK_IDS)


def test_check_command_exit_status_and_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    safe = write_pool(tmp_path, pool_data(), "safe.yaml")
    assert main(["deploy", "check", "--pool", str(safe), "--no-repo-check", "-q"]) == 0
    out = capsys.readouterr().out
    assert "no errors" in out
    assert "repo-unreachable" in out  # the skipped check is said, not hidden

    unsafe = write_pool(
        tmp_path, pool_data(**{"hosts.0.replication.address": "192.168.1.21/24"}), "unsafe.yaml"
    )
    assert main(["deploy", "check", "--pool", str(unsafe), "--no-repo-check", "-q"]) == 13
    captured = capsys.readouterr()
    assert "error [replication-on-management-network]" in captured.out
    assert "1 safety check(s) failed" in captured.err


@pytest.mark.parametrize(
    "changes",
    [
        {"hosts.1.replication.address": "10.0.0.1/24"},  # same address twice
        {"hosts.0.replication.address": "192.168.1.21/24"},  # on the management subnet
        {"drbd.fencing": "dont-care"},
    ],
)
def test_render_refuses_unsafe_pool_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict[str, Any]
) -> None:
    pool = write_pool(tmp_path, pool_data(**changes))
    output = tmp_path / "out"
    code = main(["deploy", "render", "--pool", str(pool), "--output", str(output), "-q"])
    assert code == 13
    assert not output.exists()
    assert "--override" in capsys.readouterr().err


def test_override_renders_and_records_it(tmp_path: Path) -> None:
    pool = write_pool(tmp_path, pool_data(**{"drbd.fencing": "dont-care"}))
    output = tmp_path / "out"
    argv = ["deploy", "render", "--pool", str(pool), "--output", str(output), "-q"]
    assert main([*argv, "--override", "fencing-missing"]) == 0
    resource = (output / "xcp1" / "r0.res").read_text()
    assert "Rendered despite failed safety checks: fencing-missing." in resource
    assert "fencing" not in resource.split("resource r0", 1)[1]


@pytest.mark.parametrize(("grace", "migration"), [(6, 5), (15, 5), (65, 30), (2, 1)])
def test_a_grace_period_between_a_migration_and_twice_that_is_fine(
    grace: int, migration: int
) -> None:
    changes = {"guard.grace_minutes": grace, "guard.migration_minutes": migration}
    assert findings(pool_data(**changes)) == []


def test_guard_findings_name_the_numbers_and_the_fix() -> None:
    (short,) = findings(pool_data(**{"guard.grace_minutes": 3}))
    assert "guard.grace_minutes is 3" in short.message
    assert "at least 6" in short.fix
    (long,) = findings(pool_data(**{"guard.grace_minutes": 60}))
    assert "at most 15" in long.fix
