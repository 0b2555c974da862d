"""A vendor's kernel update on a dom0 that runs our module, with a real yum consumer.

XCP-ng's kernel is upgraded in place (``xcp-ng-release`` empties ``installonlypkgs``) and
keeps ``uname -r`` across 8.x updates; its kernel package provides ``kernel-uname-r`` and
``kernel = V-R``.  The module packages here are made by rpmbuild from the builder's own kmp
macros with the requirements, release suffix and names the builder gives an XCP-ng build
(Debian's headers, which the Docker builds use, name a release that rpm cannot write as a
``kernel-uname-r`` version); ``publish`` signs them into a repository served on 127.0.0.1
beside a stand-in of the vendor's, and Debian's dnf (``--installroot``) is dom0's yum.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.builds.recipes import KMP_MACROS
from builder.inputs.kernels import build_name, release_suffix
from builder.registry import load_registry
from tests import rpmfactory
from tests.deploy_support import pool_data, write_pool
from tests.faults.publishing import kill_agents
from tests.integration.buildenv import base_system
from tests.support.http import serve_directory

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
TARGET = load_registry().target("8.3")
UNAME = TARGET.kernel_release  # 4.19.0+1
DRBD = "9.2.18"
VERSION = "4.19.19"
# Kernel releases: a host at N-1, N with our module, N+1 with our module, N+2 only the vendor's.
EARLY, N, N1, N2 = (f"8.0.{n}.1.xcpng8.3" for n in (9, 10, 11, 12))

SPEC = """\
Name: drbd-kernel
Version: {drbd}
Release: 1
Summary: kmod-drbd shaped like drbd-kernel.spec's
License: GPL-2.0-only
%global _this_kmp_version %{{version}}_%(echo %{{kernel_version}} | sed -r 'y/-/_/;')
%kernel_module_package -n drbd -v %_this_kmp_version -f %{{_sourcedir}}/files
%description
test
%install
mkdir -p %{{buildroot}}/lib/modules/%{{xdb_kernel_release}}/extra/drbd
echo "built against {evr}" > %{{buildroot}}/lib/modules/%{{xdb_kernel_release}}/extra/drbd/drbd.ko
"""


def builder(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "builder", *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def kmod_drbd(work: Path, evr: str) -> Path:
    """kmod-drbd built against kernel-devel ``evr`` of the XCP-ng 8.3 target, by rpmbuild
    with the kmp macros and the defines a build gives them."""
    top = work / f"kmod-{evr}"
    (top / "SOURCES").mkdir(parents=True)
    (top / "SOURCES" / "files").write_text("/lib/modules/%{xdb_kernel_release}/extra/drbd\n")
    spec = top / "drbd-kernel.spec"
    spec.write_text(SPEC.format(drbd=DRBD, evr=evr))
    defines = {
        "_topdir": str(top),
        "kernel_version": UNAME,
        "xdb_kernel_release": UNAME,
        "xdb_kdir": "/k",
        "xdb_kernel_requires": ", ".join(map(str, TARGET.kernel_requirements(evr))),
        "xdb_release_suffix": release_suffix(evr),
    }
    command = ["rpmbuild", "-bb", "--quiet", "--load", str(KMP_MACROS)]
    for name, value in defines.items():
        command += ["--define", f"{name} {value}"]
    subprocess.run([*command, str(spec)], check=True, timeout=120)
    (rpm,) = (top / "RPMS").rglob("*.rpm")
    return rpm


def vendor_kernel(work: Path, release: str, uname: str = UNAME) -> Path:
    """A stand-in of the vendor's kernel package: what XCP-ng's kernel.spec provides (its own
    name gives ``kernel = V-R``)."""
    return rpmfactory.build_rpms(
        work / f"kernel-{release}", ["kernel"], version=VERSION, release=release,
        arch="x86_64", provides=[f"kernel-uname-r = {uname}"],
    )[0]  # fmt: skip


def rpm_lines(*args: str) -> list[str]:
    return subprocess.run(
        ["rpm", *args], capture_output=True, text=True, check=True
    ).stdout.splitlines()


def test_the_module_requires_what_xcp_ng_s_driver_packages_require(tmp_path: Path) -> None:
    rpm = kmod_drbd(tmp_path, f"{VERSION}-{N}")
    nvr = rpm_lines("-qp", "--qf", "%{NAME}-%{VERSION}-%{RELEASE}", str(rpm))[0]
    assert nvr == f"kmod-drbd-{DRBD}_{UNAME}-1.k{VERSION}_{N}"
    requires = set(rpm_lines("-qp", "--requires", str(rpm)))
    assert {f"kernel-uname-r = {UNAME}", f"kernel >= {VERSION}-{N}"} <= requires
    assert not [r for r in requires if r.startswith("kernel = ")]


@dataclass
class Dom0:
    """One dom0's package database (dnf --installroot) with XCP-ng's yum settings: the kernel
    is upgraded in place, not install-only."""

    work: Path
    ours: str  # the published repository's URL
    vendor_url: str

    def __post_init__(self) -> None:
        self.root = self.work / "root"
        self.repos = self.work / "repos"
        self.repos.mkdir(parents=True)
        printed = builder("publish", "--print-repo-file", self.ours, "--consumer", "el7")
        assert "gpgcheck=1" in printed.stdout and "repo_gpgcheck=1" in printed.stdout
        (self.repos / "ours.repo").write_text(printed.stdout)
        self.vendor(self.vendor_url)

    def vendor(self, url: str) -> None:
        """Point the vendor's repository at ``url`` (unsigned: a stand-in of the vendor's)."""
        (self.repos / "vendor.repo").write_text(
            f"[vendor]\nname=vendor\nbaseurl={url}\ngpgcheck=0\nmetadata_expire=0\n"
        )

    def command(self) -> list[str]:
        return [
            "dnf", "-y", f"--installroot={self.root}", f"--setopt=reposdir={self.repos}",
            f"--setopt=cachedir={self.work / 'cache'}", "--releasever=7",
            "--setopt=install_weak_deps=False", "--setopt=installonlypkgs=",
        ]  # fmt: skip

    def run(self, command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                command, capture_output=True, text=True, timeout=300, check=False,
                env={**os.environ, **env},
            )  # fmt: skip
        finally:
            # repo_gpgcheck makes dnf start a gpg-agent for each repository's keyring.
            kill_agents(*self.work.glob("cache/*/pubring"))

    def dnf(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run([*self.command(), *args])

    def installed(self, name: str) -> list[str]:
        answer = subprocess.run(
            ["rpm", f"--root={self.root}", "-q", "--qf", "%{VERSION}-%{RELEASE}\n", name],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return answer.stdout.split() if answer.returncode == 0 else []

    def module_built_against(self) -> list[str]:
        return [release.rsplit(".k", 1)[1] for release in self.installed("kmod-drbd")]

    def runbook(self, rendered: Path, step: str) -> subprocess.CompletedProcess[str]:
        """The rendered runbook's ``step`` on this dom0: its rpm and yum are the real rpm and
        dnf pointed at this root, and ``uname -n`` names the host."""
        tools = self.work / "bin"
        tools.mkdir(exist_ok=True)
        wrappers = {
            "rpm": f'exec /usr/bin/rpm --root={self.root} "$@"',
            "yum": "exec " + shlex.join(self.command()) + ' "$@"',
            "uname": '[ "$1" = -n ] && echo xcp1 || exec /bin/uname "$@"',
        }
        for name, body in wrappers.items():
            (tools / name).write_text(f"#!/bin/sh\n{body}\n")
            (tools / name).chmod(0o755)
        runbook = rendered / "xcp1" / "runbook.sh"
        return self.run(["sh", str(runbook), step], PATH=f"{tools}:{os.environ['PATH']}")


@dataclass(frozen=True)
class Served:
    url: str  # of the directory holding ours/ and the vendor's repositories
    rendered: Path  # the pool's rendered files (deploy render of the XCP-ng 8.3 target)
    base: Path  # a stand-in of the rest of dom0


def vendor_repository(directory: Path, kernels: list[Path]) -> None:
    directory.mkdir(parents=True)
    for rpm in kernels:
        shutil.copy2(rpm, directory)
    subprocess.run(["createrepo_c", "--quiet", str(directory)], check=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Our signed repository with kmod-drbd built against N and N+1, and vendor repositories
    holding the kernels of each scenario: at-n (N), n1 (N, N+1), n2 (N, N+1, N+2), early (N-1)."""
    work = tmp_path_factory.mktemp("updates")
    artifacts = work / "artifacts"
    modules = []
    for evr in (f"{VERSION}-{N}", f"{VERSION}-{N1}"):
        rpm = kmod_drbd(work / "rpms", evr)
        modules.append(rpm)
        name = build_name(DRBD, evr)
        rpmfactory.write_build(artifacts, TARGET.id, name, [rpm], consumer="el7", basearch="x86_64")
    kernels = {release: vendor_kernel(work / "rpms", release) for release in (EARLY, N, N1, N2)}
    www = work / "www"
    for name, releases in {"at-n": [N], "n1": [N, N1], "n2": [N, N1, N2], "early": [EARLY]}.items():
        vendor_repository(www / name, [kernels[r] for r in releases])
    base = base_system(work / "base", modules)
    home = work / "gnupg"
    fingerprint = builder("keygen", "--gnupg-home", home).stdout.strip()
    with serve_directory(www) as url:
        try:
            published = builder(
                "publish", "--artifacts", artifacts, "--repo", www / "ours", "--key",
                fingerprint, "--gnupg-home", home, "--base-url", f"{url}/ours",
            )  # fmt: skip
        finally:
            kill_agents(home)
        assert published.returncode == 0, published.stderr[-4000:]
        pool = write_pool(
            work / "pool",
            pool_data(**{"target": TARGET.id, "drbd.version": DRBD, "repo.url": f"{url}/ours"}),
        )
        rendered = work / "pool" / "out"
        done = builder("deploy", "render", "--pool", pool, "--output", rendered, "--no-repo-check")
        assert done.returncode == 0, done.stderr[-4000:]
        yield Served(url, rendered, base)


def at_n(served: Served, work: Path) -> Dom0:
    """A dom0 with kernel N and our module built against N."""
    dom0 = Dom0(work, f"{served.url}/ours", f"{served.url}/at-n/")
    setup = dom0.dnf(
        "install", str(served.base), "kernel", f"kmod-drbd-*-*{release_suffix(f'{VERSION}-{N}')}"
    )
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert dom0.installed("kernel") == [f"{VERSION}-{N}"]
    assert dom0.module_built_against() == [f"{VERSION}_{N}"]
    return dom0


def test_a_vendor_update_with_our_module_moves_both_in_one_upgrade(
    served: Served, tmp_path: Path
) -> None:
    dom0 = at_n(served, tmp_path)
    fine = dom0.runbook(served.rendered, "kernel-check")
    assert fine.returncode == 0, fine.stdout + fine.stderr
    assert "runs a DRBD module built for its kernel" in fine.stdout
    dom0.vendor(f"{served.url}/n1/")
    both = dom0.dnf("upgrade")
    assert both.returncode == 0, both.stdout + both.stderr
    assert dom0.installed("kernel") == [f"{VERSION}-{N1}"]
    assert dom0.module_built_against() == [f"{VERSION}_{N1}"]
    after = dom0.runbook(served.rendered, "kernel-check")
    assert after.returncode == 0, after.stdout + after.stderr


def test_a_vendor_update_before_our_module_keeps_the_module_and_the_runbook_says_what_to_run(
    served: Served, tmp_path: Path
) -> None:
    dom0 = at_n(served, tmp_path)
    dom0.vendor(f"{served.url}/n2/")
    ahead = dom0.dnf("upgrade")
    assert ahead.returncode == 0, ahead.stdout + ahead.stderr
    # The kernel moves to N+2; our newest module (N+1) comes along; nothing is removed.
    assert dom0.installed("kernel") == [f"{VERSION}-{N2}"]
    assert dom0.module_built_against() == [f"{VERSION}_{N1}"]
    module = dom0.root / "lib/modules" / UNAME / "extra/drbd/drbd.ko"
    assert module.read_text() == f"built against {VERSION}-{N1}\n"  # where the next boot finds it
    behind = dom0.runbook(served.rendered, "kernel-check")
    assert behind.returncode == 3, behind.stdout + behind.stderr
    assert f"boots kernel {VERSION}-{N2} next" in behind.stderr
    assert f"was built against {VERSION}-{N1}" in behind.stderr
    assert f"build --xcp {TARGET.id} --kernel {VERSION}-{N2}" in behind.stderr
    status = dom0.runbook(served.rendered, "status")  # what monitoring sees every day
    assert status.returncode == 3, status.stdout + status.stderr
    assert f"  - xcp1 boots kernel {VERSION}-{N2} next, but its kmod-drbd" in status.stderr
    upgrade = dom0.runbook(served.rendered, "upgrade")
    assert upgrade.returncode == 1
    assert "runbook: not upgrading:" in upgrade.stderr
    assert f"none built against {VERSION}-{N2}" in upgrade.stderr


def test_a_module_built_against_a_newer_kernel_never_goes_beside_an_older_one(
    served: Served, tmp_path: Path
) -> None:
    dom0 = Dom0(tmp_path, f"{served.url}/ours", f"{served.url}/early/")
    at = dom0.dnf("install", str(served.base), "kernel")
    assert at.returncode == 0, at.stdout + at.stderr
    newer = f"kmod-drbd-*-*{release_suffix(f'{VERSION}-{N1}')}"
    refused = dom0.dnf("install", newer)
    assert refused.returncode != 0
    assert f"kernel >= {VERSION}-{N1}" in refused.stdout + refused.stderr
    assert dom0.installed("kmod-drbd") == []
    assert dom0.installed("kernel") == [f"{VERSION}-{EARLY}"]
    # With the vendor's N+1 in reach, the kernel comes along in the same transaction.
    dom0.vendor(f"{served.url}/n1/")
    along = dom0.dnf("install", newer)
    assert along.returncode == 0, along.stdout + along.stderr
    assert dom0.installed("kernel") == [f"{VERSION}-{N1}"]
    assert dom0.module_built_against() == [f"{VERSION}_{N1}"]


def test_an_exact_requirement_holds_the_vendor_s_kernel_update_back(tmp_path: Path) -> None:
    """Why XCP-ng's targets do not require ``kernel = V-R``: dnf keeps the old kernel (its
    default skips the update it cannot make; best=True, as on EL8, refuses the whole upgrade)."""
    exact = rpmfactory.build_rpms(tmp_path / "exact", ["kmodx-drbd"], arch="x86_64")[0]
    spec = tmp_path / "exact.spec"
    spec.write_text(
        f"Name: kmodx-drbd\nVersion: 1\nRelease: 1\nSummary: t\nLicense: GPL\n"
        f"Requires: kernel = {VERSION}-{N}\n%description\nt\n%files\n"
    )
    top = tmp_path / "top"
    subprocess.run(
        ["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {top}", str(spec)], check=True
    )
    (exact,) = (top / "RPMS").rglob("*.rpm")
    repos = {
        "at-n": [vendor_kernel(tmp_path, N), exact],
        "n1": [vendor_kernel(tmp_path, N), vendor_kernel(tmp_path, N1), exact],
    }
    for name, rpms in repos.items():
        vendor_repository(tmp_path / name, rpms)
    dom0 = tmp_path / "root"

    def dnf(repo: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "dnf", "-y", f"--installroot={dom0}", "--setopt=reposdir=/nonexistent",
                f"--setopt=cachedir={tmp_path / 'cache'}", "--releasever=7", "--nogpgcheck",
                "--setopt=installonlypkgs=", f"--repofrompath=v,{(tmp_path / repo).as_uri()}",
                "--repo=v", *args,
            ],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip

    assert dnf("at-n", "install", "kernel", "kmodx-drbd").returncode == 0
    held = dnf("n1", "upgrade")
    assert held.returncode == 0, held.stdout + held.stderr
    assert "Skipping packages with conflicts" in held.stdout
    refused = dnf("n1", "upgrade", "--setopt=best=True")
    assert refused.returncode != 0
    assert f"requires kernel = {VERSION}-{N}" in refused.stderr
    kernel = rpm_lines(f"--root={dom0}", "-q", "kernel")
    assert kernel == [f"kernel-{VERSION}-{N}.x86_64"]
