"""Publishing built RPMs as signed yum repositories, atomically and incrementally.

Layout of a published tree (``--repo DIR``)::

    DIR/.lock                       held while publishing (one publisher at a time)
    DIR/versions/<id>/              immutable repository versions; the last N are kept
        el5/i386/*.rpm, repodata/   one repository per consumer family and $basearch
        el7/x86_64/...
        RPM-GPG-KEY-xcp-drbd-builder
        xcp-drbd-el5.repo ...
        publish-state.json          what was published from which input (incremental runs)
    DIR/current -> versions/<id>    the pointer, switched with one os.replace()
    DIR/el5 -> current/el5          stable names clients use (baseurl=URL/el5/$basearch)

A new version is assembled in ``versions/<id>.partial``: unchanged packages are hard links to
the previous version's signed files (never re-signed), new ones are copied and signed, then
metadata is made with ``createrepo_c --update`` seeded from the previous version, ``repomd.xml``
is signed, and every signature is verified.  Only then is the directory renamed and ``current``
switched, so an interrupted publish leaves the served tree exactly as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from builder import log, proc, sign
from builder.errors import (
    CommandError,
    ConfigError,
    InputError,
    PublishError,
)
from builder.locks import timed_lock
from builder.specs import SAFE_NAME, Consumer, Registry

KEY_FILE_NAME = "RPM-GPG-KEY-xcp-drbd-builder"
STATE_FILE_NAME = "publish-state.json"
REPO_ID_PREFIX = "xcp-drbd"
STATE_FORMAT = 1
PARTIAL_SUFFIX = ".partial"


# --- inputs: the build stage's artifacts ---------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Build:
    """One finished build: ``artifacts/<target>/<drbd version>/`` with its manifest."""

    target: str
    drbd_version: str
    consumer: Consumer
    basearch: str
    directory: Path
    outputs: tuple[tuple[Path, str], ...]  # (RPM file, sha256 from the manifest)

    @property
    def family(self) -> str:
        return family_path(self.consumer, self.basearch)


def family_path(consumer: Consumer, basearch: str) -> str:
    return f"{consumer.value}/{basearch}"


def _manifest_error(manifest: Path, problem: str) -> InputError:
    return InputError(
        f"{manifest}: {problem}",
        hint="Rebuild this target with `python -m builder build`, or move the directory aside.",
    )


def read_build(directory: Path, registry: Callable[[], Registry]) -> Build:
    manifest = directory / "manifest.json"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _manifest_error(manifest, f"cannot read: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise _manifest_error(manifest, f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise _manifest_error(manifest, "must be a JSON object")
    target = data.get("target") or directory.parent.name
    version = data.get("drbd_version") or directory.name
    consumer_value = data.get("consumer")
    basearch = data.get("basearch")
    if consumer_value is None or basearch is None:
        # Older manifests: the target registry knows the consumer and $basearch.
        known = registry().target(str(target))
        consumer_value = consumer_value or known.consumer.value
        basearch = basearch or known.basearch
    try:
        consumer = Consumer(consumer_value)
    except ValueError:
        valid = ", ".join(c.value for c in Consumer)
        raise _manifest_error(
            manifest, f"consumer {consumer_value!r} is not one of {valid}"
        ) from None
    if not isinstance(basearch, str) or not SAFE_NAME.fullmatch(basearch):
        raise _manifest_error(manifest, f"basearch {basearch!r} is not a plain name")
    outputs_raw = data.get("outputs")
    if not isinstance(outputs_raw, list):
        raise _manifest_error(manifest, "outputs must be a list of {file, sha256}")
    outputs: list[tuple[Path, str]] = []
    for index, entry in enumerate(outputs_raw):
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise _manifest_error(manifest, f"outputs[{index}] needs a file name")
        name = entry["file"]
        if not name.endswith(".rpm"):
            continue
        if "/" in name or not SAFE_NAME.fullmatch(name):
            raise _manifest_error(manifest, f"outputs[{index}].file {name!r} is not a plain name")
        digest = entry.get("sha256")
        if not isinstance(digest, str) or len(digest) != 64:
            raise _manifest_error(manifest, f"outputs[{index}].sha256 is missing or malformed")
        outputs.append((directory / name, digest.lower()))
    return Build(
        target=str(target),
        drbd_version=str(version),
        consumer=consumer,
        basearch=basearch,
        directory=directory,
        outputs=tuple(outputs),
    )


def scan_artifacts(artifacts: Path, registry: Callable[[], Registry]) -> list[Build]:
    """Finished builds under ``artifacts/<target>/<version>/``; unfinished ones are skipped."""
    if not artifacts.is_dir():
        raise ConfigError(f"Artifacts directory {artifacts} does not exist.")
    builds: list[Build] = []
    for target_dir in sorted(p for p in artifacts.iterdir() if p.is_dir()):
        if target_dir.name.startswith("."):
            continue
        for build_dir in sorted(p for p in target_dir.iterdir() if p.is_dir()):
            where = build_dir.relative_to(artifacts)
            if build_dir.name.endswith(PARTIAL_SUFFIX):
                log.warn(f"skipping {where}: an unfinished build (*.partial)")
                continue
            if not (build_dir / "manifest.json").is_file():
                log.warn(f"skipping {where}: no manifest.json, so not a finished build")
                continue
            recorded = _recorded_version(build_dir / "manifest.json")
            if recorded is not None and recorded != build_dir.name:
                # The build stage moves a finished build aside as <version>.old-<pid> before
                # putting the new one in place; an interrupt can leave that copy behind.
                log.warn(
                    f"skipping {where}: its manifest.json is for DRBD {recorded}, so it is a "
                    "leftover or a copy, not a finished build"
                )
                continue
            builds.append(read_build(build_dir, registry))
    return builds


def _recorded_version(manifest: Path) -> str | None:
    """The manifest's drbd_version, or None when it has none (read_build reports bad ones)."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    version = data.get("drbd_version") if isinstance(data, dict) else None
    return version if isinstance(version, str) and version else None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def query_nevras(files: Sequence[Path]) -> dict[Path, str]:
    """name-epoch:version-release.arch of each RPM, read from its header."""
    found: dict[Path, str] = {}
    fmt = r"%{NAME}-%{EPOCHNUM}:%{VERSION}-%{RELEASE}.%{ARCH}\n"
    # A missing rpm program is the host's problem (CommandError), not a bad input file.
    rpm = proc.which("rpm", hint="Install rpm: apt-get install rpm")
    for start in range(0, len(files), sign.CHUNK):
        chunk = files[start : start + sign.CHUNK]
        # --nomanifest: a text file listed as an RPM is an error, not a list of more packages.
        cmd: list[str | os.PathLike[str]] = [
            rpm, "-qp", "--nomanifest", "--nosignature", "--nodigest",
        ]  # fmt: skip
        cmd += ["--qf", fmt, *chunk]
        result = proc.run(cmd, echo=False, check=False)
        if result.returncode != 0:
            raise InputError(
                f"Cannot read an RPM header (rpm -qp exited with {result.returncode}).\n"
                f"{proc.tail(result.stdout + result.stderr)}".rstrip(),
                hint="An artifact is not a valid RPM; rebuild it.",
            )
        lines = result.stdout.splitlines()
        if len(lines) != len(chunk):
            raise InputError(f"rpm printed {len(lines)} headers for {len(chunk)} packages.")
        found.update(zip(chunk, lines, strict=True))
    return found


# --- state of a published version --------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Published:
    """One package in a published version."""

    path: str  # relative to the version root: "el5/i386/drbd-8.4.1-1.i386.rpm"
    nevra: str
    source_sha256: str  # of the unsigned input, as the build stage recorded it

    @property
    def family(self) -> str:
        return self.path.rsplit("/", 1)[0]


@dataclass(frozen=True, kw_only=True)
class State:
    key: str
    packages: tuple[Published, ...] = ()

    def to_json(self) -> str:
        data = {
            "format": STATE_FORMAT,
            "key": self.key,
            "packages": [
                {"path": p.path, "nevra": p.nevra, "source_sha256": p.source_sha256}
                for p in sorted(self.packages, key=lambda p: p.path)
            ],
        }
        return json.dumps(data, indent=1) + "\n"

    @classmethod
    def from_file(cls, path: Path) -> State:
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != STATE_FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r}")
            packages = tuple(
                Published(path=p["path"], nevra=p["nevra"], source_sha256=p["source_sha256"])
                for p in data["packages"]
            )
            return cls(key=str(data["key"]), packages=packages)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PublishError(
                f"The published state {path} is unreadable: {exc}",
                hint="Publish into a fresh --repo directory, or restore the file.",
            ) from exc


@dataclass(frozen=True, kw_only=True)
class Incoming:
    """A package from the artifacts that the repository does not hold yet."""

    source: Path
    source_sha256: str
    nevra: str
    family: str
    consumer: Consumer

    @property
    def path(self) -> str:
        return f"{self.family}/{self.source.name}"


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What a publish changes: the new packages, and the state after it."""

    incoming: tuple[Incoming, ...]
    state: State
    families: dict[str, Consumer] = field(default_factory=dict)  # every family in the new version

    @property
    def changed_families(self) -> set[str]:
        return {item.family for item in self.incoming}


def plan_publish(
    builds: Sequence[Build],
    previous: State | None,
    key_fingerprint: str,
    nevras: Callable[[Sequence[Path]], dict[Path, str]] = query_nevras,
    digest: Callable[[Path], str] = sha256_file,
) -> Plan:
    """Decide which inputs are new; refuse a known name-version-release with other content."""
    if previous is not None and previous.key != key_fingerprint:
        raise PublishError(
            f"The repository is signed with key {previous.key}; refusing to mix in packages "
            f"signed with {key_fingerprint}.",
            hint="Publish with the repository's key, or start a new --repo directory.",
        )
    by_path = {p.path: p for p in previous.packages} if previous else {}
    candidates: dict[str, tuple[Path, str, Build]] = {}
    for build in builds:
        for source, manifest_sha in build.outputs:
            if not source.is_file():
                raise InputError(
                    f"{source} is listed in {build.directory / 'manifest.json'} but missing."
                )
            actual = digest(source)
            if actual != manifest_sha:
                raise InputError(
                    f"{source} has sha256 {actual}, but its manifest records {manifest_sha}.",
                    hint="The artifact changed after the build; rebuild it.",
                )
            path = f"{build.family}/{source.name}"
            seen = candidates.get(path)
            if seen is not None and seen[1] != actual:
                raise PublishError(
                    f"{source} and {seen[0]} have the same name but different content; both "
                    f"would be published as {path}."
                )
            known = by_path.get(path)
            if known is not None:
                if known.source_sha256 != actual:
                    raise PublishError(
                        f"{path} is already published with different content "
                        f"(sha256 {known.source_sha256}, now {actual}).",
                        hint="Never replace a package under the same name-version-release: "
                        "bump the release and rebuild.",
                    )
                continue
            candidates[path] = (source, actual, build)
    new_sources = [source for source, _, _ in candidates.values()]
    nevra_of = nevras(new_sources) if new_sources else {}
    published_nevras = {(p.family, p.nevra): p for p in by_path.values()}
    incoming: list[Incoming] = []
    claimed: dict[tuple[str, str], Path] = {}
    for source, actual, build in candidates.values():
        nevra = nevra_of[source]
        other = published_nevras.get((build.family, nevra))
        if other is not None:
            raise PublishError(
                f"{source.name} is {nevra}, which {build.family} already holds as {other.path} "
                "with different content.",
                hint="Bump the release and rebuild instead of replacing a published package.",
            )
        twin = claimed.get((build.family, nevra))
        if twin is not None:
            raise PublishError(f"{source} and {twin} are both {nevra} with different content.")
        claimed[(build.family, nevra)] = source
        incoming.append(
            Incoming(
                source=source,
                source_sha256=actual,
                nevra=nevra,
                family=build.family,
                consumer=build.consumer,
            )
        )
    packages = tuple(by_path.values()) + tuple(
        Published(path=item.path, nevra=item.nevra, source_sha256=item.source_sha256)
        for item in incoming
    )
    families = {p.family: Consumer(p.family.split("/", 1)[0]) for p in packages}
    return Plan(
        incoming=tuple(incoming),
        state=State(key=key_fingerprint, packages=packages),
        families=families,
    )


# --- consumer configuration --------------------------------------------------------------


def repo_id(consumer: Consumer) -> str:
    return f"{REPO_ID_PREFIX}-{consumer.value}"


def repo_file_name(consumer: Consumer) -> str:
    return f"{repo_id(consumer)}.repo"


def render_repo_file(base_url: str, consumer: Consumer) -> str:
    """A ``.repo`` file for dom0: package and metadata signatures both checked."""
    base = base_url.rstrip("/")
    return (
        f"[{repo_id(consumer)}]\n"
        f"name=DRBD for Xen dom0 ({consumer.value}, $basearch)\n"
        f"baseurl={base}/{consumer.value}/$basearch/\n"
        "enabled=1\n"
        "gpgcheck=1\n"
        "repo_gpgcheck=1\n"
        f"gpgkey={base}/{KEY_FILE_NAME}\n"
        "metadata_expire=1h\n"
    )


# --- locking and the atomic pointer ------------------------------------------------------


def publish_lock(repo: Path, timeout: float) -> contextlib.AbstractContextManager[None]:
    """Exclusive lock on ``repo/.lock``; wait up to ``timeout`` seconds, then fail clearly."""
    return timed_lock(
        repo / ".lock",
        timeout=timeout,
        what=f"Another publish (pid {{pid}}) is writing {repo}",
        waiting=f"waiting for another publish (pid {{pid}}) to release {repo / '.lock'}",
        hint="Wait for it to finish, or pass a longer --lock-timeout.",
    )


def current_version(repo: Path) -> Path | None:
    pointer = repo / "current"
    if not pointer.is_symlink():
        return None
    target = pointer.resolve()
    if not target.is_dir():
        raise PublishError(f"{pointer} points at {target}, which does not exist.")
    return target


def _replace_symlink(link: Path, target: str) -> None:
    temp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    temp.unlink(missing_ok=True)
    os.symlink(target, temp)
    os.replace(temp, link)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_version_id(versions: Path) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    candidate = stamp
    counter = 1
    while (versions / candidate).exists():
        counter += 1
        candidate = f"{stamp}-{counter}"
    return candidate


def _link_or_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def prune_versions(repo: Path, keep: int) -> list[Path]:
    """Delete the oldest versions beyond the ``keep`` newest (never the current one)."""
    versions = repo / "versions"
    current = current_version(repo)
    finished = sorted(
        p for p in versions.iterdir() if p.is_dir() and not p.name.endswith(PARTIAL_SUFFIX)
    )
    removed = []
    for old in finished[: max(len(finished) - keep, 0)]:
        if current is not None and old.resolve() == current:
            continue
        shutil.rmtree(old)
        removed.append(old)
    return removed


# --- createrepo_c ------------------------------------------------------------------------

_createrepo_cache: dict[str, str] = {}


def find_createrepo(consumer: Consumer, explicit: str | None = None) -> str:
    """A createrepo_c that can write the consumer's checksum type.

    Some builds (PyPI wheels, newer distributions) drop SHA-1, which EL5's yum needs; Debian's
    0.17 keeps it.  Probe each createrepo_c on PATH once.
    """
    checksum = checksum_for(consumer)
    if explicit:
        candidates = [explicit]
    elif checksum == "sha256":
        # Every createrepo_c writes SHA-256: no probe needed.
        return proc.which("createrepo_c", hint="apt-get install createrepo-c")
    else:
        candidates = []
        for directory in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin"]:
            path = Path(directory or ".") / "createrepo_c"
            if os.access(path, os.X_OK) and str(path) not in candidates:
                candidates.append(str(path))
    if not candidates:
        raise PublishError("createrepo_c is not installed.", hint="apt-get install createrepo-c")
    for candidate in candidates:
        cached = _createrepo_cache.get(f"{candidate}\0{checksum}")
        if cached == "ok":
            return candidate
        if cached == "no":
            continue
        with tempfile.TemporaryDirectory(prefix="xdb-probe-") as tmp:
            result = proc.run(
                [candidate, "-q", "--no-database", "-s", checksum, tmp], echo=False, check=False
            )
        ok = result.returncode == 0
        _createrepo_cache[f"{candidate}\0{checksum}"] = "ok" if ok else "no"
        if ok:
            return candidate
    raise PublishError(
        f"No createrepo_c on PATH can write {checksum!r} checksums, which the "
        f"{consumer.value} consumer needs (tried {', '.join(candidates)}).",
        hint="Debian's createrepo-c package supports them: apt-get install createrepo-c, "
        "or name one with --createrepo PATH.",
    )


def checksum_for(consumer: Consumer) -> str:
    return "sha" if consumer is Consumer.EL5 else "sha256"


def make_metadata(
    directory: Path, consumer: Consumer, previous: Path | None, createrepo: str | None
) -> None:
    """createrepo_c into ``directory``, reusing ``previous``'s metadata for unchanged files.

    ``--update`` trusts file size and mtime.  That is safe here: unchanged packages are hard
    links to the previous version's signed files (same inode, same content), and every signed
    file is new.
    """
    cmd = [
        find_createrepo(consumer, createrepo),
        "--quiet",
        "--checksum",
        checksum_for(consumer),
        "--general-compress-type",
        "gz",
        "--workers",
        "2",
    ]
    if consumer is Consumer.EL5:
        # yum 3 builds its own sqlite cache from XML; the host's newer sqlite files are not needed.
        cmd.append("--no-database")
    if previous is not None and (previous / "repodata" / "repomd.xml").is_file():
        cmd += ["--update", "--update-md-path", str(previous)]
    try:
        proc.run([*cmd, str(directory)], echo=False)
    except CommandError as exc:
        raise PublishError(f"createrepo_c failed for {directory}.\n{exc.message}") from exc


# --- the pipeline ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PublishOptions:
    artifacts: Path
    repo: Path
    key: str
    gnupg_home: Path
    passphrase_file: Path | None = None
    base_url: str | None = None
    keep: int = 3
    lock_timeout: float = 600.0
    createrepo: str | None = None
    specs: tuple[Path, ...] = ()


@dataclass(frozen=True, kw_only=True)
class PublishResult:
    version: Path | None  # None when nothing changed
    new_packages: tuple[str, ...]
    total_packages: int


def publish(options: PublishOptions, registry: Callable[[], Registry]) -> PublishResult:
    key = sign.find_key(options.key, options.gnupg_home, options.passphrase_file)
    builds = scan_artifacts(options.artifacts, registry)
    el5 = sorted({b.target for b in builds if b.consumer is Consumer.EL5})
    if el5:
        # Before the lock and before anything is signed: a host or key that cannot make
        # signatures rpm 4.4 verifies would publish a repository EL5 dom0s refuse.
        sign.check_key_for_el5(key, el5)
        sign.require_gpg1(el5)
    elif key.is_subkey:
        log.warn(
            f"signing with subkey {key.signing_fingerprint} of key {key.fingerprint}: rpm before "
            "4.13 trusts only primary keys; check that every consumer's rpm is newer"
        )
    options.repo.mkdir(parents=True, exist_ok=True)
    versions = options.repo / "versions"
    versions.mkdir(exist_ok=True)
    with publish_lock(options.repo, options.lock_timeout):
        for stale in versions.glob(f"*{PARTIAL_SUFFIX}"):
            log.info(f"removing {stale.name}, left by an interrupted publish")
            shutil.rmtree(stale, ignore_errors=True)
        previous = current_version(options.repo)
        state = State.from_file(previous / STATE_FILE_NAME) if previous else None
        with log.step("Plan"):
            plan = plan_publish(builds, state, key.fingerprint)
            log.info(
                f"{len(builds)} build(s), {len(plan.incoming)} new package(s), "
                f"{len(plan.state.packages)} in the repository after publishing"
            )
        if previous is None and not plan.incoming:
            raise PublishError(
                f"Nothing to publish: {options.artifacts} holds no finished build with RPMs.",
                hint="Run `python -m builder build` first; see the warnings above for skipped "
                "directories.",
            )
        if previous is not None and not plan.incoming:
            log.info(f"nothing new: {options.repo / 'current'} stays at {previous.name}")
            return PublishResult(
                version=None, new_packages=(), total_packages=len(plan.state.packages)
            )
        version_id = _new_version_id(versions)
        partial = versions / f"{version_id}{PARTIAL_SUFFIX}"
        partial.mkdir()
        try:
            _assemble(partial, plan, previous, key, options)
            final = versions / version_id
            os.replace(partial, final)
            _fsync_dir(versions)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        with log.step(f"Switch {options.repo / 'current'} to {version_id}"):
            _stable_links(options.repo, plan.families)
            _replace_symlink(options.repo / "current", f"versions/{version_id}")
            _fsync_dir(options.repo)
            for old in prune_versions(options.repo, options.keep):
                log.info(f"removed old version {old.name}")
    return PublishResult(
        version=final,
        new_packages=tuple(item.path for item in plan.incoming),
        total_packages=len(plan.state.packages),
    )


def _assemble(
    root: Path, plan: Plan, previous: Path | None, key: sign.SigningKey, options: PublishOptions
) -> None:
    changed = plan.changed_families
    new_paths = {item.path for item in plan.incoming}
    with log.step("Reuse the previous version's signed packages"):
        for family in plan.families:
            (root / family).mkdir(parents=True)
        reused = 0
        for pub in plan.state.packages:
            if pub.path in new_paths:
                continue
            assert previous is not None  # noqa: S101 - old packages come from a previous version
            _link_or_copy(previous / pub.path, root / pub.path)
            reused += 1
        for family in sorted(set(plan.families) - changed):
            # Untouched family: its metadata and signature are still exact.
            assert previous is not None  # noqa: S101 - only a previous version has such families
            shutil.copytree(
                previous / family / "repodata",
                root / family / "repodata",
                copy_function=_link_or_copy,
            )
        log.info(f"{reused} package(s) hard-linked, unchanged and not re-signed")
    with sign.public_key_file(key) as public_key:
        by_consumer: dict[Consumer, list[Path]] = {}
        for item in plan.incoming:
            target = root / item.path
            shutil.copyfile(item.source, target)
            by_consumer.setdefault(item.consumer, []).append(target)
        for consumer, files in sorted(by_consumer.items()):
            how = " (V3 signatures, GnuPG 1.4)" if consumer is Consumer.EL5 else ""
            with log.step(
                f"Sign {len(files)} new {consumer.value} package(s) with {key.key_id}{how}"
            ):
                sign.sign_rpms(files, key, consumer)
                sign.check_signatures(files, key, consumer)
                sign.verify_rpms(files, public_key)
        for family in sorted(changed):
            consumer = plan.families[family]
            folder = root / family
            prior = previous / family if previous and (previous / family).is_dir() else None
            with log.step(f"Make metadata for {family}"):
                make_metadata(folder, consumer, prior, options.createrepo)
                _keep_previous_metadata(folder, prior)
            with log.step(f"Sign and verify {family}/repodata/repomd.xml"):
                repomd = folder / "repodata" / "repomd.xml"
                signature = sign.detach_sign(repomd, key, consumer)
                sign.verify_detached(repomd, signature, public_key, consumer)
        (root / KEY_FILE_NAME).write_text(public_key.read_text(encoding="ascii"), encoding="ascii")
    base_url = options.base_url or options.repo.resolve().as_uri()
    for consumer in sorted(set(plan.families.values())):
        (root / repo_file_name(consumer)).write_text(
            render_repo_file(base_url, consumer), encoding="utf-8"
        )
    (root / STATE_FILE_NAME).write_text(plan.state.to_json(), encoding="utf-8")


def _keep_previous_metadata(folder: Path, prior: Path | None) -> None:
    """Keep last version's metadata files one more round, and no older ones.

    A client that fetched the old ``repomd.xml`` just before the switch then asks for the old
    ``…-primary.xml.gz``; with unique file names that file is still there, instead of a 404.
    Only the files the previous ``repomd.xml`` lists are kept: the previous ``repodata/`` also
    holds the generation before it, and copying all of it would keep every generation forever.
    """
    if prior is None:
        return
    for href in metadata_files(prior / "repodata" / "repomd.xml"):
        target = folder / href
        if not target.exists() and (prior / href).is_file():
            _link_or_copy(prior / href, target)


def metadata_files(repomd: Path) -> list[str]:
    """The ``repodata/…`` files a ``repomd.xml`` lists, relative to its repository."""
    import createrepo_c as cr

    try:
        records = cr.Repomd(str(repomd)).records
    except Exception as exc:  # createrepo_c raises its own error type for bad XML
        raise PublishError(f"The published metadata {repomd} cannot be parsed: {exc}.") from None
    hrefs: list[str] = []
    for record in records:
        href = str(record.location_href or "")
        parts = href.split("/")
        if len(parts) != 2 or parts[0] != "repodata" or parts[1] in ("", ".", ".."):
            raise PublishError(f"{repomd} lists {href!r}, which is not a file in repodata/.")
        hrefs.append(href)
    return hrefs


def _stable_links(repo: Path, families: dict[str, Consumer]) -> None:
    """Names clients use, pointing through ``current`` so they never need to change."""
    names = {consumer.value for consumer in families.values()}
    names |= {KEY_FILE_NAME} | {repo_file_name(c) for c in families.values()}
    for name in sorted(names):
        link = repo / name
        if not link.is_symlink():
            if link.exists():
                raise PublishError(f"{link} exists and is not a link into current/; move it away.")
            _replace_symlink(link, f"current/{name}")
