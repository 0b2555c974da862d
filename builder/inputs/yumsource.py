"""Find a package in yum repositories by reading their metadata (repomd.xml, primary.xml).

Used for kernel sources published as yum repositories (XCP-ng).  createrepo_c parses the
metadata (any compression), so no XML is handled here.
"""

from __future__ import annotations

import fnmatch
import functools
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import InputError
from builder.inputs.fetch import FetchSettings, Input, fetch
from builder.inputs.rpm import vercmp


@dataclass(frozen=True)
class RepoPackage:
    name: str
    arch: str
    version: str
    release: str
    url: str
    checksum_type: str
    checksum: str
    # What the package provides, as "name", "name = version" or "name >= version-release"
    provides: tuple[str, ...] = ()

    @property
    def evr(self) -> str:
        return f"{self.version}-{self.release}"

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _join(base: str, href: str) -> str:
    return urllib.parse.urljoin(base if base.endswith("/") else base + "/", href)


@dataclass(frozen=True)
class MetadataFile:
    href: str  # relative to the repository
    checksum_type: str
    checksum: str


def primary_metadata(repomd: Path, base: str = "") -> MetadataFile:
    """Where ``repomd.xml`` says the primary metadata is, and its checksum."""
    import createrepo_c as cr

    try:
        records = cr.Repomd(str(repomd)).records
    except Exception as exc:  # createrepo_c raises its own error type for bad XML
        raise InputError(
            f"The repository metadata {base}repodata/repomd.xml cannot be parsed: {exc}."
        ) from None
    for record in records:
        if record.type == "primary" and record.location_href:
            return MetadataFile(
                href=str(record.location_href),
                checksum_type=str(record.checksum_type or ""),
                checksum=str(record.checksum or ""),
            )
    raise InputError(f"The repository {base} has no primary metadata in repomd.xml.")


def read_primary(primary: Path, base: str = "") -> list[RepoPackage]:
    """Every package in primary.xml (any compression), parsed by createrepo_c as a stream."""
    import createrepo_c as cr

    found: list[RepoPackage] = []

    def keep(package: Any) -> bool:
        found.append(
            RepoPackage(
                name=package.name,
                arch=package.arch,
                version=package.version,
                release=package.release,
                url=_join(package.location_base or base, package.location_href),
                checksum_type=package.checksum_type,
                checksum=package.pkgId,
                provides=tuple(_provide(entry) for entry in package.provides),
            )
        )
        return True

    try:
        cr.xml_parse_primary(str(primary), pkgcb=keep, do_files=0)
    except Exception as exc:
        raise InputError(f"The primary metadata of {base} cannot be parsed: {exc}.") from None
    return found


_FLAGS = {"EQ": "=", "GE": ">=", "LE": "<=", "GT": ">", "LT": "<"}


def _provide(entry: tuple[Any, ...]) -> str:
    """createrepo_c's (name, flags, epoch, version, release, pre) as rpm prints a provide."""
    name, flags, epoch, version, release = (entry + (None,) * 5)[:5]
    if not flags or not version:
        return str(name)
    evr = (f"{epoch}:" if epoch and epoch != "0" else "") + str(version)
    return f"{name} {_FLAGS.get(str(flags), str(flags))} {evr}" + (f"-{release}" if release else "")


def newest_first(packages: list[RepoPackage]) -> list[RepoPackage]:
    """Packages sorted by rpm's version order, newest first."""

    def order(a: RepoPackage, b: RepoPackage) -> int:
        return vercmp(a.version, b.version) or vercmp(a.release, b.release)

    return sorted(packages, key=functools.cmp_to_key(order), reverse=True)


def read_repositories(repos: tuple[str, ...], settings: FetchSettings) -> list[RepoPackage]:
    """Every package the repositories list, in the order of ``repos``."""
    listed_packages: list[RepoPackage] = []
    for base in repos:
        base_url = base if base.endswith("/") else base + "/"
        # Metadata is fetched without a lock: the repository signs and checksums it itself.
        repomd = fetch(
            Input(
                what=f"repository metadata of {base_url}",
                url=_join(base_url, "repodata/repomd.xml"),
                file_name="repomd.xml",
                key=base_url,
            ),
            settings,
            fresh=True,
        )
        listed = primary_metadata(repomd.path, base_url)
        primary_url = _join(base_url, listed.href)
        # repomd.xml names the primary metadata's checksum: a stale or truncated cached copy
        # (some repositories reuse file names) is fetched again.
        primary = fetch(
            Input(
                what=f"primary metadata of {base_url}",
                url=primary_url,
                file_name=primary_url.rsplit("/", 1)[-1],
                key=primary_url,
                pinned=listed.checksum if listed.checksum_type == "sha256" else None,
            ),
            settings,
        )
        listed_packages += read_primary(primary.path, base_url)
    return listed_packages


def select_packages(
    listing: list[RepoPackage],
    repos: tuple[str, ...],
    *,
    name: str,
    arch: str,
    evr_glob: str | None,
) -> list[RepoPackage]:
    """Every package of ``listing`` called ``name`` for ``arch`` whose version-release matches
    the glob, newest first, each version-release once (the first repository listing it wins)."""
    candidates: dict[str, RepoPackage] = {}
    for package in listing:
        if package.name != name or package.arch not in (arch, "noarch"):
            continue
        if evr_glob and not fnmatch.fnmatchcase(package.evr, evr_glob):
            continue
        candidates.setdefault(package.evr, package)
    if not candidates:
        wanted = f"{name}.{arch}" + (f" matching {evr_glob}" if evr_glob else "")
        raise InputError(
            f"No {wanted} in the repositories {', '.join(repos)}.",
            hint="Check the target's yum: and evr: in its spec, or pass the RPM with "
            "--kernel-rpm PATH.",
        )
    return newest_first(list(candidates.values()))


def find_packages(
    repos: tuple[str, ...],
    *,
    name: str,
    arch: str,
    evr_glob: str | None,
    settings: FetchSettings,
) -> list[RepoPackage]:
    """Every package called ``name`` for ``arch`` in the repositories whose version-release
    matches the glob, newest first (:func:`select_packages`)."""
    listing = read_repositories(repos, settings)
    return select_packages(listing, repos, name=name, arch=arch, evr_glob=evr_glob)


def find_package(
    repos: tuple[str, ...],
    *,
    name: str,
    arch: str,
    evr_glob: str | None,
    settings: FetchSettings,
) -> RepoPackage:
    """The newest package called ``name`` for ``arch`` whose version-release matches the glob."""
    return find_packages(repos, name=name, arch=arch, evr_glob=evr_glob, settings=settings)[0]
