"""Find a package in yum repositories by reading their metadata (repomd.xml, primary.xml).

Used for kernel sources published as yum repositories (XCP-ng).  createrepo_c parses the
metadata (any compression), so no XML is handled here.  The vendor's mirrors are plain HTTP:
``repomd.xml`` is trusted only once its detached signature verifies against the target's
vendor key, and then vouches for ``primary.xml`` (by its sha256) and each package's sha256.
"""

from __future__ import annotations

import fnmatch
import functools
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder import log, signatures
from builder.errors import ConfigError, FetchError, InputError, SigningError
from builder.inputs.fetch import Fetched, FetchSettings, Input, fetch
from builder.inputs.repostate import RepositoryState, read_metadata
from builder.rpm.version import vercmp
from builder.specs import VendorKey


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


def check_key(key: VendorKey) -> None:
    """The key file must hold exactly the pinned key: a replaced file is no vendor key."""
    if not key.file.is_file():
        raise ConfigError(
            f"The vendor key file {key.file} does not exist.",
            hint="A target's key: file: is a path beside its spec file.",
        )
    found = signatures.key_file_fingerprints(key.file)
    if found != [key.fingerprint]:
        raise ConfigError(
            f"The vendor key file {key.file} holds "
            + (", ".join(found) if found else "no OpenPGP public key")
            + f", not only the pinned key {key.fingerprint}.",
            hint="Use the vendor's own public key file, or correct key: fingerprint: after "
            "checking the new fingerprint with the vendor.",
        )


def verify_metadata(
    repomd: Fetched, base_url: str, settings: FetchSettings, key: VendorKey
) -> None:
    """``repodata/repomd.xml.asc`` must be the vendor key's signature of ``repomd.xml``,
    before anything in it is read."""
    where = f"{base_url}repodata/repomd.xml"
    try:
        asc = fetch(
            Input(
                what=f"signature of {where}",
                url=_join(base_url, "repodata/repomd.xml.asc"),
                file_name="repomd.xml.asc",
                key=f"{base_url}#repomd.xml.asc",
            ),
            settings,
            fresh=True,
        )
    except FetchError as exc:
        raise SigningError(
            f"{where} has no signature the vendor key could vouch for: {exc.message}",
            hint=f"The repository must be signed by {key.fingerprint}; nothing of it was read.",
        ) from None
    verdict = signatures.check_detached(repomd.path, asc.path, key.file)
    if not verdict.good:
        signer = f"signed by {verdict.signer}" if verdict.signer else "no valid signature"
        raise SigningError(
            f"{where} is not signed by the vendor key {key.fingerprint} ({signer}):\n"
            f"{verdict.detail}",
            hint="Nothing of this repository was read. A mirror or proxy may be serving other "
            "metadata; if the vendor changed its key, check the new one with the vendor.",
        )


def read_repositories(
    repos: tuple[str, ...],
    settings: FetchSettings,
    *,
    key: VendorKey | None = None,
    insecure: str | None = None,
) -> list[RepoPackage]:
    """Every package the repositories list, in the order of ``repos``; with ``key``, each
    repository's ``repomd.xml`` verified against it first."""
    if key is not None:
        check_key(key)
    elif insecure is not None:
        log.warn(f"not verifying the signatures of {', '.join(repos)}: insecure: {insecure}")
    listed_packages: list[RepoPackage] = []
    for base in repos:
        base_url = base if base.endswith("/") else base + "/"
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
        if key is not None:
            verify_metadata(repomd, base_url, settings, key)
            RepositoryState(settings.state_dir).accept_metadata(
                base_url, read_metadata(repomd.path)
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
