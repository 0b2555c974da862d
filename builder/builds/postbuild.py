"""Post-build checks on the RPMs a build produced.

A build that exits 0 can still be wrong for dom0: a module compiled against the build host's
kernel, a module package that would accept any userland, an i386 package where dom0 wants
i686.  These checks read the RPMs themselves (headers and payload, in Python, no ``rpm`` on the
host) and fail the build with one message listing every problem.
"""

from __future__ import annotations

import contextlib
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rpmfile

from builder.errors import CheckError
from builder.rpm.header import text_of
from builder.rpm.version import vercmp
from builder.specs import UNAME_PROVIDE, KernelRequirement

RPMSENSE_LESS = 0x02
RPMSENSE_GREATER = 0x04
RPMSENSE_EQUAL = 0x08
MODULE_SUFFIX = ".ko"
DEPMOD_DIR = "/etc/depmod.d/"
DEPMOD_LIMIT = 1 << 20


@dataclass(frozen=True)
class Requirement:
    name: str
    flags: int = 0
    version: str = ""

    @property
    def is_exact(self) -> bool:
        sense = self.flags & (RPMSENSE_LESS | RPMSENSE_GREATER | RPMSENSE_EQUAL)
        return sense == RPMSENSE_EQUAL

    def __str__(self) -> str:
        if not self.version:
            return self.name
        op = ""
        if self.flags & RPMSENSE_LESS:
            op += "<"
        if self.flags & RPMSENSE_GREATER:
            op += ">"
        if self.flags & RPMSENSE_EQUAL:
            op += "="
        return f"{self.name} {op} {self.version}"


@dataclass(frozen=True, kw_only=True)
class PackageInfo:
    """What the checks need to know about one binary RPM."""

    file_name: str
    name: str
    version: str
    release: str
    arch: str
    requires: tuple[Requirement, ...] = ()
    files: tuple[str, ...] = ()
    # path of each kernel module in the payload -> its vermagic ("" when it has none)
    modules: Mapping[str, str] = field(default_factory=dict)
    # path of each kernel module -> what its sections say (read from the payload)
    module_facts: Mapping[str, ModuleFacts] = field(default_factory=dict)
    # the lines of the depmod.d files it ships (/etc/depmod.d/*.conf)
    depmod_lines: tuple[str, ...] = ()
    preun: str = ""  # its %preun scriptlet


@dataclass(frozen=True)
class ModuleFacts:
    orc: bool  # has ORC unwind tables (.orc_unwind), which objtool writes
    compilers: tuple[str, ...]  # the gcc versions its .comment section names


@dataclass(frozen=True)
class KernelFacts:
    """What a kernel build tree records about how the kernel was built."""

    orc: bool  # CONFIG_UNWINDER_ORC=y: every module needs ORC tables
    compiler: str | None  # the gcc version that built the kernel: 12.2.0, 4.8.5
    compiler_record: str  # where that was read, or what was assumed without one


@dataclass(frozen=True, kw_only=True)
class Expectation:
    """What a correct build for one target and DRBD version produces."""

    kernel_release: str
    arch: str
    version: str  # the DRBD release
    packages: frozenset[str]  # names that must be present
    module_package: str  # e.g. drbd-km-2.6.32.12_0.7.1.xs1.4.90.530.170661xen
    userland_package: str = "drbd-utils"
    # The userland's release: the DRBD version for 8.3/8.4.0-8.4.4, else the drbd-utils one.
    userland_version: str | None = None
    # True: the module must require drbd-utils = <version> (one tarball made both); False: it
    # must require a drbd-utils range that the userland built with it satisfies.
    exact_userland: bool = True
    # What the module package must require of dom0's kernel (Target.kernel_requirements).
    kernel_package: tuple[KernelRequirement, ...] = ()
    # What the module package's release must end with: its kernel-devel's (builder.inputs.kernels).
    release_suffix: str = ""
    kernel: KernelFacts | None = None  # the tree's ORC and compiler record, when read
    # The module package must make depmod prefer its modules to the kernel's own (DRBD 9's
    # kmod-drbd: /etc/depmod.d override lines, as LINBIT's spec and XCP-ng's package ship).
    overrides: bool = False

    @property
    def userland(self) -> str:
        return self.userland_version or self.version


# ---------------------------------------------------------------------------------------------
# Reading kernel modules


def modinfo(elf: bytes) -> dict[str, str]:
    """The key=value pairs of an ELF object's ``.modinfo`` section (what ``modinfo`` prints)."""
    section = _elf_section(elf, ".modinfo")
    info: dict[str, str] = {}
    for entry in section.split(b"\0"):
        if b"=" in entry:
            key, _, value = entry.decode("utf-8", "replace").partition("=")
            info.setdefault(key, value)
    return info


def _elf_section(elf: bytes, wanted: str) -> bytes:
    if len(elf) < 0x34 or elf[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    elf_class, data = elf[4], elf[5]
    if elf_class not in (1, 2) or data not in (1, 2):
        raise ValueError("unknown ELF class or byte order")
    endian = "<" if data == 1 else ">"
    if elf_class == 2:
        shoff = struct.unpack_from(endian + "Q", elf, 0x28)[0]
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", elf, 0x3A)
        header = endian + "IIQQQQ"
    else:
        shoff = struct.unpack_from(endian + "I", elf, 0x20)[0]
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", elf, 0x2E)
        header = endian + "IIIIII"
    if shoff == 0 or shnum == 0 or shstrndx >= shnum:
        raise ValueError("ELF file has no section headers")

    def section(index: int) -> tuple[int, int, int]:
        start = shoff + index * shentsize
        if start + struct.calcsize(header) > len(elf):
            raise ValueError("ELF section header table is truncated")
        name, _type, _flags, _addr, offset, size = struct.unpack_from(header, elf, start)
        if offset + size > len(elf):
            raise ValueError("ELF section runs past the end of the file")
        return name, offset, size

    _, names_offset, names_size = section(shstrndx)
    names = elf[names_offset : names_offset + names_size]
    for index in range(shnum):
        name_index, offset, size = section(index)
        end = names.find(b"\0", name_index)
        if names[name_index:end].decode("ascii", "replace") == wanted:
            return elf[offset : offset + size]
    raise ValueError(f"no {wanted} section")


GCC_VERSION = re.compile(r"\b(\d+\.\d+(?:\.\d+)?)\b")


def _comment_compilers(elf: bytes) -> tuple[str, ...]:
    """The gcc versions in ``.comment``: "GCC: (Debian 12.2.0-14+deb12u1) 12.2.0" → 12.2.0."""
    try:
        section = _elf_section(elf, ".comment")
    except ValueError:
        return ()
    found = []
    for entry in section.split(b"\0"):
        text = entry.decode("utf-8", "replace")
        if text.startswith("GCC:"):
            versions = GCC_VERSION.findall(text.rsplit(")", 1)[-1]) or GCC_VERSION.findall(text)
            if versions and versions[-1] not in found:
                found.append(versions[-1])
    return tuple(found)


def _has_section(elf: bytes, name: str) -> bool:
    try:
        _elf_section(elf, name)
    except ValueError:
        return False
    return True


def _config_value(text: str, key: str) -> str | None:
    match = re.search(rf"^{key}=(.*)$", text, re.M)
    return match.group(1).strip().strip('"') if match else None


def kernel_facts(build_dir: Path) -> KernelFacts:
    """The ORC setting and the compiler a kernel build tree records.

    The compiler comes from ``CONFIG_GCC_VERSION`` (4.19: 40805 → 4.8.5), else
    ``CONFIG_CC_VERSION_TEXT``, else ``include/generated/compile.h``'s LINUX_COMPILER (2.6.32).
    """
    config = ""
    for name in (".config", "include/config/auto.conf"):
        with contextlib.suppress(OSError):
            config = (build_dir / name).read_text(encoding="utf-8", errors="replace")
            break
    orc = _config_value(config, "CONFIG_UNWINDER_ORC") == "y"
    number = _config_value(config, "CONFIG_GCC_VERSION")
    if number and number.isdigit() and int(number) > 0:
        value = int(number)
        version = f"{value // 10000}.{value // 100 % 100}.{value % 100}"
        return KernelFacts(orc, version, f"CONFIG_GCC_VERSION={number}")
    text = _config_value(config, "CONFIG_CC_VERSION_TEXT")
    if text and "gcc" in text.lower():
        versions = GCC_VERSION.findall(text)
        if versions:
            return KernelFacts(orc, versions[-1], f"CONFIG_CC_VERSION_TEXT={text}")
    with contextlib.suppress(OSError):
        header = (build_dir / "include/generated/compile.h").read_text(errors="replace")
        match = re.search(r'LINUX_COMPILER\s+"gcc version (\d+\.\d+(?:\.\d+)?)', header)
        if match:
            return KernelFacts(orc, match.group(1), "include/generated/compile.h")
    return KernelFacts(
        orc, None, "none in the tree (.config, compile.h): assumed the build image's compiler"
    )


# ---------------------------------------------------------------------------------------------
# Reading RPMs


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def read_package(path: Path) -> PackageInfo:
    """Headers, file list and kernel modules' vermagic of one binary RPM."""
    try:
        # Our own file object: rpmfile leaks its own when the header is malformed.
        with path.open("rb") as stream, rpmfile.open(fileobj=stream) as rpm:
            headers = rpm.headers
            names = [text_of(n) for n in _list(headers.get("requirename"))]
            flags = [int(f) for f in _list(headers.get("requireflags"))]
            versions = [text_of(v) for v in _list(headers.get("requireversion"))]
            flags += [0] * (len(names) - len(flags))
            versions += [""] * (len(names) - len(versions))
            requires = tuple(
                Requirement(n, f, v) for n, f, v in zip(names, flags, versions, strict=True)
            )
            dirs = [text_of(d) for d in _list(headers.get("dirnames"))]
            bases = [text_of(b) for b in _list(headers.get("basenames"))]
            indexes = [int(i) for i in _list(headers.get("dirindexes"))]
            files = tuple(dirs[i] + b for i, b in zip(indexes, bases, strict=True))
            modules: dict[str, str] = {}
            facts: dict[str, ModuleFacts] = {}
            depmod: list[str] = []
            for member in rpm.getmembers():
                member_name = member.name.removeprefix(".")
                if member_name.startswith(DEPMOD_DIR) and member_name.endswith(".conf"):
                    text = rpm.extractfile(member).read(DEPMOD_LIMIT).decode("utf-8", "replace")
                    depmod += [line.strip() for line in text.splitlines() if line.strip()]
                    continue
                if not member_name.endswith(MODULE_SUFFIX):
                    continue
                elf = rpm.extractfile(member).read()
                try:
                    modules[member_name] = modinfo(elf).get("vermagic", "")
                except ValueError:
                    modules[member_name] = ""
                facts[member_name] = ModuleFacts(
                    orc=_has_section(elf, ".orc_unwind"), compilers=_comment_compilers(elf)
                )
            return PackageInfo(
                file_name=path.name,
                name=text_of(headers.get("name")),
                version=text_of(headers.get("version")),
                release=text_of(headers.get("release")),
                arch=text_of(headers.get("arch")),
                requires=requires,
                files=files,
                modules=modules,
                module_facts=facts,
                depmod_lines=tuple(depmod),
                preun=text_of(headers.get("preun")),
            )
    except Exception as exc:  # rpmfile and the decompressors raise many types on bad input
        raise CheckError(f"Cannot read built package {path}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# The checks


def problems(packages: Sequence[PackageInfo], expect: Expectation) -> list[str]:
    """Every way ``packages`` differ from a correct build; empty when they are fine."""
    found: list[str] = []
    by_name = {p.name: p for p in packages}
    missing = sorted(expect.packages - set(by_name))
    if missing:
        have = ", ".join(sorted(by_name)) or "none"
        found.append(f"expected packages are missing: {', '.join(missing)} (built: {have})")
    for package in packages:
        if package.arch not in (expect.arch, "noarch"):
            found.append(
                f"{package.file_name}: architecture is {package.arch}, the target needs "
                f"{expect.arch} (or noarch)"
            )
        if package.name == expect.module_package:
            # kmod-drbd carries the kernel in its version: 9.2.18_4.19.0+1.
            if package.version.split("_", 1)[0] != expect.version:
                found.append(
                    f"{package.file_name}: version is {package.version}, expected DRBD "
                    f"{expect.version}"
                )
        elif package.name.startswith("drbd") and package.version != expect.userland:
            found.append(
                f"{package.file_name}: version is {package.version}, expected the userland's "
                f"{expect.userland}"
            )
    module_package = by_name.get(expect.module_package)
    if module_package is not None:
        found.extend(_module_problems(module_package, expect))
        found.extend(_requires_problems(module_package, by_name, expect))
        found.extend(_kernel_problems(module_package, expect))
        if not module_package.release.endswith(expect.release_suffix):
            found.append(
                f"{module_package.file_name}: release {module_package.release} does not end "
                f"with {expect.release_suffix}, so the packages for two kernel-devel releases "
                "with one uname -r would have one name-version-release"
            )
    return found


def _build_problems(package: PackageInfo, path: str, kernel: KernelFacts) -> list[str]:
    """A module the kernel cannot unwind through, or built by another compiler major."""
    facts = package.module_facts.get(path)
    if facts is None:
        return []
    found = []
    if kernel.orc and not facts.orc:
        found.append(
            f"{package.file_name}: {path} has no ORC unwind tables (.orc_unwind), but the "
            "kernel is built with CONFIG_UNWINDER_ORC=y: objtool did not run on it, because "
            "the build root lacks libelf headers (elfutils-libelf-devel)"
        )
    if kernel.compiler is not None:
        want = kernel.compiler.split(".")[0]
        other = [c for c in facts.compilers if c.split(".")[0] != want]
        if other:
            found.append(
                f"{package.file_name}: {path} was built by gcc {', '.join(other)}, but the "
                f"kernel by gcc {kernel.compiler} ({kernel.compiler_record}): build it in an "
                "image with the kernel's compiler major version"
            )
    return found


def _override_problems(package: PackageInfo, release: str) -> list[str]:
    """Modules under extra/ that no depmod.d ``override`` line puts before the kernel's own."""
    overrides = set()
    for line in package.depmod_lines:
        words = line.split()
        if len(words) == 4 and words[0] == "override" and words[2] in (release, "*"):
            overrides.add((words[1], words[3].strip("/")))
    prefix = f"/lib/modules/{release}/"
    found = []
    for path in sorted(package.modules):
        where, _, file_name = path.removeprefix(prefix).rpartition("/")
        if not path.startswith(prefix) or not where.startswith("extra"):
            continue
        name = file_name.removesuffix(MODULE_SUFFIX)
        if (name, where) not in overrides and (name.replace("-", "_"), where) not in overrides:
            found.append(
                f"{package.file_name}: no depmod.d line 'override {name} {release} {where}' "
                f"for {path}: where the kernel has its own {name} module (XCP-ng's kernel has "
                "DRBD 8.4 in-tree), depmod's search order could make modprobe load that one"
            )
    return found


def _scriptlet_problems(package: PackageInfo) -> list[str]:
    """An upgrade runs the old package's %preun too: it may unload the module only when the
    package is removed (``$1`` is 0), never under a running DRBD during ``yum update``."""
    unguarded = [
        line.strip() for line in package.preun.splitlines() if "rmmod" in line and "$1" not in line
    ]
    return [
        f"{package.file_name}: its %preun runs '{line}' on every removal, upgrades included: "
        "on a running host the upgrade fails (the module is in use) or unloads it under DRBD"
        for line in unguarded
    ]


def _module_problems(package: PackageInfo, expect: Expectation) -> list[str]:
    if not package.modules:
        return [f"{package.file_name}: contains no kernel module (*{MODULE_SUFFIX})"]
    found = _scriptlet_problems(package)
    if expect.kernel is not None:
        for path in sorted(package.modules):
            found.extend(_build_problems(package, path, expect.kernel))
    if expect.overrides:
        found.extend(_override_problems(package, expect.kernel_release))
    for path, vermagic in sorted(package.modules.items()):
        words = vermagic.split()
        if not words:
            found.append(f"{package.file_name}: {path} has no vermagic in its .modinfo section")
        elif words[0] != expect.kernel_release:
            found.append(
                f"{package.file_name}: {path} was built for kernel {words[0]} "
                f"(vermagic {vermagic.strip()!r}), not for the target's {expect.kernel_release}"
            )
    return found


def _requires_problems(
    package: PackageInfo, by_name: Mapping[str, PackageInfo], expect: Expectation
) -> list[str]:
    wanted = expect.userland_package
    userland = by_name.get(wanted)
    requirements = [r for r in package.requires if r.name == wanted]
    have = ", ".join(str(r) for r in requirements) or "nothing"
    if expect.exact_userland:
        accepted = {expect.version}
        if userland is not None:
            accepted.add(f"{userland.version}-{userland.release}")
        exact = [r for r in requirements if r.is_exact]
        if any(r.version.split(":", 1)[-1] in accepted for r in exact):
            return []
        return [
            f"{package.file_name}: must require {wanted} = {expect.version} so that dom0 "
            f"installs the matching userland, but requires {have}"
        ]
    versioned = [r for r in requirements if r.version]
    if not versioned:
        return [
            f"{package.file_name}: must require a version of {wanted} so that dom0 installs a "
            f"userland that can drive the module, but requires {have}"
        ]
    if userland is None:
        return []  # reported as a missing package
    provided = f"{userland.version}-{userland.release}"
    unmet = [r for r in versioned if not satisfies(provided, r)]
    return [
        f"{package.file_name}: requires {r}, which the drbd-utils built with it "
        f"({provided}) does not satisfy: pair DRBD {expect.version} with a newer drbd-utils "
        "(utils: in its spec entry)"
        for r in unmet
    ]


def _kernel_problems(package: PackageInfo, expect: Expectation) -> list[str]:
    found = []
    for wanted in expect.kernel_package:
        if any(
            str(r) == str(wanted) or str(r) == f"{wanted.name} {wanted.op} 0:{wanted.version}"
            for r in package.requires
        ):
            continue
        why = (
            "the kernel's ABI name, which in-place kernel updates keep"
            if wanted.name == UNAME_PROVIDE
            else "never a kernel older than the one it was built against"
            if wanted.op == ">="
            else "the dom0 kernel it was built for, so that yum never installs it beside another"
        )
        have = ", ".join(str(r) for r in package.requires if r.name == wanted.name) or "nothing"
        found.append(f"{package.file_name}: must require {wanted} ({why}), but requires {have}")
    return found


def satisfies(provided: str, requirement: Requirement) -> bool:
    """Whether version-release ``provided`` meets a versioned requirement (rpm's rules)."""
    wanted = requirement.version.split(":", 1)[-1]
    have = provided
    if "-" not in wanted:
        have = provided.split("-", 1)[0]  # "X >= 8.9.2" compares versions only
    else:
        w_version, w_release = wanted.split("-", 1)
        h_version, _, h_release = provided.partition("-")
        order = vercmp(h_version, w_version) or vercmp(h_release, w_release)
        return _meets(order, requirement.flags)
    return _meets(vercmp(have, wanted), requirement.flags)


def _meets(order: int, flags: int) -> bool:
    return bool(
        (order < 0 and flags & RPMSENSE_LESS)
        or (order > 0 and flags & RPMSENSE_GREATER)
        or (order == 0 and flags & RPMSENSE_EQUAL)
    )


def check_packages(paths: Iterable[Path], expect: Expectation) -> list[PackageInfo]:
    """Read the built RPMs and raise :class:`CheckError` listing every problem found."""
    packages = [read_package(path) for path in sorted(paths)]
    found = problems(packages, expect)
    if found:
        listing = "\n".join(f"  - {p}" for p in found)
        raise CheckError(
            f"The built packages failed {len(found)} post-build check(s):\n{listing}",
            hint="The RPMs were not published. Check the kernel tree, the target's arch and "
            "kernel release, and the DRBD spec files.",
        )
    return packages
