"""Read one file out of an ISO9660 image without mounting it.

pycdlib parses the volume descriptors and directory records (Rock Ridge, Joliet or plain
ISO9660 names); the file's bytes are then copied straight from its extent on disk with
``copy_file_range`` (kernel-side, no user-space buffer), falling back to a fixed 1 MiB buffer.
Memory use therefore does not grow with the size of the ISO or of the file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder import log
from builder.errors import InputError

SECTOR = 2048
BUFFER = 1 << 20


@dataclass(frozen=True)
class IsoEntry:
    path: str  # as found, in the namespace used
    offset: int  # byte offset of the file's data in the image
    size: int


def _name(record: Any, namespace: str) -> str:
    if namespace == "rr_path" and record.rock_ridge is not None:
        raw = record.rock_ridge.name()
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    ident: bytes = record.file_identifier()
    if namespace == "joliet_path":
        return ident.decode("utf-16-be", "replace")
    text = ident.decode("ascii", "replace")
    return text.split(";", 1)[0].rstrip(".")


def _namespace(iso: Any) -> str:
    if iso.has_rock_ridge():
        return "rr_path"
    if iso.has_joliet():
        return "joliet_path"
    return "iso_path"


def _children(iso: Any, namespace: str, directory: str) -> Iterator[tuple[str, Any]]:
    for record in iso.list_children(**{namespace: directory}):
        if record.is_dot() or record.is_dotdot():
            continue
        yield _name(record, namespace), record


def _find(iso: Any, namespace: str, inner: str, image: Path) -> tuple[str, Any]:
    parts = [part for part in inner.split("/") if part]
    directory = "/"
    record: Any = None
    for index, part in enumerate(parts):
        listing = dict(_children(iso, namespace, directory))
        lowered = {name.lower(): name for name in listing}
        match = listing.get(part) or (
            listing.get(lowered[part.lower()]) if part.lower() in lowered else None
        )
        if match is None:
            found = ", ".join(sorted(listing)) or "nothing"
            where = directory if directory != "/" else "the top level"
            raise InputError(
                f"{image} has no {'/'.join(parts[: index + 1])}: {where} holds {found}.",
                hint="Check that this is the right ISO for the target (the spec's path: names the "
                "file inside it), or pass the kernel-devel RPM itself with --kernel-rpm PATH.",
            )
        name = lowered.get(part.lower(), part)
        record = match
        directory = directory.rstrip("/") + "/" + name
    if record is None or record.is_dir():
        raise InputError(f"{inner} in {image} is a directory, not a file.")
    return directory, record


def locate(image: Path, inner: str) -> IsoEntry:
    """Find ``inner`` (case-insensitively, in the richest namespace the ISO has)."""
    import pycdlib
    from pycdlib.pycdlibexception import PyCdlibException

    iso = pycdlib.PyCdlib()
    try:
        iso.open(str(image))
    except (PyCdlibException, OSError, ValueError, IndexError, KeyError) as exc:
        raise InputError(
            f"{image} is not a readable ISO9660 image ({exc}).",
            hint="The download may be truncated or the file is not an ISO; delete it from the "
            "cache or pass the right file with --iso PATH.",
        ) from None
    try:
        namespace = _namespace(iso)
        try:
            path, record = _find(iso, namespace, inner, image)
        except (PyCdlibException, UnicodeError) as exc:
            raise InputError(f"{image}: cannot read its directory tree ({exc}).") from None
        if record.get_data_length() > 0 and record.data_continuation is not None:
            raise InputError(f"{path} in {image} spans several extents, which is not supported.")
        entry = IsoEntry(
            path=path,
            offset=record.extent_location() * SECTOR,
            size=record.get_data_length(),
        )
    finally:
        with contextlib.suppress(Exception):
            iso.close()
    image_size = image.stat().st_size
    if entry.offset + entry.size > image_size:
        raise InputError(
            f"{image} is truncated: {entry.path} ends at byte {entry.offset + entry.size}, "
            f"but the image has only {image_size} bytes.",
            hint="Delete the file (or its cached download) and fetch it again.",
        )
    return entry


def copy_range(source: Path, offset: int, size: int, dest: Path, *, label: str) -> None:
    """Copy ``size`` bytes at ``offset`` of ``source`` into a new file ``dest``."""
    progress = log.Progress(label, size)
    with source.open("rb") as src, dest.open("wb") as out:
        src_fd, out_fd = src.fileno(), out.fileno()
        position, remaining = offset, size
        use_kernel_copy = hasattr(os, "copy_file_range")
        while remaining > 0:
            chunk = min(remaining, 64 * BUFFER)
            copied = 0
            if use_kernel_copy:
                try:
                    copied = os.copy_file_range(src_fd, out_fd, chunk, position)
                except OSError:
                    use_kernel_copy = False
            if not use_kernel_copy:
                data = os.pread(src_fd, min(chunk, BUFFER), position)
                copied = len(data)
                out.write(data)
            if copied == 0:
                raise InputError(f"{source} ended early while copying {label}.")
            position += copied
            remaining -= copied
            progress.advance(copied)
        out.flush()
    progress.finish()


def extract(image: Path, inner: str, dest: Path) -> IsoEntry:
    """Write the file ``inner`` of ``image`` to ``dest`` (atomically) and return its entry."""
    entry = locate(image, inner)
    partial = dest.with_name(dest.name + ".partial")
    try:
        copy_range(image, entry.offset, entry.size, partial, label=f"reading {dest.name}")
        os.replace(partial, dest)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return entry
