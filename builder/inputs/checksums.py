"""sha256 of inputs: pinned values and lock files.

An input with a pinned ``sha256`` in its spec must match it.  Without one, a lock file
vouches for it: for a built-in entry, first the ``checksums.lock`` shipped with the package
(read-only), then the state directory's; for an entry of a user's ``--specs DIR``, the
``checksums.lock`` beside its spec file.  Without any, the first verified download records
its hash (trust on first use) in the state directory, or beside the user's spec file, and
every later use must match it.  Nothing is ever written into the installed package, and a
recorded hash never replaces a pin or a shipped one: where they disagree, the pin or the
shipped hash is what the file must match, and a warning names the entry to delete.

Hashing a file, writing one atomically and remembering hashes (:class:`builder.files.HashCache`)
are not about trust and live in :mod:`builder.files`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from builder import log, resources
from builder.errors import ChecksumError, ConfigError, NoSpaceError, StateError, no_space
from builder.files import write_atomic
from builder.locks import file_lock

PINNED = "pinned in the spec file"


@dataclass(frozen=True)
class Vouched:
    """A hash that vouches for an input, and where it comes from (for messages)."""

    sha256: str
    source: str  # "pinned in the spec file", "recorded in PATH", ...
    kind: str = "lock"  # how the manifest records it: "pin" (the spec's sha256) or "lock"


# (lock file, key) pairs already warned about: a lookup runs more than once per input.
_WARNED: set[tuple[Path, str]] = set()


def _read_lock(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return {}  # nothing recorded (recording there says what is wrong with the place)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path}: cannot read the checksum lock file: {exc}",
            hint="Fix or delete the file; deleting it trusts the next downloads again.",
        ) from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ConfigError(f"{path}: must be a JSON object of input URL to sha256")
    return data


class ChecksumLock:
    """The lock files of one spec entry: input key (URL) to sha256.

    ``path`` is the JSON file first uses are recorded in (the state directory's, or the one
    beside a user's spec file); ``shipped`` are lock files that came with the package: read
    here, never written, and they vouch before ``path`` does.
    """

    def __init__(self, path: Path, *, shipped: Sequence[Path] = (), unwritable: str = "") -> None:
        self.path = path
        self.shipped = tuple(shipped)
        self.unwritable = unwritable  # what to do when ``path`` cannot be written

    def _read(self) -> dict[str, str]:
        return _read_lock(self.path)

    def vouched(self, key: str, pinned: str | None = None) -> Vouched | None:
        """The hash ``key`` must have: the pin, else a shipped lock's, else the recorded one.

        A recorded hash that disagrees with the pin or a shipped one is not used, and said."""
        recorded = self._read().get(key)
        authority: Vouched | None = None
        if pinned:
            authority = Vouched(pinned, PINNED, "pin")
        else:
            for shipped in self.shipped:
                value = _read_lock(shipped).get(key)
                if value:
                    authority = Vouched(value, f"vouched for by {shipped}, shipped with the tool")
                    break
        if authority is None:
            return Vouched(recorded, f"recorded in {self.path}") if recorded else None
        if recorded and recorded != authority.sha256 and (self.path, key) not in _WARNED:
            _WARNED.add((self.path, key))
            log.warn(
                f"{self.path} records sha256 {recorded} for {key}, but {authority.sha256} is "
                f"{authority.source}; the recorded hash is ignored. Delete its entry from "
                f"{self.path} (or the whole file) once you know which file is right."
            )
        return authority

    def get(self, key: str) -> str | None:
        found = self.vouched(key)
        return found.sha256 if found is not None else None

    def record(self, key: str, sha256: str) -> None:
        try:
            with file_lock(self.path.with_name(f".{self.path.name}.flock")):
                data = self._read()
                if data.get(key) == sha256:
                    return
                if key in data:
                    raise ChecksumError(
                        f"{key} has sha256 {sha256} here, but another run recorded {data[key]} "
                        f"in {self.path} meanwhile.",
                        hint="Two different files were fetched for one input; find out which "
                        "one is right before trusting either.",
                    )
                data[key] = sha256
                text = json.dumps(dict(sorted(data.items())), indent=2) + "\n"
                write_atomic(self.path, text.encode())
        except OSError as exc:
            error = NoSpaceError if no_space(exc) else StateError
            raise error(
                f"Cannot record the sha256 {sha256} of {key} in {self.path}: "
                f"{exc.strerror or exc}.",
                hint=self.unwritable
                or f"Make {self.path.parent} writable, or pin the input's sha256 in its spec.",
            ) from exc


def lock_for(spec_file: Path, state_dir: Path) -> ChecksumLock:
    """The lock files of the entries of ``spec_file``.

    A built-in entry is vouched for by the lock shipped beside the registry, and its first
    uses are recorded in ``state_dir``: the installed package is never written. An entry of
    a user's spec directory keeps its lock beside its spec file, the user's to commit.
    """
    if spec_file.parent.resolve() == resources.SPECS_DIR.resolve():
        return ChecksumLock(
            state_lock(state_dir),
            shipped=(resources.SHIPPED_LOCK,),
            unwritable="Choose a writable state directory with --state DIR (or "
            "XDG_STATE_HOME), or pin the input's sha256 in a target or version of your own "
            "--specs DIR.",
        )
    return ChecksumLock(spec_file.parent / resources.LOCK_FILE_NAME)


def state_lock(state_dir: Path) -> Path:
    """Where the hashes of the built-in entries' inputs are recorded."""
    return state_dir / resources.LOCK_FILE_NAME


CHANGED_HINT = (
    "If the file legitimately changed, update the pinned sha256 in the spec file or delete its "
    "entry from the lock file named above, then retry; a pin or lock shipped with the tool "
    "yields to a target or version of the same name in your own --specs DIR."
)


def mismatch(path: Path, what: str, expected: str, actual: str, source: str) -> ChecksumError:
    return ChecksumError(
        f"{what} {path.name} has sha256 {actual}, but {expected} was expected ({source}).",
        hint=f"The file was deleted. {CHANGED_HINT}",
    )
