"""The kmp macros give DRBD 9's kmod-drbd its kernel-devel's release suffix, under real rpmbuild
(the Docker test of per-kernel builds uses the drbd-km.spec families)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from builder.builds.recipes import KMP_MACROS
from builder.inputs.kernels import release_suffix

pytestmark = [pytest.mark.integration]

SPEC = """\
Name: drbd-kernel
Version: 9.2.19
Release: 1
Summary: kmod-drbd shaped like drbd-kernel.spec's
License: GPL-2.0-only
%global _this_kmp_version %{version}_%(echo %{kernel_version} | sed -r 'y/-/_/;')
%kernel_module_package -n drbd -v %_this_kmp_version -f %{_sourcedir}/files
%description
test
%install
mkdir -p %{buildroot}/lib/modules/%{xdb_kernel_release}/extra/drbd
touch %{buildroot}/lib/modules/%{xdb_kernel_release}/extra/drbd/drbd.ko
"""


def test_kmod_drbd_release_carries_the_kernel_devel_and_requires_that_kernel(
    tmp_path: Path,
) -> None:
    evr = "4.19.19-7.0.23.1.xcpng8.2"
    sources = tmp_path / "SOURCES"
    sources.mkdir()
    (sources / "files").write_text("/lib/modules/%{xdb_kernel_release}/extra/drbd\n")
    (tmp_path / "drbd-kernel.spec").write_text(SPEC)
    defines = {
        "_topdir": str(tmp_path),
        "kernel_version": "4.19.0+1",
        "xdb_kernel_release": "4.19.0+1",
        "xdb_kdir": "/k",
        "xdb_kernel_requires": f"kernel = {evr}",
        "xdb_release_suffix": release_suffix(evr),
    }
    command = ["rpmbuild", "-bb", "--quiet", "--load", str(KMP_MACROS)]
    for name, value in defines.items():
        command += ["--define", f"{name} {value}"]
    subprocess.run([*command, str(tmp_path / "drbd-kernel.spec")], check=True, timeout=120)
    (rpm,) = (tmp_path / "RPMS").rglob("*.rpm")
    query = ["rpm", "-qp", "--qf", "%{NAME}-%{VERSION}-%{RELEASE}", str(rpm)]
    nvr = subprocess.run(query, capture_output=True, text=True, check=True).stdout
    assert nvr == "kmod-drbd-9.2.19_4.19.0+1-1.k4.19.19_7.0.23.1.xcpng8.2"
    requires = subprocess.run(
        ["rpm", "-qp", "--requires", str(rpm)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert f"kernel = {evr}" in requires
