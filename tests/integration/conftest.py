"""Fixtures for integration tests: real inputs (a kernel-devel RPM, a binpkg-shaped ISO) and
real containers.

Without a reachable Docker engine these tests skip, saying why, except in CI (``CI`` set),
where a missing engine is a failure: the CI script starts one.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from builder.builds import container, engine, rpmbuild
from builder.errors import DockerError
from builder.specs import Target
from tests.integration import buildenv
from tests.support.kernelrpm import build_kernel_devel_rpm, installed_headers, make_iso
from tests.support.needs import Unavailable, unavailable


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = engine.connect()
    except DockerError as exc:
        unavailable(f"no Docker engine: {exc.message}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def kernel_tree(tmp_path_factory: pytest.TempPathFactory) -> buildenv.KernelTree:
    """A real kernel build tree (Debian's 6.1 headers + kbuild) in a root of its own."""
    try:
        return buildenv.copy_kernel_tree(tmp_path_factory.mktemp("kernel-root"))
    except Unavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def standin_target(docker_client: docker.DockerClient, kernel_tree: buildenv.KernelTree) -> Target:
    """A target whose build context is the Debian stand-in under tests/integration/."""
    try:
        return buildenv.standin_target(docker_client, kernel_tree)
    except Unavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def standin_root(docker_client: docker.DockerClient) -> str:
    """The debootstrapped Debian 12 root that the stand-in build image starts from."""
    try:
        return buildenv.standin_root_image(docker_client)
    except Unavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def standin_inputs(
    binpkg_iso: Path, kernel_rpm: Path, kernel_release: str, standin_root: str
) -> buildenv.StandinInputs:
    """What a lab spec on the stand-in names: the ISO, its kernel-devel RPM, the root."""
    return buildenv.StandinInputs(binpkg_iso, kernel_rpm, kernel_release, standin_root)


@pytest.fixture(scope="session")
def spatch_base(docker_client: docker.DockerClient) -> str:
    """The spatch helper's base: a Debian 13 root with coccinelle 1.3 (debian:trixie-slim's
    stand-in), for DRBD 9 builds that make a compat patch."""
    try:
        return buildenv.spatch_base_image(docker_client)
    except Unavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def standin_image(docker_client: docker.DockerClient, standin_target: Target) -> str:
    """The stand-in build image, made through the same code path as the real images."""
    return rpmbuild.ensure_image(standin_target, client=docker_client)


@pytest.fixture
def own_containers(docker_client: docker.DockerClient) -> Iterator[None]:
    """Fails a test that leaves a container of this process behind."""
    yield
    leftovers = [
        c.name
        for c in container.labelled_containers(docker_client)
        if (c.labels or {}).get(container.LABEL_PID) == str(os.getpid())
    ]
    assert leftovers == [], f"containers left behind: {leftovers}"


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


@dataclass(frozen=True)
class Utils:
    version: str
    tarball: Path


@pytest.fixture(scope="session")
def debian_drbd_utils(tmp_path_factory: pytest.TempPathFactory) -> Utils:
    """drbd-utils' upstream tarball from Debian's source archive (needs a deb-src entry)."""
    work = tmp_path_factory.mktemp("debian-source")
    result = subprocess.run(
        ["apt-get", "source", "--download-only", "drbd-utils"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    dsc = sorted(work.glob("drbd-utils_*.dsc"))
    origs = sorted(work.glob("drbd-utils_*.orig.tar.gz"))
    if not dsc or not origs:
        unavailable(
            "apt-get source drbd-utils fetched no .dsc and .orig.tar.gz (add a deb-src entry "
            f"and run apt-get update): {result.stderr.strip()[-400:]}"
        )
    # apt-get may fail on another part of the source package (the archive has answered 404 for
    # the Debian packaging tarball); the upstream tarball is all the test needs, and the .dsc,
    # verified by apt against the archive's signed index, vouches for its hash.
    orig = origs[-1]
    digest = hashlib.sha256(orig.read_bytes()).hexdigest()
    assert f" {digest} {orig.stat().st_size} {orig.name}" in dsc[-1].read_text()
    version = orig.name.split("_")[1].removesuffix(".orig.tar.gz")
    return Utils(version=version, tarball=orig)
