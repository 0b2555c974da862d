"""sha256 of inputs: pinned values, the ``checksums.lock`` file, and a stat-keyed hash cache.

An input with a pinned ``sha256`` in its spec must match it.  Without one, the first verified
download records its hash in ``checksums.lock`` beside the spec file (trust on first use, made
visible in version control), and every later download must match that.

Hashing a 300 MB ISO on every call would cost a second; :class:`HashCache` remembers the hash of
a file keyed by its path, size, inode and modification time, so an unchanged cached input is
not read again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from builder.errors import ChecksumError, ConfigError

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a mix.

    The file gets the mode a plain ``open`` would give it (0644 under the usual umask), not
    the 0600 of the temporary file it is made from: manifests travel with the RPMs.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if needed), held for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class ChecksumLock:
    """The ``checksums.lock`` JSON file: input key (URL) to sha256."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{self.path}: cannot read the checksum lock file: {exc}",
                hint="Fix or delete the file; deleting it trusts the next downloads again.",
            ) from exc
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise ConfigError(f"{self.path}: must be a JSON object of input URL to sha256")
        return data

    def get(self, key: str) -> str | None:
        return self._read().get(key)

    def record(self, key: str, sha256: str) -> None:
        with file_lock(self.path.with_name(f".{self.path.name}.flock")):
            data = self._read()
            if data.get(key) == sha256:
                return
            if key in data:
                raise ChecksumError(
                    f"{key} has sha256 {sha256} here, but another run recorded {data[key]} in "
                    f"{self.path} meanwhile.",
                    hint="Two different files were fetched for one input; find out which one "
                    "is right before trusting either.",
                )
            data[key] = sha256
            text = json.dumps(dict(sorted(data.items())), indent=2) + "\n"
            write_atomic(self.path, text.encode())


def expected_sha256(pinned: str | None, lock: ChecksumLock | None, key: str) -> str | None:
    if pinned:
        return pinned
    if lock is not None:
        return lock.get(key)
    return None


def mismatch(path: Path, what: str, expected: str, actual: str, source: str) -> ChecksumError:
    return ChecksumError(
        f"{what} {path.name} has sha256 {actual}, but {expected} was expected ({source}).",
        hint="The file was deleted. If the upstream file legitimately changed, update the pinned "
        "sha256 in the spec file or remove its entry from checksums.lock, then retry.",
    )


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
