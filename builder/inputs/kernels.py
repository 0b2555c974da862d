"""Which dom0 kernels a target is built for, and how their builds are told apart.

A target whose kernel source is a yum repository gets one module build per kernel-devel
release it selects (``--kernel`` or the source's ``kernels:``): ``latest``, the newest match of
``evr:`` (the default); ``all``, every match; or a glob on the version-release, which narrows
``evr:`` further.  Targets whose kernel comes from an ISO or an RPM URL have exactly one.

On XCP-ng every 4.19 kernel update keeps ``uname -r`` (``4.19.0+1``), so the module packages
of two kernel-devel releases would share a name, version and release with different
content, which publish refuses.  Their release therefore carries the kernel-devel's
version-release (:func:`release_suffix`), and each build has its own artifacts directory
(:func:`build_name`).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from builder.errors import ConfigError, InputError
from builder.specs import SAFE_NAME, UNAME_PROVIDE, KernelDependency, SourceKind, Target

if TYPE_CHECKING:
    from builder.inputs.fetch import FetchSettings
    from builder.inputs.yumsource import RepoPackage

LATEST = "latest"
ALL = "all"


def select(evrs: Sequence[str], choice: str) -> list[str]:
    """The version-releases ``choice`` selects from ``evrs`` (newest first), newest first."""
    if not evrs:
        return []
    if choice == LATEST:
        return [evrs[0]]
    if choice == ALL:
        return list(evrs)
    return [evr for evr in evrs if fnmatch.fnmatchcase(evr, choice)]


def build_name(drbd_version: str, kernel_evr: str | None) -> str:
    """The artifacts directory of one build: ``<drbd version>`` for a target with one kernel,
    ``<drbd version>+k<kernel-devel version-release>`` for one built per kernel."""
    if kernel_evr is None:
        return drbd_version
    name = f"{drbd_version}+k{kernel_evr}"
    if not SAFE_NAME.fullmatch(name):
        raise InputError(
            f"The kernel-devel version-release {kernel_evr!r} does not make a plain directory "
            "name (letters, digits and . _ + ~ - only).",
            hint="Narrow the target's evr: or --kernel to the releases you need.",
        )
    return name


RELEASE_CHARACTERS = "A-Za-z0-9.+"  # what a release suffix keeps of a version-release
_NOT_IN_RELEASE = re.compile(f"[^{RELEASE_CHARACTERS}]")


def release_suffix(kernel_evr: str) -> str:
    """What a module package's release gains for the kernel-devel ``kernel_evr``: ``.k``
    then the version-release with anything rpm does not take in a release (``-``) or that
    would change its order (``~``, ``^``, ``_``) turned into ``_``.  A newer kernel gives a
    higher release, so yum's newest module is the newest kernel's."""
    return ".k" + _NOT_IN_RELEASE.sub("_", kernel_evr)


def per_kernel(target: Target) -> bool:
    """Whether ``target``'s builds are made per kernel-devel release (a yum kernel source)."""
    return target.kernel_source.kind is SourceKind.YUM


def check_choice(target: Target, choice: str | None) -> None:
    """Refuse a selection that a target with one kernel cannot make."""
    if choice is None or per_kernel(target) or choice in (LATEST, ALL):
        return
    kind = "an ISO" if target.kernel_source.kind is SourceKind.ISO else "an RPM URL"
    raise ConfigError(
        f"--kernel {choice}: target {target.id} takes its one kernel-devel from {kind}; only "
        "a target whose kernel source is a yum repository has kernels to choose from.",
        hint="Leave out --kernel (or pass latest) for this target.",
    )


def packages(
    target: Target, settings: FetchSettings, listing: list[RepoPackage] | None = None
) -> list[RepoPackage]:
    """Every kernel-devel in ``target``'s repositories matching ``evr:``, newest first (reads
    the repositories' metadata, unless ``listing`` is what they list)."""
    from builder.inputs.yumsource import read_repositories, select_packages

    source = target.kernel_source
    if listing is None:
        listing = read_repositories(
            source.repos, settings, key=source.key, insecure=source.insecure
        )
    return select_packages(
        listing, source.repos, name=target.kernel_package, arch=target.arch, evr_glob=source.evr
    )


def check_kernel_provides(target: Target, evr: str, listing: list[RepoPackage]) -> None:
    """Refuse a target whose module packages would require of dom0's kernel package what the
    vendor's kernel package of version-release ``evr`` does not provide: such a module could
    never be installed (``kernel.requires: uname-r``; ``exact`` names the package itself)."""
    if target.kernel_dependency is not KernelDependency.UNAME_R:
        return
    runtime = target.kernel_runtime
    wanted = target.kernel_requirements(evr)[0]
    kernel = [p for p in listing if p.name == runtime and p.evr == evr and p.arch == target.arch]
    where = ", ".join(target.kernel_source.repos)
    hint = (
        "Check kernel.runtime and kernel.release in the target's spec, or set kernel.requires: "
        "exact if the vendor's kernel package has no kernel-uname-r provide."
    )
    if not kernel:
        raise ConfigError(
            f"Target {target.id} makes its module packages require {wanted}, but the "
            f"repositories ({where}) hold no {runtime}-{evr}.{target.arch} to provide it.",
            hint=hint,
        )
    if str(wanted) not in kernel[0].provides:
        have = [p for p in kernel[0].provides if p.startswith(f"{UNAME_PROVIDE} ")]
        raise ConfigError(
            f"Target {target.id} makes its module packages require {wanted}, but "
            f"{runtime}-{evr}.{target.arch} provides "
            + (", ".join(have) if have else f"no {UNAME_PROVIDE}")
            + ": no dom0 could install the module.",
            hint=hint,
        )


def available(target: Target, settings: FetchSettings) -> list[str]:
    """Every kernel-devel version-release matching ``evr:``, newest first."""
    return [package.evr for package in packages(target, settings)]


def resolve(
    targets: Iterable[Target], choice: str | None, settings: FetchSettings
) -> dict[str, tuple[str, ...]]:
    """The kernel-devel version-releases to build for each per-kernel target, oldest first."""
    found: dict[str, tuple[str, ...]] = {}
    for target in targets:
        check_choice(target, choice)
        if not per_kernel(target) or target.id in found:
            continue
        wanted = choice or target.kernel_source.kernels
        evrs = available(target, settings)
        chosen = select(evrs, wanted)
        if not chosen:
            raise InputError(
                f"No {target.kernel_package} of {target.id} matches --kernel {wanted} (the "
                f"repositories hold {', '.join(evrs)}).",
                hint="Pass latest, all, or a glob on the version-release that matches.",
            )
        found[target.id] = tuple(reversed(chosen))
    return found


def rpm_version_release(path: Path) -> str:
    """The version-release of a local kernel-devel RPM (``--kernel-rpm``), from its header."""
    from builder.rpm.header import read_info

    try:
        info = read_info(path)
    except OSError as exc:
        raise InputError(f"Cannot read the kernel-devel RPM {path}: {exc.strerror}.") from None
    return f"{info.version}-{info.release}"
