"""An RPM's payload, decompressed and its cpio ("newc") records extracted safely, without ``rpm``.

The payload is decompressed in a thread of its own and its cpio records are read one after
another from bounded chunks, so memory stays flat whatever the package's size.  Files are
created relative to a directory descriptor, with their mode given at creation and their mtime
set on the descriptor.  (Writer threads for small files were tried: on tmpfs they made it
slower, the GIL handed back and forth between them, and cost 4 MiB more.)

Extraction refuses absolute paths, ``..`` components and symlinks that would point outside
the extraction root; absolute symlinks inside the package (``/lib/modules/X/build``) are
rewritten relative to the root so the tree stays self-contained.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import lzma
import os
import posixpath
import queue
import stat
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from builder.errors import InputError, NoSpaceError, no_space
from builder.files import READ_CHUNK
from builder.rpm.header import RpmInfo, corrupt

CPIO_MAGIC = (b"070701", b"070702")
CPIO_HEADER = 110
# The inflater's hand-over: chunks of this size, this many queued (bounded memory).
INFLATE_CHUNK = 256 << 10
QUEUED_CHUNKS = 4


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


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


class _Inflater(threading.Thread):
    """Reads the compressed payload and decompresses it in a thread of its own, handing the
    extractor bounded chunks: zlib, lzma, bz2 and zstd release the GIL while they work, so
    decompression runs beside the file writes instead of between them."""

    def __init__(self, path: Path, offset: int, compressor: str) -> None:
        super().__init__(name=f"inflate {path.name}", daemon=True)
        self.path = path
        self.offset = offset
        self.compressor = compressor
        self.chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUED_CHUNKS)
        self.error: BaseException | None = None
        self.stopped = threading.Event()

    def _put(self, chunk: bytes | None) -> bool:
        while not self.stopped.is_set():
            try:
                self.chunks.put(chunk, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        try:
            with self.path.open("rb") as raw:
                raw.seek(self.offset)
                for chunk in _inflate(raw, self.compressor, self.path):
                    if not self._put(chunk):
                        return
        except BaseException as exc:  # handed to the extractor, which raises it
            self.error = exc
        self._put(None)

    def stop(self) -> None:
        self.stopped.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self.chunks.get_nowait()
        self.join(timeout=5)


def _inflate(raw: IO[bytes], compressor: str, path: Path) -> Iterator[bytes]:
    """The decompressed payload in chunks of at most INFLATE_CHUNK bytes."""
    if compressor in ("gzip", ""):
        # zlib directly, fed large blocks: GzipFile's small reads cost more than the inflating.
        engine = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while True:
            data = raw.read(READ_CHUNK)
            if not data:
                if not engine.eof:
                    raise EOFError("the gzip stream ends early")
                return
            while data:
                yield engine.decompress(data, INFLATE_CHUNK)
                data = engine.unconsumed_tail
                if engine.eof:
                    return  # an RPM payload is one gzip member; what follows is not read
        return
    stream: Readable
    if compressor in ("xz", "lzma"):
        stream = lzma.LZMAFile(raw)  # noqa: SIM115 (the caller closes raw)
    elif compressor == "bzip2":
        stream = bz2.BZ2File(raw)
    elif compressor == "zstd":
        import zstandard

        stream = zstandard.ZstdDecompressor().stream_reader(raw)
    else:
        raise corrupt(path, f"its payload compressor {compressor!r} is not supported")
    while chunk := stream.read(INFLATE_CHUNK):
        yield chunk


class _Payload:
    """The decompressed cpio stream, read from the inflater's chunks without copying them."""

    def __init__(self, inflater: _Inflater, path: Path) -> None:
        self.inflater = inflater
        self.path = path
        self.view = memoryview(b"")
        self.pos = 0

    def _refill(self) -> None:
        chunk = self.inflater.chunks.get()
        if chunk is None:
            error = self.inflater.error
            if error is not None:
                raise error
            raise corrupt(self.path, "its payload ends in the middle of a file")
        self.view = memoryview(chunk)
        self.pos = 0

    def take(self, size: int) -> bytes:
        end = self.pos + size
        if end <= len(self.view):
            data = self.view[self.pos : end].tobytes()
            self.pos = end
            return data
        parts = []
        while size:
            if self.pos == len(self.view):
                self._refill()
            piece = self.view[self.pos : self.pos + size]
            parts.append(piece.tobytes())
            self.pos += len(piece)
            size -= len(piece)
        return b"".join(parts)

    def skip(self, size: int) -> None:
        while size:
            if self.pos == len(self.view):
                self._refill()
            step = min(size, len(self.view) - self.pos)
            self.pos += step
            size -= step

    def write_to(self, fd: int, size: int) -> None:
        while size:
            if self.pos == len(self.view):
                self._refill()
            piece = self.view[self.pos : self.pos + size]
            written = os.write(fd, piece)
            self.pos += written
            size -= written


def _umask() -> int | None:
    """The process's umask, read without changing it (threads may be creating files)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return None


# Errors of the filesystem written to, not of the package: reported as they are.
HOST_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
)


class _Extractor:
    """Writes cpio entries under ``root`` through a directory descriptor, by relative paths.

    Directories it made itself are remembered, so a file's parents cost one set lookup; only a
    path that passes through one of the package's own symlinks is resolved for real.
    """

    def __init__(self, root: Path, path: Path, limits: ExtractLimits) -> None:
        self.root = root
        self.path = path
        self.limits = limits
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.dirs: set[str] = {""}
        self.symlinks: set[str] = set()
        self.links: dict[tuple[int, int], list[Path]] = {}
        umask = _umask()
        # Modes are set at creation; fchmod only where the umask would take bits away.
        self.chmod_bits = 0o7777 if umask is None else umask
        self.count = 0
        self.total = 0

    def close(self) -> None:
        os.close(self.fd)

    def _parent(self, relative: str) -> None:
        parent = relative.rpartition("/")[0]
        if parent in self.dirs:
            return
        parts = parent.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(prefix in self.symlinks for prefix in prefixes):
            # Through one of the package's symlinks: resolve it, and never remember it.
            real_parent = Path(os.path.realpath(self.root / parent))
            real_root = Path(os.path.realpath(self.root))
            if real_parent != real_root and real_root not in real_parent.parents:
                raise InputError(
                    f"{self.path} has an unsafe payload: {relative!r} would be written through "
                    "a symlink outside the package's tree.",
                )
            real_parent.mkdir(parents=True, exist_ok=True)
            return
        for prefix in prefixes:
            if prefix not in self.dirs:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(prefix, 0o755, dir_fd=self.fd)
                self.dirs.add(prefix)

    def directory(self, relative: str) -> None:
        self._parent(relative)
        if relative in self.dirs:
            return
        with contextlib.suppress(FileExistsError):
            os.mkdir(relative, 0o755, dir_fd=self.fd)
        if relative not in self.symlinks:
            self.dirs.add(relative)

    def symlink(self, relative: str, target: str) -> None:
        self._parent(relative)
        link = _safe_link_target(relative, target, self.path)
        try:
            os.symlink(link, relative, dir_fd=self.fd)
        except FileExistsError:
            os.unlink(relative, dir_fd=self.fd)
            os.symlink(link, relative, dir_fd=self.fd)
        self.symlinks.add(relative)
        self.count += 1

    def file(self, relative: str, entry: CpioEntry, payload: _Payload) -> None:
        self._parent(relative)
        mode = stat.S_IMODE(entry.mode) & 0o755 | 0o200
        fd = self._create(relative, mode)
        try:
            payload.write_to(fd, entry.size)
            if mode & self.chmod_bits:
                os.fchmod(fd, mode)
            mtime = entry.mtime * 1_000_000_000
            os.utime(fd, ns=(mtime, mtime))
        finally:
            os.close(fd)
        if entry.nlink > 1:
            self.links.setdefault(entry.inode, []).append(self.root / relative)
        self.count += 1

    def _create(self, relative: str, mode: int) -> int:
        try:
            return os.open(relative, CREATE, mode, dir_fd=self.fd)
        except FileExistsError:
            # An earlier entry of the same name (a symlink, say): replaced, never followed.
            os.unlink(relative, dir_fd=self.fd)
            return os.open(relative, CREATE, mode, dir_fd=self.fd)

    def run(self, payload: _Payload) -> None:
        path = self.path
        while True:
            header = payload.take(CPIO_HEADER)
            if header[:6] not in CPIO_MAGIC:
                raise corrupt(path, "its payload is not a complete cpio archive")
            try:
                fields = CPIO_FIELDS.unpack(bytes.fromhex(header[6:].decode("ascii")))
            except (ValueError, struct.error):
                raise corrupt(path, "its payload has a damaged cpio header") from None
            ino, mode, _uid, _gid, nlink, mtime, size, devmaj, devmin, _r1, _r2, namesize, _c = (
                fields
            )
            if namesize > MAX_NAME + 1:
                raise InputError(
                    f"{path} has an unsafe payload: an entry name of {namesize} bytes.",
                    hint="The package was refused; nothing of it was kept.",
                )
            name_bytes = payload.take(namesize)
            payload.skip((-(CPIO_HEADER + namesize)) % 4)
            name = name_bytes.rstrip(b"\0").decode("utf-8", "surrogateescape")
            if name == "TRAILER!!!":
                return
            entry = CpioEntry(name, mode, size, nlink, (devmaj << 32 | devmin, ino), mtime)
            relative = _safe_relative(name, path)
            kind = stat.S_IFMT(mode)
            self.total = _check_size(entry, kind, self.total, path, self.limits)
            if not relative:
                payload.skip(size)
            elif kind == stat.S_IFREG:
                self.file(relative, entry, payload)
            elif kind == stat.S_IFDIR:
                self.directory(relative)
                payload.skip(size)
            elif kind == stat.S_IFLNK:
                target = payload.take(size).decode("utf-8", "surrogateescape")
                self.symlink(relative, target)
            else:
                # Device nodes, fifos and sockets have no place in a build tree.
                payload.skip(size)
            payload.skip((-size) % 4)


CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
CPIO_FIELDS = struct.Struct(">13I")


def extract_payload(
    path: Path, info: RpmInfo, root: Path, limits: ExtractLimits = DEFAULT_LIMITS
) -> int:
    """Extract the payload of ``path`` under ``root`` (which must exist); return file count."""
    inflater = _Inflater(path, info.payload_offset, info.compressor)
    extractor = _Extractor(root, path, limits)
    inflater.start()
    try:
        extractor.run(_Payload(inflater, path))
    except InputError:
        raise
    except OSError as exc:
        if no_space(exc):
            raise NoSpaceError(
                f"No space left on the disk holding {root} while extracting {path.name}.",
                hint="Free some disk space or choose another --cache DIR; nothing of the "
                "unfinished tree is kept.",
            ) from None
        if exc.errno in HOST_ERRNOS:
            raise
        raise corrupt(path, f"its payload cannot be unpacked ({exc})") from None
    except (EOFError, lzma.LZMAError, ValueError, zlib.error) as exc:
        raise corrupt(path, f"its payload cannot be decompressed ({exc})") from None
    except Exception as exc:
        if type(exc).__name__ != "ZstdError":  # zstandard is imported only when needed
            raise
        raise corrupt(path, f"its payload cannot be decompressed ({exc})") from None
    finally:
        inflater.stop()
        extractor.close()
    _check_symlinks(root, extractor.symlinks, path)
    _complete_hardlinks(root, extractor.links, path)
    return extractor.count


def _complete_hardlinks(root: Path, links: dict[tuple[int, int], list[Path]], path: Path) -> None:
    """newc stores a hard-linked file's data once, with its last name: share it with the rest.

    Every name must still be the plain file the payload made: a later entry of the same name
    (a symlink, say) would otherwise be followed or replaced by the link.
    """
    for paths in links.values():
        for name in paths:
            info = os.lstat(name)
            if not stat.S_ISREG(info.st_mode):
                raise InputError(
                    f"{path} has an unsafe payload: the hard-linked file "
                    f"{name.relative_to(root).as_posix()!r} was replaced by another entry of "
                    "the same name.",
                    hint="The package was refused; nothing of it was kept.",
                )
        sizes = [(p.stat().st_size, p) for p in paths]
        full = max(sizes)[1]
        for other in paths:
            if other != full and other.stat().st_size == 0:
                other.unlink()
                os.link(full, other)
