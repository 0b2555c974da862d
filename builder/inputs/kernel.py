"""From a target to a verified dom0 kernel build tree on disk.

source (ISO | RPM URL | yum repo)  ──fetch, verify──►  kernel-devel RPM  ──safe extract──►
<cache>/kernels/<rpm sha256>/tree  ──find build dir, derive release──►  compare with target

The extracted tree is cached by the RPM's sha256 with a marker written last, so a second call
only stats the inputs.  The kernel release is read from the tree itself, never from the RPM's
file name: on the 2.6.32 dom0s `uname -r` carries a ``xen`` suffix the RPM release lacks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from builder import log
from builder.errors import (
    ChecksumError,
    ConfigError,
    InputError,
    KernelMismatchError,
    SigningError,
)
from builder.files import write_atomic
from builder.inputs.checksums import ChecksumLock, lock_for
from builder.inputs.fetch import Fetched, FetchSettings, Input, fetch
from builder.inputs.iso import extract as extract_from_iso
from builder.inputs.iso import locate
from builder.inputs.repostate import RepositoryState
from builder.locks import file_lock, pid_alive
from builder.rpm.header import RpmInfo, read_info, verify_integrity
from builder.rpm.payload import extract_payload
from builder.specs import UNAME_PROVIDE, KernelDependency, SourceKind, Target, VendorKey

MARKER = "tree.json"
UTS_RELEASE = re.compile(rb'#define\s+UTS_RELEASE\s+"([^"]+)"')


@dataclass(frozen=True, kw_only=True)
class KernelTree:
    release: str  # derived from the tree
    root: Path  # extraction root (mount this: the build dir may link into siblings)
    build_dir: Path  # the kernel build directory, passed as kdir
    rpm: Path
    rpm_nvra: str
    rpm_sha256: str
    # version-release of the kernel-devel RPM: the dom0 kernel package's, which the module
    # package requires exactly
    rpm_version_release: str
    source: str  # where the RPM came from (URL or path)
    source_sha256: str  # sha256 of the ISO or RPM that was fetched
    # The local files this tree was checked against (the ISO or RPM fetched, the RPM, the
    # tree's marker): while none changes, neither does the tree (builder.inputs.kernel_memo).
    files: tuple[Path, ...] = ()
    # How the source and the RPM were trusted on this run (the manifest's "trust"):
    # "vendor-signature <fingerprint>", "insecure: <reason>", "pin", "lock" or "first-use"
    source_trust: str = ""
    rpm_trust: str = ""

    def to_json(self) -> dict[str, str]:
        skipped = ("files", "source_trust", "rpm_trust")  # of this run only (not memo-able)
        return {key: str(value) for key, value in asdict(self).items() if key not in skipped}


@dataclass(frozen=True, kw_only=True)
class KernelInputs:
    """User-given files that replace the target's download."""

    iso: Path | None = None
    kernel_rpm: Path | None = None


def _rpm_file_name(target: Target) -> str:
    source = target.kernel_source
    if source.kind is SourceKind.ISO and source.path:
        return source.path.rsplit("/", 1)[-1]
    if source.kind is SourceKind.RPM:
        return source.file_name
    return f"{target.kernel_package}.rpm"


def _check_rpm(path: Path) -> RpmInfo:
    info = read_info(path)
    verify_integrity(path, info)
    return info


def _fetch_rpm(
    target: Target, settings: FetchSettings, inputs: KernelInputs, evr: str | None = None
) -> tuple[Fetched, Fetched]:
    """The kernel-devel RPM for ``target`` as a verified local file, and the file it came from."""
    source = target.kernel_source
    lock = lock_for(target.spec_file, settings.state_dir)
    if inputs.kernel_rpm is None and source.kind is SourceKind.ISO:
        return _rpm_from_iso(target, settings, inputs, lock)
    if inputs.kernel_rpm is None and source.kind is SourceKind.YUM:
        rpm = _rpm_from_yum(target, settings, evr)
        return rpm, rpm
    # The RPM itself: the target's RPM URL, or the user's file (checked against what a verified
    # source recorded for it, when the target's source is an ISO or a repository).
    direct = source.kind is SourceKind.RPM
    rpm_name = _rpm_file_name(target)
    rpm = fetch(
        Input(
            what=f"{target.kernel_package} RPM for {target.id}",
            url=source.url if direct else None,
            file_name=rpm_name,
            key=source.lock_key if direct else f"file:{rpm_name}",
            pinned=source.sha256 if direct else None,
            lock=lock,
            local=inputs.kernel_rpm,
            note=source.note,
        ),
        settings,
        verify=_check_rpm,
    )
    if source.kind is SourceKind.YUM and source.key is not None:
        check_vendor_signature(rpm.path, source.key, download=False)
    return rpm, rpm


def _rpm_from_iso(
    target: Target, settings: FetchSettings, inputs: KernelInputs, lock: ChecksumLock
) -> tuple[Fetched, Fetched]:
    source = target.kernel_source
    inner = source.path or ""
    iso = fetch(
        Input(
            what=f"ISO for {target.id}",
            url=source.url,
            file_name=source.file_name,
            key=source.lock_key,
            pinned=source.sha256,
            lock=lock,
            local=inputs.iso,
            note=source.note,
        ),
        settings,
        verify=lambda path: locate(path, inner),
    )
    rpm_name = inner.rsplit("/", 1)[-1]
    dest = settings.cache_dir / "rpms" / iso.sha256[:32] / rpm_name
    hashes = settings.hashes
    # A cached copy was checked when it was read out (a failed check deletes it) and is reused
    # only while its hash entry still matches the file.
    sha = hashes.lookup(dest) if dest.is_file() else None
    if sha is None:
        # Targets on one ISO (and parallel builds of them) read it out once, in turn.
        name_key = hashlib.sha256(rpm_name.encode()).hexdigest()[:16]
        with file_lock(settings.cache_dir / "locks" / f"iso-{iso.sha256[:32]}-{name_key}.lock"):
            sha = hashes.lookup(dest) if dest.is_file() else None
            if sha is None:
                sha = _read_out(iso, inner, dest, rpm_name, settings)
    # A verified ISO vouches for the RPM inside it: its hash is recorded (with the ISO's, once
    # the tree checks out) so that a later --kernel-rpm can be checked against it.
    key = f"file:{rpm_name}"
    inner_item = Input(what=rpm_name, url=None, file_name=rpm_name, key=key, lock=lock)
    vouched = lock.vouched(key)
    expected_rpm = vouched.sha256 if vouched is not None else None
    if vouched is not None and vouched.sha256 != sha:
        dest.unlink(missing_ok=True)
        raise ChecksumError(
            f"{rpm_name} read from {iso.path} has sha256 {sha}, but {vouched.sha256} is "
            f"{vouched.source}.",
            hint="The ISO differs from the one first used; check which one is right.",
        )
    rpm = Fetched(
        path=dest,
        sha256=sha,
        origin=f"{iso.origin}!/{inner}",
        untrusted=inner_item if expected_rpm is None else None,
    )
    return rpm, iso


def _read_out(iso: Fetched, inner: str, dest: Path, rpm_name: str, settings: FetchSettings) -> str:
    """Copy the RPM out of the ISO into ``dest``, check it, and return its sha256."""
    hashes = settings.hashes
    dest.parent.mkdir(parents=True, exist_ok=True)
    with log.step(f"reading {rpm_name} from {iso.path.name}"):
        extract_from_iso(iso.path, inner, dest)
        try:
            # One pass checks the RPM's own digests and takes its sha256.
            sha = verify_integrity(dest, read_info(dest))
        except InputError as exc:
            dest.unlink(missing_ok=True)
            # The RPM is fine as long as the ISO it came from is: name the file at fault.
            if iso.discard():
                raise InputError(
                    f"{rpm_name} inside the ISO downloaded from {iso.origin} is damaged: "
                    f"{exc.message}",
                    hint="The download was deleted; the next run downloads it again. If "
                    "that fails the same way, the server's copy is damaged: pin the right "
                    "sha256 in the spec or pass a good copy with --iso.",
                ) from exc
            raise InputError(
                f"{rpm_name} inside the ISO {iso.path} is damaged: {exc.message}",
                hint="The ISO is damaged or not the vendor's: use a good copy (check its "
                "sha256 against the vendor's).",
            ) from exc
    hashes.store(dest, sha)
    return sha


def _rpm_from_yum(target: Target, settings: FetchSettings, evr: str | None) -> Fetched:
    """The newest match of the target's evr:, or the match whose version-release is ``evr``."""
    from builder.inputs import kernels
    from builder.inputs.yumsource import read_repositories

    source = target.kernel_source
    listing = read_repositories(source.repos, settings, key=source.key, insecure=source.insecure)
    packages = kernels.packages(target, settings, listing)
    if evr is None:
        package = packages[0]
        log.info(f"newest match in the repositories: {package.name}-{package.evr}.{package.arch}")
    else:
        exact = [p for p in packages if p.evr == evr]
        if not exact:
            raise InputError(
                f"No {target.kernel_package}-{evr} matching {source.evr or '*'} in the "
                f"repositories {', '.join(source.repos)}.",
                hint="`matrix` lists the kernels the repositories hold now; pass one of them "
                "to --kernel, or latest or all.",
            )
        package = exact[0]
        log.info(f"from the repositories: {package.name}-{package.evr}.{package.arch}")
    kernels.check_kernel_provides(target, package.evr, listing)
    pinned = package.checksum if package.checksum_type == "sha256" else None
    nvra = f"{package.name}-{package.evr}.{package.arch}"
    listed_as = f"{package.checksum_type}:{package.checksum}"
    state = RepositoryState(settings.state_dir)
    if source.key is not None:
        state.check_package(nvra, listed_as)

    def verify(path: Path) -> None:
        if pinned is None and package.checksum_type in ("sha", "sha1", "sha512", "md5"):
            algorithm = "sha1" if package.checksum_type == "sha" else package.checksum_type
            digest = hashlib.new(algorithm, path.read_bytes()).hexdigest()
            if digest != package.checksum:
                raise InputError(
                    f"{path.name} does not match its {package.checksum_type} in the repository "
                    "metadata; the download was deleted."
                )
        _check_rpm(path)

    rpm = fetch(
        Input(
            what=f"{target.kernel_package} RPM for {target.id}",
            url=package.url,
            file_name=package.file_name,
            key=package.url,
            pinned=pinned,
            lock=lock_for(target.spec_file, settings.state_dir),
        ),
        settings,
        verify=verify,
    )
    if source.key is not None:
        check_vendor_signature(rpm.path, source.key)
        state.remember_package(nvra, listed_as)
    return rpm


def check_vendor_signature(path: Path, key: VendorKey, *, download: bool = True) -> None:
    """The kernel-devel's header (and, where it has one, header+payload) signature must be
    the vendor key's, before a byte of it is extracted; a refused file leaves the cache."""
    from builder import signatures

    said = signatures.rpm_signatures(path, key.file)
    if said.good:
        return
    if said.header is None and said.whole is None:
        problem = "it is not signed"
    elif said.header is None:
        problem = "its header is not signed"
    elif "NOKEY" in f"{said.header} {said.whole}":
        problem = f"it is signed by key ID {', '.join(said.key_ids)}, not by the vendor key"
    elif not said.digests_ok:
        problem = "its digests do not match its content"
    else:
        problem = f"its signatures do not verify (header: {said.header}, whole: {said.whole})"
    if download:
        path.unlink(missing_ok=True)
    raise SigningError(
        f"{path.name}: {problem} (expected {key.fingerprint}, key ID "
        f"{key.fingerprint[-8:].lower()}); "
        + ("the download was deleted and " if download else "")
        + "nothing was extracted.",
        hint="A mirror or proxy may be serving another package under the vendor's name.",
    )


def read_release(build_dir: Path) -> str | None:
    """The kernel release a build tree was configured for, as `uname -r` would print it.

    UTS_RELEASE is what a module's vermagic is made of, so it wins; include/config/kernel.release
    is the fallback (Debian writes the upstream version there, not the ABI name).
    """
    for header in (
        "include/generated/utsrelease.h",
        "include/linux/utsrelease.h",
        "include/linux/version.h",
    ):
        with contextlib.suppress(OSError):
            match = UTS_RELEASE.search((build_dir / header).read_bytes())
            if match:
                return match.group(1).decode("utf-8", "replace")
    with contextlib.suppress(OSError):
        text = (build_dir / "include" / "config" / "kernel.release").read_text(
            encoding="utf-8", errors="replace"
        )
        if text.strip():
            return text.strip()
    return None


def release_disagreement(build_dir: Path) -> tuple[str, str] | None:
    """(UTS_RELEASE, include/config/kernel.release) where a tree names two releases.

    Module vermagic is made of UTS_RELEASE, but build systems that ask the tree for its
    release (`make kernelrelease`, DRBD 9's install paths and k-config-<release>.gz) read
    kernel.release: Debian's headers say 6.1.192 there for 6.1.0-57-amd64.
    """
    uts = read_release(build_dir)
    with contextlib.suppress(OSError):
        text = (build_dir / "include" / "config" / "kernel.release").read_text(
            encoding="utf-8", errors="replace"
        )
        if uts is not None and text.strip() and text.strip() != uts:
            return uts, text.strip()
    return None


def find_build_dirs(root: Path) -> dict[Path, str]:
    """Directories under ``root`` that look like a configured kernel build tree, with release."""
    found: dict[Path, str] = {}
    for directory, subdirs, files in os.walk(root):
        here = Path(directory)
        depth = len(here.relative_to(root).parts)
        if "Makefile" in files and (".config" in files or "include" in subdirs):
            release = read_release(here)
            if release is not None:
                found[here] = release
                subdirs.clear()
                continue
        if depth >= 5:
            subdirs.clear()
        else:
            # Build trees live under usr/src or lib/modules; skip the bulk of other trees.
            subdirs[:] = [d for d in subdirs if depth > 0 or d in ("usr", "lib", "src", "opt")]
    return found


def _read_marker(base: Path) -> dict[str, str] | None:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((base / MARKER).read_text(encoding="utf-8"))
        if isinstance(data, dict) and (base / "tree").is_dir():
            return {str(k): str(v) for k, v in data.items()}
    return None


def _remove_dead_partials(base: Path) -> None:
    """Unfinished extractions of processes that are gone (killed mid-way) take no more room."""
    for stale in base.parent.glob(f"{base.name}.partial-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            log.info(f"removing {stale}, left by an extraction that was killed")
            shutil.rmtree(stale, ignore_errors=True)


def _extract_tree(rpm: Fetched, info: RpmInfo, settings: FetchSettings) -> dict[str, str]:
    """Extract (or reuse) the payload of ``rpm`` and return its marker data.

    A finished tree (its marker written last) is never removed: parallel builds sharing the
    cache may have it mounted. A lock makes concurrent first extractions take turns.
    """
    base = settings.cache_dir / "kernels" / rpm.sha256
    done = _read_marker(base)
    if done is not None:
        return done
    with file_lock(settings.cache_dir / "locks" / f"kernel-{rpm.sha256}.lock"):
        done = _read_marker(base)
        if done is not None:
            return done
        _remove_dead_partials(base)
        partial = base.with_name(f"{base.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            (partial / "tree").mkdir(parents=True)
            with log.step(f"extracting {info.nvra}"):
                count = extract_payload(rpm.path, info, partial / "tree", settings.extract_limits)
                log.info(f"{count} files")
            builds = find_build_dirs(partial / "tree")
            if not builds:
                raise InputError(
                    f"{rpm.path.name} holds no kernel build tree (a directory with a Makefile "
                    "and a configured include/config/kernel.release or utsrelease.h).",
                    hint="Check that the target names the kernel-devel package of dom0's kernel.",
                )
            tree = partial / "tree"
            data = {
                "nvra": info.nvra,
                "builds": json.dumps({str(p.relative_to(tree)): r for p, r in builds.items()}),
            }
            write_atomic(partial / MARKER, json.dumps(data).encode())
            # Only an unfinished tree (no marker: a killed run) can be in the way.
            shutil.rmtree(base, ignore_errors=True)
            os.replace(partial, base)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return data


def prepare_kernel(
    target: Target, settings: FetchSettings, inputs: KernelInputs, evr: str | None = None
) -> KernelTree:
    """Fetch, verify and extract ``target``'s kernel-devel (from a yum source: the one whose
    version-release is ``evr``, else the newest match); check its release."""
    source_spec = target.kernel_source
    kind = source_spec.kind
    if inputs.iso is not None and inputs.kernel_rpm is not None:
        raise ConfigError("Give either --iso or --kernel-rpm, not both.")
    if inputs.iso is not None and kind is not SourceKind.ISO:
        raise ConfigError(
            f"--iso is for targets whose kernel-devel comes from an ISO; {target.id} takes it "
            f"from {'an RPM URL' if kind is SourceKind.RPM else 'yum repositories'}.",
            hint="Pass the kernel-devel RPM itself with --kernel-rpm PATH.",
        )
    if target.kernel_dependency is KernelDependency.UNAME_R and (
        kind is not SourceKind.YUM or inputs.kernel_rpm is not None
    ):
        log.warn(
            f"{target.id}'s module will require {UNAME_PROVIDE} = {target.kernel_release}: "
            f"whether dom0's {target.kernel_runtime} package provides it is read from yum "
            "metadata only, and is not checked for this kernel-devel"
        )
    with log.step(f"kernel-devel for {target.id}"):
        rpm, source = _fetch_rpm(target, settings, inputs, evr)
        info = read_info(rpm.path)
        if info.name != target.kernel_package:
            raise InputError(
                f"{rpm.path.name} is the package {info.name}, not {target.kernel_package} as the "
                f"target {target.id} expects.",
                hint="Pass the target's kernel-devel package, or fix the target's spec.",
            )
        data = _extract_tree(rpm, info, settings)
    builds: dict[str, str] = json.loads(data["builds"])
    matching = [path for path, release in builds.items() if release == target.kernel_release]
    if not matching:
        found = ", ".join(f"{release} (in {path})" for path, release in builds.items())
        raise KernelMismatchError(
            f"The kernel tree in {rpm.path.name} is for kernel release {found}, but target "
            f"{target.id} runs {target.kernel_release}.",
            hint="A module built from this tree would not load on dom0. Use the kernel-devel "
            "package of dom0's running kernel, or correct kernel.release in the target's spec.",
        )
    root = settings.cache_dir / "kernels" / rpm.sha256 / "tree"
    two = release_disagreement(root / matching[0])
    if two is not None:
        raise KernelMismatchError(
            f"The kernel tree in {rpm.path.name} ({matching[0]}) names two releases: "
            f"UTS_RELEASE is {two[0]}, include/config/kernel.release is {two[1]}. Modules "
            f"would carry {two[0]}, but DRBD's build names its files and paths after "
            f'{two[1]} (rpmbuild then fails in %doc with "File not found").',
            hint="Use the vendor's kernel-devel package as shipped (its kernel.release is "
            "`uname -r`), or repackage the tree with include/config/kernel.release holding "
            f"{two[0]}.",
        )
    if kind is SourceKind.YUM and source_spec.key is not None:
        source_trust = rpm_trust = f"vendor-signature {source_spec.key.fingerprint}"
    elif kind is SourceKind.YUM and source_spec.insecure is not None:
        source_trust = rpm_trust = f"insecure: {source_spec.insecure}"
    else:
        source_trust, rpm_trust = source.trusted_as, rpm.trusted_as
    rpm.trust()
    source.trust()
    return KernelTree(
        release=target.kernel_release,
        root=root,
        build_dir=root / matching[0],
        rpm=rpm.path,
        rpm_nvra=data["nvra"],
        rpm_sha256=rpm.sha256,
        rpm_version_release=f"{info.version}-{info.release}",
        source=rpm.origin,
        source_sha256=source.sha256,
        files=(source.path, rpm.path, root.parent / MARKER),
        source_trust=source_trust,
        rpm_trust=rpm_trust,
    )
