"""What a published repository's front page shows, read from the publish state alone.

:func:`collect` turns the package index, the provenance statements and the version's name
into one :class:`FrontPage` value: the dom0 targets and consumer families served, one
:class:`Module` per module package, and each build as its signed statement records it.
:mod:`builder.publish.frontpage` writes that value as HTML; nothing here knows markup.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.publish import layout, provenance
from builder.publish.store import Entry
from builder.specs import Consumer

NOT_RECORDED = "not recorded"


# ---------------------------------------------------------------------------------------------
# What the page shows


@dataclass(frozen=True, kw_only=True)
class Module:
    """One published kernel module package, with the build it came from."""

    target: str  # "" when no statement records it (published before provenance)
    drbd_version: str
    kernel_release: str  # `uname -r` of the dom0 kernel
    kernel_evr: str  # the kernel-devel version-release it was built against ("" if unknown)
    name: str
    epoch: str  # "" for none
    version: str
    release: str
    arch: str
    path: str  # relative to the repository root: el7/x86_64/kmod-drbd-....rpm

    @property
    def nvr(self) -> str:
        epoch = f"{self.epoch}:" if self.epoch else ""
        return f"{self.name}-{epoch}{self.version}-{self.release}"


@dataclass(frozen=True, kw_only=True)
class Input:
    """One input of a build as its manifest records it, and how it was trusted."""

    what: str  # "kernel-devel"
    name: str  # its origin, file name or name-version-release
    sha256: str
    trust: str  # "" when the build recorded none


@dataclass(frozen=True, kw_only=True)
class Build:
    """One build with published packages, as its provenance statement records it."""

    statement: str  # the statement, relative to the repository root
    packages: tuple[str, ...]  # file names
    # What the statement records: left empty when it cannot be read.
    target: str = ""
    build_name: str = ""
    drbd_version: str = ""
    kernel_release: str = ""
    kernel_evr: str = ""
    image: str = ""
    source_date_epoch: int | None = None
    tool: str = ""
    inputs: tuple[Input, ...] = ()
    problem: str = ""  # why the statement could not be read ("" when it could)

    @property
    def weak_trust(self) -> bool:
        return any(provenance.weak(item.trust) for item in self.inputs if item.trust)


@dataclass(frozen=True, kw_only=True)
class Target:
    id: str
    name: str  # the spec file's name for it ("" when the specs at hand do not know it)
    family: str  # el5/i386


@dataclass(frozen=True, kw_only=True)
class Family:
    """One consumer family: its folders, its .repo file as served, its dom0 rpm and yum."""

    consumer: Consumer
    folders: tuple[str, ...]  # el5/i386
    repo_file: str  # its .repo file's name, beside the page
    repo_text: str  # that file's content


@dataclass(frozen=True, kw_only=True)
class FrontPage:
    version: str  # the name of the published version (versions/<id>)
    base_url: str  # where the repository is served, for the commands run on dom0
    fingerprint: str  # of the repository key
    families: tuple[Family, ...]
    targets: tuple[Target, ...]
    modules: tuple[Module, ...]
    builds: tuple[Build, ...]
    unattributed: tuple[str, ...] = ()  # packages published before provenance was recorded


# ---------------------------------------------------------------------------------------------
# Gathering it from the publish state


def is_module_package(name: str) -> bool:
    """The kernel module packages the recipes make: ``drbd-km-<kernel release>`` (DRBD 8's
    drbd-km.spec) and ``kmod-drbd`` (DRBD 9's kmod)."""
    return name.startswith("drbd-km-") or name == "kmod-drbd"


def split_nevra(nevra: str) -> tuple[str, str, str, str, str]:
    """name, epoch ("" for 0), version, release, arch of ``name-epoch:version-release.arch``."""
    rest, _, arch = nevra.rpartition(".")
    rest, _, release = rest.rpartition("-")
    name, _, epoch_version = rest.rpartition("-")
    epoch, _, version = epoch_version.rpartition(":")
    return name, "" if epoch in ("", "0") else epoch, version, release, arch


def collect(
    *,
    entries: Iterable[Entry],
    store_root: Path,
    families: Mapping[str, Consumer],
    repo_files: Mapping[Consumer, str],
    fingerprint: str,
    base_url: str,
    version: str,
    target_names: Mapping[str, str],
) -> FrontPage:
    """The page of a version holding ``entries`` (every published package), whose provenance
    statements are under ``store_root`` and whose ``.repo`` files read ``repo_files``."""
    by_statement: dict[str, list[Entry]] = {}
    unattributed: list[Entry] = []
    for entry in entries:
        if entry.provenance:
            by_statement.setdefault(entry.provenance, []).append(entry)
        else:
            unattributed.append(entry)
    builds: list[Build] = []
    modules: list[Module | None] = []
    targets: dict[str, Target] = {}
    for relative, covered in by_statement.items():
        build = _build(relative, store_root / relative, covered)
        builds.append(build)
        if build.target and not build.problem:
            targets.setdefault(
                build.target,
                Target(
                    id=build.target,
                    name=target_names.get(build.target, ""),
                    family=covered[0].family,
                ),
            )
        modules += [_module(entry, build) for entry in covered]
    modules += [_module(entry, None) for entry in unattributed]
    folders: dict[Consumer, list[str]] = {}
    for family, consumer in families.items():
        folders.setdefault(consumer, []).append(family)
    return FrontPage(
        version=version,
        base_url=base_url,
        fingerprint=fingerprint,
        families=tuple(
            Family(
                consumer=consumer,
                folders=tuple(sorted(paths)),
                repo_file=layout.repo_file_name(consumer),
                repo_text=repo_files[consumer],
            )
            for consumer, paths in folders.items()
        ),
        targets=tuple(targets.values()),
        modules=tuple(m for m in modules if m is not None),
        builds=tuple(builds),
        unattributed=tuple(entry.path for entry in unattributed),
    )


def _module(entry: Entry, build: Build | None) -> Module | None:
    name, epoch, version, release, arch = split_nevra(entry.nevra)
    if not is_module_package(name):
        return None
    source = build if build is not None and not build.problem else None
    return Module(
        target=source.target if source else "",
        drbd_version=source.drbd_version if source else "",
        kernel_release=source.kernel_release if source else "",
        kernel_evr=source.kernel_evr if source else "",
        name=name,
        epoch=epoch,
        version=version,
        release=release,
        arch=arch,
        path=entry.path,
    )


def _field(data: Any, *keys: str) -> str:
    """A text or number ``data[keys[0]][keys[1]]...``; "" where the manifest has none."""
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    if isinstance(data, bool) or data is None:
        return ""
    return str(data) if isinstance(data, str | int | float) else ""


def _build(relative: str, path: Path, covered: Sequence[Entry]) -> Build:
    packages = tuple(entry.path.rsplit("/", 1)[1] for entry in covered)
    # Relative to the store, and to the page as well: REPO/provenance -> packages/provenance.
    try:
        manifest = provenance.recorded_manifest(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Build(
            statement=relative,
            packages=packages,
            problem=f"its statement cannot be read ({exc})",
        )
    trust = manifest.get("trust")
    trusted = trust if isinstance(trust, dict) else {}
    inputs = (
        ("kernel_source", "origin"),
        ("kernel_rpm", "nvra"),
        ("drbd_source", "file"),
        ("utils_source", "file"),
    )
    epoch = manifest.get("source_date_epoch")
    return Build(
        statement=relative,
        target=_field(manifest, "target"),
        build_name=_field(manifest, "build_name") or _field(manifest, "drbd_version"),
        drbd_version=_field(manifest, "drbd_version"),
        kernel_release=_field(manifest, "kernel_release"),
        kernel_evr=_field(manifest, "kernel_evr") or _field(manifest, "inputs", "kernel_evr"),
        image=_field(manifest, "image"),
        source_date_epoch=epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
        tool=_field(manifest, "inputs", "tool"),
        inputs=tuple(
            Input(
                what=provenance.INPUT_NAMES.get(key, key),
                name=_field(manifest, "inputs", key, name),
                sha256=_field(manifest, "inputs", key, "sha256"),
                trust=_field(trusted, key),
            )
            for key, name in inputs
            if isinstance((manifest.get("inputs") or {}).get(key), dict) or key in trusted
        ),
        packages=packages,
    )
