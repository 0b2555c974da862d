"""A DRBD or drbd-utils source tarball, read once into a value the recipes and the build use.

The build needs a handful of facts about a source tarball before any container starts: its
single top directory (where ``tar`` leaves the tree), the files below it (which family's
recipe fits), its newest modification time (``SOURCE_DATE_EPOCH``) and the text of the spec
files it ships (the drbd-utils range a module-only family requires).  :func:`read_source_tarball`
reads them in one pass over the archive, and everyone after that is handed the
:class:`SourceTarball` instead of a path to open again.

Nothing is extracted: members are only named, and a spec file's text is read through
``tarfile`` into memory, at most :data:`SPEC_LIMIT` bytes of it.  A tarball that is damaged,
holds no single top directory, or whose top entry is absolute or ``..`` is refused with
:class:`InputError`.
"""

from __future__ import annotations

import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from builder.errors import InputError

SPEC_LIMIT = 1 << 20  # bytes of a spec file's text kept (a DRBD spec file has a few KiB)


@dataclass(frozen=True, kw_only=True)
class SourceTarball:
    """What the build knows of one source tarball, read once."""

    path: Path
    sha256: str | None  # its hash, where the reader was told it (the fetch knows it)
    # Every member, as named in the archive ("." and "./" left out).
    members: tuple[PurePosixPath, ...]
    # Its single top-level directory ("drbd-8.4.11-1").
    top_dir: str
    # Paths below the top directory ("configure", "drbd/Kbuild").
    files: frozenset[str]
    # SOURCE_DATE_EPOCH for a build of it: its newest member's mtime, so a rebuild is identical.
    epoch: int
    # The spec files right below the top directory ("drbd-km.spec") and their text.
    specs: Mapping[str, str]

    @property
    def name(self) -> str:
        return self.path.name

    def spec_text(self, name: str) -> str:
        """The text of the spec file ``name`` (below the top directory); "" if it has none."""
        return self.specs.get(name, "")


def read_source_tarball(path: Path, *, sha256: str | None = None) -> SourceTarball:
    """Read ``path`` once; ``sha256`` is its hash when the caller already knows it."""
    members: list[PurePosixPath] = []
    specs: dict[str, str] = {}
    epoch = 0
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                epoch = max(epoch, int(member.mtime))
                if member.name in (".", "./"):
                    continue
                name = PurePosixPath(member.name)
                members.append(name)
                below = name.parts[1:]
                if len(below) == 1 and below[0].endswith(".spec") and member.isfile():
                    stream = archive.extractfile(member)
                    if below[0] not in specs and stream is not None:
                        specs[below[0]] = stream.read(SPEC_LIMIT).decode("utf-8", "replace")
    except (OSError, tarfile.TarError) as exc:
        raise InputError(f"Cannot read source tarball {path}: {exc}") from exc
    return SourceTarball(
        path=path,
        sha256=sha256,
        members=tuple(members),
        top_dir=_top_dir(path, members),
        files=frozenset(
            PurePosixPath(*m.parts[1:]).as_posix()
            for m in members
            if len(m.parts) > 1 and m.parts[0] != "."
        ),
        epoch=epoch,
        specs=specs,
    )


def _top_dir(path: Path, members: list[PurePosixPath]) -> str:
    tops = {m.parts[0] for m in members if m.parts}
    tops.discard(".")
    if len(tops) != 1:
        raise InputError(
            f"Source tarball {path} must hold one top-level directory, not "
            f"{', '.join(sorted(tops)) or 'nothing'}."
        )
    top = tops.pop()
    if top in ("..", "/") or top.startswith("/"):
        raise InputError(f"Source tarball {path} has an unsafe top-level entry {top!r}.")
    return top
