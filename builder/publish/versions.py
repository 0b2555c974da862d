"""The versions of a published tree and the names that lead into them: each publish's state,
the lock, the ``current`` pointer switched with one rename, pruning, and the stable names
clients use (see :mod:`builder.publish.publisher` for the whole layout)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from builder import log
from builder.artifacts import manifest
from builder.errors import PublishError
from builder.locks import timed_lock
from builder.publish import provenance
from builder.publish.layout import FRONT_PAGE, KEY_FILE_NAME, repo_file_name
from builder.publish.store import EMPTY, STORE_DIR, Mark, Store
from builder.specs import Consumer

STATE_FILE_NAME = "publish-state.json"
STATE_FORMAT = 2


@dataclass(frozen=True, kw_only=True)
class State:
    """``publish-state.json`` of a version: the signing key and how much of the index it covers.

    Format 1 (before the shared package store) listed every package in each version; such a
    repository is moved into the store by its next publish (see :func:`_adopt_format_1`).
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


def new_version_id(versions: Path) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    candidate = stamp
    counter = 1
    while (versions / candidate).exists():
        counter += 1
        candidate = f"{stamp}-{counter}"
    return candidate


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
        p for p in versions.iterdir() if p.is_dir() and not p.name.endswith(manifest.PARTIAL_SUFFIX)
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
    if (store.root / provenance.PROVENANCE_DIR).is_dir():
        _ensure_link(
            repo / provenance.PROVENANCE_DIR, f"{STORE_DIR}/{provenance.PROVENANCE_DIR}", set()
        )


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
