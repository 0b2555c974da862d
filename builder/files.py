"""Files that readers see whole: atomic writes, sha256 of a file, and a stat-keyed hash cache.

Every stage writes what a user or a server reads through :func:`write_atomic`.  Hashing a
300 MB ISO on every call would cost a second; :class:`HashCache` remembers the hash of a file
keyed by its path, size, inode and modification time, so an unchanged file is not read again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

READ_CHUNK = 1 << 20  # bytes per read of a file being hashed, copied or downloaded


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def readable_by_all() -> Iterator[None]:
    """While the block runs, what this process and its children make is readable by all, and
    folders searchable, whatever the umask; who may write to them still follows it.

    The umask belongs to the whole process: a command sets it, not code threads may share.
    """
    mask = os.umask(0o022)
    os.umask(mask & 0o022)
    try:
        yield
    finally:
        os.umask(mask)


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a mix.

    The file gets ``mode``, or the mode a plain ``open`` would give it (0644 under the usual
    umask), not the 0600 of the temporary file it is made from: manifests travel with the RPMs.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask() if mode is None else mode)
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


class HashCache:
    """Remembers file hashes keyed by (real path, size, inode, mtime_ns)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _entry(self, path: Path) -> Path:
        key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]
        return self.directory / f"{key}.json"

    @staticmethod
    def _identity(path: Path) -> list[int]:
        info = path.stat()
        return [info.st_size, info.st_ino, info.st_mtime_ns]

    def lookup(self, path: Path) -> str | None:
        try:
            data = json.loads(self._entry(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("identity") != self._identity(path):
            return None
        value = data.get("sha256")
        return value if isinstance(value, str) else None

    def store(self, path: Path, sha256: str) -> None:
        data = {"path": str(path.resolve()), "identity": self._identity(path), "sha256": sha256}
        write_atomic(self._entry(path), json.dumps(data).encode())

    def sha256(self, path: Path) -> str:
        cached = self.lookup(path)
        if cached is not None:
            return cached
        value = sha256_file(path)
        self.store(path, value)
        return value
