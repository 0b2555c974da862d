"""Shared real inputs for integration tests: a kernel-devel RPM and a binpkg-shaped ISO."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.kernelrpm import build_kernel_devel_rpm, installed_headers, make_iso


@pytest.fixture(scope="session")
def kernel_release() -> str:
    return installed_headers().release


@pytest.fixture(scope="session")
def kernel_rpm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kernel-xen-devel-*.rpm built with rpmbuild from Debian's real kernel build tree."""
    return build_kernel_devel_rpm(tmp_path_factory.mktemp("kernel-rpm"))


@pytest.fixture(scope="session")
def binpkg_iso(tmp_path_factory: pytest.TempPathFactory, kernel_rpm: Path) -> Path:
    """An ISO laid out like XCP's binpkg.iso: domain0/RPMS/<arch>/kernel-xen-devel-….rpm."""
    arch = kernel_rpm.parent.name
    return make_iso(
        tmp_path_factory.mktemp("iso"), {f"domain0/RPMS/{arch}/{kernel_rpm.name}": kernel_rpm}
    )
