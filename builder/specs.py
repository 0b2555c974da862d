"""The registry of dom0 targets and DRBD versions, loaded once from ``specs/*.yaml``.

Spec files are plain YAML with a ``targets:`` and/or a ``drbd:`` mapping.  They are validated
here, once, into frozen dataclasses; nothing downstream reads YAML again.  Every problem is
reported as a :class:`ConfigError` naming the file, the key and what is wrong with it.

Users add their own targets and versions with extra spec directories (``--specs DIR``); an entry
in a later directory replaces one of the same name from an earlier one, so a user can point a
built-in target at a local mirror without editing this repository.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from builder.errors import ConfigError
from builder.yamlreader import YamlReader

DEFAULT_SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"
LOCK_FILE_NAME = "checksums.lock"

# Names end up in file names, container names, rpm macros and shell runbooks: keep them plain.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]*$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class SourceKind(enum.StrEnum):
    ISO = "iso"  # an ISO image holding the kernel-devel RPM at a known path
    RPM = "rpm"  # the kernel-devel RPM itself at a URL
    YUM = "yum"  # yum repositories whose metadata names the kernel-devel package


class Consumer(enum.StrEnum):
    """The yum/rpm generation of the target's dom0: decides repo checksums and signatures."""

    EL5 = "el5"
    EL7 = "el7"


class DrbdFamily(enum.StrEnum):
    """DRBD source layouts that share one build recipe (see design notes)."""

    V83 = "8.3"
    V84_EARLY = "8.4-early"


@dataclass(frozen=True, kw_only=True)
class KernelSource:
    kind: SourceKind
    url: str | None = None  # ISO or RPM URL; None where the vendor has no public download
    file: str | None = None  # file name, for --mirror and for the user's --iso/--kernel-rpm
    path: str | None = None  # path inside the ISO
    repos: tuple[str, ...] = ()  # yum base URLs
    evr: str | None = None  # yum: glob on "version-release" selecting the package
    sha256: str | None = None  # pinned hash of the ISO or RPM
    note: str | None = None  # how to obtain the file when there is no URL

    @property
    def file_name(self) -> str:
        if self.file:
            return self.file
        return (self.url or "").rstrip("/").rsplit("/", 1)[-1]

    @property
    def lock_key(self) -> str:
        """The key of this input in ``checksums.lock``: its URL, or its file name without one."""
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
    kernel_source: KernelSource
    container_family: str
    base_image: str | None
    build_context: Path | None
    consumer: Consumer
    spec_file: Path = field(compare=False)

    @property
    def lock_file(self) -> Path:
        return self.spec_file.parent / LOCK_FILE_NAME


@dataclass(frozen=True, kw_only=True)
class DrbdVersion:
    version: str
    family: DrbdFamily
    url: str
    sha256: str | None
    spec_file: Path = field(compare=False)

    @property
    def lock_file(self) -> Path:
        return self.spec_file.parent / LOCK_FILE_NAME

    @property
    def tarball_name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Registry:
    targets: Mapping[str, Target]
    drbd: Mapping[str, DrbdVersion]

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
    if not SAFE_NAME.match(value):
        raise ConfigError(
            f"Invalid {what} {value!r}: only letters, digits and . _ + ~ - are allowed, "
            "starting with a letter or digit."
        )
    return value


def _kernel_source(reader: YamlReader) -> KernelSource:
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
            if not repo.startswith(("http://", "https://", "file://")):
                raise reader.fail(f"yum[{index}]", f"{repo!r} is not a URL")
        evr = reader.text("evr", required=False)
        source = KernelSource(kind=kind, repos=repos, evr=evr)
    reader.done()
    return source


def _target(file: Path, target_id: str, reader: YamlReader) -> Target:
    check = SAFE_NAME
    if not check.match(target_id):
        raise reader.fail(None, "target names may only use letters, digits and . _ + ~ -")
    kernel = reader.mapping("kernel")
    source = _kernel_source(kernel.mapping("source"))
    package = kernel.text("package", pattern=SAFE_NAME)
    release = kernel.text("release", pattern=SAFE_NAME)
    runtime = kernel.text("runtime", pattern=SAFE_NAME, default="kernel")
    kernel.done()
    container = reader.mapping("container")
    family = container.text("family", pattern=SAFE_NAME)
    image = container.text("image", required=False)
    context_value = container.text("context", required=False)
    container.done()
    context = (file.parent / context_value).resolve() if context_value else None
    arch = reader.text("arch", pattern=SAFE_NAME)
    target = Target(
        id=target_id,
        name=reader.text("name"),
        aliases=reader.text_list("aliases", SAFE_NAME),
        arch=arch,
        basearch=reader.text("basearch", required=False, pattern=SAFE_NAME) or arch,
        kernel_package=package,
        kernel_runtime=runtime,
        kernel_release=release,
        kernel_source=source,
        container_family=family,
        base_image=image,
        build_context=context,
        consumer=Consumer(reader.choice("consumer", [c.value for c in Consumer])),
        spec_file=file,
    )
    reader.done()
    return target


def _drbd(file: Path, version: str, reader: YamlReader) -> DrbdVersion:
    if not SAFE_NAME.match(version):
        raise reader.fail(None, "versions may only use letters, digits and . _ + ~ -")
    entry = DrbdVersion(
        version=version,
        family=DrbdFamily(reader.choice("family", [f.value for f in DrbdFamily])),
        url=reader.url("url"),
        sha256=reader.text("sha256", required=False, pattern=SHA256),
        spec_file=file,
    )
    reader.done()
    return entry


def _load_file(file: Path) -> tuple[dict[str, Target], dict[str, DrbdVersion]]:
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read spec file: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: the top level must be a mapping with targets: and/or drbd:")
    top = YamlReader(file, data, "")
    targets: dict[str, Target] = {}
    versions: dict[str, DrbdVersion] = {}
    for section in ("targets", "drbd"):
        value = data.get(section)
        if value is None:
            top.mark_used(section)
            continue
        sub = top.mapping(section)
        for raw_key, entry in sub.data.items():
            key = str(raw_key)
            if not isinstance(entry, dict):
                raise ConfigError(f"{file}: {section}.{key}: must be a mapping")
            reader = YamlReader(file, entry, f"{section}.{key}")
            if section == "targets":
                targets[key] = _target(file, key, reader)
            else:
                versions[key] = _drbd(file, key, reader)
    unknown = sorted(set(data) - {"targets", "drbd"})
    if unknown:
        raise ConfigError(f"{file}: {unknown[0]}: unknown top-level key (expected targets or drbd)")
    return targets, versions


def load_registry(extra_dirs: Iterable[Path] = (), *, builtin: bool = True) -> Registry:
    """Load the built-in specs, then each extra directory in order (later entries win)."""
    dirs = ([DEFAULT_SPECS_DIR] if builtin else []) + [Path(d) for d in extra_dirs]
    targets: dict[str, Target] = {}
    versions: dict[str, DrbdVersion] = {}
    for directory in dirs:
        if not directory.is_dir():
            raise ConfigError(f"Spec directory {directory} does not exist or is not a directory.")
        seen_here: dict[str, Path] = {}
        for file in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml")):
            file_targets, file_versions = _load_file(file)
            for name in [*file_targets, *(f"drbd {v}" for v in file_versions)]:
                if name in seen_here:
                    raise ConfigError(
                        f"{file}: {name} is also defined in {seen_here[name]}; "
                        "define each target and version once per directory."
                    )
                seen_here[name] = file
            targets.update(file_targets)
            versions.update(file_versions)
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
    return Registry(targets=targets, drbd=versions)
