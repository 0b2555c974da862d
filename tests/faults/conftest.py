"""Fixtures shared by the fault cases: a lab target whose kernel-devel comes from an ISO or is
given with ``--kernel-rpm``, a cache that already holds something worth keeping, a signing
key for ``publish``, and the stand-in's build inputs for the cases that build."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults import rpmcraft
from tests.faults.harness import Node, snapshot
from tests.faults.publishing import Signer, kill_agents, make_signer

# The stand-in's inputs as the integration tests make them, for the builds that race or fill
# a disk (fixtures, used by name).
from tests.integration.conftest import (  # noqa: F401
    binpkg_iso,
    docker_client,
    kernel_release,
    kernel_rpm,
    standin_inputs,
    standin_root,
)
from tests.support.labspec import write_kernel_lab_spec

RELEASE = "6.1.0-lab"
RPM_NAME = "kernel-xen-devel-1.0-1.x86_64.rpm"
INNER = f"domain0/RPMS/x86_64/{RPM_NAME}"
# What an earlier, successful run left in the cache and the lock file: no fault may lose it.
KEPT_SHA = "0" * 64
KEPT_LOCK = {"http://example.invalid/kept.iso": "1" * 64}


def write_lab_spec(directory: Path, *, iso: str, sha256: str | None = None) -> Path:
    """A spec directory with target ``lab``, whose kernel-devel is INNER inside ``iso``."""
    return write_kernel_lab_spec(directory, iso=iso, inner=INNER, release=RELEASE, sha256=sha256)


@dataclass(frozen=True)
class Lab:
    """One test's world: spec directory, cache, and a place for things that must stay put."""

    root: Path
    specs: Path
    cache: Path

    @property
    def lock_file(self) -> Path:
        return self.specs / "checksums.lock"

    def lock(self) -> dict[str, str]:
        if not self.lock_file.exists():
            return {}
        data: dict[str, str] = json.loads(self.lock_file.read_text(encoding="utf-8"))
        return data

    def kept(self) -> dict[str, Node]:
        """The earlier run's tree in the cache, to compare before and after a fault."""
        return snapshot(self.cache / "kernels" / KEPT_SHA)

    def leftovers(self) -> list[Path]:
        """Half-done work: partial extractions, partial downloads, unfinished trees."""
        found = [
            p
            for p in self.cache.rglob("*")
            if p.name.endswith((".partial", ".part")) or ".partial-" in p.name
        ]
        kernels = self.cache / "kernels"
        found += [
            p
            for p in (kernels.iterdir() if kernels.is_dir() else [])
            if p.name != KEPT_SHA and not (p / "tree.json").is_file()
        ]
        return found

    def trees(self) -> list[str]:
        kernels = self.cache / "kernels"
        return sorted(p.name for p in kernels.iterdir() if p.name != KEPT_SHA)


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    """Specs for target ``lab`` (an ISO URL nobody serves: tests pass files or a URL of their
    own) and a cache holding an earlier, finished extraction and a lock entry."""
    return make_lab(tmp_path, tmp_path / "cache")


def make_lab(root: Path, cache: Path) -> Lab:
    specs = write_lab_spec(root / "specs", iso="file:///nonexistent/binpkg.iso")
    (specs / "checksums.lock").write_text(json.dumps(KEPT_LOCK, indent=2) + "\n")
    kept = cache / "kernels" / KEPT_SHA
    (kept / "tree" / "usr" / "src").mkdir(parents=True)
    (kept / "tree" / "usr" / "src" / "Makefile").write_text("all:\n")
    (kept / "tree.json").write_text(json.dumps({"nvra": "kept", "builds": "{}"}))
    return Lab(root=root, specs=specs, cache=cache)


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signer]:
    """A signing key for ``publish`` (made by ``keygen``), its gpg-agent stopped at the end."""
    signer = make_signer(tmp_path_factory.mktemp("keys") / "gnupg")
    try:
        yield signer
    finally:
        kill_agents(signer.home)


@pytest.fixture(scope="session")
def good_rpm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small, honest kernel-devel RPM whose tree reports RELEASE."""
    directory = tmp_path_factory.mktemp("good-rpm")
    entries = list(rpmcraft.kernel_tree(RELEASE))
    # Some incompressible bulk, so that a download is long enough to be cut in the middle.
    entries.append(
        rpmcraft.Entry(
            "./usr/src/kernels/lab/vmlinux.bulk",
            rpmcraft.REG,
            bytes(range(256)) * 4096 + os.urandom(3 << 20),
            inode=9,
        )
    )
    return rpmcraft.write_rpm(directory / RPM_NAME, entries, compressor="gzip")
