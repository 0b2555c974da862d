"""Every kernel a yum kernel source holds, on the real engine, rpmbuild, createrepo_c and dnf.

A lab target takes its kernel-devel from a local yum repository holding several releases of
one kernel whose ``uname -r`` stays the same (as XCP-ng's 4.19 updates do).  ``build --kernel
all`` builds one module package per release, each its own name-version-release and each
requiring its own kernel; a release added to the repository is one new build on the next
run; publish keeps them all, and dnf installs the one for the kernel a dom0 runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.specs import Target
from tests import rpmfactory
from tests.integration import buildenv
from tests.integration.buildenv import base_system
from tests.integration.test_build_families import by_name, dnf, lines_of, query
from tests.support.kernelrpm import build_kernel_devel_rpm
from tests.support.vendorrepo import Vendor, key_yaml, make_vendor

pytestmark = [pytest.mark.integration, pytest.mark.docker]

REPO = Path(__file__).resolve().parents[2]
VERSION = "8.4.1"
RELEASES = ["7", "15", "23"]  # kernel-devel releases, oldest first
NEW_RELEASE = "31"


def builder(*args: str, state: Path | None = None) -> subprocess.CompletedProcess[str]:
    # The test's own state directory: what the repositories' signatures vouched for is kept
    # there, and this test makes new kernel-devel bytes under the same names on every run.
    env = {**os.environ, **({"XDG_STATE_HOME": str(state)} if state else {})}
    return subprocess.run(
        [sys.executable, "-m", "builder", *args],
        cwd=REPO, capture_output=True, text=True, timeout=1800, check=False, env=env,
    )  # fmt: skip


def add_kernel(repo: Path, work: Path, release: str, vendor: Vendor) -> None:
    # laid out as XCP-ng's kernel-devel: /usr/src/kernels/<uname>-<arch> and the build link
    rpm = build_kernel_devel_rpm(work / release, release=release, layout="vendor")
    shutil.copy2(rpm, repo)
    vendor.sign_rpms(repo / rpm.name)
    subprocess.run(["createrepo_c", "--quiet", str(repo)], check=True)
    vendor.sign_metadata(repo)
    vendor.stop()


def test_all_kernels_of_a_yum_source_are_built_published_and_installable(
    tmp_path: Path, standin_target: Target, kernel_release: str, own_containers: None
) -> None:
    assert standin_target.base_image is not None
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    vendor = make_vendor(tmp_path / "vendor")  # signs the kernel repository, as XCP-ng does
    for release in RELEASES:
        add_kernel(kernels, tmp_path / "kernel-rpms", release, vendor)
    specs = buildenv.write_lab_specs(
        tmp_path / "specs",
        targets={"lab": "kernel-xen"},
        iso=tmp_path / "unused.iso",
        rpm=tmp_path / "unused.rpm",
        release=kernel_release,
        base_image=standin_target.base_image,
        drbd=f"""drbd:
  {VERSION}:
    family: 8.4-early
    url: file://{buildenv.make_drbd_source(tmp_path, VERSION)}
""",
        yum=kernels.as_uri(),
        yum_key=key_yaml(vendor, "        "),
    )
    artifacts = tmp_path / "artifacts"
    build = [
        "build", "--xcp", "lab", "--drbd", VERSION, "--kernel", "all", "--specs", str(specs),
        "--cache", str(tmp_path / "cache"), "--artifacts", str(artifacts), "--jobs", "1",
    ]  # fmt: skip
    kernel_version = kernel_release.split("-", 1)[0]
    evrs = [f"{kernel_version}-{release}" for release in RELEASES]

    matrix = builder("matrix", *build[1:11], state=tmp_path / "state")
    assert matrix.returncode == 0, matrix.stderr
    assert [f'"kernel": "{evr}"' in matrix.stdout for evr in evrs] == [True] * 3

    started = time.monotonic()
    first = builder(*build, state=tmp_path / "state")
    print(f"three kernels built in {time.monotonic() - started:.0f} s")
    assert first.returncode == 0, first.stderr[-4000:]
    assert first.stdout.count(": built: ") == 3, first.stdout
    directories = [artifacts / "lab" / f"{VERSION}+k{evr}" for evr in evrs]
    module = f"drbd-km-{kernel_release.replace('-', '_')}"
    userland: dict[str, bytes] = {}
    nvrs = set()
    for directory, evr in zip(directories, evrs, strict=True):
        packages = by_name(directory)
        km = packages[module]
        release = query(km, "%{RELEASE}")
        assert release.endswith(f".k{evr.replace('-', '_')}")
        nvrs.add(query(km, "%{NAME}-%{VERSION}-%{RELEASE}"))
        assert f"kernel-xen = {evr}" in lines_of("-qp", "--requires", str(km))
        for name in ("drbd", "drbd-utils", "drbd-xen"):
            # built once and reused: the same bytes beside every kernel's module
            assert userland.setdefault(name, packages[name].read_bytes()) == (
                packages[name].read_bytes()
            )
    assert len(nvrs) == 3
    trust = json.loads((directories[0] / "manifest.json").read_text())["trust"]
    assert trust["kernel_rpm"] == f"vendor-signature {vendor.fingerprint}"
    assert trust["kernel_source"] == f"vendor-signature {vendor.fingerprint}"
    assert trust["drbd_source"] == "first-use"  # a file:// source of the test: no pin

    add_kernel(kernels, tmp_path / "kernel-rpms", NEW_RELEASE, vendor)
    started = time.monotonic()
    second = builder(*build, state=tmp_path / "state")
    print(f"one new kernel among four in {time.monotonic() - started:.0f} s")
    assert second.returncode == 0, second.stderr[-4000:]
    assert second.stdout.count(": up to date: ") == 3, second.stdout
    new_evr = f"{kernel_version}-{NEW_RELEASE}"
    assert second.stdout.count(": built: ") == 1
    assert f"{VERSION}+k{new_evr}" in second.stdout.split(": built: ")[1]

    home = tmp_path / "gnupg"
    fingerprint = builder("keygen", "--gnupg-home", str(home)).stdout.strip()
    try:
        published = builder(
            "publish", "--artifacts", str(artifacts), "--repo", str(tmp_path / "repo"),
            "--key", fingerprint, "--gnupg-home", str(home),
        )  # fmt: skip
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
    assert published.returncode == 0, published.stderr[-4000:]
    repo = tmp_path / "repo" / "el7" / "x86_64"
    modules = sorted(p for p in repo.glob(f"{module}-*.rpm"))
    assert len(modules) == 4
    assert {query(p, "%{RELEASE}").rsplit(".k", 1)[1] for p in modules} == {
        evr.replace("-", "_") for evr in [*evrs, new_evr]
    }
    assert len(list(repo.glob("drbd-utils-*.rpm"))) == 1
    verified = builder("verify", "--repo", str(tmp_path / "repo"))
    assert verified.returncode == 0, verified.stderr
    signed_by = f"kernel-devel vendor-signature {vendor.fingerprint}"
    assert signed_by in verified.stdout and "DRBD first-use (!)" in verified.stdout

    # dom0 runs the middle kernel: dnf installs the module built for it, and refuses another's
    work = tmp_path / "dnf"
    local = work / "local"
    local.mkdir(parents=True)
    running = rpmfactory.build_rpms(
        work, ["kernel-xen"], version=kernel_version, release=RELEASES[1]
    )[0]
    shutil.copy2(base_system(work, sorted(repo.glob("*.rpm"))), local)
    subprocess.run(["createrepo_c", "--quiet", str(local)], check=True)
    root = work / "root"
    setup = dnf(root, work, local, "install", str(running), "dom0-base")
    assert setup.returncode == 0, setup.stdout + setup.stderr
    wanted = f"{module}-{VERSION}-*.k{evrs[1].replace('-', '_')}"
    installed = dnf(root, work, repo, "install", wanted)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    names = subprocess.run(
        ["rpm", f"--root={root}", "-qa", "--qf", "%{NAME} %{RELEASE}\n"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert [n for n in names if n.startswith(f"{module} ")] == [
        f"{module} {query(modules[0], '%{RELEASE}').split('.k')[0]}.k{evrs[1].replace('-', '_')}"
    ]
    assert any(line.startswith("drbd-utils ") for line in names)
    newest = f"{module}-{VERSION}-*.k{new_evr.replace('-', '_')}"
    refused = dnf(root, work, repo, "install", newest)
    assert refused.returncode != 0
    assert f"kernel-xen = {new_evr}" in refused.stdout + refused.stderr
