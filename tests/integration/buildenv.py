"""Build inputs for the container tests, all made locally (no registry).

- a Debian 12 root made with debootstrap and ``docker import``-ed
  (``tests.support.debianroot``), cached by a tag that hashes what went into it, so reruns
  skip the 40-second debootstrap;
- a real kernel build tree: the installed Debian linux-headers packages and linux-kbuild,
  copied into a temporary root with their relative layout (the headers' ``scripts`` and
  ``tools`` are symlinks into the kbuild package, and the Makefile includes ``-common`` by its
  absolute path);
- a DRBD-shaped source tarball from ``drbd-src/``, optionally altered by a test.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from builder.builds import drbdbuild
from builder.builds.images import context_hash
from builder.builds.recipes import recipe_for
from builder.specs import Consumer, DrbdFamily, KernelRequirement, KernelSource, SourceKind, Target
from tests import rpmfactory
from tests.support.debianroot import debian_mirror, debootstrapped
from tests.support.needs import Unavailable

HERE = Path(__file__).resolve().parent
SOURCE_TEMPLATE = HERE / "drbd-src"
MODULE_ONLY_TEMPLATE = HERE / "drbd-84-src"
KMOD_TEMPLATE = HERE / "drbd-9-src"
STANDIN_CONTEXT = HERE / "standin-context"
ROOT_REPOSITORY = "xcp-drbd-builder-test/debian12-root"
SUITE = "bookworm"
ROOT_PACKAGES = (
    "rpm", "gcc", "g++", "make", "flex", "libc6-dev", "libelf1", "patch", "perl", "autoconf",
    "automake", "libkeyutils-dev", "pkgconf",
    # what CentOS 7's image installs for external modules: libelf headers (objtool, which a
    # tree with CONFIG_UNWINDER_ORC=y runs on every module) and bc (the tree's Makefiles)
    "libelf-dev", "bc",
)  # fmt: skip
SPATCH_REPOSITORY = "xcp-drbd-builder-test/debian13-spatch"
SPATCH_SUITE = "trixie"
# None: the helper's Dockerfile installs coccinelle with apt, as on debian:trixie-slim
# (debootstrap --include=coccinelle fails configuring libfindlib-ocaml in the new root).
SPATCH_PACKAGES: tuple[str, ...] = ()
# Sources' newest mtime, hence SOURCE_DATE_EPOCH: 2011-12-20, DRBD 8.4.1's release day.
SOURCE_MTIME = 1324339200


def standin_root_image(client: docker.DockerClient) -> str:
    """Tag of the debootstrapped Debian root image, made and imported if it is missing."""
    return debootstrapped(client, SUITE, ROOT_PACKAGES, ROOT_REPOSITORY, debian_mirror(SUITE))


def spatch_base_image(client: docker.DockerClient) -> str:
    """Tag of a debootstrapped Debian 13 root with coccinelle 1.3: the spatch helper's base,
    as ``debian:trixie-slim`` would be (DRBD 9.2 needs a spatch newer than 1.2)."""
    mirror = debian_mirror(SUITE)  # the archive apt knows; it serves trixie as well
    return debootstrapped(client, SPATCH_SUITE, SPATCH_PACKAGES, SPATCH_REPOSITORY, mirror)


@dataclass(frozen=True)
class KernelTree:
    root: Path  # extraction root, laid out like /
    build_dir: Path  # kdir inside it
    release: str


def installed_kernel_headers() -> tuple[Path, Path, Path]:
    """(arch headers, common headers, kbuild) of the newest installed Debian kernel headers."""
    candidates = sorted(Path("/usr/src").glob("linux-headers-*-amd64"))
    for arch_dir in reversed(candidates):
        makefile = arch_dir / "Makefile"
        if not makefile.is_file():
            continue
        include = re.search(r"^include\s+(\S+)/Makefile", makefile.read_text(), re.M)
        scripts = arch_dir / "scripts"
        if include is None or not scripts.is_symlink():
            continue
        common = Path(include.group(1))
        kbuild = scripts.resolve().parent
        if common.is_dir() and kbuild.is_dir():
            return arch_dir, common, kbuild
    raise Unavailable(
        "no Debian kernel headers are installed (apt-get install linux-headers-amd64)"
    )


def copy_kernel_tree(destination: Path) -> KernelTree:
    """Copy the installed headers and kbuild into ``destination`` keeping their layout."""
    arch_dir, common, kbuild = installed_kernel_headers()
    for directory in (arch_dir, common, kbuild):
        target = destination / directory.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(directory, target, symlinks=True)
    build_dir = destination / arch_dir.relative_to("/")
    header = build_dir / "include" / "generated" / "utsrelease.h"
    match = re.search(r'UTS_RELEASE "([^"]+)"', header.read_text())
    if match is None:
        raise Unavailable(f"{header} names no UTS_RELEASE")
    # As in a Red Hat kernel-devel tree: kernel.release is `uname -r` (Debian's headers hold
    # the upstream version there; DRBD 9's spec names files after it).
    release_file = build_dir / "include" / "config" / "kernel.release"
    release_file.unlink(missing_ok=True)
    release_file.write_text(match.group(1) + "\n")
    return KernelTree(root=destination, build_dir=build_dir, release=match.group(1))


def make_drbd_source(
    directory: Path,
    version: str = "8.4.1",
    alter: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``drbd-<version>.tar.gz`` (with ``.filelist``, like a DRBD release) into directory.

    ``alter`` receives the unpacked source directory before it is packed, to break or slow it.
    """
    with tempfile.TemporaryDirectory(prefix="xdb-src-") as work:
        top = f"drbd-{version}"
        source = Path(work) / top
        shutil.copytree(SOURCE_TEMPLATE, source)
        (source / "VERSION").write_text(f"{version}\n")
        (source / "ChangeLog").write_text(f"{version} (api:genl1/proto:86-100)\n * Test source\n")
        if alter is not None:
            alter(source)
        return pack(source, directory / f"{top}.tar.gz", filelist=True)


def make_module_source(
    directory: Path,
    version: str = "8.4.11",
    release: str = "1",
    alter: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``drbd-<version>-<release>.tar.gz``, a module-only source like DRBD 8.4.5+'s:
    the test module and scripts of ``drbd-src/`` with the Makefile and ready ``drbd-km.spec``
    of ``drbd-84-src/``."""
    with tempfile.TemporaryDirectory(prefix="xdb-src-") as work:
        top = f"drbd-{version}-{release}"
        source = Path(work) / top
        source.mkdir()
        shutil.copytree(SOURCE_TEMPLATE / "drbd", source / "drbd")
        _module_pieces(source)
        shutil.copy2(MODULE_ONLY_TEMPLATE / "Makefile", source)
        shutil.copy2(MODULE_ONLY_TEMPLATE / "README", source)
        spec = (MODULE_ONLY_TEMPLATE / "drbd-km.spec.in").read_text()
        spec = spec.replace("@VERSION@", version).replace("@RELEASE@", release)
        (source / "drbd-km.spec").write_text(spec)
        if alter is not None:
            alter(source)
        return pack(source, directory / f"{top}.tar.gz", filelist=False)


def make_kmod_source(
    directory: Path,
    version: str = "9.2.19",
    cache: dict[str, Path] | None = None,
) -> Path:
    """Write ``drbd-<version>.tar.gz``, shaped like DRBD 9's: the test module's source under
    ``drbd/`` with a compat layer (compile tests, semantic patches, Makefile.spatch) and
    ``drbd-kernel.spec``.  ``cache`` maps md5 sums to cocci_cache entries to ship."""
    with tempfile.TemporaryDirectory(prefix="xdb-src-") as work:
        top = f"drbd-{version}"
        source = Path(work) / top
        shutil.copytree(KMOD_TEMPLATE, source)
        spec = (source / "drbd-kernel.spec.in").read_text().replace("@VERSION@", version)
        (source / "drbd-kernel.spec").write_text(spec)
        (source / "drbd-kernel.spec.in").unlink()
        shutil.copy2(SOURCE_TEMPLATE / "drbd" / "drbd_main.c", source / "drbd")
        _module_pieces(source)
        cocci_cache = source / "drbd" / "drbd-kernel-compat" / "cocci_cache"
        cocci_cache.mkdir()
        for checksum, entry in (cache or {}).items():
            shutil.copytree(entry, cocci_cache / checksum)
        return pack(source, directory / f"{top}.tar.gz", filelist=False)


SLOW_STEP = "sleep 600"


def slow_down(source: Path) -> None:
    """Alter a ``drbd-src/`` source so that its userland step sleeps ten minutes: a build that
    is still running when a test interrupts it."""
    makefile = source / "Makefile"
    text = makefile.read_text().replace("tools: user/drbdadm\n", f"tools:\n\t{SLOW_STEP}\n")
    makefile.write_text(text)


def wait_for_slow_step(
    process: subprocess.Popen[str], logs: list[Path], *, seconds: float, what: str
) -> None:
    """Return once every build log shows the slow step (:func:`slow_down`); fail with
    ``process``'s stderr if it ends first, or with ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(log.is_file() and SLOW_STEP in log.read_text() for log in logs):
            return
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.5)
    pytest.fail(what)


def _module_pieces(source: Path) -> None:
    """What every test source shares with ``drbd-src/``: the release script and license."""
    (source / "scripts").mkdir()
    shutil.copy2(SOURCE_TEMPLATE / "scripts" / "get_uts_release.sh", source / "scripts")
    shutil.copy2(SOURCE_TEMPLATE / "COPYING", source)


def pack(source: Path, tarball: Path, *, filelist: bool) -> Path:
    """Pack ``source`` as a release tarball would be: one top directory, root-owned, fixed
    mtimes (so SOURCE_DATE_EPOCH is known)."""
    top = source.name
    files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if not p.is_dir())
    names = files
    if filelist:
        listing = [f"{top}/{name}" for name in [*files, ".filelist"]]
        (source / ".filelist").write_text("\n".join(listing) + "\n")
        names = [".filelist", *files]
    with tarfile.open(tarball, "w:gz") as archive:
        for name in names:
            path = source / name
            info = archive.gettarinfo(str(path), arcname=f"{top}/{name}")
            info.mtime = SOURCE_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with path.open("rb") as stream:
                archive.addfile(info, stream)
    return tarball


def drbd_build(
    image: str,
    kernel: KernelTree,
    tarball: Path,
    *,
    version: str,
    family: DrbdFamily = DrbdFamily.V84_EARLY,
    utils: tuple[str, Path] | None = None,
    kernel_release: str | None = None,
    requires: tuple[KernelRequirement, ...] = (),
) -> drbdbuild.DrbdBuild:
    """What the pipeline would hand to ``drbdbuild.build_drbd`` for the stand-in target."""
    return drbdbuild.DrbdBuild(
        recipe=recipe_for(family),
        drbd=drbdbuild.SourceInput(version=version, tarball=tarball, sha256=file_sha256(tarball)),
        utils=None
        if utils is None
        else drbdbuild.SourceInput(
            version=utils[0], tarball=utils[1], sha256=file_sha256(utils[1])
        ),
        kernel=drbdbuild.KernelInput(
            root=kernel.root,
            build_dir=kernel.build_dir,
            release=kernel_release or kernel.release,
            requires=requires,
        ),
        arch="x86_64",
        image=image,
        context_sha256=context_hash(STANDIN_CONTEXT),
    )


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class StandinInputs:
    """What a spec directory for a target on the stand-in names: the binpkg-shaped ISO, the
    kernel-devel RPM inside it, that kernel's release and the stand-in's Debian root image."""

    iso: Path
    rpm: Path
    release: str
    base_image: str

    def write_specs(
        self,
        directory: Path,
        *,
        drbd: str,
        targets: tuple[str, ...] = ("lab",),
        spatch_base: str | None = None,
    ) -> Path:
        """:func:`write_lab_specs` for ``targets`` (dom0 kernel package ``kernel-xen``)."""
        return write_lab_specs(
            directory,
            targets=dict.fromkeys(targets, "kernel-xen"),
            iso=self.iso,
            rpm=self.rpm,
            release=self.release,
            base_image=self.base_image,
            drbd=drbd,
            spatch_base=spatch_base,
        )


def write_lab_specs(
    directory: Path,
    *,
    targets: dict[str, str],
    iso: Path,
    rpm: Path,
    release: str,
    base_image: str,
    drbd: str,
    yum: str | None = None,
    spatch_base: str | None = None,
    kernel_requires: str = "exact",
    yum_key: str | None = None,
) -> Path:
    """A spec directory with targets on the stand-in (name -> dom0 kernel package), whose
    kernel-devel RPM ``rpm`` is read from ``iso`` (or, given ``yum``, whose kernel-devel
    packages come from that yum repository), and ``drbd``: the ``drbd:`` (and
    ``drbd-utils:``) sections as YAML text.  ``spatch_base`` (:func:`spatch_base_image`) is
    the spatch helper's base, for DRBD 9 builds that make a compat patch; ``kernel_requires``
    the targets' ``kernel.requires``; ``yum_key`` the yum source's ``key:`` as YAML (else it
    is read as ``insecure:``)."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    source = f"""iso: file://{iso}
        path: domain0/RPMS/{rpm.parent.name}/{rpm.name}"""
    if yum is not None:
        source = f"yum: [{yum}]\n" + (yum_key or "        insecure: a local test repository")
    spatch = f"\n      spatch:\n        image: {spatch_base}" if spatch_base else ""
    for name, runtime in targets.items():
        entries.append(
            f"""  {name}:
    name: {name} on the Debian stand-in
    arch: x86_64
    kernel:
      package: kernel-xen-devel
      runtime: {runtime}
      release: {release}
      requires: {kernel_requires}
      source:
        {source}
    container:
      family: standin
      context: {STANDIN_CONTEXT}
      image: {base_image}{spatch}
    consumer: el7
"""
        )
    (directory / "lab.yaml").write_text("targets:\n" + "".join(entries) + drbd)
    return directory


def _rpm_lines(*args: str) -> list[str]:
    return subprocess.run(
        ["rpm", *args], capture_output=True, text=True, check=True
    ).stdout.splitlines()


def base_system(work: Path, rpms: list[Path]) -> Path:
    """A stand-in for dom0's installed base: one package providing every library, file and
    tool the DRBD packages require, except DRBD's own and the kernel."""
    required: set[str] = set()
    provided: set[str] = set()
    for rpm in rpms:
        required.update(_rpm_lines("-qp", "--requires", str(rpm)))
        provided.update(p.split(" ", 1)[0] for p in _rpm_lines("-qp", "--provides", str(rpm)))
        provided.update(_rpm_lines("-qpl", str(rpm)))
    needed = sorted(
        {
            r.split(" ", 1)[0]
            for r in required
            # "(" starts a rich dependency (drbd-utils 9.34: "(drbd-pacemaker if pacemaker)"),
            # met by what it names, not by a package of that name.
            if not r.startswith(("rpmlib(", "kernel", "drbd", "("))
            and r.split(" ", 1)[0] not in provided
        }
    )
    return rpmfactory.build_rpms(work, ["dom0-base"], provides=needed)[0]


def dom0_stand_ins(work: Path, rpms: list[Path]) -> list[Path]:
    """A stand-in for dom0's installed system: the base (``base_system``) and its kernel
    package at the one version-release the module packages require."""
    kernels = {r for r in _rpm_lines("-qp", "--requires", *map(str, rpms))
               if r.startswith("kernel-xen = ")}  # fmt: skip
    assert len(kernels) == 1, kernels
    version, release = kernels.pop().split(" = ", 1)[1].split("-", 1)
    (kernel,) = rpmfactory.build_rpms(
        work / "kernel", ["kernel-xen"], version=version, release=release
    )
    return [base_system(work / "base", rpms), kernel]


def standin_target(client: docker.DockerClient, kernel_tree: KernelTree) -> Target:
    """A target whose build context is the Debian stand-in under tests/integration/."""
    return Target(
        id="standin-debian12",
        name="Debian 12 stand-in for a dom0 build root",
        aliases=(),
        arch="x86_64",
        basearch="x86_64",
        kernel_package="linux-headers",
        kernel_release=kernel_tree.release,
        kernel_source=KernelSource(kind=SourceKind.RPM, file="kernel-devel.rpm"),
        container_family="standin-debian12",
        base_image=standin_root_image(client),
        build_context=STANDIN_CONTEXT,
        consumer=Consumer.EL7,
        spec_file=STANDIN_CONTEXT / "target.yaml",
    )
