"""The published tree on disk: the package store every version shares, the versions of the
metadata, the ``current`` pointer and the names clients use.

Layout of a published tree (``--repo DIR``)::

    DIR/.lock                       held while publishing (one publisher at a time)
    DIR/packages/                   the package store: signed packages that
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
    DIR/provenance -> packages/provenance   the builds' signed statements (``provenance``)

The package store, under ``REPO/packages/``::

    el5/i386/*.rpm        signed packages; a file is added once and never replaced
    el5/i386/repodata     -> ../../../current/el5/i386/repodata (the live metadata)
    index.jsonl           one line per package ever published, append-only
    .verified             stat fingerprints of packages whose digest was checked (a cache)
    .settled              builds every package of which the index holds (a cache)

Clients read ``REPO/el5 -> packages/el5``, so a package's URL never changes, and the metadata
they see is the one ``REPO/current`` points at: switching ``current`` still switches the
whole repository at once, while a publish touches only what is new.

A version records how long the index was when it went live and the sha256 of those bytes.
Lines past that length come from a publish that was interrupted; the next publish cuts them
off and removes the packages they named before it plans anything.

Before a new version goes live, every published package is checked against the digest the
index recorded when it was signed.  A package whose inode, size, mtime and ctime are those
recorded in ``.verified`` at its last check is taken as unchanged (rewriting a file in place
changes its ctime, which cannot be set back); any other is read and hashed again.  The cache is
a speed-up, never trusted for anything else: deleting it costs one full pass.

``.settled`` names the builds (the sha256 of their manifest, and their family) whose every
output the index held when it was written, together with that index's length and sha256.  A
publish finding only such builds has nothing to do and reads neither the index's entries nor
the builds' output lists; any change to the index makes the whole file stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

from builder import log
from builder.artifacts.manifest import PARTIAL_SUFFIX
from builder.errors import PublishError
from builder.files import sha256_file, write_atomic
from builder.publish.layout import FRONT_PAGE, KEY_FILE_NAME, PROVENANCE_DIR, repo_file_name
from builder.specs import Consumer

STORE_DIR = "packages"
LOCK_NAME = ".lock"  # held by the one publish writing the tree
INDEX_NAME = "index.jsonl"
VERIFIED_NAME = ".verified"
SETTLED_NAME = ".settled"
# packages/.incoming-<pid>/: where one publish copies and signs its new packages before they
# move into place. rpmsign and gpg write their temporary files beside the package, and a
# publisher killed outright (SIGKILL) leaves them running: in a folder of its own, what they
# write later can never land in a family folder, and the next publish removes the folder.
INCOMING_PREFIX = ".incoming-"
STATE_FILE_NAME = "publish-state.json"
STATE_FORMAT = 2


class Entry(NamedTuple):
    """One published package (a NamedTuple: thousands are read on every publish)."""

    path: str  # relative to the store: "el5/i386/drbd-8.4.1-1.i386.rpm"
    nevra: str
    source_sha256: str  # of the unsigned build output, as its manifest recorded it
    sha256: str  # of the signed file in the store
    size: int
    provenance: str  # the signed statement of its build, relative to the store ("" if none)

    @property
    def family(self) -> str:
        return self.path.rsplit("/", 1)[0]

    def line(self) -> bytes:
        return (json.dumps(list(self), separators=(",", ":")) + "\n").encode("utf-8")


@dataclass(frozen=True, kw_only=True)
class Mark:
    """How much of the index a version covers: its length in bytes, their sha256, the count."""

    length: int
    sha256: str
    count: int

    def to_json(self) -> dict[str, object]:
        return {"length": self.length, "sha256": self.sha256, "count": self.count}

    @classmethod
    def from_json(cls, data: object) -> Mark:
        if not isinstance(data, dict):
            raise ValueError("index must be an object")
        length, digest, count = data.get("length"), data.get("sha256"), data.get("count")
        if not isinstance(length, int) or length < 0 or not isinstance(count, int):
            raise ValueError("index length and count must be whole numbers")
        if not isinstance(digest, str) or len(digest) != 64:
            raise ValueError("index sha256 is malformed")
        return cls(length=length, sha256=digest, count=count)


EMPTY = Mark(length=0, sha256=hashlib.sha256(b"").hexdigest(), count=0)


def _fingerprint(info: os.stat_result) -> str:
    return f"{info.st_ino} {info.st_size} {info.st_mtime_ns} {info.st_ctime_ns}"


def _damaged(problem: str) -> PublishError:
    return PublishError(
        problem,
        hint="Run `python -m builder verify --repo DIR` for a full report; restore the "
        "repository from a backup, or publish into a new --repo directory.",
    )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Store:
    """``REPO/packages``: opened under the publish lock, except by ``verify``, which only reads."""

    def __init__(self, repo: Path) -> None:
        self.root = repo / STORE_DIR
        self.index = self.root / INDEX_NAME
        self.verified = self.root / VERIFIED_NAME
        self.settled_file = self.root / SETTLED_NAME
        self.repaired = False  # read() cut off what an interrupted publish had appended
        # check_index()'s digest, which append_entries() carries on.
        self._prefix: tuple[Mark, hashlib._Hash] | None = None

    def family_dir(self, family: str) -> Path:
        return self.root / family

    # --- the index ---------------------------------------------------------------------

    def read(self, mark: Mark, *, repair: bool = False) -> list[Entry]:
        """The entries ``mark`` covers; with ``repair``, cut off what an interrupted run added."""
        return self.entries(self.check_index(mark, repair=repair), mark)

    def check_index(self, mark: Mark, *, repair: bool = False) -> bytes:
        """The index's bytes ``mark`` covers, checked against it; with ``repair``, cut off what
        an interrupted run added."""
        try:
            with self.index.open("rb") as handle:
                data = handle.read(mark.length)
                longer = handle.read(1) != b""
        except FileNotFoundError:
            data, longer = b"", False
        except OSError as exc:
            raise _damaged(f"Cannot read the package index {self.index}: {exc.strerror}.") from exc
        prefix = hashlib.sha256(data)
        if len(data) != mark.length or prefix.hexdigest() != mark.sha256:
            raise _damaged(
                f"The package index {self.index} does not match what the live version recorded "
                f"({mark.count} packages, {mark.length} bytes, sha256 {mark.sha256})."
            )
        if longer and repair:
            log.info(f"cutting {self.index.name} back to the live version's {mark.count} entries")
            os.truncate(self.index, mark.length)
            self.repaired = True
        self._prefix = (mark, prefix)
        return data

    def entries(self, data: bytes, mark: Mark) -> list[Entry]:
        """The entries in ``data``, the index bytes :meth:`check_index` returned for ``mark``."""
        try:
            rows = json.loads(b"[" + b",".join(data.splitlines()) + b"]") if data else []
            entries = [Entry._make(row) for row in rows]
        except (ValueError, TypeError) as exc:
            raise _damaged(f"The package index {self.index} is malformed: {exc}.") from exc
        if len(entries) != mark.count:
            raise _damaged(f"The package index {self.index} lists {len(entries)} packages, not "
                           f"{mark.count}.")  # fmt: skip
        return entries

    def settled(self, mark: Mark) -> frozenset[str]:
        """The builds recorded as wholly published, if recorded for exactly the index at
        ``mark``; none otherwise (a cache: without it, each build's outputs are looked up)."""
        try:
            data = json.loads(self.settled_file.read_bytes())
        except (OSError, ValueError):
            return frozenset()
        if not isinstance(data, dict) or data.get("index") != mark.to_json():
            return frozenset()
        builds = data.get("builds")
        if not isinstance(builds, list) or not all(isinstance(b, str) for b in builds):
            return frozenset()
        return frozenset(builds)

    def settle(self, mark: Mark, builds: Iterable[str]) -> None:
        """Record ``builds`` as wholly published in the index at ``mark``."""
        record = {"index": mark.to_json(), "builds": sorted(set(builds))}
        try:
            write_atomic(self.settled_file, (json.dumps(record, indent=0) + "\n").encode())
        except OSError as exc:
            log.warn(
                f"cannot update {self.settled_file} ({exc.strerror}); the next publish looks "
                "up every build's packages again"
            )

    def append_entries(self, mark: Mark, entries: Sequence[Entry]) -> Mark:
        """Add ``entries`` after the ``mark`` bytes; durable before the caller goes on.

        After :meth:`read` of the same ``mark`` its digest goes on; the index is not read again.
        """
        if self._prefix is not None and self._prefix[0] == mark:
            digest = self._prefix[1].copy()
        else:
            digest = hashlib.sha256()
            if mark.length:
                with self.index.open("rb") as handle:
                    digest.update(handle.read(mark.length))
        added = b"".join(entry.line() for entry in entries)
        digest.update(added)
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.index, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, mark.length)
            os.lseek(fd, mark.length, os.SEEK_SET)
            _write_all(fd, added)
            os.fsync(fd)
        finally:
            os.close(fd)
        return Mark(
            length=mark.length + len(added),
            sha256=digest.hexdigest(),
            count=mark.count + len(entries),
        )

    # --- packages ----------------------------------------------------------------------

    def place(self, files: Sequence[tuple[str, Path]]) -> list[Path]:
        """Move signed packages in: each file (its path in the store, where it was signed) with
        one rename, then each family folder made durable. Until the index lists them they are
        strays (:meth:`strays`), which a publish that fails removes."""
        placed: list[Path] = []
        for relative, signed in files:
            final = self.root / relative
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(signed, final)
            placed.append(final)
        for folder in sorted({final.parent for final in placed}):
            fsync_dir(folder)
        return placed

    def strays(self, entries: Iterable[Entry]) -> list[str]:
        """Files in the store that no entry names: what an interrupted publish left there."""
        known = set()
        for entry in entries:
            known.add(entry.path)
            if entry.provenance:
                known |= {entry.provenance, f"{entry.provenance}.asc"}
        found: list[str] = []
        if not self.root.is_dir():
            return found
        for top in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for folder, dirs, files in os.walk(top):
                dirs.sort()
                where = Path(folder).relative_to(self.root).as_posix()
                if "repodata" in dirs and where.count("/") == 1:
                    dirs.remove("repodata")  # a family folder's link to the live metadata
                found += [
                    f"{where}/{name}"
                    for name in sorted(files)
                    if f"{where}/{name}" not in known and name != "repodata"
                ]
        return found

    def remove_strays(self, entries: Iterable[Entry]) -> list[str]:
        """Delete what :meth:`strays` finds, and the incoming folders of other publishes."""
        found = self.strays(entries)
        for relative in found:
            (self.root / relative).unlink()
        self.remove_incoming(but=None)
        return found

    def incoming(self, pid: int) -> Path:
        """The folder where publish ``pid`` signs its new packages (see INCOMING_PREFIX)."""
        return self.root / f"{INCOMING_PREFIX}{pid}"

    def remove_incoming(self, *, but: int | None) -> list[str]:
        """Remove every publish's incoming folder but that of publish ``but``: under the
        publish lock, any other is a killed publisher's, whose signing programs may still be
        writing there."""
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        for folder in sorted(self.root.glob(f"{INCOMING_PREFIX}*")):
            if but is not None and folder == self.incoming(but):
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
        return removed

    def check_unchanged(self, entries: Sequence[Entry]) -> int:
        """Refuse to go on if any published package differs from what was signed.

        Returns how many packages had to be read again (those the cache could not vouch for).
        """
        cached = self._read_verified()
        fresh: list[str] = []
        root = f"{self.root}{os.sep}"
        for entry in entries:
            path = root + entry.path  # a str: this loop runs once per published package
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                raise _damaged(f"The published package {path} is missing.") from None
            if not stat.S_ISREG(info.st_mode):
                raise _damaged(
                    f"The published package {path} is no longer a regular file "
                    f"(it is a {_kind(info.st_mode)})."
                )
            fingerprint = _fingerprint(info)
            if cached.get(entry.path) == f"{fingerprint} {entry.sha256}":
                continue
            actual = sha256_file(Path(path)) if info.st_size == entry.size else None
            if actual != entry.sha256:
                raise _damaged(
                    f"The published package {path} changed after it was signed "
                    f"(published sha256 {entry.sha256}, size {entry.size}; now size "
                    f"{info.st_size}{f', sha256 {actual}' if actual else ''}). Refusing to carry "
                    "it into a new version."
                )
            fresh.append(f"{fingerprint} {entry.sha256} {entry.path}\n")
        if fresh:
            compact = len(cached) + len(fresh) > 2 * len(entries) + 64
            self._record_verified(fresh, entries, cached if compact else None)
        return len(fresh)

    def record(self, entries: Sequence[Entry]) -> None:
        """Remember the fingerprints of packages just placed and verified."""
        lines = [
            f"{_fingerprint(os.lstat(self.root / e.path))} {e.sha256} {e.path}\n" for e in entries
        ]
        self._record_verified(lines, entries)

    def _read_verified(self) -> dict[str, str]:
        cached: dict[str, str] = {}
        try:
            text = self.verified.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return cached  # a cache: without it every package is hashed once more
        for line in text.splitlines():
            parts = line.split(" ", 5)
            if len(parts) == 6:
                cached[parts[5]] = " ".join(parts[:5])
        return cached

    def _record_verified(
        self, lines: list[str], entries: Sequence[Entry], cached: dict[str, str] | None = None
    ) -> None:
        """Append ``lines``; given the ``cached`` lines, rewrite the file to one per package."""
        try:
            if cached is not None:
                for line in lines:
                    parts = line.rstrip("\n").split(" ", 5)
                    cached[parts[5]] = " ".join(parts[:5])
                known = {e.path for e in entries}
                text = "".join(f"{v} {path}\n" for path, v in cached.items() if path in known)
                write_atomic(self.verified, text.encode("utf-8"))
            else:
                with self.verified.open("a", encoding="utf-8") as handle:
                    handle.writelines(lines)
        except OSError as exc:
            log.warn(
                f"cannot update {self.verified} ({exc.strerror}); the next publish reads "
                "those packages again"
            )


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISDIR(mode):
        return "directory"
    return "special file"


# --- the versions and the names that lead into them ---------------------------------------


@dataclass(frozen=True, kw_only=True)
class State:
    """``publish-state.json`` of a version: the signing key and how much of the index it covers.

    Format 1 (before the shared package store) listed every package in each version; such a
    repository is moved into the store by its next publish (see :func:`adopt_format_1`).
    """

    key: str
    index: Mark
    legacy: tuple[tuple[str, str, str], ...] = ()  # format 1: (path, nevra, source sha256)

    def to_json(self) -> str:
        data = {"format": STATE_FORMAT, "key": self.key, "index": self.index.to_json()}
        return json.dumps(data, indent=1) + "\n"

    @classmethod
    def from_file(cls, path: Path) -> State:
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") == 1:
                legacy = tuple(
                    (str(p["path"]), str(p["nevra"]), str(p["source_sha256"]))
                    for p in data["packages"]
                )
                return cls(key=str(data["key"]), index=EMPTY, legacy=legacy)
            if data.get("format") != STATE_FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r}")
            return cls(key=str(data["key"]), index=Mark.from_json(data["index"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PublishError(
                f"The published state {path} is unreadable: {exc}",
                hint="Publish into a fresh --repo directory, or restore the file.",
            ) from exc


def current_version(repo: Path) -> Path | None:
    pointer = repo / "current"
    if not pointer.is_symlink():
        return None
    target = pointer.resolve()
    if not target.is_dir():
        raise PublishError(f"{pointer} points at {target}, which does not exist.")
    return target


def replace_symlink(link: Path, target: str) -> None:
    temp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    temp.unlink(missing_ok=True)
    os.symlink(target, temp)
    os.replace(temp, link)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def nearly_full(repo: Path) -> bool:
    """Less than 1 MiB free on the device that holds ``repo`` (or its nearest existing
    parent): a failure there is most likely a full disk, whatever program reported it."""
    path = repo
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        info = os.statvfs(path)
    except OSError:
        return False
    return info.f_bavail * info.f_frsize < (1 << 20)


def link_or_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
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


def stable_links(repo: Path, store: Store, families: dict[str, Consumer]) -> None:
    """Names clients use; they never change once made.

    ``REPO/el5 -> packages/el5`` serves the packages from the store, and each family folder's
    ``repodata`` leads through ``current``, so the one switch of ``current`` still changes the
    metadata of every family at once.
    """
    for family in sorted(families):
        link = store.family_dir(family) / "repodata"
        depth = "/".join([".."] * (family.count("/") + 2))
        wanted = f"{depth}/current/{family}/repodata"
        if not (link.is_symlink() and os.readlink(link) == wanted):
            replace_symlink(link, wanted)
    for consumer in sorted({c.value for c in families.values()}):
        _ensure_link(repo / consumer, f"{STORE_DIR}/{consumer}", {f"current/{consumer}"})
    for name in sorted({KEY_FILE_NAME} | {repo_file_name(c) for c in families.values()}):
        _ensure_link(repo / name, f"current/{name}", set())
    _ensure_front_page_link(repo / FRONT_PAGE, f"current/{FRONT_PAGE}")
    if (store.root / PROVENANCE_DIR).is_dir():
        _ensure_link(repo / PROVENANCE_DIR, f"{STORE_DIR}/{PROVENANCE_DIR}", set())


def _ensure_front_page_link(link: Path, wanted: str) -> None:
    """``REPO/index.html``: a page of the user's own there is kept, and said so, every time."""
    if link.is_symlink() and os.readlink(link) == wanted:
        return
    if link.exists() or link.is_symlink():
        log.warn(f"{link} is not the link publish makes: left as it is; the page is at {wanted}")
        return
    replace_symlink(link, wanted)


def _ensure_link(link: Path, wanted: str, replaceable: set[str]) -> None:
    if link.is_symlink():
        if os.readlink(link) == wanted:
            return
        if os.readlink(link) in replaceable:
            replace_symlink(link, wanted)  # a repository made before the package store
            return
    if link.exists() or link.is_symlink():
        raise PublishError(f"{link} exists and is not the link publish makes; move it away.")
    replace_symlink(link, wanted)


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


def open_store(repo: Path, versions: Path) -> Opened:
    """The store and the live version, after clearing an interrupted publish."""
    interrupted = False
    for stale in versions.glob(f"*{PARTIAL_SUFFIX}"):
        log.info(f"removing {stale.name}, left by an interrupted publish")
        shutil.rmtree(stale, ignore_errors=True)
        interrupted = True
    store = Store(repo)
    previous = current_version(repo)
    state = State.from_file(previous / STATE_FILE_NAME) if previous else None
    legacy = previous if state is not None and state.legacy else None
    if legacy is not None and state is not None:
        state = adopt_format_1(repo, legacy, state)
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
    if legacy is not None and state is not None:
        # The live version names the store's index only once that index has been checked.
        write_atomic(legacy / STATE_FILE_NAME, state.to_json().encode())
    return opened


def adopt_format_1(repo: Path, previous: Path, state: State) -> State:
    """Move a repository published before the shared store into it, once; the live version's
    state in the store's format, which :func:`open_store` writes once the index is checked.

    The packages of the live version are hard-linked into the store and indexed with their
    digest; the live version keeps its own copies, so clients see no change until the next
    version goes live.  Interrupted before its state is written, the move is made again.
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
        mark = store.append_entries(EMPTY, entries)
        store.record(entries)
    return State(key=state.key, index=mark)
