"""What a ``kernel`` call found, remembered while none of the files it depends on changed.

A warm ``kernel`` call would otherwise load the registry, look the RPM up in the ISO, parse
its header and read the tree's marker, only to print what the last call printed.  The memo
holds that output with the identity (size, inode, mtime, ctime) of every file it came from:
the spec directories and their files (lock files included), the lock files kept elsewhere
(the state directory's, present or not), the ISO or RPM, the RPM read out of it and the
tree's marker.  While every one is unchanged the memo is the answer, found
with a few ``stat`` calls and without importing the pipeline.  Yum-sourced targets are never
remembered: a newer kernel in the repository must be seen.

This module imports nothing heavy: it runs before the rest of the command is imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from builder import __version__, resources

MEMO_DIR = "memo"
# The built-in specs and the lock shipped among them, as builder.specs finds them (not
# imported here: it imports yaml).
BUILTIN_SPECS = resources.SPECS_DIR


def identity(path: Path) -> list[int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_size, info.st_ino, info.st_mtime_ns, info.st_ctime_ns]


def spec_files(spec_dirs: Sequence[Path]) -> list[Path]:
    """Every file a registry load reads or may read: the directories themselves (a file added
    or removed changes their mtime) and their spec and lock files."""
    found: list[Path] = []
    for directory in [BUILTIN_SPECS, *spec_dirs]:
        found.append(directory)
        with contextlib.suppress(OSError):
            found += sorted(
                directory / name
                for name in os.listdir(directory)
                if name.endswith((".yaml", ".yml", ".lock"))
            )
    return found


def memo_path(cache: Path, key: Sequence[object]) -> Path:
    digest = hashlib.sha256(json.dumps([__version__, *key], default=str).encode()).hexdigest()
    return cache / MEMO_DIR / f"kernel-{digest[:32]}.json"


def recall(
    cache: Path, key: Sequence[object], spec_dirs: Sequence[Path], *, locks: Sequence[Path] = ()
) -> dict[str, Any] | None:
    """The remembered result for ``key``, if every file it depends on is unchanged.

    ``locks`` are lock files outside the spec directories that the call may read (the state
    directory's): remembered absent or present, so that one written or deleted since counts
    as a change."""
    try:
        memo = json.loads(memo_path(cache, key).read_text(encoding="utf-8"))
        files = memo["files"]
        result = memo["result"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(files, dict) or not isinstance(result, dict):
        return None
    specs = [str(p) for p in spec_files(spec_dirs)]
    # The same spec files as then (none added or removed), and nothing changed.
    if sorted(specs) != sorted(p for p in files if files[p][0] == "spec"):
        return None
    elsewhere = sorted(str(p) for p in locks if str(p) not in specs)
    if elsewhere != sorted(p for p in files if files[p][0] == "lock"):
        return None
    for path, (_, recorded) in files.items():
        if identity(Path(path)) != recorded:
            return None
    return result


def remember(
    cache: Path,
    key: Sequence[object],
    spec_dirs: Sequence[Path],
    inputs: Iterable[Path],
    result: dict[str, Any],
    *,
    locks: Sequence[Path] = (),
) -> None:
    """Write the memo; best effort (a read-only cache only costs the next call its time)."""
    files: dict[str, tuple[str, list[int] | None]] = {}
    for path in spec_files(spec_dirs):
        files[str(path)] = ("spec", identity(path))
    for path in inputs:
        files[str(path)] = ("input", identity(path))
    if any(value[1] is None for value in files.values()):
        return
    for path in locks:
        files.setdefault(str(path), ("lock", identity(path)))  # None: absent, must stay so
    memo = memo_path(cache, key)
    with contextlib.suppress(OSError):
        memo.parent.mkdir(parents=True, exist_ok=True)
        partial = memo.with_name(f"{memo.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps({"files": files, "result": result}), encoding="utf-8")
        os.replace(partial, memo)
