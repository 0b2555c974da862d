"""The DRBD build recipes: one per DRBD source family, the only place that knows how it builds.

A recipe declares everything about its family that build, the post-build checks, publish and
deploy need: which sources it takes (the DRBD tarball, and for the module-only families a
drbd-utils release), the commands it runs in the build container, the packages a build must
produce and what the kernel-module package must require, and the DRBD configuration syntax its
userland reads.

Two container runs make one build: the *userland* (once per container family and userland
source, shared by every target that has both) and the *module* (once per target kernel).  For
8.3 and 8.4.0-8.4.4 both come from the DRBD tarball; from 8.4.5 on the DRBD tarball holds only
the module and the userland is a drbd-utils release.

Every command is an argument list; ``rpmbuild.shell_script`` joins them into a POSIX script.
``kernelversion`` and ``kdir`` are always passed (their defaults call ``uname -r``, which in a
container is the build host's kernel), and ``--with-distro=redhat`` is passed to every DRBD
``configure`` the recipe runs, so nothing is guessed from the build root.
"""

from __future__ import annotations

import abc
import enum
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.errors import ConfigError
from builder.inputs.sourcetarball import SourceTarball
from builder.rpm.version import vercmp
from builder.specs import NO_ADJUSTMENTS, Adjustments, DrbdFamily, family_of_version

INPUT_DIR = "/build/input"
PATCH_DIR = "/build/patches"
COMPAT_DIR = "/build/compat"  # a compat cache entry fed into a DRBD 9 build
MACRO_DIR = "/build/macros"  # rpm macro files the recipe brings (KMP_MACROS)
OUTPUT_DIR = "/build/out"
# The container's own /tmp: nothing else runs in it, and it is discarded with it.
WORK_DIR = "/tmp/build"  # noqa: S108
TOP_DIR = f"{WORK_DIR}/rpmbuild"
BUILD_HOST = "xcp-drbd-builder"
DISTRO = "redhat"  # what every dom0 userland is (CentOS 5 and 7)


class Syntax(enum.StrEnum):
    """DRBD configuration syntax generations (resource files, drbdadm)."""

    V83 = "8.3"  # syncer { rate }, resource-level protocol
    V84 = "8.4"  # disk { resync-rate }, yes/no booleans, fencing in disk
    V9 = "9"  # fencing in net


class Requirement(enum.Enum):
    """How the module package must require the userland package drbd-utils."""

    EXACT = "exact"  # drbd-utils = <DRBD version>: built from the same tarball
    MINIMUM = "minimum"  # drbd-utils >= X, which the paired drbd-utils release must satisfy


def patch_names(patches: Sequence[Path]) -> tuple[str, ...]:
    """Names the patches have under PATCH_DIR: numbered, so that two of one name both fit."""
    return tuple(f"{index:02d}-{patch.name}" for index, patch in enumerate(patches, 1))


@dataclass(frozen=True, kw_only=True)
class Source:
    """One source tarball as the container sees it."""

    file_name: str  # mounted at INPUT_DIR/<file_name>
    top_dir: str  # its single top-level directory
    version: str
    patches: tuple[str, ...] = ()  # file names under PATCH_DIR, in order

    @classmethod
    def of(cls, tarball: SourceTarball, version: str, patches: Sequence[Path] = ()) -> Source:
        """How the container sees ``tarball`` (mounted read-only) and its patches."""
        return cls(
            file_name=tarball.name,
            top_dir=tarball.top_dir,
            version=version,
            patches=patch_names(patches),
        )

    @property
    def path(self) -> str:
        return f"{INPUT_DIR}/{self.file_name}"


@dataclass(frozen=True, kw_only=True)
class Job:
    """Everything a recipe needs to write the commands of one container run."""

    source: Source
    arch: str
    adjustments: Adjustments = NO_ADJUSTMENTS
    kernel_release: str | None = None  # module runs only
    kdir: str | None = None  # module runs only, as seen inside the container
    kernel_requires: str | None = None  # "kernel-xen = V-R": what the module must require
    userland_requires: str | None = None  # "drbd-utils >= X", as the DRBD source declares
    # appended to the module package's release: one package per kernel-devel release when
    # the kernel release (uname -r) stays the same across kernel updates (builder.inputs.kernels)
    release_suffix: str | None = None
    jobs: int = 1  # make's -j: the container's CPU limit (parallel_jobs)


def parallel_jobs(cpus: float) -> int:
    """make's -j for a container limited to ``cpus`` CPUs: every CPU it may use, busy."""
    return max(1, math.ceil(cpus))


def make_environment(jobs: int) -> dict[str, str]:
    """-j for every make of the build, the ones rpmbuild's spec files run included (DRBD's
    module targets call make without %{?_smp_mflags})."""
    return {"MAKEFLAGS": f"-j{jobs}"}


Command = list[str]


def _untar_flag(file_name: str) -> str:
    if file_name.endswith((".tar.bz2", ".tbz2")):
        return "-xjf"
    if file_name.endswith((".tar.xz", ".txz")):
        return "-xJf"
    return "-xzf"


def unpack(job: Job) -> list[Command]:
    """Fresh rpm top dir, the source unpacked and patched, and the shell inside it."""
    source = job.source
    commands: list[Command] = [
        ["mkdir", "-p", *(f"{TOP_DIR}/{d}" for d in ("SOURCES", "BUILD", "RPMS", "SRPMS"))],
        ["tar", _untar_flag(source.file_name), source.path, "-C", WORK_DIR],
        ["cd", f"{WORK_DIR}/{source.top_dir}"],
    ]
    for patch in source.patches:
        commands.append(["patch", "-p1", "--batch", "--forward", "-i", f"{PATCH_DIR}/{patch}"])
    return commands


def into_sources(job: Job, name: str, *, changed: bool = False) -> Command:
    """The (patched) source as rpmbuild's Source file ``name``.

    Unpatched, the upstream tarball itself; patched (or ``changed`` otherwise), the tree packed
    again, since the spec's ``%setup`` unpacks the Source file, not the tree we changed.
    """
    source = job.source
    if not source.patches and not changed:
        return ["cp", source.path, f"{TOP_DIR}/SOURCES/{name}"]
    return [
        "tar", "--owner=0", "--group=0", "-czf", f"{TOP_DIR}/SOURCES/{name}",
        "-C", WORK_DIR, source.top_dir,
    ]  # fmt: skip


def configure(job: Job, *extra: str) -> Command:
    return ["./configure", f"--with-distro={DISTRO}", *extra, *job.adjustments.configure]


def rpmbuild(job: Job, spec: str, *extra: str) -> Command:
    command = [
        "rpmbuild",
        "-bb",
        "--target",
        job.arch,
        "--define",
        f"_topdir {TOP_DIR}",
        "--define",
        f"_buildhost {BUILD_HOST}",
        "--define",
        "use_source_date_epoch_as_buildtime 1",
        "--define",
        "clamp_mtime_to_source_date_epoch 1",
        "--define",
        f"_smp_mflags -j{job.jobs}",
    ]
    if job.kernel_release is not None and job.kdir is not None:
        command += [
            "--define",
            f"kernelversion {job.kernel_release}",
            "--define",
            f"kdir {job.kdir}",
        ]
    return [*command, *extra, *job.adjustments.rpmbuild, spec]


COLLECT: Command = [
    "find", f"{TOP_DIR}/RPMS", "-name", "*.rpm", "-exec", "cp", "{}", OUTPUT_DIR, ";",
]  # fmt: skip


def km_package_name(kernel_release: str, prefix: str = "drbd-km") -> str:
    """drbd-km.spec names its subpackage after the kernel release with ``-`` turned into ``_``."""
    return f"{prefix}-{kernel_release.replace('-', '_')}"


def km_release(job: Job, spec: str) -> list[Command]:
    """drbd-km.spec's module subpackage gets ``Release: %{release}<suffix>``, and the build
    stops if the spec has no ``%package %{krelver}`` line to put it under.

    The main package's Release stays: the spec's Source and ``%setup`` name the tarball
    after it (``drbd-8.4.11-1.tar.gz``).  A subpackage may set its own Release (kmodtool's
    kmod packages do), and only the subpackage is built as a package."""
    if not job.release_suffix:
        return []
    line = f"Release: %{{release}}{job.release_suffix}"
    return [
        ["sed", "-i", "-e", rf"/^%package[[:space:]]\+%{{krelver}}[[:space:]]*$/a {line}", spec],
        ["grep", "-qxF", line, spec],
    ]


# DRBD's drbd-km.spec (8.3 to 8.4.11) unloads a loaded drbd in %preun, which an upgrade runs
# too: on a running host it fails ("in use") and the old package stays, or pulls the module
# from under DRBD. Only the final removal ($1 = 0) may unload it, and never fails for it.
PREUN_RMMOD = r"^\([[:space:]]*\)rmmod drbd[[:space:]]*$"
PREUN_GUARDED = r'\1[ "$1" -ne 0 ] || rmmod drbd || :'


def km_scriptlets(spec: str) -> list[Command]:
    """drbd-km.spec's %preun unloads the module only when the package is removed."""
    return [["sed", "-i", "-e", f"s/{PREUN_RMMOD}/{PREUN_GUARDED}/", spec]]


def bundled_commands(job: Job, km: str, spec: str) -> list[Command]:
    """DRBD's own recipe for 8.3 and 8.4.0-8.4.4: configure, ``make tgz <spec>``, rpmbuild."""
    tgz = f"drbd-{job.source.version}.tar.gz"
    return [
        *unpack(job),
        configure(job, km),
        # FORCE=1: without it `tgz` first rebuilds the release's man pages, which needs
        # xsltproc and DocBook stylesheets fetched over the network, which is off here.
        ["make", "tgz", spec, "FORCE=1"],
        ["cp", tgz, f"{TOP_DIR}/SOURCES/{tgz}"],
        *km_release(job, spec),
        *km_scriptlets(spec),
        rpmbuild(job, spec),
        COLLECT,
    ]


@dataclass(frozen=True, kw_only=True)
class Userland(abc.ABC):
    """How one kind of userland source builds, and what it must produce."""

    name: str  # what the source is, for messages: "DRBD", "drbd-utils"
    packages: frozenset[str]  # package names every build must produce
    install: tuple[str, ...]  # what dom0 installs (deploy's runbook)
    files: tuple[str, ...]  # files its tarball must hold (below the top directory)

    @abc.abstractmethod
    def commands(self, job: Job) -> list[Command]:
        """The container commands that leave this userland's RPMs in OUTPUT_DIR."""


@dataclass(frozen=True, kw_only=True)
class BundledUserland(Userland):
    """8.3 and 8.4.0-8.4.4: DRBD's own tarball, ``make tgz drbd.spec``."""

    def commands(self, job: Job) -> list[Command]:
        return bundled_commands(job, "--without-km", "drbd.spec")


@dataclass(frozen=True, kw_only=True)
class UtilsUserland(Userland):
    """drbd-utils releases: ``configure --enable-spec`` writes ``drbd.spec``, whose Source is
    ``drbd-utils-<version>.tar.gz`` (a file of another name, such as Debian's
    ``drbd-utils_<version>.orig.tar.gz``, is put there under that name)."""

    def commands(self, job: Job) -> list[Command]:
        return [
            *unpack(job),
            # Only the spec file: the build itself runs configure again under rpm.
            configure(job, "--enable-spec"),
            into_sources(job, f"drbd-utils-{job.source.version}.tar.gz"),
            # A release tarball carries its man pages: regenerating them needs po4a and
            # asciidoctor, which neither dom0-era image has.
            rpmbuild(job, "drbd.spec", "--with", "prebuiltman"),
            COLLECT,
        ]


BUNDLED_USERLAND = BundledUserland(
    name="DRBD",
    packages=frozenset({"drbd", "drbd-utils", "drbd-xen", "drbd-udev"}),
    install=("drbd",),
    files=("configure", "drbd.spec.in"),
)
DRBD_UTILS = UtilsUserland(
    name="drbd-utils",
    packages=frozenset({"drbd", "drbd-utils"}),
    install=("drbd-utils",),
    files=("configure", "drbd.spec.in"),
)


@dataclass(frozen=True, kw_only=True)
class Recipe(abc.ABC):
    """One DRBD source family."""

    family: DrbdFamily
    versions: str  # the releases it covers, for people
    syntax: Syntax
    userland: Userland
    requirement: Requirement  # how the module package must require drbd-utils
    dom0: str  # which dom0 kernels it fits, for people
    files: tuple[str, ...]  # files the DRBD tarball must hold (below the top directory)
    # the tarball's own spec file of the module, for the module-only families
    module_spec: str | None = None

    @property
    def userland_from_utils(self) -> bool:
        """True when the userland is a drbd-utils release, not the DRBD tarball."""
        return isinstance(self.userland, UtilsUserland)

    def userland_requirement_of(self, drbd: SourceTarball) -> str | None:
        """The drbd-utils range the module-only family's spec file in ``drbd`` declares, if any."""
        if self.module_spec is None:
            return None
        return userland_requirement(drbd.spec_text(self.module_spec))

    def check_sources(
        self,
        drbd: SourceTarball,
        userland: SourceTarball,
        *,
        version: str,
        userland_version: str,
        utils: str | None,
    ) -> str | None:
        """Refuse, before any container starts, a tarball this recipe cannot build, and a
        drbd-utils release (``utils``, the one the spec entry pairs with DRBD ``version``)
        older than the module requires; return that requirement ("drbd-utils >= X"), if any."""
        family = self.family.value
        check_tarball(f"DRBD {version}", drbd.name, family, self.files, drbd.files)
        check_tarball(
            f"the {self.userland.name} {userland_version} userland",
            userland.name,
            family,
            self.userland.files,
            userland.files,
        )
        wanted = self.userland_requirement_of(drbd)
        if wanted is not None and utils is not None:
            minimum = wanted.split(">=", 1)[1].strip()
            if vercmp(utils, minimum) < 0:
                raise ConfigError(
                    f"DRBD {version}'s module package requires {wanted}, but its spec entry "
                    f"pairs it with drbd-utils {utils}.",
                    hint="Name a newer drbd-utils release in utils: (and define it under "
                    "drbd-utils:).",
                )
        return wanted

    def module_package(self, kernel_release: str) -> str:
        return km_package_name(kernel_release)

    @abc.abstractmethod
    def module_commands(self, job: Job) -> list[Command]:
        """The container commands that leave the module package in OUTPUT_DIR."""


@dataclass(frozen=True, kw_only=True)
class BundledRecipe(Recipe):
    """8.3 and 8.4.0-8.4.4: ``./configure --with-km``, ``make tgz drbd-km.spec``,
    ``rpmbuild -bb drbd-km.spec`` (the recipe DRBD documents for these releases)."""

    def module_commands(self, job: Job) -> list[Command]:
        return bundled_commands(job, "--with-km", "drbd-km.spec")


@dataclass(frozen=True, kw_only=True)
class ModuleOnlyRecipe(Recipe):
    """8.4.5-8.4.11: the tarball (``drbd-8.4.11-1.tar.gz``, top directory ``drbd-8.4.11-1``)
    holds the module and a ready ``drbd-km.spec`` whose Source is the tarball itself (what
    LINBIT's ``make km-rpm`` runs)."""

    def module_commands(self, job: Job) -> list[Command]:
        return [
            *unpack(job),
            into_sources(job, job.source.file_name),
            *km_release(job, "drbd-km.spec"),
            *km_scriptlets("drbd-km.spec"),
            rpmbuild(job, "drbd-km.spec"),
            COLLECT,
        ]


COCCI_CACHE = "drbd/drbd-kernel-compat/cocci_cache"
KMP_MACROS = Path(__file__).with_name("kmp.macros")


@dataclass(frozen=True, kw_only=True)
class KmodRecipe(Recipe):
    """9.0-9.2: the tarball holds the module and ``drbd-kernel.spec``, which builds
    ``kmod-drbd`` (version ``<drbd>_<kernel>``, modules under ``extra/drbd/``) through
    ``%kernel_module_package`` (LINBIT: ``make kmp-rpm``).

    The module's compat layer needs a patch for the target kernel: the build compiles DRBD's
    compat tests against the kernel tree into ``compat.h`` and looks the patch up in
    ``drbd/drbd-kernel-compat/cocci_cache/<md5 of compat.h>/``; on a miss it would run
    ``spatch`` or call an online service.  So the recipe runs in three steps, all offline:
    ``compat_commands`` makes compat.h in the target image; on a miss ``spatch_commands``
    makes the cache entry in a helper image that has coccinelle; ``module_commands`` puts
    the entry into the tarball and runs rpmbuild with ``SPAAS=false``.

    ``%kernel_module_package`` comes from ``kmp.macros`` beside this file, not from
    redhat-rpm-config's kmodtool: kmodtool takes the kernel from installed kernel-devel
    packages and ``/usr/src/kernels/<version>``, while here the tree is mounted, not
    installed, and the package must require exactly the dom0 kernel.
    """

    # DRBD 9.2's Makefile.spatch refuses an older spatch ("Install a suitable version of
    # coccinelle (>1.2)"): 1.1.1 cannot parse its rules (__counted_by in counted_by__no_present
    # .cocci), and on a kernel as old as 4.19 those rules apply.
    spatch_newer_than: tuple[int, ...] = (1, 2)

    def module_package(self, kernel_release: str) -> str:
        return "kmod-drbd"

    def compat_commands(self, job: Job) -> list[Command]:
        """compat.h for the target kernel, left in OUTPUT_DIR."""
        return [
            *unpack(job),
            ["make", "-C", "drbd", "compat.h", f"KDIR={job.kdir}", "SPAAS=false"],
            ["cp", "-L", "drbd/compat.h", f"{OUTPUT_DIR}/compat.h"],
        ]

    def spatch_commands(self, job: Job, checksum: str) -> list[Command]:
        """DRBD's own re-generate rule for one cache entry (spatch, no online service), with
        compat.h from COMPAT_DIR; the entry's files are left in OUTPUT_DIR."""
        entry = f"{COCCI_CACHE}/{checksum}"
        return [
            *unpack(job),
            ["mkdir", "-p", entry],
            ["cp", f"{COMPAT_DIR}/compat.h", f"{entry}/compat.h"],
            [
                "make",
                "-C",
                "drbd",
                "-f",
                "Makefile.spatch",
                f"{entry.removeprefix('drbd/')}/compat.patch",
                "SPAAS=false",
                f"KERNELRELEASE={job.kernel_release}",
            ],
            [
                "find",
                entry,
                "-maxdepth",
                "1",
                "-type",
                "f",
                "!",
                "-name",
                ".*",
                "-exec",
                "cp",
                "{}",
                OUTPUT_DIR,
                ";",
            ],
        ]

    def module_commands(self, job: Job, compat: str | None = None) -> list[Command]:
        """rpmbuild of drbd-kernel.spec; ``compat`` is the checksum of a cache entry mounted
        at COMPAT_DIR that the tarball lacks."""
        release = job.kernel_release or ""
        commands = unpack(job)
        if compat is not None:
            entry = f"{COCCI_CACHE}/{compat}"
            commands += [["mkdir", "-p", entry], ["cp", "-R", f"{COMPAT_DIR}/.", entry]]
        defines = [
            f"kernel_version {release}",
            f"xdb_kernel_release {release}",
            f"xdb_kdir {job.kdir}",
        ]
        if job.kernel_requires:
            defines.append(f"xdb_kernel_requires {job.kernel_requires}")
        if job.userland_requires:
            defines.append(f"xdb_userland_requires {job.userland_requires}")
        if job.release_suffix:
            defines.append(f"xdb_release_suffix {job.release_suffix}")
        return [
            *commands,
            into_sources(job, job.source.file_name, changed=compat is not None),
            # Read after the system's macro files: these definitions win.
            ["cp", f"{MACRO_DIR}/{KMP_MACROS.name}", f"{WORK_DIR}/.rpmmacros"],
            rpmbuild(job, "drbd-kernel.spec", *(w for d in defines for w in ("--define", d))),
            COLLECT,
        ]


RECIPES: dict[DrbdFamily, Recipe] = {
    DrbdFamily.V83: BundledRecipe(
        family=DrbdFamily.V83,
        versions="8.3.x",
        syntax=Syntax.V83,
        userland=BUNDLED_USERLAND,
        requirement=Requirement.EXACT,
        dom0="2.6.32 dom0s: XCP 1.x, XenServer up to 6.2",
        files=("configure", "drbd-km.spec.in"),
    ),
    DrbdFamily.V84_EARLY: BundledRecipe(
        family=DrbdFamily.V84_EARLY,
        versions="8.4.0 - 8.4.4",
        syntax=Syntax.V84,
        userland=BUNDLED_USERLAND,
        requirement=Requirement.EXACT,
        dom0="2.6.32 dom0s: XCP 1.x, XenServer up to 6.2",
        files=("configure", "drbd-km.spec.in"),
    ),
    DrbdFamily.V84: ModuleOnlyRecipe(
        family=DrbdFamily.V84,
        versions="8.4.5 - 8.4.11",
        syntax=Syntax.V84,
        userland=DRBD_UTILS,
        requirement=Requirement.MINIMUM,
        dom0="kernels before 4.18 (8.4.11 does not compile against XCP-ng 8.x's 4.19)",
        files=("drbd-km.spec",),
        module_spec="drbd-km.spec",
    ),
    DrbdFamily.V9: KmodRecipe(
        family=DrbdFamily.V9,
        versions="9.0 - 9.2",
        syntax=Syntax.V9,
        userland=DRBD_UTILS,
        requirement=Requirement.MINIMUM,
        dom0="XCP-ng 8.2 and 8.3 (4.19; DRBD 9 needs 4.12.14 or newer)",
        files=("drbd-kernel.spec", "drbd/Makefile.spatch"),
        module_spec="drbd-kernel.spec",
    ),
}


def recipe_for(family: DrbdFamily) -> Recipe:
    try:
        return RECIPES[family]
    except KeyError:
        raise ConfigError(f"DRBD source family {family.value} has no build recipe.") from None


HINTS = {
    "configure": "DRBD 8.4.5 and later hold only the kernel module (family 8.4 or 9, with a "
    "drbd-utils release as utils:)",
    "drbd-km.spec": "DRBD 8.3 and 8.4.0 to 8.4.4 write their spec files with configure "
    "(family 8.3 or 8.4-early); DRBD 9 has drbd-kernel.spec (family 9)",
    "drbd-kernel.spec": "DRBD 8.4.5 to 8.4.11 have drbd-km.spec (family 8.4)",
    "drbd.spec.in": "a drbd-utils release or an 8.3/8.4.0-8.4.4 DRBD tarball has it",
    "drbd-km.spec.in": "DRBD 8.4.5 and later hold a ready drbd-km.spec (family 8.4)",
}


def check_tarball(
    what: str, file_name: str, family: str, wanted: Sequence[str], members: frozenset[str]
) -> None:
    """Refuse a tarball that lacks a file its recipe needs: a family/tarball mismatch."""
    missing = [name for name in wanted if name not in members]
    if missing:
        raise ConfigError(
            f"{file_name} has no {missing[0]}, which the family {family} recipe for {what} "
            f"needs: the spec names the wrong family, or the tarball is not a release tarball.",
            hint=HINTS.get(missing[0]),
        )


USERLAND_REQUIREMENT = re.compile(r"^Requires:.*?\b(drbd-utils\s*>=\s*[0-9][^\s,]*)", re.M)


def userland_requirement(spec_text: str) -> str | None:
    """``drbd-utils >= X`` as a DRBD spec file requires it (None when it names no range)."""
    match = USERLAND_REQUIREMENT.search(spec_text)
    return re.sub(r"\s+", " ", match.group(1)) if match else None


def recipe_of_version(version: str) -> Recipe | None:
    """The recipe of a DRBD release number (``8.4.11``, ``9.2``, ``9``); None if it is none."""
    family = family_of_version(version if "." in version else f"{version}.0")
    return RECIPES.get(family) if family is not None else None


def expected_packages(recipe: Recipe, kernel_release: str) -> frozenset[str]:
    return recipe.userland.packages | {recipe.module_package(kernel_release)}


def describe_families() -> Sequence[tuple[str, str, str]]:
    """(family, versions, dom0 kernels) of every recipe, for ``targets`` and the README."""
    return [(r.family.value, r.versions, r.dom0) for r in RECIPES.values()]
