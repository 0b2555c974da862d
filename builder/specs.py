"""The registry of dom0 targets and DRBD versions: the frozen values every stage is handed.

Spec files are plain YAML with a ``targets:`` and/or a ``drbd:`` mapping;
:mod:`builder.registry` reads them, once, into these values (``load_registry``), and nothing
downstream reads YAML again.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from builder.errors import ConfigError

# Names end up in file names, container names, rpm macros and shell runbooks: keep them plain.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]*$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
# --kernel and a yum source's kernels: latest, all, an exact version-release or a glob on it.
KERNEL_CHOICE = re.compile(r"^[A-Za-z0-9*?\[\]!][A-Za-z0-9._+~*?\[\]!-]*$")


class SourceKind(enum.StrEnum):
    ISO = "iso"  # an ISO image holding the kernel-devel RPM at a known path
    RPM = "rpm"  # the kernel-devel RPM itself at a URL
    YUM = "yum"  # yum repositories whose metadata names the kernel-devel package


class Consumer(enum.StrEnum):
    """The yum/rpm generation of the target's dom0: decides repo checksums and signatures."""

    EL5 = "el5"
    EL7 = "el7"


class KernelDependency(enum.StrEnum):
    """How a module package requires dom0's kernel package (a target's ``kernel.requires``)."""

    # "<runtime> = <version-release>": one module package per kernel package, for dom0s whose
    # kernel never changes (XCP 1.x and XenServer 6.x, kernel-xen).
    EXACT = "exact"
    # "kernel-uname-r = <release>" and "<runtime> >= <version-release>": the module follows the
    # running kernel's ABI name through in-place kernel updates that keep `uname -r`, and never
    # goes onto a kernel older than the one it was built against (XCP-ng's driver packages).
    UNAME_R = "uname-r"


UNAME_PROVIDE = "kernel-uname-r"  # what Red Hat-style kernel packages provide: `uname -r`


@dataclass(frozen=True)
class KernelRequirement:
    """One requirement of a module package on dom0's kernel: ``name op version``."""

    name: str
    op: str  # "=" or ">="
    version: str

    def __str__(self) -> str:
        return f"{self.name} {self.op} {self.version}"


class DrbdFamily(enum.StrEnum):
    """DRBD source layouts that share one build recipe (``builder.builds.recipes``)."""

    V83 = "8.3"  # 8.3.x: userland + module in one tarball
    V84_EARLY = "8.4-early"  # 8.4.0 - 8.4.4: the same layout
    V84 = "8.4"  # 8.4.5 - 8.4.11: module only; userland from drbd-utils
    V9 = "9"  # 9.0 - 9.2: module only (kmod-drbd); userland from drbd-utils 9.x


# Families whose tarball holds only the kernel module: their userland is a drbd-utils release.
SEPARATE_USERLAND = frozenset({DrbdFamily.V84, DrbdFamily.V9})
_RELEASE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


def family_of_version(version: str) -> DrbdFamily | None:
    """The source family a DRBD release number belongs to; None for names that are not one."""
    match = _RELEASE.match(version)
    if match is None:
        return None
    major, minor, patch = (int(part) if part else 0 for part in match.groups())
    if major == 9:
        return DrbdFamily.V9
    if (major, minor) == (8, 3):
        return DrbdFamily.V83
    if (major, minor) == (8, 4):
        return DrbdFamily.V84_EARLY if patch <= 4 else DrbdFamily.V84
    return None


@dataclass(frozen=True, kw_only=True)
class Adjustments:
    """What a spec entry changes about a build: applied in the container, recorded in the
    manifest.  A DRBD version, a drbd-utils version and a target may each carry some; a build
    applies the target's after the version's."""

    patches: tuple[Path, ...] = ()  # applied in order with ``patch -p1`` to the unpacked source
    configure: tuple[str, ...] = ()  # appended to every ./configure the recipe runs itself
    rpmbuild: tuple[str, ...] = ()  # appended to every rpmbuild (``--without manual``, ...)
    make: tuple[tuple[str, str], ...] = ()  # make variables, exported to every command
    cflags: str | None = None  # CFLAGS for the userland (rpm's %configure uses it as given)

    def __add__(self, other: Adjustments) -> Adjustments:
        make = dict(self.make)
        make.update(other.make)
        return Adjustments(
            patches=self.patches + other.patches,
            configure=self.configure + other.configure,
            rpmbuild=self.rpmbuild + other.rpmbuild,
            make=tuple(sorted(make.items())),
            cflags=" ".join(f for f in (self.cflags, other.cflags) if f) or None,
        )

    def __bool__(self) -> bool:
        return bool(self.patches or self.configure or self.rpmbuild or self.make or self.cflags)


NO_ADJUSTMENTS = Adjustments()


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What one build container may use, so that a broken or hostile source cannot exhaust
    the host: memory (swap included), processes, CPUs, and wall time."""

    memory_mib: int = 4096
    pids: int = 4096
    cpus: float = float(os.cpu_count() or 1)
    timeout: float = 7200.0  # seconds


DEFAULT_LIMITS = Limits()


FINGERPRINT = re.compile(r"^[0-9A-F]{40}$")


def normal_fingerprint(text: str) -> str:
    """``34AC 2EB6 …`` or ``0x34ac2eb6…`` as 40 upper-case hex digits (unchecked)."""
    return re.sub(r"\s+", "", text).upper().removeprefix("0X")


@dataclass(frozen=True)
class VendorKey:
    """The key a vendor signs its kernel repositories and packages with (``key:``)."""

    file: Path  # its public key file, shipped beside the spec like a checksum
    fingerprint: str  # the pin: 40 upper-case hex digits


@dataclass(frozen=True, kw_only=True)
class KernelSource:
    kind: SourceKind
    url: str | None = None  # ISO or RPM URL; None where the vendor has no public download
    file: str | None = None  # file name, for --mirror and for the user's --iso/--kernel-rpm
    path: str | None = None  # path inside the ISO
    repos: tuple[str, ...] = ()  # yum base URLs
    evr: str | None = None  # yum: glob on "version-release" selecting the package
    # yum: which matches of evr are built, unless --kernel says: latest, all, or a glob
    kernels: str = "latest"
    sha256: str | None = None  # pinned hash of the ISO or RPM
    note: str | None = None  # how to obtain the file when there is no URL
    # yum: the vendor's signing key (its public key file, its pinned fingerprint), or why
    # the repositories are read without one (`insecure:`)
    key: VendorKey | None = None
    insecure: str | None = None

    @property
    def file_name(self) -> str:
        if self.file:
            return self.file
        return (self.url or "").rstrip("/").rsplit("/", 1)[-1]

    @property
    def lock_key(self) -> str:
        """The key of this input in the lock files: its URL, or its file name without one."""
        return self.url or f"file:{self.file_name}"


@dataclass(frozen=True, kw_only=True)
class Target:
    id: str
    name: str
    aliases: tuple[str, ...]
    arch: str  # kernel and module arch (rpm's %_target_cpu)
    basearch: str  # yum $basearch of the consumer repo
    kernel_package: str
    kernel_release: str  # `uname -r` on dom0, as derived from the build tree
    kernel_runtime: str = "kernel"  # dom0's kernel package, which drbd-km must require
    kernel_dependency: KernelDependency = KernelDependency.EXACT  # kernel.requires
    kernel_source: KernelSource
    container_family: str
    base_image: str | None
    build_context: Path | None
    # DRBD 9's spatch helper image: its BASE_IMAGE and its build context (None: the defaults)
    spatch_image: str | None = None
    spatch_context: Path | None = None
    consumer: Consumer
    adjustments: Adjustments = NO_ADJUSTMENTS  # the target's `build:` mapping
    drbd_versions: tuple[str, ...] = ()  # the DRBD releases that fit its kernel (`drbd:`)
    # `checked:` what each of those was built against, and when (shown by `targets`)
    checked: Mapping[str, str] = field(default_factory=dict)
    limits: Limits = DEFAULT_LIMITS  # container.limits
    # Where the entry was read: patches and its lock file (builder.inputs.checksums.lock_for)
    spec_file: Path = field(compare=False)

    def kernel_requirements(self, kernel_evr: str) -> tuple[KernelRequirement, ...]:
        """What a module built against the kernel-devel ``kernel_evr`` must require."""
        if self.kernel_dependency is KernelDependency.UNAME_R:
            return (
                KernelRequirement(UNAME_PROVIDE, "=", self.kernel_release),
                KernelRequirement(self.kernel_runtime, ">=", kernel_evr),
            )
        return (KernelRequirement(self.kernel_runtime, "=", kernel_evr),)


def version_numbers(release: str) -> tuple[int, ...]:
    """The leading dotted numbers of a release: ``4.19.0+1`` → (4, 19, 0), ``1.3`` → (1, 3)."""
    match = re.match(r"\d+(?:\.\d+)*", release)
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def at_least(release: tuple[int, ...], bound: tuple[int, ...]) -> bool:
    """``release >= bound``, the shorter padded with zeros (4.18 is 4.18.0)."""
    width = max(len(release), len(bound))
    return release + (0,) * (width - len(release)) >= bound + (0,) * (width - len(bound))


KERNEL_BOUND = re.compile(r"^\d+(?:\.\d+){0,3}$")


@dataclass(frozen=True, kw_only=True)
class KernelRange:
    """The kernels a DRBD release's compat layer knows how to build against (``kernels:``)."""

    oldest: str | None  # `from`: the oldest kernel version it builds against
    below: str | None  # the first kernel version it no longer builds against
    why: str  # the evidence: what fails outside the range
    instead: str | None = None  # what to use outside it

    def fits(self, release: str) -> bool:
        numbers = version_numbers(release)
        if not numbers:
            return True  # not a version number: nothing to judge it by
        if self.oldest is not None and not at_least(numbers, version_numbers(self.oldest)):
            return False
        return self.below is None or not at_least(numbers, version_numbers(self.below))

    def describe(self) -> str:
        if self.oldest and self.below:
            return f"kernels {self.oldest} up to, not including, {self.below}"
        if self.oldest:
            return f"kernels {self.oldest} and newer"
        return f"kernels older than {self.below}"


@dataclass(frozen=True, kw_only=True)
class Tarball:
    """A release tarball named in a spec file: a DRBD or a drbd-utils version."""

    version: str
    url: str
    sha256: str | None
    adjustments: Adjustments = NO_ADJUSTMENTS
    # Where the entry was read: patches and its lock file (builder.inputs.checksums.lock_for)
    spec_file: Path = field(compare=False)

    @property
    def tarball_name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True, kw_only=True)
class UtilsVersion(Tarball):
    """A drbd-utils release: the userland of the module-only DRBD families."""


@dataclass(frozen=True, kw_only=True)
class DrbdVersion(Tarball):
    family: DrbdFamily
    utils: UtilsVersion | None = None  # the userland it pairs with (8.4 and 9 families)
    kernels: KernelRange | None = None  # the kernels it builds against; None: not known

    def refusal(self, target: Target) -> ConfigError | None:
        """Why this release cannot be built for ``target``'s kernel, if its range says so."""
        if self.kernels is None or self.kernels.fits(target.kernel_release):
            return None
        hint = f"Use {self.kernels.instead}." if self.kernels.instead else None
        return ConfigError(
            f"DRBD {self.version} does not build against {target.id}'s kernel "
            f"{target.kernel_release}: it fits {self.kernels.describe()}, because "
            f"{self.kernels.why}.",
            hint=hint,
        )


@dataclass(frozen=True)
class Registry:
    targets: Mapping[str, Target]
    drbd: Mapping[str, DrbdVersion]
    utils: Mapping[str, UtilsVersion] = field(default_factory=dict)

    def target(self, name: str) -> Target:
        """Resolve a target id or alias (``1.5``, ``xcp-1.5``)."""
        check_safe_name(name, "target")
        if name in self.targets:
            return self.targets[name]
        for target in self.targets.values():
            if name in target.aliases:
                return target
        valid = ", ".join(
            f"{t.id} ({', '.join(t.aliases)})" if t.aliases else t.id for t in self.targets.values()
        )
        raise ConfigError(f"Unknown target {name!r}.", hint=f"Valid targets: {valid}.")

    def targets_named(self, names: Sequence[str]) -> list[Target]:
        """Targets by id or alias, ``all`` for every one, in order, each once."""
        found: list[Target] = []
        for name in names:
            for target in self.targets.values() if name == "all" else [self.target(name)]:
                if target not in found:
                    found.append(target)
        return found

    def drbd_version(self, version: str) -> DrbdVersion:
        check_safe_name(version, "DRBD version")
        if version in self.drbd:
            return self.drbd[version]
        valid = ", ".join(self.drbd)
        raise ConfigError(
            f"Unknown DRBD version {version!r}.",
            hint=f"Valid versions: {valid}. Add others with a spec file and --specs DIR.",
        )


def check_safe_name(value: str, what: str) -> str:
    if not SAFE_NAME.fullmatch(value):
        raise ConfigError(
            f"Invalid {what} {value!r}: only letters, digits and . _ + ~ - are allowed, "
            "starting with a letter or digit."
        )
    return value
