"""RPM files without ``rpm``: header fields, integrity, and safe payload extraction.

rpmfile parses the lead and headers.  The payload is decompressed as a stream and its cpio
("newc") records are read one after another, so memory stays flat whatever the package's size.
Extraction refuses absolute paths, ``..`` components and symlinks that would point outside the
extraction root; absolute symlinks inside the package (``/lib/modules/X/build``) are rewritten
relative to the root so the tree stays self-contained.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import posixpath
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from builder.errors import InputError

CPIO_MAGIC = (b"070701", b"070702")
CPIO_HEADER = 110
CHUNK = 1 << 20


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class RpmInfo:
    name: str
    version: str
    release: str
    arch: str
    compressor: str
    payload_offset: int  # where the compressed payload starts
    header_offset: int  # where the main header starts (sigmd5 covers header + payload)
    sigmd5: bytes | None
    payload_digest: str | None  # sha256 of the compressed payload (rpm >= 4.14)

    @property
    def nvra(self) -> str:
        return f"{self.name}-{self.version}-{self.release}.{self.arch}"


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list) and value:
        return _text(value[0])
    return str(value)


def corrupt(path: Path, detail: str) -> InputError:
    return InputError(
        f"{path} is not a valid RPM: {detail}.",
        hint="The file is corrupt or truncated; delete it (or its cached download) and fetch it "
        "again, or pass the right file.",
    )


def read_info(path: Path) -> RpmInfo:
    import rpmfile

    try:
        with path.open("rb") as stream:
            lead = stream.read(4)
            if lead != b"\xed\xab\xee\xdb":
                raise corrupt(path, "it does not start with the RPM lead magic")
            stream.seek(0)
            header_range, headers = rpmfile.headers.get_headers(stream)
    except InputError:
        raise
    except Exception as exc:  # rpmfile raises bare exceptions and AssertionError on bad input
        raise corrupt(path, f"its header cannot be parsed ({type(exc).__name__})") from None
    try:
        sigmd5 = headers.get("sigmd5")
        digest = headers.get("payloaddigest")
        return RpmInfo(
            name=_text(headers["name"]),
            version=_text(headers["version"]),
            release=_text(headers["release"]),
            arch=_text(headers.get("arch", b"noarch")),
            compressor=_text(headers.get("archive_compression", b"gzip")),
            payload_offset=header_range[1],
            header_offset=header_range[0],
            sigmd5=sigmd5 if isinstance(sigmd5, bytes) and len(sigmd5) == 16 else None,
            payload_digest=_text(digest) if digest else None,
        )
    except KeyError as exc:
        raise corrupt(path, f"its header has no {exc.args[0]} tag") from None


def verify_integrity(path: Path, info: RpmInfo) -> None:
    """Check the digest the RPM carries: the payload sha256, or the header+payload MD5."""
    if info.payload_digest is None and info.sigmd5 is None:
        raise corrupt(path, "it carries neither a payload digest nor a header+payload MD5")
    payload = hashlib.sha256()
    whole = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        stream.seek(info.header_offset)
        position = info.header_offset
        while chunk := stream.read(CHUNK):
            whole.update(chunk)
            if position + len(chunk) > info.payload_offset:
                payload.update(chunk[max(0, info.payload_offset - position) :])
            position += len(chunk)
    if info.payload_digest is not None and payload.hexdigest() != info.payload_digest:
        raise corrupt(path, "its payload does not match the payload digest in its header")
    if info.sigmd5 is not None and whole.digest() != info.sigmd5:
        raise corrupt(path, "its header and payload do not match the MD5 in its signature")


def _decompressor(raw: IO[bytes], compressor: str, path: Path) -> Readable:
    if compressor in ("gzip", ""):
        return gzip.GzipFile(fileobj=raw)
    if compressor in ("xz", "lzma"):
        return lzma.LZMAFile(raw)
    if compressor == "bzip2":
        return bz2.BZ2File(raw)
    if compressor == "zstd":
        import zstandard

        reader: Readable = zstandard.ZstdDecompressor().stream_reader(raw)
        return reader
    raise corrupt(path, f"its payload compressor {compressor!r} is not supported")


@dataclass(frozen=True)
class CpioEntry:
    name: str
    mode: int
    size: int
    nlink: int
    inode: tuple[int, int]
    mtime: int


MIB = 1 << 20
# A path (and a symlink's target) longer than PATH_MAX is no file a kernel tree can hold.
MAX_NAME = 4096


@dataclass(frozen=True)
class ExtractLimits:
    """What a kernel-devel payload may unpack to: far above any real one (about 100 MB for
    2.6.32 and 4.19 trees, the largest file a few MB), far below what would fill a disk."""

    max_file: int = 256 * MIB
    max_total: int = 2048 * MIB


DEFAULT_LIMITS = ExtractLimits()


def _too_big(path: Path, what: str, limit: int, option: str) -> InputError:
    return InputError(
        f"{path} was refused: {what}, over the limit of {limit // MIB:,} MiB ({option}).",
        hint=f"No kernel-devel package is that large; if this one really is, raise {option}. "
        "Nothing of the package was kept.",
    )


def _read_exact(stream: Readable, size: int, path: Path) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise corrupt(path, "its payload ends in the middle of a file")
    return data


def _iter_cpio(stream: Readable, path: Path) -> Iterator[tuple[CpioEntry, Readable]]:
    """Yield (entry, stream positioned at its data); the caller must read exactly entry.size."""
    offset = 0
    while True:
        header = stream.read(CPIO_HEADER)
        if len(header) != CPIO_HEADER or header[:6] not in CPIO_MAGIC:
            raise corrupt(path, "its payload is not a complete cpio archive")
        try:
            fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise corrupt(path, "its payload has a damaged cpio header") from None
        ino, mode, _uid, _gid, nlink, mtime, size, devmaj, devmin, _rmaj, _rmin, namesize, _c = (
            fields
        )
        if namesize > MAX_NAME + 1:
            raise InputError(
                f"{path} has an unsafe payload: an entry name of {namesize} bytes.",
                hint="The package was refused; nothing of it was kept.",
            )
        name_bytes = _read_exact(stream, namesize, path)
        offset += CPIO_HEADER + namesize
        pad = (-offset) % 4
        _read_exact(stream, pad, path)
        offset += pad
        name = name_bytes.rstrip(b"\0").decode("utf-8", "surrogateescape")
        if name == "TRAILER!!!":
            return
        entry = CpioEntry(name, mode, size, nlink, (devmaj << 32 | devmin, ino), mtime)
        yield entry, stream
        offset += size
        pad = (-offset) % 4
        _read_exact(stream, pad, path)
        offset += pad


def _safe_relative(name: str, path: Path) -> str:
    clean = name[2:] if name.startswith("./") else name
    if clean.startswith("/") or not clean:
        raise InputError(
            f"{path} has an unsafe payload: the entry {name!r} has an absolute path.",
            hint="The package was refused; nothing outside the extraction directory was written.",
        )
    parts = clean.split("/")
    if ".." in parts:
        raise InputError(
            f"{path} has an unsafe payload: the entry {name!r} climbs out with '..'.",
            hint="The package was refused; nothing outside the extraction directory was written.",
        )
    return "/".join(part for part in parts if part not in ("", "."))


def _safe_link_target(relative: str, target: str, path: Path) -> str:
    """Return the symlink target to write, refusing one that leaves the extraction root."""
    parent = posixpath.dirname(relative)
    if target.startswith("/"):
        # An absolute target means the package's own root: normpath clamps "/.." at "/".
        inside = posixpath.normpath(target).lstrip("/") or "."
        return posixpath.relpath(inside, parent or ".")
    resolved = posixpath.normpath(posixpath.join(parent, target))
    if resolved == ".." or resolved.startswith("../"):
        raise InputError(
            f"{path} has an unsafe payload: the symlink {relative!r} points to {target!r}, "
            "outside the package's tree.",
            hint="The package was refused; nothing outside the extraction directory was written.",
        )
    return target


def _check_parent(root: Path, relative: str, path: Path, symlinks: set[str]) -> Path:
    """Return root/relative after checking that no symlink on the way leaves the root.

    Directories the extraction made itself are safe; only a path that passes through one of
    the package's own symlinks needs resolving.
    """
    dest = root / relative
    parts = relative.split("/")[:-1]
    if not any("/".join(parts[: i + 1]) in symlinks for i in range(len(parts))):
        return dest
    real_parent = dest.parent.resolve()
    real_root = root.resolve()
    if real_parent != real_root and real_root not in real_parent.parents:
        raise InputError(
            f"{path} has an unsafe payload: {relative!r} would be written through a symlink "
            "outside the package's tree.",
        )
    return dest


def _check_symlinks(root: Path, symlinks: set[str], path: Path) -> None:
    """Resolve every symlink for real: a chain of links can leave the tree where each looks fine."""
    real_root = root.resolve()
    for relative in sorted(symlinks):
        real = Path(os.path.realpath(root / relative))
        if real != real_root and real_root not in real.parents:
            raise InputError(
                f"{path} has an unsafe payload: the symlink {relative!r} resolves to {real}, "
                "outside the package's tree.",
                hint="The package was refused; nothing outside the extraction directory was "
                "written.",
            )


def _check_size(entry: CpioEntry, kind: int, total: int, path: Path, limits: ExtractLimits) -> int:
    """The payload's size so far with ``entry``; refuse entries no kernel tree has, before
    reading them: huge files, symlink targets or directory "contents" (bombs)."""
    if kind == stat.S_IFREG:
        if entry.size > limits.max_file:
            raise _too_big(
                path,
                f"{entry.name!r} would unpack to {entry.size:,} bytes",
                limits.max_file,
                "--max-file",
            )
        total += entry.size
        if total > limits.max_total:
            raise _too_big(
                path, f"the tree would unpack to more than {total:,} bytes", limits.max_total,
                "--max-unpacked",
            )  # fmt: skip
    elif kind == stat.S_IFLNK:
        if entry.size > MAX_NAME:
            raise InputError(
                f"{path} has an unsafe payload: the symlink {entry.name!r} has a target of "
                f"{entry.size} bytes.",
                hint="The package was refused; nothing of it was kept.",
            )
    elif entry.size:
        raise InputError(
            f"{path} has an unsafe payload: {entry.name!r} is no file but carries "
            f"{entry.size} bytes.",
            hint="The package was refused; nothing of it was kept.",
        )
    return total


def extract_payload(
    path: Path, info: RpmInfo, root: Path, limits: ExtractLimits = DEFAULT_LIMITS
) -> int:
    """Extract the payload of ``path`` under ``root`` (which must exist); return file count."""
    links: dict[tuple[int, int], list[Path]] = {}
    symlinks: set[str] = set()
    count = 0
    total = 0
    with path.open("rb") as raw:
        raw.seek(info.payload_offset)
        try:
            stream = _decompressor(raw, info.compressor, path)
            for entry, data in _iter_cpio(stream, path):
                relative = _safe_relative(entry.name, path)
                kind = stat.S_IFMT(entry.mode)
                total = _check_size(entry, kind, total, path, limits)
                if not relative:
                    _read_exact(data, entry.size, path)
                    continue
                dest = _check_parent(root, relative, path, symlinks)
                if kind == stat.S_IFDIR:
                    dest.mkdir(parents=True, exist_ok=True)
                    _read_exact(data, entry.size, path)
                elif kind == stat.S_IFLNK:
                    target = _read_exact(data, entry.size, path).decode("utf-8", "surrogateescape")
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    if dest.is_symlink() or dest.exists():
                        dest.unlink()
                    os.symlink(_safe_link_target(relative, target, path), dest)
                    symlinks.add(relative)
                    count += 1
                elif kind == stat.S_IFREG:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    if dest.is_symlink():
                        dest.unlink()
                    _write_file(dest, data, entry.size, path)
                    os.chmod(dest, stat.S_IMODE(entry.mode) & 0o755 | 0o200)
                    os.utime(dest, (entry.mtime, entry.mtime))
                    if entry.nlink > 1:
                        links.setdefault(entry.inode, []).append(dest)
                    count += 1
                else:
                    # Device nodes, fifos and sockets have no place in a build tree.
                    _read_exact(data, entry.size, path)
        except (OSError, EOFError, lzma.LZMAError, ValueError, zlib.error) as exc:
            raise corrupt(path, f"its payload cannot be decompressed ({exc})") from None
        except Exception as exc:
            if type(exc).__name__ != "ZstdError":  # zstandard is imported only when needed
                raise
            raise corrupt(path, f"its payload cannot be decompressed ({exc})") from None
    _check_symlinks(root, symlinks, path)
    _complete_hardlinks(links)
    return count


def _write_file(dest: Path, data: Readable, size: int, path: Path) -> None:
    remaining = size
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out:
        while remaining:
            chunk = data.read(min(CHUNK, remaining))
            if not chunk:
                raise corrupt(path, "its payload ends in the middle of a file")
            out.write(chunk)
            remaining -= len(chunk)


def _complete_hardlinks(links: dict[tuple[int, int], list[Path]]) -> None:
    """newc stores a hard-linked file's data once, with its last name: share it with the rest."""
    for paths in links.values():
        sizes = [(p.stat().st_size, p) for p in paths]
        full = max(sizes)[1]
        for other in paths:
            if other != full and other.stat().st_size == 0:
                other.unlink()
                os.link(full, other)


def _segments(text: str) -> Iterator[tuple[int, str]]:
    """Split a version into rpm's segments: (kind, text), kind 0 for '~', 1 alpha, 2 digits."""
    index = 0
    while index < len(text):
        char = text[index]
        if char == "~":
            yield 0, "~"
            index += 1
        elif char.isdigit():
            end = index
            while end < len(text) and text[end].isdigit():
                end += 1
            yield 2, text[index:end].lstrip("0") or "0"
            index = end
        elif char.isalpha():
            end = index
            while end < len(text) and text[end].isalpha():
                end += 1
            yield 1, text[index:end]
            index = end
        else:
            index += 1


def vercmp(left: str, right: str) -> int:
    """rpm's version comparison (rpmvercmp), enough for picking the newest kernel-devel."""
    a, b = list(_segments(left)), list(_segments(right))
    for (kind_a, seg_a), (kind_b, seg_b) in zip(a, b, strict=False):
        if kind_a != kind_b:
            # '~' sorts before anything; digits sort after letters.
            return -1 if kind_a < kind_b else 1
        if kind_a == 2 and len(seg_a) != len(seg_b):
            return -1 if len(seg_a) < len(seg_b) else 1
        if seg_a != seg_b:
            return -1 if seg_a < seg_b else 1
    if len(a) == len(b):
        return 0
    longer, sign = (a, 1) if len(a) > len(b) else (b, -1)
    # A trailing '~' segment makes the longer version older.
    return -sign if longer[min(len(a), len(b))][0] == 0 else sign
