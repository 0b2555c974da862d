"""The package store of a published tree: the signed packages every version shares.

Layout under ``REPO/packages/``::

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
from pathlib import Path
from typing import NamedTuple

from builder import log
from builder.errors import PublishError
from builder.files import sha256_file, write_atomic

STORE_DIR = "packages"
INDEX_NAME = "index.jsonl"
VERIFIED_NAME = ".verified"
SETTLED_NAME = ".settled"
# packages/.incoming-<pid>/: where one publish copies and signs its new packages before they
# move into place. rpmsign and gpg write their temporary files beside the package, and a
# publisher killed outright (SIGKILL) leaves them running: in a folder of its own, what they
# write later can never land in a family folder, and the next publish removes the folder.
INCOMING_PREFIX = ".incoming-"


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
        self._prefix: tuple[Mark, hashlib._Hash] | None = None  # read()'s digest, for append

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

    def append(self, mark: Mark, entries: Sequence[Entry]) -> Mark:
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
