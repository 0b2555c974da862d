"""Publishing built RPMs as signed yum repositories, atomically, at the cost of what is new.

A publish signs the new packages into the store, makes each changed family's metadata in
``versions/<id>.partial`` with ``createrepo_c --update`` seeded from the previous version,
checks every published package against the digest it had when signed while that runs (a
cheap stat check for those unchanged since their last check), writes the builds' statements
and the front page meanwhile, then signs the statements and ``repomd.xml`` and verifies every
new signature.  Only then is the directory renamed and ``current`` switched, so an
interrupted publish leaves the served tree exactly as it was; its leftovers in the store are
removed by the next publish.  Nothing is done per unchanged package but a ``stat``, and a
publish whose builds are all published already (``.settled``) reads neither the index nor
their outputs.

The steps hand one value along: the :class:`NewVersion` being assembled, which says what is
new and on top of what; :mod:`builder.publish.store` describes the tree they write into.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from builder import log, proc
from builder.artifacts import manifest
from builder.artifacts.manifest import Manifest, scan
from builder.errors import BuilderError, CommandError, NoSpaceError, PublishError, no_space
from builder.files import sha256_file, write_atomic
from builder.locks import timed_lock
from builder.publish import frontpage, provenance, sign
from builder.publish.changes import Changes, Incoming, Published, changes_of, settled_key
from builder.publish.consumers import profile
from builder.publish.layout import KEY_FILE_NAME, repo_file_name, served_repo_file
from builder.publish.metadata import (
    CREATEREPO_CHOICE,
    find_createrepo,
    keep_previous_metadata,
    metadata_command,
)
from builder.publish.store import (
    LOCK_NAME,
    STATE_FILE_NAME,
    Entry,
    Opened,
    State,
    Store,
    fsync_dir,
    link_or_copy,
    nearly_full,
    open_store,
    prune_versions,
    replace_symlink,
    stable_links,
)
from builder.specs import Consumer, Registry


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


@dataclass(frozen=True, kw_only=True)
class NewVersion:
    """The version being assembled in ``versions/<id>.partial``: what it adds, on top of what."""

    id: str
    root: Path  # versions/<id>.partial until it goes live
    plan: Changes
    previous: Path | None  # the live version, whose metadata the changed families update
    published: Sequence[Entry]  # the live packages
    base_url: str  # where clients find the repository

    def prior(self, family: str) -> Path | None:
        """The live version's folder of ``family``, if it has one."""
        if self.previous is None or not (self.previous / family).is_dir():
            return None
        return self.previous / family


def _new_version_id(versions: Path) -> str:
    """A new version's name: when it was made, in UTC, unique among ``versions``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    candidate = stamp
    counter = 1
    while (versions / candidate).exists():
        counter += 1
        candidate = f"{stamp}-{counter}"
    return candidate


def publish(options: PublishOptions, registry: Callable[[], Registry]) -> PublishResult:
    builds = scan(options.artifacts, registry)
    with sign.signer(options.key, options.gnupg_home, options.passphrase_file, builds) as signer:
        try:
            options.repo.mkdir(parents=True, exist_ok=True)
            versions = options.repo / "versions"
            versions.mkdir(exist_ok=True)
            lock = options.repo / LOCK_NAME
            with timed_lock(
                lock,
                timeout=options.lock_timeout,
                what=f"Another publish (pid {{pid}}) is writing {options.repo}",
                waiting=f"waiting for another publish (pid {{pid}}) to release {lock}",
                hint="Wait for it to finish, or pass a longer --lock-timeout.",
            ):
                opened = open_store(options.repo, versions)
                return _publish_locked(options, builds, signer, opened, versions, registry=registry)
        except (OSError, BuilderError) as exc:
            # A full disk shows up as whatever failed first: gpg, createrepo_c, a copy.
            if no_space(exc) or nearly_full(options.repo):
                raise NoSpaceError(
                    f"No space left on the device holding {options.repo}; nothing was "
                    f"published and {options.repo / 'current'} is unchanged.\n"
                    f"(what failed: {exc.message if isinstance(exc, BuilderError) else exc})",
                    hint="Free space there (a smaller --keep removes old versions), then "
                    "publish again; the next publish removes what this one left.",
                ) from exc
            raise


def _publish_locked(
    options: PublishOptions,
    builds: Sequence[Manifest],
    signer: sign.Signer,
    opened: Opened,
    versions: Path,
    *,
    registry: Callable[[], Registry],
) -> PublishResult:
    store, previous, state, mark = opened.store, opened.previous, opened.state, opened.mark
    settled = store.settled(mark)
    # Builds of which every package is published already are not looked into again.
    pending = [build for build in builds if settled_key(build) not in settled]
    with log.step("Plan"):
        entries = opened.entries if pending else []
        published = Published(key=state.key, packages=entries) if state else None
        plan = changes_of(pending, published, signer.key.fingerprint)
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
    version_id = _new_version_id(versions)
    version = NewVersion(
        id=version_id,
        root=versions / f"{version_id}{manifest.PARTIAL_SUFFIX}",
        plan=plan,
        previous=previous,
        published=entries,
        base_url=options.base_url or options.repo.resolve().as_uri(),
    )
    version.root.mkdir()
    createrepo = partial(
        find_createrepo, explicit=options.createrepo, memo=options.repo / CREATEREPO_CHOICE
    )
    added: list[Entry] = []
    try:
        added = _add_packages(version, store, signer, createrepo, registry)
        new_mark = store.append_entries(mark, added)
        _assemble(version, signer.public_key)
        new_state = State(key=signer.key.fingerprint, index=new_mark)
        write_atomic(version.root / STATE_FILE_NAME, new_state.to_json().encode())
        final = versions / version.id
        os.replace(version.root, final)
        fsync_dir(versions)
    except BaseException:
        shutil.rmtree(version.root, ignore_errors=True)
        with contextlib.suppress(OSError):
            if added:
                os.truncate(store.index, mark.length)
            # Whatever this run put in the store: packages, statements, and the temporary
            # files rpmsign and gpg were writing there when it stopped.
            store.remove_strays(entries)
        raise
    store.record(added)
    with log.step(f"Switch {options.repo / 'current'} to {version.id}"):
        stable_links(options.repo, store, plan.families)
        replace_symlink(options.repo / "current", f"versions/{version.id}")
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
    version: NewVersion,
    store: Store,
    signer: sign.Signer,
    createrepo: Callable[[Consumer], str],
    registry: Callable[[], Registry],
) -> list[Entry]:
    """Sign the new packages into the store, make the changed families' metadata in the new
    version, check every published package against its signed digest, record the builds'
    provenance, write the front page, then sign apart and verify the statements and each
    changed family's ``repomd.xml``.

    createrepo_c runs while the checks, the statements and the front page are done: it needs
    only the signed files, and a failure on either side stops the whole publish before
    anything goes live.  What is signed apart waits for it: ``repomd.xml`` is its output.
    """
    plan, published = version.plan, version.published
    signed = _sign_into_store(store, plan, signer)
    with contextlib.ExitStack() as running:
        metadata: dict[str, tuple[Path | None, proc.Started]] = {}
        for family in sorted(plan.changed_families):
            consumer = plan.families[family]
            folder = version.root / family
            folder.mkdir(parents=True)
            prior = version.prior(family)
            cmd = metadata_command(
                store.family_dir(family), folder, consumer, prior, createrepo(consumer)
            )
            job = running.enter_context(proc.started(cmd, echo=False))
            metadata[family] = (prior, job)
        with log.step(
            f"Check the {len(published)} published package(s) against their signed digests"
        ):
            reread = store.check_unchanged(published)
            log.info(f"{len(published) - reread} unchanged since their last check, {reread} hashed")
        for consumer in sorted({item.consumer for item, _, _ in signed}):
            files = [path for item, path, _ in signed if item.consumer is consumer]
            with log.step(f"Check the signatures of {len(files)} new {consumer.value} package(s)"):
                signer.verify_packages(files)
        statements, unsigned = provenance.write_statements(store.root, signed, signer.key)
        added = [
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
        frontpage.write(
            version.root,
            entries=[*published, *added],
            store_root=store.root,
            families=plan.families,
            fingerprint=signer.key.fingerprint,
            version=version.id,
            base_url=version.base_url,
            registry=registry,
        )
        for family, (prior, job) in metadata.items():
            folder = version.root / family
            with log.step(f"Make metadata for {family}"):
                try:
                    job.wait()
                except CommandError as exc:
                    raise PublishError(
                        f"createrepo_c failed for {store.family_dir(family)}.\n{exc.message}"
                    ) from exc
                keep_previous_metadata(folder, prior)
            consumer = plan.families[family]
            repomd = folder / "repodata" / "repomd.xml"
            unsigned.append(sign.Detached(repomd, consumer, consumer))
        repomds = ", ".join(f"{family}/repodata/repomd.xml" for family in metadata)
        with log.step(
            f"Sign and verify {repomds} and the statements of {len(statements)} build(s)"
        ):
            signer.sign_files(unsigned)
    return added


def _sign_into_store(
    store: Store, plan: Changes, signer: sign.Signer
) -> list[tuple[Incoming, Path, str]]:
    """Copy and sign the new packages, check their signature packets, move them in place.

    A package in the store that the index does not list yet is a stray: if anything later
    fails, the publish removes it with the rest of what it wrote.
    """
    by_consumer: dict[Consumer, list[tuple[Incoming, Path]]] = {}
    incoming = store.incoming(os.getpid())
    try:
        for index, item in enumerate(plan.incoming):
            # One folder per package: one name may be new in two families (noarch).
            temp = incoming / str(index) / item.source.name
            temp.parent.mkdir(parents=True)
            by_consumer.setdefault(item.consumer, []).append((item, temp))
            shutil.copyfile(item.source, temp)
            os.chmod(temp, 0o644)
        ready: list[tuple[Incoming, Path, str]] = []  # signed, checked, not in place yet
        for consumer, pairs in sorted(by_consumer.items()):
            files = [temp for _, temp in pairs]
            how = " (V3 signatures, GnuPG 1.4)" if profile(consumer).v3_signatures else ""
            with log.step(
                f"Sign {len(files)} new {consumer.value} package(s) with {signer.key.key_id}{how}"
            ):
                signer.sign_packages(files, consumer)
            ready += [(item, temp, sha256_file(temp)) for item, temp in pairs]
        placed = store.place([(item.path, temp) for item, temp, _ in ready])
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    return [(item, final, digest) for (item, _, digest), final in zip(ready, placed, strict=True)]


def _assemble(version: NewVersion, public_key: Path) -> None:
    """The rest of a new version: untouched families' metadata, the key, the .repo files."""
    plan, root = version.plan, version.root
    for family in sorted(set(plan.families) - plan.changed_families):
        # Untouched family: its metadata and signature are still exact.
        assert version.previous is not None  # noqa: S101 - only a previous version has such families
        shutil.copytree(
            version.previous / family / "repodata",
            root / family / "repodata",
            copy_function=link_or_copy,
        )
    write_atomic(root / KEY_FILE_NAME, public_key.read_bytes())
    for consumer in sorted(set(plan.families.values())):
        text = served_repo_file(version.base_url, consumer)
        write_atomic(root / repo_file_name(consumer), text.encode())
