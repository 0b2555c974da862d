"""Publishing built RPMs as signed yum repositories, atomically, at the cost of what is new.

Layout of a published tree (``--repo DIR``)::

    DIR/.lock                       held while publishing (one publisher at a time)
    DIR/packages/                   the package store (``store``): signed packages that
        el5/i386/*.rpm              every version shares, added once, never replaced, and
        el5/i386/repodata           -> ../../../current/el5/i386/repodata
        index.jsonl                 every package published, append-only
    DIR/versions/<id>/              immutable versions of the metadata; the last N are kept
        el5/i386/repodata/          one repository per consumer family and $basearch
        el7/x86_64/repodata/
        RPM-GPG-KEY-xcp-drbd-builder
        xcp-drbd-el5.repo ...
        index.html                  the front page (``frontpage``)
        publish-state.json          the signing key, and how much of the index is live
    DIR/current -> versions/<id>    the pointer, switched with one os.replace()
    DIR/el5 -> packages/el5         stable names clients use (baseurl=URL/el5/$basearch)
    DIR/index.html -> current/index.html   what a browser pointed at URL gets

A publish checks every published package against the digest it had when signed (a cheap stat
check for those unchanged since their last check), signs the new packages into the store,
makes each changed family's metadata in ``versions/<id>.partial`` with ``createrepo_c
--update`` seeded from the previous version, signs ``repomd.xml`` and verifies every new
signature.  Only then is the directory renamed and ``current`` switched, so an interrupted
publish leaves the served tree exactly as it was; its leftovers in the store are removed by the
next publish.  Nothing is done per unchanged package but a ``stat``, and a publish whose
builds are all published already (``.settled``) reads neither the index nor their outputs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from builder import log, proc, signatures
from builder.artifacts import manifest
from builder.artifacts.manifest import Manifest, scan
from builder.errors import (
    BuilderError,
    CommandError,
    ConfigError,
    InputError,
    NoSpaceError,
    PublishError,
    no_space,
)
from builder.files import sha256_file, write_atomic
from builder.publish import frontpage, frontpage_data, layout, provenance, sign
from builder.publish.consumers import profile
from builder.publish.layout import KEY_FILE_NAME, family_path, repo_file_name
from builder.publish.metadata import (
    CREATEREPO_CHOICE,
    find_createrepo,
    keep_previous_metadata,
    metadata_command,
)
from builder.publish.store import (
    EMPTY,
    Entry,
    Mark,
    Store,
)
from builder.publish.versions import (
    STATE_FILE_NAME,
    State,
    current_version,
    fsync_dir,
    link_or_copy,
    new_version_id,
    prune_versions,
    publish_lock,
    replace_symlink,
    stable_links,
)
from builder.specs import Consumer, Registry


def query_nevras(files: Sequence[Path]) -> dict[Path, str]:
    """name-epoch:version-release.arch of each RPM, read from its header."""
    found: dict[Path, str] = {}
    fmt = r"%{NAME}-%{EPOCHNUM}:%{VERSION}-%{RELEASE}.%{ARCH}\n"
    # A missing rpm program is the host's problem (CommandError), not a bad input file.
    rpm = proc.which("rpm", hint="Install rpm: apt-get install rpm")
    for chunk in signatures.chunks(files):
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


@dataclass(frozen=True, kw_only=True)
class Published:
    """What the live version holds: its key and every package in the store's index."""

    key: str
    packages: Sequence[Entry]


@dataclass(frozen=True, kw_only=True)
class Incoming:
    """A package from the artifacts that the repository does not hold yet."""

    source: Path
    source_sha256: str
    nevra: str
    family: str
    consumer: Consumer
    build: Manifest

    @property
    def path(self) -> str:
        return f"{self.family}/{self.source.name}"


@dataclass(frozen=True, kw_only=True)
class Changes:
    """What a publish changes: the new packages, on top of those already published."""

    incoming: tuple[Incoming, ...]
    published: Sequence[Entry]
    families: dict[str, Consumer] = field(default_factory=dict)  # every family in the new version

    @property
    def changed_families(self) -> set[str]:
        return {item.family for item in self.incoming}

    @property
    def total(self) -> int:
        return len(self.published) + len(self.incoming)


Candidate = tuple[Path, str, Manifest]  # an output not published yet: file, sha256, build


def changes_of(
    builds: Sequence[Manifest],
    previous: Published | None,
    key_fingerprint: str,
    nevras: Callable[[Sequence[Path]], dict[Path, str]] = query_nevras,
    digest: Callable[[Path], str] = sha256_file,
) -> Changes:
    """Decide which inputs are new; refuse a known name-version-release with other content.

    An output whose manifest records the digest already published under its name is not
    read at all: nothing of it would be used.  Only new outputs are hashed.
    """
    if previous is not None and previous.key != key_fingerprint:
        raise PublishError(
            f"The repository is signed with key {previous.key}; refusing to mix in packages "
            f"signed with {key_fingerprint}.",
            hint="Publish with the repository's key, or start a new --repo directory.",
        )
    by_path = {p.path: p for p in previous.packages} if previous else {}
    candidates = _new_outputs(builds, by_path, digest)
    new_sources = [source for source, _, _ in candidates.values()]
    nevra_of = nevras(new_sources) if new_sources else {}
    incoming = _named(candidates, nevra_of, by_path)
    published = list(by_path.values())
    families: dict[str, Consumer] = {}
    if incoming:  # the families of the new version; nothing to make without new packages
        names = {p.path.rsplit("/", 1)[0] for p in published}
        families = {f: Consumer(f.split("/", 1)[0]) for f in names}
        families.update({item.family: item.consumer for item in incoming})
    return Changes(incoming=tuple(incoming), published=published, families=families)


def _new_outputs(
    builds: Sequence[Manifest], by_path: dict[str, Entry], digest: Callable[[Path], str]
) -> dict[str, Candidate]:
    """The outputs not published yet, by store path, each checked against its manifest."""
    candidates: dict[str, Candidate] = {}
    for build in builds:
        family = family_path(build.consumer, build.basearch)
        for name, manifest_sha in build.outputs:
            path = f"{family}/{name}"
            known = by_path.get(path)
            if known is not None and known.source_sha256 == manifest_sha:
                continue
            source = build.directory / name
            if not source.is_file():
                raise InputError(
                    f"{source} is listed in {build.directory / manifest.MANIFEST} but missing."
                )
            actual = digest(source)
            if actual != manifest_sha:
                raise InputError(
                    f"{source} has sha256 {actual}, but its manifest records {manifest_sha}.",
                    hint="The artifact changed after the build; rebuild it.",
                )
            seen = candidates.get(path)
            if seen is not None and seen[1] != actual:
                raise PublishError(
                    f"{source} and {seen[0]} have the same name but different content; both "
                    f"would be published as {path}."
                )
            if known is not None:
                raise PublishError(
                    f"{path} is already published with different content "
                    f"(sha256 {known.source_sha256}, now {actual}).",
                    hint="Never replace a package under the same name-version-release: "
                    "bump the release and rebuild.",
                )
            candidates[path] = (source, actual, build)
    return candidates


def _named(
    candidates: dict[str, Candidate], nevra_of: dict[Path, str], by_path: dict[str, Entry]
) -> list[Incoming]:
    """The new packages with their name-epoch:version-release.arch, none of which a family
    holds yet, and no two of them the same."""
    # Only new packages are looked up: a publish with nothing new skips the index.
    published = {(p.family, p.nevra): p for p in by_path.values()} if candidates else {}
    incoming: list[Incoming] = []
    claimed: dict[tuple[str, str], Path] = {}
    for source, actual, build in candidates.values():
        nevra = nevra_of[source]
        family = family_path(build.consumer, build.basearch)
        other = published.get((family, nevra))
        if other is not None:
            raise PublishError(
                f"{source.name} is {nevra}, which {family} already holds as {other.path} "
                "with different content.",
                hint="Bump the release and rebuild instead of replacing a published package.",
            )
        twin = claimed.get((family, nevra))
        if twin is not None:
            raise PublishError(f"{source} and {twin} are both {nevra} with different content.")
        claimed[(family, nevra)] = source
        incoming.append(
            Incoming(
                source=source,
                source_sha256=actual,
                nevra=nevra,
                family=family,
                consumer=build.consumer,
                build=build,
            )
        )
    return incoming


def render_repo_file(base_url: str, consumer: Consumer) -> str:
    """The ``.repo`` file served for a consumer family: packages and metadata both checked."""
    base = base_url.rstrip("/")
    return layout.render_repo_file(
        name=f"DRBD for Xen dom0 ({consumer.value}, $basearch)",
        baseurl=layout.baseurl(base, consumer),
        gpgkey=f"{base}/{KEY_FILE_NAME}",
        metadata_expire=layout.METADATA_EXPIRE,
    )


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
    builds = scan(options.artifacts, registry)
    sign.check_signing_key(key, builds)
    try:
        options.repo.mkdir(parents=True, exist_ok=True)
        versions = options.repo / "versions"
        versions.mkdir(exist_ok=True)
        with publish_lock(options.repo, options.lock_timeout):
            return _publish_locked(options, builds, key, versions, registry)
    except (OSError, BuilderError) as exc:
        # A full disk shows up as whatever failed first: gpg, createrepo_c, a copy.
        if no_space(exc) or _nearly_full(options.repo):
            raise NoSpaceError(
                f"No space left on the device holding {options.repo}; nothing was published "
                f"and {options.repo / 'current'} is unchanged.\n"
                f"(what failed: {exc.message if isinstance(exc, BuilderError) else exc})",
                hint="Free space there (a smaller --keep removes old versions), then publish "
                "again; the next publish removes what this one left.",
            ) from exc
        raise


def _nearly_full(path: Path) -> bool:
    """Less than 1 MiB free where ``path`` lives (or its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        info = os.statvfs(path)
    except OSError:
        return False
    return info.f_bavail * info.f_frsize < (1 << 20)


def settled_key(build: Manifest) -> str:
    """How ``.settled`` names a build: its manifest's digest and the family it goes to."""
    return f"{build.sha256} {family_path(build.consumer, build.basearch)}"


@dataclass(frozen=True, kw_only=True)
class Opened:
    """The store under the lock, with the live version, its state and its checked index."""

    store: Store
    previous: Path | None
    state: State | None
    mark: Mark
    index: bytes  # the index bytes ``mark`` covers, parsed only if something may be new

    @cached_property
    def entries(self) -> list[Entry]:
        """The live packages, parsed once: for the strays after an interruption and the plan."""
        return self.store.entries(self.index, self.mark)


def _open_store(repo: Path, versions: Path) -> Opened:
    """The store and the live version, after clearing an interrupted publish."""
    interrupted = False
    for stale in versions.glob(f"*{manifest.PARTIAL_SUFFIX}"):
        log.info(f"removing {stale.name}, left by an interrupted publish")
        shutil.rmtree(stale, ignore_errors=True)
        interrupted = True
    store = Store(repo)
    previous = current_version(repo)
    state = State.from_file(previous / STATE_FILE_NAME) if previous else None
    if state is not None and state.legacy:
        assert previous is not None  # noqa: S101 - a state comes from a version
        state = _adopt_format_1(repo, previous, state)
    mark = state.index if state else EMPTY
    opened = Opened(
        store=store,
        previous=previous,
        state=state,
        mark=mark,
        index=store.check_index(mark, repair=True),
    )
    for folder in store.remove_incoming(but=os.getpid()):
        log.info(f"removed {folder}, left by a publish that was killed")
    if interrupted or store.repaired:
        # Packages reach the store only while a version is being assembled (*.partial).
        for stray in store.remove_strays(opened.entries):
            log.info(f"removed {stray}, left by an interrupted publish")
    return opened


def _publish_locked(
    options: PublishOptions,
    builds: Sequence[Manifest],
    key: sign.SigningKey,
    versions: Path,
    registry: Callable[[], Registry],
) -> PublishResult:
    opened = _open_store(options.repo, versions)
    store, previous, state, mark = opened.store, opened.previous, opened.state, opened.mark
    settled = store.settled(mark)
    # Builds of which every package is published already are not looked into again.
    pending = [build for build in builds if settled_key(build) not in settled]
    with log.step("Plan"):
        entries = opened.entries if pending else []
        published = Published(key=state.key, packages=entries) if state else None
        plan = changes_of(pending, published, key.fingerprint)
        total = mark.count + len(plan.incoming)
        log.info(
            f"{len(builds)} build(s) ({len(builds) - len(pending)} published before), "
            f"{len(plan.incoming)} new package(s), {total} in the repository after publishing"
        )
    if previous is None and not plan.incoming:
        raise PublishError(
            f"Nothing to publish: {options.artifacts} holds no finished build with RPMs.",
            hint="Run `python -m builder build` first; see the warnings above for skipped "
            "directories.",
        )
    if previous is not None and not plan.incoming:
        if pending:
            store.settle(mark, settled | {settled_key(build) for build in builds})
        log.info(f"nothing new: {options.repo / 'current'} stays at {previous.name}")
        return PublishResult(version=None, new_packages=(), total_packages=total)
    version_id = new_version_id(versions)
    partial = versions / f"{version_id}{manifest.PARTIAL_SUFFIX}"
    partial.mkdir()
    added: list[Entry] = []
    try:
        with sign.public_key_file(key) as public_key:
            added = _add_packages(
                store,
                plan,
                key,
                public_key,
                published=entries,
                root=partial,
                previous=previous,
                options=options,
            )
            new_mark = store.append(mark, added)
            _assemble(partial, plan=plan, previous=previous, public_key=public_key, options=options)
            _write_front_page(
                partial,
                entries=[*entries, *added],
                store=store,
                plan=plan,
                fingerprint=key.fingerprint,
                version=version_id,
                options=options,
                registry=registry,
            )
            new_state = State(key=key.fingerprint, index=new_mark)
            write_atomic(partial / STATE_FILE_NAME, new_state.to_json().encode())
            final = versions / version_id
            os.replace(partial, final)
            fsync_dir(versions)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        with contextlib.suppress(OSError):
            if added:
                os.truncate(store.index, mark.length)
            # Whatever this run put in the store: packages, statements, and the temporary
            # files rpmsign and gpg were writing there when it stopped.
            store.remove_strays(entries)
        raise
    store.record(added)
    with log.step(f"Switch {options.repo / 'current'} to {version_id}"):
        stable_links(options.repo, store, plan.families)
        replace_symlink(options.repo / "current", f"versions/{version_id}")
        fsync_dir(options.repo)
        for old in prune_versions(options.repo, options.keep):
            log.info(f"removed old version {old.name}")
    store.settle(new_mark, settled | {settled_key(build) for build in builds})
    return PublishResult(
        version=final,
        new_packages=tuple(item.path for item in plan.incoming),
        total_packages=total,
    )


def _add_packages(
    store: Store,
    plan: Changes,
    key: sign.SigningKey,
    public_key: Path,
    *,
    published: Sequence[Entry],
    root: Path,
    previous: Path | None,
    options: PublishOptions,
) -> list[Entry]:
    """Sign the new packages into the store, make the changed families' metadata in ``root``
    and sign it, record the builds' provenance, verify every new signature, and check every
    ``published`` package against its signed digest.

    createrepo_c runs while the rest is done: it needs only the signed files, and a failure
    on either side stops the whole publish before anything goes live.
    """
    signed = _sign_into_store(store, plan, key)
    memo = options.repo / CREATEREPO_CHOICE
    with contextlib.ExitStack() as running:
        metadata: dict[str, tuple[Consumer, Path | None, proc.Started]] = {}
        for family in sorted(plan.changed_families):
            consumer = plan.families[family]
            folder = root / family
            folder.mkdir(parents=True)
            prior = previous / family if previous and (previous / family).is_dir() else None
            cmd = metadata_command(
                store.family_dir(family),
                folder,
                consumer,
                prior,
                find_createrepo(consumer, options.createrepo, memo),
            )
            job = running.enter_context(proc.started(cmd, echo=False))
            metadata[family] = (consumer, prior, job)
        with log.step(
            f"Check the {len(published)} published package(s) against their signed digests"
        ):
            reread = store.check_unchanged(published)
            log.info(f"{len(published) - reread} unchanged since their last check, {reread} hashed")
        for consumer in sorted({item.consumer for item, _, _ in signed}):
            files = [path for item, path, _ in signed if item.consumer is consumer]
            with log.step(f"Check the signatures of {len(files)} new {consumer.value} package(s)"):
                sign.verify_rpms(files, public_key)
        statements = _write_provenance(store, signed, key, public_key)
        for family, (consumer, prior, job) in metadata.items():
            folder = root / family
            with log.step(f"Make metadata for {family}"):
                try:
                    job.wait()
                except CommandError as exc:
                    raise PublishError(
                        f"createrepo_c failed for {store.family_dir(family)}.\n{exc.message}"
                    ) from exc
                keep_previous_metadata(folder, prior)
            with log.step(f"Sign and verify {family}/repodata/repomd.xml"):
                repomd = folder / "repodata" / "repomd.xml"
                signature = sign.detach_sign(repomd, key, consumer)
                sign.verify_detached(repomd, signature, public_key, consumer)
    return [
        Entry(
            item.path,
            item.nevra,
            item.source_sha256,
            digest,
            path.stat().st_size,
            statements[id(item.build)],
        )
        for item, path, digest in signed
    ]


def _sign_into_store(
    store: Store, plan: Changes, key: sign.SigningKey
) -> list[tuple[Incoming, Path, str]]:
    """Copy and sign the new packages, check their signature packets, move them in place.

    A package in the store that the index does not list yet is a stray: if anything later
    fails, the publish removes it with the rest of what it wrote.
    """
    by_consumer: dict[Consumer, list[tuple[Incoming, Path]]] = {}
    incoming = store.incoming(os.getpid())
    try:
        for index, item in enumerate(plan.incoming):
            store.family_dir(item.family).mkdir(parents=True, exist_ok=True)
            # One folder per package: one name may be new in two families (noarch).
            temp = incoming / str(index) / item.source.name
            temp.parent.mkdir(parents=True)
            by_consumer.setdefault(item.consumer, []).append((item, temp))
            shutil.copyfile(item.source, temp)
            os.chmod(temp, 0o644)
        signed: list[tuple[Incoming, Path, str]] = []
        for consumer, pairs in sorted(by_consumer.items()):
            files = [temp for _, temp in pairs]
            how = " (V3 signatures, GnuPG 1.4)" if profile(consumer).v3_signatures else ""
            with log.step(
                f"Sign {len(files)} new {consumer.value} package(s) with {key.key_id}{how}"
            ):
                sign.sign_rpms(files, key, consumer)
                sign.check_signatures(files, key, consumer)
            for item, temp in pairs:
                digest = sha256_file(temp)
                final = store.root / item.path
                os.replace(temp, final)
                signed.append((item, final, digest))
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    for family in {item.family for item in plan.incoming}:
        fsync_dir(store.family_dir(family))
    return signed


def _write_provenance(
    store: Store,
    signed: list[tuple[Incoming, Path, str]],
    key: sign.SigningKey,
    public_key: Path,
) -> dict[int, str]:
    """One signed statement per build with new packages; where each is, by build."""
    by_build: dict[int, list[tuple[Incoming, str]]] = {}
    for item, _, digest in signed:
        by_build.setdefault(id(item.build), []).append((item, digest))
    where: dict[int, str] = {}
    with log.step(f"Sign the provenance of {len(by_build)} build(s)"):
        for build_id, items in by_build.items():
            build = items[0][0].build
            subjects = [(item.source.name, digest) for item, digest in items]
            body = provenance.statement(build.manifest, subjects, key.fingerprint)
            relative = provenance.relative_path(build.target, build.drbd_version, body)
            path = store.root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
            os.chmod(path, 0o644)
            signature = sign.detach_sign(path, key, provenance.signature_consumer(key))
            sign.verify_detached(path, signature, public_key, Consumer.EL7)
            os.chmod(signature, 0o644)
            where[build_id] = relative
    return where


def _assemble(
    root: Path,
    *,
    plan: Changes,
    previous: Path | None,
    public_key: Path,
    options: PublishOptions,
) -> None:
    """The rest of a new version: untouched families' metadata, the key, the .repo files."""
    for family in sorted(set(plan.families) - plan.changed_families):
        # Untouched family: its metadata and signature are still exact.
        assert previous is not None  # noqa: S101 - only a previous version has such families
        shutil.copytree(
            previous / family / "repodata",
            root / family / "repodata",
            copy_function=link_or_copy,
        )
    write_atomic(root / KEY_FILE_NAME, public_key.read_bytes())
    base_url = _base_url(options)
    for consumer in sorted(set(plan.families.values())):
        write_atomic(root / repo_file_name(consumer), render_repo_file(base_url, consumer).encode())


def _base_url(options: PublishOptions) -> str:
    return options.base_url or options.repo.resolve().as_uri()


def _write_front_page(
    root: Path,
    *,
    entries: Sequence[Entry],
    store: Store,
    plan: Changes,
    fingerprint: str,
    version: str,
    options: PublishOptions,
    registry: Callable[[], Registry],
) -> None:
    """``index.html`` of the new version, from every published package and its statement."""
    base_url = _base_url(options)
    with log.step(f"Write the front page, {layout.FRONT_PAGE}"):
        page = frontpage_data.collect(
            entries=entries,
            store_root=store.root,
            families=plan.families,
            repo_files={c: render_repo_file(base_url, c) for c in set(plan.families.values())},
            fingerprint=fingerprint,
            base_url=base_url,
            version=version,
            target_names=_target_names(registry),
        )
        for build in page.builds:
            if build.problem:
                log.warn(f"{build.statement}: {build.problem}; the front page says so")
        write_atomic(root / layout.FRONT_PAGE, frontpage.render(page).encode("utf-8"))


def _target_names(registry: Callable[[], Registry]) -> dict[str, str]:
    """The spec files' names of the targets, for the front page. Publishing needs no spec
    file otherwise: one that cannot be read costs the page its names, not the publish."""
    try:
        return {target.id: target.name for target in registry().targets.values()}
    except ConfigError as exc:
        log.warn(f"the front page names targets by id only: {exc.message}")
        return {}


def _adopt_format_1(repo: Path, previous: Path, state: State) -> State:
    """Move a repository published before the shared store into it, once.

    The packages of the live version are hard-linked into the store and indexed with their
    digest; the live version keeps its own copies, so clients see no change until the next
    version goes live.
    """
    store = Store(repo)
    with log.step(f"Move the {len(state.legacy)} published package(s) into {store.root}"):
        store.root.mkdir(exist_ok=True)
        entries: list[Entry] = []
        for path, nevra, source_sha in state.legacy:
            source = previous / path
            target = store.root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                link_or_copy(source, target)
            entries.append(
                Entry(path, nevra, source_sha, sha256_file(target), target.stat().st_size, "")
            )
        store.index.unlink(missing_ok=True)
        mark = store.append(EMPTY, entries)
        store.record(entries)
        write_atomic(
            previous / STATE_FILE_NAME, State(key=state.key, index=mark).to_json().encode()
        )
    return State(key=state.key, index=mark)
