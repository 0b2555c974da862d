"""Full disks: the cache while a kernel tree is extracted, the repository while a version is
published (and, in test_builds.py, the artifacts while a build finishes).

Each must end with a message that says the disk is full and where, under a documented exit
code that does not blame the input or the signing key; nothing half-written may stay, and
what was there before (the cache's finished trees, the lock file, the published ``current``)
must be intact. Once there is room again, the same command succeeds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.faults import rpmcraft
from tests.faults.conftest import KEPT_LOCK, RELEASE, RPM_NAME, make_lab
from tests.faults.disks import assert_says_disk_is_full, fill, small_disk
from tests.faults.harness import MIB, builder
from tests.faults.publishing import (
    Signer,
    add_build,
    assert_dnf_gets,
    make_packages,
    partial_leftovers,
    publish_args,
    verify_served,
)

pytestmark = pytest.mark.integration


def test_extracting_a_kernel_tree_into_a_full_cache(tmp_path: Path) -> None:
    entries = list(rpmcraft.kernel_tree(RELEASE))
    for n in range(4):  # 8 MiB that does not compress, on a 4 MiB disk
        blob = os.urandom(2 * MIB)
        entries.append(rpmcraft.Entry(f"./usr/src/kernels/lab/blob{n}.o", rpmcraft.REG, blob))
    rpm = rpmcraft.write_rpm(tmp_path / "input" / RPM_NAME, entries, compressor="gzip")
    with small_disk(tmp_path / "disk", "4m") as disk:
        lab = make_lab(tmp_path, disk / "cache")
        kept = lab.kept()
        args = ("kernel", "--xcp", "lab", "--specs", lab.specs, "--cache", lab.cache,
                "--kernel-rpm", rpm)  # fmt: skip
        result = builder(*args)
        assert lab.leftovers() == []
        assert lab.trees() == []
        assert lab.kept() == kept
        assert lab.lock() == KEPT_LOCK
        assert rpm.is_file()  # the user's file is not the one to blame or delete
    # The same command with room to spare.
    with small_disk(tmp_path / "disk", "64m") as disk:
        lab = make_lab(tmp_path / "again", disk / "cache")
        again = builder("kernel", "--xcp", "lab", "--specs", lab.specs, "--cache", lab.cache,
                        "--kernel-rpm", rpm)  # fmt: skip
        assert again.returncode == 0, again
    # Last, so that a wrong message does not hide how the rest went.
    assert_says_disk_is_full(result.returncode, result.stderr, disk)


@pytest.mark.parametrize("room", [0, 16 << 10], ids=["no-room", "16k-left"])
def test_publishing_into_a_full_repository_disk(tmp_path: Path, signer: Signer, room: int) -> None:
    """No room at all: copying the new package fails; 16 KiB: the metadata does not fit."""
    packages = make_packages(tmp_path / "rpms", 2)
    artifacts = tmp_path / "artifacts"
    add_build(artifacts, 0, packages[0])
    with small_disk(tmp_path / "disk", "8m") as disk:
        repo = disk / "repo"
        first = builder(*publish_args(artifacts, repo, signer))
        assert first.returncode == 0, first
        before = verify_served(repo, tmp_path / "check")
        current = os.readlink(repo / "current")
        add_build(artifacts, 1, packages[1])
        filler = fill(disk, leave=room)
        full = builder(*publish_args(artifacts, repo, signer))
        assert full.returncode != 0, full
        assert os.readlink(repo / "current") == current
        assert verify_served(repo, tmp_path / "check") == before
        assert partial_leftovers(repo) == []
        assert_dnf_gets(repo, tmp_path / "dnf", "fault-pkg-00")
        # Room again: the next publish is not blocked and lands the new package.
        filler.unlink()
        after = builder(*publish_args(artifacts, repo, signer, "--lock-timeout", "0"))
        assert after.returncode == 0, after
        assert verify_served(repo, tmp_path / "check") == {p.name for p in packages}
        assert partial_leftovers(repo) == []
    # Last, so that a wrong message does not hide how the rest went.
    assert_says_disk_is_full(full.returncode, full.stderr, disk)
