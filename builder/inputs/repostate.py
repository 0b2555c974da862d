"""What the state directory remembers of vendor-signed yum repositories: no rollback.

A valid signature says who made ``repomd.xml``, not when: a mirror (or anything on the
plain-HTTP path) could serve an older, correctly signed ``repomd.xml`` and with it a kernel
the vendor has since replaced.  So per repository the newest signed ``repomd.xml`` seen is
kept (its ``revision``, newest record timestamp and sha256), and an older one is refused;
and per kernel-devel name-version-release-arch the sha256 it was verified with, so that the
same package name never stands for other bytes.

``<state>/repositories.json``, written atomically under a lock; entries are only added or
moved forward, never by a refused run.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import SigningError
from builder.files import write_atomic
from builder.locks import file_lock

STATE_FILE = "repositories.json"


@dataclass(frozen=True)
class Metadata:
    """What identifies one signed ``repomd.xml``."""

    revision: str
    timestamp: int  # the newest record's timestamp
    sha256: str

    @property
    def order(self) -> tuple[int, int]:
        revision = int(self.revision) if self.revision.isdigit() else -1
        return revision, self.timestamp


def read_metadata(repomd: Path) -> Metadata:
    import createrepo_c as cr

    parsed = cr.Repomd(str(repomd))
    stamps = [int(record.timestamp or 0) for record in parsed.records]
    return Metadata(
        revision=str(parsed.revision or ""),
        timestamp=max(stamps, default=0),
        sha256=hashlib.sha256(repomd.read_bytes()).hexdigest(),
    )


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class RepositoryState:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE
        self.lock = state_dir / "locks" / f"{STATE_FILE}.lock"

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"repositories": {}, "packages": {}}
        except (OSError, ValueError) as exc:
            raise SigningError(
                f"The repository state {self.path} cannot be read: {exc}.",
                hint="Restore it from a backup; deleting it forgets which metadata and "
                "packages were seen, and so accepts a replayed older repository once.",
            ) from None
        if not isinstance(data, dict):
            data = {}
        data.setdefault("repositories", {})
        data.setdefault("packages", {})
        return data

    def _save(self, data: dict[str, Any]) -> None:
        write_atomic(self.path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())

    def accept_metadata(self, base_url: str, seen: Metadata) -> None:
        """Refuse a signed ``repomd.xml`` older than the newest seen from ``base_url``;
        remember this one when it is the newest."""
        with file_lock(self.lock):
            data = self._load()
            before = data["repositories"].get(base_url)
            if isinstance(before, dict):
                old = Metadata(
                    str(before.get("revision", "")),
                    int(before.get("timestamp", 0)),
                    str(before.get("sha256", "")),
                )
                if seen.order < old.order:
                    raise SigningError(
                        f"{base_url}repodata/repomd.xml is signed but older than the one seen "
                        f"on {before.get('seen', 'an earlier run')}: revision {seen.revision} "
                        f"(newest record {seen.timestamp}) against revision {old.revision} "
                        f"(newest record {old.timestamp}). A mirror may be replaying old "
                        "metadata; nothing of it was read.",
                        hint=f"Try another mirror. The state is kept in {self.path}.",
                    )
                if seen.order == old.order:
                    return
            data["repositories"][base_url] = {
                "revision": seen.revision,
                "timestamp": seen.timestamp,
                "sha256": seen.sha256,
                "seen": _now(),
            }
            self._save(data)

    def check_package(self, nvra: str, sha256: str) -> None:
        """Refuse a package name-version-release-arch seen before with other bytes
        (``sha256`` is the metadata's ``type:checksum``)."""
        before = self._load()["packages"].get(nvra)
        if isinstance(before, dict) and before.get("sha256") != sha256:
            raise SigningError(
                f"{nvra} was verified on {before.get('seen', 'an earlier run')} as "
                f"{before.get('sha256')}; the repository now lists it as {sha256}. A vendor "
                "never rebuilds a release under the same name: nothing was downloaded.",
                hint=f"Ask the vendor; the state is kept in {self.path}.",
            )

    def remember_package(self, nvra: str, sha256: str) -> None:
        with file_lock(self.lock):
            data = self._load()
            if nvra not in data["packages"]:
                data["packages"][nvra] = {"sha256": sha256, "seen": _now()}
                self._save(data)
