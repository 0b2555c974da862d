"""Reading the spec files (``specs/*.yaml`` and every ``--specs DIR``) into the registry.

Each file is validated here, once, into the frozen values of :mod:`builder.specs`; nothing
downstream reads YAML again.  Every problem is reported as a :class:`ConfigError` naming the
file, the key and what is wrong with it.  An entry in a later directory replaces one of the
same name from an earlier one, so a user can point a built-in target at a local mirror
without editing this repository.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from builder import resources
from builder.errors import ConfigError
from builder.specs import (
    DEFAULT_LIMITS,
    FINGERPRINT,
    KERNEL_BOUND,
    KERNEL_CHOICE,
    NO_ADJUSTMENTS,
    SAFE_NAME,
    SEPARATE_USERLAND,
    SHA256,
    UNAME_PROVIDE,
    Adjustments,
    Consumer,
    DrbdFamily,
    DrbdVersion,
    KernelDependency,
    KernelRange,
    KernelSource,
    Limits,
    Registry,
    SourceKind,
    Target,
    UtilsVersion,
    VendorKey,
    at_least,
    family_of_version,
    normal_fingerprint,
    version_numbers,
)
from builder.urls import URL_SCHEMES
from builder.yamlreader import YamlReader, printable

DEFAULT_SPECS_DIR = resources.SPECS_DIR  # shipped in the package: read, never written


def _vendor_key(spec_file: Path, reader: YamlReader) -> VendorKey | None:
    if reader.raw("key", required=False) is None:
        return None
    key = reader.mapping("key")
    name = key.text("file", ONE_LINE, explain="a path beside the spec file")
    pin = normal_fingerprint(key.text("fingerprint", ONE_LINE, explain="40 hex digits"))
    if not FINGERPRINT.match(pin):
        raise key.fail("fingerprint", "must be 40 hex digits (spaces allowed)")
    key.done()
    return VendorKey(file=(spec_file.parent / name).resolve(), fingerprint=pin)


def _kernel_source(spec_file: Path, reader: YamlReader) -> KernelSource:
    kinds = [kind for kind in SourceKind if kind.value in reader.data]
    if len(kinds) != 1:
        raise reader.fail(None, "must have exactly one of the keys iso, rpm or yum")
    kind = kinds[0]
    sha256 = reader.text("sha256", required=False, pattern=SHA256)
    if kind in (SourceKind.ISO, SourceKind.RPM):
        url = reader.url(kind.value, required=False)
        file = reader.text("file", required=False, pattern=SAFE_NAME)
        note = reader.text("note", required=False)
        if url is None and file is None:
            raise reader.fail(kind.value, "needs a URL, or set file: to the file's name")
        path = None
        if kind is SourceKind.ISO:
            path = reader.text("path").strip("/")
            if ".." in path.split("/"):
                raise reader.fail("path", "must not contain '..'")
        source = KernelSource(kind=kind, url=url, file=file, path=path, sha256=sha256, note=note)
    else:
        if sha256 is not None:
            raise reader.fail("sha256", "is not used with yum: the repo metadata carries checksums")
        repos = reader.text_list("yum")
        if not repos:
            raise reader.fail("yum", "must list at least one repository base URL")
        for index, repo in enumerate(repos):
            if not repo.startswith(URL_SCHEMES):
                raise reader.fail(f"yum[{index}]", f"{repo!r} is not a URL")
        evr = reader.text("evr", required=False)
        kernels = reader.text(
            "kernels",
            required=False,
            pattern=KERNEL_CHOICE,
            explain="latest, all, or a glob on the kernel-devel's version-release",
        )
        key = _vendor_key(spec_file, reader)
        insecure = reader.text("insecure", ONE_LINE, required=False, explain="one line of text")
        if (key is None) == (insecure is None):
            raise reader.fail(
                None,
                "a yum source needs the vendor's signing key (key: with file: and "
                "fingerprint:), or insecure: with the reason it is read without one"
                if key is None
                else "has both key: and insecure:; keep one",
            )
        source = KernelSource(
            kind=kind,
            repos=repos,
            evr=evr,
            kernels=kernels or "latest",
            key=key,
            insecure=insecure,
        )
    reader.done()
    return source


def _target(file: Path, target_id: str, reader: YamlReader) -> Target:
    check = SAFE_NAME
    if not check.fullmatch(target_id):
        raise reader.fail(None, "target names may only use letters, digits and . _ + ~ -")
    kernel = reader.mapping("kernel")
    source = _kernel_source(file, kernel.mapping("source"))
    package = kernel.text("package", pattern=SAFE_NAME)
    release = kernel.text("release", pattern=SAFE_NAME)
    runtime = kernel.text("runtime", pattern=SAFE_NAME, default="kernel")
    dependency = KernelDependency(
        kernel.choice("requires", [d.value for d in KernelDependency], default="exact")
    )
    if dependency is KernelDependency.UNAME_R and release.count("-") > 1:
        # rpm reads "X = A-B-C" as version A, release B-C, and refuses a second "-".
        raise kernel.fail(
            "requires",
            f"uname-r cannot be written for kernel release {release}: rpm takes at most one "
            f"'-' in the version of {UNAME_PROVIDE} = {release}; use exact",
        )
    kernel.done()
    container = reader.mapping("container")
    family = container.text("family", pattern=SAFE_NAME)
    image = container.text("image", required=False)
    context_value = container.text("context", required=False)
    limits = DEFAULT_LIMITS
    if container.raw("limits", required=False) is not None:
        limits = _limits(container.mapping("limits"))
    spatch_image = spatch_context = None
    if container.raw("spatch", required=False) is not None:
        spatch = container.mapping("spatch")
        spatch_image = spatch.text("image", required=False)
        spatch_value = spatch.text("context", required=False)
        spatch_context = (file.parent / spatch_value).resolve() if spatch_value else None
        spatch.done()
    container.done()
    context = (file.parent / context_value).resolve() if context_value else None
    arch = reader.text("arch", pattern=SAFE_NAME)
    adjustments = NO_ADJUSTMENTS
    if reader.raw("build", required=False) is not None:
        build = reader.mapping("build")
        adjustments = _adjustments(file, build)
        build.done()
    drbd_versions = reader.text_list("drbd", SAFE_NAME)
    checked: dict[str, str] = {}
    if reader.raw("checked", required=False) is not None:
        evidence = reader.mapping("checked")
        for version in [str(v) for v in evidence.data]:
            if version not in drbd_versions:
                raise evidence.fail(
                    version, "names a DRBD version that the target's drbd: list does not have"
                )
            checked[version] = evidence.text(version, ONE_LINE, explain="one line of text")
        evidence.done()
    target = Target(
        id=target_id,
        # Written into the .repo file's name= line and the deploy README: one line, or a
        # line break would start a section of its own.
        name=reader.text("name", ONE_LINE, explain="one line of printable text"),
        aliases=reader.text_list("aliases", SAFE_NAME),
        arch=arch,
        basearch=reader.text("basearch", required=False, pattern=SAFE_NAME) or arch,
        kernel_package=package,
        kernel_runtime=runtime,
        kernel_dependency=dependency,
        kernel_release=release,
        kernel_source=source,
        container_family=family,
        base_image=image,
        build_context=context,
        spatch_image=spatch_image,
        spatch_context=spatch_context,
        consumer=Consumer(reader.choice("consumer", [c.value for c in Consumer])),
        adjustments=adjustments,
        drbd_versions=drbd_versions,
        checked=checked,
        limits=limits,
        spec_file=file,
    )
    reader.done()
    return target


MAKE_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Values that end up as single arguments or environment values: printable, one line.
ONE_LINE = re.compile(r"^[^\x00-\x1f\x7f]+$")


def _adjustments(file: Path, reader: YamlReader) -> Adjustments:
    """The optional build adjustment keys of a version entry or of a target's ``build:``."""
    patches = []
    for index, name in enumerate(reader.text_list("patches", ONE_LINE)):
        path = (file.parent / name).resolve()
        if not path.is_file():
            raise reader.fail(
                f"patches[{index}]",
                f"{name!r} is not a file (patch paths are relative to {file.parent})",
            )
        patches.append(path)
    make: dict[str, str] = {}
    raw_make = reader.raw("make", required=False)
    if raw_make is not None:
        if not isinstance(raw_make, dict):
            raise reader.fail("make", f"must be a mapping of variable to value, not {raw_make!r}")
        for key, value in raw_make.items():
            if not isinstance(key, str) or not MAKE_VARIABLE.fullmatch(key):
                raise reader.fail(f"make.{key}", "is not a make variable name")
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise reader.fail(f"make.{key}", f"must be a string or number, not {value!r}")
            if not ONE_LINE.fullmatch(str(value)):
                raise reader.fail(f"make.{key}", "must be one line of printable text")
            make[key] = str(value)
    return Adjustments(
        patches=tuple(patches),
        configure=reader.text_list("configure", ONE_LINE),
        rpmbuild=reader.text_list("rpmbuild", ONE_LINE),
        make=tuple(sorted(make.items())),
        cflags=reader.text("cflags", ONE_LINE, required=False),
    )


def _limits(reader: YamlReader) -> Limits:
    """A target's container.limits: each key replaces the default."""
    cpus = reader.raw("cpus", required=False)
    if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, (int, float))):
        raise reader.fail("cpus", f"must be a number, not {cpus!r}")
    if cpus is not None and not 0 < cpus <= 1024:
        raise reader.fail("cpus", f"{cpus} is out of range (more than 0, up to 1024)")
    limits = Limits(
        memory_mib=reader.integer("memory_mib", 64, 1 << 20, default=DEFAULT_LIMITS.memory_mib),
        pids=reader.integer("pids", 16, 1 << 22, default=DEFAULT_LIMITS.pids),
        cpus=float(cpus) if cpus is not None else DEFAULT_LIMITS.cpus,
        timeout=float(reader.integer("timeout", 1, 7 * 86400, default=int(DEFAULT_LIMITS.timeout))),
    )
    reader.done()
    return limits


def _check_version_name(version: str, reader: YamlReader) -> None:
    if not SAFE_NAME.fullmatch(version):
        raise reader.fail(None, "versions may only use letters, digits and . _ + ~ -")


def _drbd(file: Path, version: str, reader: YamlReader) -> tuple[DrbdVersion, str | None]:
    """The entry, and the drbd-utils version it names (resolved once every file is read)."""
    _check_version_name(version, reader)
    family = DrbdFamily(reader.choice("family", [f.value for f in DrbdFamily]))
    implied = family_of_version(version)
    if implied is not None and implied is not family:
        raise reader.fail(
            "family",
            f"DRBD {version} belongs to family {implied.value}, not {family.value}",
            hint="8.3.x: 8.3; 8.4.0 to 8.4.4: 8.4-early; 8.4.5 to 8.4.11: 8.4; 9.x: 9.",
        )
    utils = reader.text("utils", SAFE_NAME, required=False)
    if family in SEPARATE_USERLAND and utils is None:
        raise reader.fail(
            "utils",
            f"is required: a family {family.value} tarball holds only the kernel module, so "
            "name the drbd-utils release that provides the userland (e.g. utils: 9.22.0)",
        )
    if family not in SEPARATE_USERLAND and utils is not None:
        raise reader.fail(
            "utils",
            f"is not used by family {family.value}: its tarball builds its own userland",
        )
    kernels = None
    if reader.raw("kernels", required=False) is not None:
        kernels = _kernel_range(reader.mapping("kernels"))
    entry = DrbdVersion(
        version=version,
        family=family,
        url=reader.url("url"),
        sha256=reader.text("sha256", required=False, pattern=SHA256),
        adjustments=_adjustments(file, reader),
        kernels=kernels,
        spec_file=file,
    )
    reader.done()
    return entry, utils


def _kernel_range(reader: YamlReader) -> KernelRange:
    explain = "a kernel version such as 4.18 or 4.12.14"
    oldest = reader.text("from", KERNEL_BOUND, required=False, explain=explain)
    below = reader.text("below", KERNEL_BOUND, required=False, explain=explain)
    if oldest is None and below is None:
        raise reader.fail(None, "needs from:, below: or both (kernel versions)")
    if oldest and below and at_least(version_numbers(oldest), version_numbers(below)):
        raise reader.fail("below", f"{below} is not newer than from: {oldest}")
    result = KernelRange(
        oldest=oldest,
        below=below,
        why=reader.text("why", ONE_LINE, explain="one line: what fails outside the range"),
        instead=reader.text("instead", ONE_LINE, required=False, explain="one line"),
    )
    reader.done()
    return result


def _utils(file: Path, version: str, reader: YamlReader) -> UtilsVersion:
    _check_version_name(version, reader)
    entry = UtilsVersion(
        version=version,
        url=reader.url("url"),
        sha256=reader.text("sha256", required=False, pattern=SHA256),
        adjustments=_adjustments(file, reader),
        spec_file=file,
    )
    reader.done()
    return entry


SECTIONS = ("targets", "drbd", "drbd-utils")


@dataclass
class _FileEntries:
    targets: dict[str, Target] = field(default_factory=dict)
    drbd: dict[str, tuple[DrbdVersion, str | None]] = field(default_factory=dict)
    utils: dict[str, UtilsVersion] = field(default_factory=dict)

    def names(self) -> list[str]:
        return [
            *self.targets,
            *(f"drbd {v}" for v in self.drbd),
            *(f"drbd-utils {v}" for v in self.utils),
        ]


# libyaml's parser when PyYAML has it: the same safe constructors, a fraction of the time of the
# pure-Python one, which every command that reads the registry pays at start-up.
SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(file: Path) -> Any:
    try:
        return yaml.load(file.read_text(encoding="utf-8"), Loader=SAFE_LOADER)  # noqa: S506
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read spec file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{file}: not UTF-8 text (byte {exc.start}: {exc.reason}).",
            hint="Save the spec file as UTF-8.",
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from exc


def _load_file(file: Path) -> _FileEntries:
    data = _read_yaml(file)
    entries = _FileEntries()
    if data is None:
        return entries
    if not isinstance(data, dict):
        raise ConfigError(
            f"{file}: the top level must be a mapping with targets:, drbd: and/or drbd-utils:"
        )
    top = YamlReader(file, data, "")
    for section in SECTIONS:
        value = data.get(section)
        if value is None:
            top.mark_used(section)
            continue
        sub = top.mapping(section)
        for raw_key, entry in sub.data.items():
            key = str(raw_key)
            if not isinstance(entry, dict):
                raise ConfigError(f"{file}: {printable(f'{section}.{key}')}: must be a mapping")
            reader = YamlReader(file, entry, f"{section}.{key}")
            if section == "targets":
                entries.targets[key] = _target(file, key, reader)
            elif section == "drbd":
                entries.drbd[key] = _drbd(file, key, reader)
            else:
                entries.utils[key] = _utils(file, key, reader)
    unknown = sorted(str(k) for k in set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"{file}: {unknown[0]}: unknown top-level key (expected {', '.join(SECTIONS)})"
        )
    return entries


def _resolve_versions(
    targets: Mapping[str, Target],
    pending: Mapping[str, tuple[DrbdVersion, str | None]],
    utils: Mapping[str, UtilsVersion],
) -> dict[str, DrbdVersion]:
    """DRBD versions with their drbd-utils; every name a target or version uses must exist."""
    for target in targets.values():
        for index, version in enumerate(target.drbd_versions):
            if version not in pending:
                raise ConfigError(
                    f"{target.spec_file}: targets.{target.id}.drbd[{index}]: DRBD {version} is "
                    f"not defined (DRBD versions: {', '.join(pending) or 'none'})."
                )
    versions: dict[str, DrbdVersion] = {}
    for name, (pending_entry, utils_name) in pending.items():
        entry = pending_entry
        if utils_name is not None:
            if utils_name not in utils:
                known = ", ".join(utils) or "none"
                raise ConfigError(
                    f"{entry.spec_file}: drbd.{name}.utils: drbd-utils {utils_name} is not "
                    f"defined (drbd-utils versions: {known}).",
                    hint="Add it under drbd-utils: in a spec file (url and optionally sha256), "
                    "or name one that is defined.",
                )
            entry = replace(entry, utils=utils[utils_name])
        versions[name] = entry
    for target in targets.values():
        for index, version in enumerate(target.drbd_versions):
            refusal = versions[version].refusal(target)
            if refusal is not None:
                # The registry must not recommend what cannot be built.
                raise ConfigError(
                    f"{target.spec_file}: targets.{target.id}.drbd[{index}]: {refusal.message}",
                    hint="Remove it from the target's drbd: list"
                    + (f"; {refusal.hint}" if refusal.hint else "."),
                )
    return versions


def load_registry(extra_dirs: Iterable[Path] = (), *, builtin: bool = True) -> Registry:
    """Load the built-in specs, then each extra directory in order (later entries win)."""
    dirs = ([DEFAULT_SPECS_DIR] if builtin else []) + [Path(d) for d in extra_dirs]
    targets: dict[str, Target] = {}
    pending: dict[str, tuple[DrbdVersion, str | None]] = {}
    utils: dict[str, UtilsVersion] = {}
    for directory in dirs:
        if not directory.is_dir():
            if builtin and directory == DEFAULT_SPECS_DIR:
                raise ConfigError(
                    f"The built-in registry {directory} is missing.", hint=resources.MISSING_HINT
                )
            raise ConfigError(f"Spec directory {directory} does not exist or is not a directory.")
        seen_here: dict[str, Path] = {}
        for file in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml")):
            entries = _load_file(file)
            for name in entries.names():
                if name in seen_here:
                    raise ConfigError(
                        f"{file}: {name} is also defined in {seen_here[name]}; "
                        "define each target and version once per directory."
                    )
                seen_here[name] = file
            targets.update(entries.targets)
            pending.update(entries.drbd)
            utils.update(entries.utils)
    aliases: dict[str, str] = {}
    for target in targets.values():
        for alias in target.aliases:
            owner = aliases.get(alias)
            if owner is not None and owner != target.id:
                raise ConfigError(
                    f"{target.spec_file}: targets.{target.id}.aliases: {alias!r} is already an "
                    f"alias of {owner}"
                )
            aliases[alias] = target.id
    versions = _resolve_versions(targets, pending, utils)
    return Registry(targets=targets, drbd=versions, utils=utils)
