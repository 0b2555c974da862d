"""Real inputs for tests: a kernel-devel RPM made from Debian's kernel headers, and ISOs.

The RPM is built with rpmbuild from the installed linux-headers-*-amd64, its -common sibling
and linux-kbuild-*, kept at their relative places (the headers' ``scripts`` is a symlink into
the kbuild package).  The absolute ``include`` in the headers' Makefile is made relative so the
tree works wherever it is mounted, as a Red Hat kernel-devel tree does.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HeadersTree:
    flavour: Path  # /usr/src/linux-headers-X-amd64
    common: Path  # /usr/src/linux-headers-X-common
    kbuild: Path  # /usr/lib/linux-kbuild-Y
    release: str  # UTS_RELEASE


def installed_headers() -> HeadersTree:
    flavours = sorted(glob.glob("/usr/src/linux-headers-*-amd64"))
    if not flavours:
        raise RuntimeError(
            "no linux-headers-*-amd64 installed (apt-get install linux-headers-amd64)"
        )
    flavour = Path(flavours[-1])
    makefile = (flavour / "Makefile").read_text()
    match = re.search(r"include (\S+)/Makefile", makefile)
    if match is None:
        raise RuntimeError(f"unexpected {flavour}/Makefile: {makefile!r}")
    common = Path(match.group(1))
    kbuild = (flavour / "scripts").resolve().parent
    uts = (flavour / "include/generated/utsrelease.h").read_text()
    release_match = re.search(r'UTS_RELEASE "([^"]+)"', uts)
    if release_match is None:
        raise RuntimeError("no UTS_RELEASE in the installed headers")
    return HeadersTree(flavour, common, kbuild, release_match.group(1))


def rpm_arch() -> str:
    return subprocess.run(
        ["rpm", "--eval", "%{_arch}"], check=True, capture_output=True, text=True
    ).stdout.strip()


def rpmbuild(spec: Path, topdir: Path, *defines: str) -> list[Path]:
    args = [
        "rpmbuild",
        "-bb",
        "--define",
        f"_topdir {topdir}",
        "--define",
        "_buildhost test.invalid",
        "--define",
        "_binary_payload w6.gzdio",
        "--define",
        "debug_package %{nil}",
        "--define",
        "__os_install_post %{nil}",
        "--define",
        "_build_id_links none",
    ]
    for define in defines:
        args += ["--define", define]
    subprocess.run([*args, str(spec)], check=True, capture_output=True, text=True)
    return sorted((topdir / "RPMS").rglob("*.rpm"))


def build_kernel_devel_rpm(
    workdir: Path,
    *,
    name: str = "kernel-xen-devel",
    copies: int = 0,
    filler_mib: int = 0,
    release: str | None = None,
    layout: str = "debian",
    kernel_release_file: bool = True,
) -> Path:
    """A kernel-devel RPM whose payload is Debian's real kernel build tree.

    ``layout="vendor"`` lays it out as XCP-ng's (Red Hat's) kernel-devel: one tree at
    ``/usr/src/kernels/<uname -r>-<arch>`` (Debian's -common, -amd64 and kbuild merged) and
    the absolute symlink ``/lib/modules/<uname -r>/build`` to it.  ``kernel_release_file=False``
    keeps Debian's ``include/config/kernel.release`` (the upstream version, not ``uname -r``).

    For benchmarks, ``copies`` more copies of the headers' -common tree (about 10,000 entries
    each, beside the real one, under another name) and ``filler_mib`` MiB of incompressible
    files (like a real tree's objtool and vmlinux.h) bring it to the size of a real
    kernel-devel package: one copy and 24 MiB give about 26,000 entries and 40 MB.
    ``release`` replaces the RPM's release (the headers' ABI number): kernel updates that
    keep ``uname -r``, as XCP-ng's do.
    """
    headers = installed_headers()
    workdir.mkdir(parents=True, exist_ok=True)
    version, _, rest = headers.release.partition("-")
    abi = release or rest.split("-")[0] or "1"
    spec = workdir / "kernel-devel.spec"
    flavour_rel = headers.flavour.relative_to("/")
    common_rel = headers.common.relative_to("/")
    kbuild_rel = headers.kbuild.relative_to("/")
    extra = [f"/{common_rel}-copy{index}" for index in range(copies)]
    install = [f"cp -a /{common_rel} %{{buildroot}}{copy}" for copy in extra]
    if filler_mib:
        install.append(f"mkdir -p %{{buildroot}}/{flavour_rel}/tools/filler")
        install += [
            f"head -c 1048576 /dev/urandom > %{{buildroot}}/{flavour_rel}/tools/filler/f{index}"
            for index in range(filler_mib)
        ]

    def fix_release(tree: str) -> str:
        # As in a Red Hat kernel-devel tree: kernel.release is `uname -r` (Debian's headers
        # hold the upstream version there; DRBD 9's spec names files after it).
        if not kernel_release_file:
            return ""
        path = f"%{{buildroot}}/{tree}/include/config/kernel.release"
        return f"rm -f {path} && echo {headers.release} > {path}"

    if layout == "vendor":
        tree = f"usr/src/kernels/{headers.release}-{rpm_arch()}"
        layout_lines = [
            f"mkdir -p %{{buildroot}}/{tree} %{{buildroot}}/lib/modules/{headers.release}",
            f"cp -a /{common_rel}/. %{{buildroot}}/{tree}/",
            f"rm %{{buildroot}}/{tree}/scripts %{{buildroot}}/{tree}/tools",
            f"cp -a /{kbuild_rel}/scripts /{kbuild_rel}/tools %{{buildroot}}/{tree}/",
            f"(cd /{flavour_rel} && cp -a .config .kernelvariables Module.symvers arch include "
            f"%{{buildroot}}/{tree}/)",
            fix_release(tree),
            f"ln -s /{tree} %{{buildroot}}/lib/modules/{headers.release}/build",
        ]
        layout_files = [f"/{tree}", f"/lib/modules/{headers.release}/build"]
    else:
        layout_lines = [
            "mkdir -p %{buildroot}/usr/src %{buildroot}/usr/lib",
            f"cp -a /{flavour_rel} /{common_rel} %{{buildroot}}/usr/src/",
            f"cp -a /{kbuild_rel} %{{buildroot}}/usr/lib/",
            "printf 'include $(dir $(lastword $(MAKEFILE_LIST)))../%s/Makefile\\n' "
            f"{headers.common.name} > %{{buildroot}}/{flavour_rel}/Makefile",
            fix_release(str(flavour_rel)),
        ]
        layout_files = [f"/{flavour_rel}", f"/{common_rel}", f"/{kbuild_rel}"]
    layout_install = "\n            ".join(layout_lines)
    layout_files_text = "\n            ".join(layout_files)
    extra_install = "\n            ".join(install)
    extra_files = "\n            ".join(extra)
    spec.write_text(
        textwrap.dedent(
            f"""\
            Name: {name}
            Version: {version}
            Release: {abi}
            Summary: Kernel build tree for tests
            License: GPL-2.0-only
            AutoReqProv: no

            %description
            Debian's kernel headers packaged as a kernel-devel RPM.

            %install
            {layout_install}
            {extra_install}
            %files
            {layout_files_text}
            {extra_files}
            """
        )
    )
    (rpm,) = rpmbuild(spec, workdir / "top")
    return rpm


def build_small_rpm(
    workdir: Path,
    *,
    name: str,
    files: dict[str, str],
    links: dict[str, str],
    version: str = "1",
    release: str = "1",
) -> Path:
    """A tiny RPM with the given files and symlinks (paths absolute inside the package)."""
    workdir.mkdir(parents=True, exist_ok=True)
    install = ["mkdir -p %{buildroot}"]
    listed = []
    for path, content in files.items():
        install.append(f"mkdir -p %{{buildroot}}{os.path.dirname(path)}")
        install.append(f"printf '%s' '{content}' > %{{buildroot}}{path}")
        listed.append(path)
    for path, target in links.items():
        install.append(f"mkdir -p %{{buildroot}}{os.path.dirname(path)}")
        install.append(f"ln -s '{target}' %{{buildroot}}{path}")
        listed.append(path)
    spec = workdir / f"{name}.spec"
    spec.write_text(
        f"Name: {name}\nVersion: {version}\nRelease: {release}\nSummary: test\nLicense: MIT\n"
        "AutoReqProv: no\n"
        "%description\ntest\n%install\n"
        + "\n".join(install)
        + "\n%files\n"
        + "\n".join(listed)
        + "\n"
    )
    (rpm,) = rpmbuild(spec, workdir / "top")
    return rpm


def make_iso(workdir: Path, files: dict[str, Path], *, padding: int = 0) -> Path:
    """An ISO9660 image with Rock Ridge and Joliet holding ``files`` (path inside -> source)."""
    root = workdir / "iso-root"
    shutil.rmtree(root, ignore_errors=True)
    for inner, source in files.items():
        dest = root / inner
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, dest) if source.stat().st_dev == dest.parent.stat().st_dev else shutil.copy(
            source, dest
        )
    if padding:
        # Incompressible filler ahead of the package, like the many RPMs of a real binpkg.iso.
        filler = root / "domain0" / "RPMS" / "filler.bin"
        filler.parent.mkdir(parents=True, exist_ok=True)
        with filler.open("wb") as out:
            block = os.urandom(1 << 20)
            for _ in range(padding >> 20):
                out.write(block)
    iso = workdir / "binpkg.iso"
    subprocess.run(
        ["xorriso", "-as", "mkisofs", "-R", "-J", "-quiet", "-o", str(iso), str(root)],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(root)
    return iso
