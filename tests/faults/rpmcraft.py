"""Hand-made RPM files whose digests are all valid, with any cpio payload one likes.

rpmbuild cannot make the payloads an attacker would send (a directory carrying data, a symlink
whose target is a gigabyte, an entry named ``../x`` or ``/x``, hard-link groups that do not add
up), so these packages are written byte by byte: a lead, a signature header holding the size,
the header+payload MD5 and the header's SHA-1 and SHA-256, and a main header holding the
payload's SHA-256.  ``rpm -K --nosignature`` accepts them, so the only thing that can stop one
is the tool's own checks.

Payloads are streams of concatenated compressed members (bzip2 or gzip both allow that), so a
multi-gigabyte file of zeros costs a few kilobytes and no time to make: one member of zeros is
compressed once and repeated.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import stat
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REG = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755
LNK = stat.S_IFLNK | 0o777

# Header data types and tags (rpm's rpmtag.h).
INT32, STRING, BIN, STRING_ARRAY, I18NSTRING = 4, 6, 7, 8, 9
HEADER_SIGNATURES, HEADER_IMMUTABLE = 62, 63
SIG_SIZE, SIG_MD5, SIG_SHA1, SIG_SHA256 = 1000, 1004, 269, 273
ZERO_MEMBER = 8 << 20  # bytes of zeros per compressed member


@dataclass(frozen=True)
class Zeros:
    """``size`` zero bytes, streamed as repeated compressed members."""

    size: int


Data = bytes | Zeros


@dataclass(frozen=True)
class Entry:
    """One cpio (newc) record.  ``size`` defaults to the data's length; a record may lie."""

    name: str
    mode: int
    data: Data = b""
    inode: int = 0
    nlink: int = 1
    size: int | None = None

    @property
    def length(self) -> int:
        return self.data.size if isinstance(self.data, Zeros) else len(self.data)


@dataclass
class _Stream:
    """A payload as compressed members, with the length it decompresses to."""

    compressor: str
    members: list[bytes] = field(default_factory=list)
    plain: bytearray = field(default_factory=bytearray)
    offset: int = 0

    def _compress(self, data: bytes) -> bytes:
        if self.compressor == "bzip2":
            return bz2.compress(data, 9)
        return gzip.compress(data, 9, mtime=0)

    def add(self, data: bytes) -> None:
        self.plain += data
        self.offset += len(data)

    def flush(self) -> None:
        if self.plain:
            self.members.append(self._compress(bytes(self.plain)))
            self.plain.clear()

    def zeros(self, size: int) -> None:
        self.flush()
        whole, rest = divmod(size, ZERO_MEMBER)
        if whole:
            member = self._compress(bytes(ZERO_MEMBER))
            self.members.extend([member] * whole)
        self.offset += whole * ZERO_MEMBER
        self.add(bytes(rest))

    def pad(self) -> None:
        self.add(b"\0" * ((-self.offset) % 4))


def cpio_payload(entries: Sequence[Entry], compressor: str = "bzip2") -> bytes:
    stream = _Stream(compressor)
    trailer = Entry("TRAILER!!!", 0)
    for entry in [*entries, trailer]:
        name = entry.name.encode("utf-8", "surrogateescape") + b"\0"
        size = entry.length if entry.size is None else entry.size
        fields = [entry.inode, entry.mode, 0, 0, entry.nlink, 0, size, 0, 0, 0, 0, len(name), 0]
        stream.add(b"070701" + b"".join(b"%08x" % value for value in fields))
        stream.add(name)
        stream.pad()
        if isinstance(entry.data, Zeros):
            stream.zeros(entry.data.size)
        else:
            stream.add(entry.data)
        stream.pad()
    stream.flush()
    return b"".join(stream.members)


def _header(region: int, tags: Iterable[tuple[int, int, object]]) -> bytes:
    """A header structure with its immutable region tag first, as rpm writes it."""
    entries: list[tuple[int, int, int, int]] = []
    store = bytearray()
    for tag, kind, value in sorted(tags, key=lambda item: item[0]):
        if kind == INT32:
            store += b"\0" * ((-len(store)) % 4)
            values = value if isinstance(value, list) else [value]
            entries.append((tag, kind, len(store), len(values)))
            store += b"".join(struct.pack(">I", v) for v in values)
        elif kind == BIN:
            assert isinstance(value, bytes)
            entries.append((tag, kind, len(store), len(value)))
            store += value
        elif kind in (STRING, I18NSTRING):
            assert isinstance(value, str)
            entries.append((tag, kind, len(store), 1))
            store += value.encode() + b"\0"
        elif kind == STRING_ARRAY:
            assert isinstance(value, list)
            entries.append((tag, kind, len(store), len(value)))
            store += b"".join(str(v).encode() + b"\0" for v in value)
        else:
            raise ValueError(kind)
    count = len(entries) + 1
    trailer_at = len(store)
    store += struct.pack(">iiii", region, BIN, -count * 16, 16)
    index = struct.pack(">IIiI", region, BIN, trailer_at, 16)
    index += b"".join(struct.pack(">IIiI", *entry) for entry in entries)
    return b"\x8e\xad\xe8\x01\0\0\0\0" + struct.pack(">II", count, len(store)) + index + store


def _lead(name: str) -> bytes:
    return (
        b"\xed\xab\xee\xdb\x03\x00"
        + struct.pack(">hh", 0, 1)
        + name.encode()[:65].ljust(66, b"\0")
        + struct.pack(">hh", 1, 5)
        + b"\0" * 16
    )


def write_rpm(
    path: Path,
    entries: Sequence[Entry],
    *,
    name: str = "kernel-xen-devel",
    version: str = "1.0",
    release: str = "1",
    arch: str = "x86_64",
    compressor: str = "bzip2",
) -> Path:
    """Write a binary RPM holding ``entries`` with valid digests; returns ``path``."""
    payload = cpio_payload(entries, compressor)
    main = _header(
        HEADER_IMMUTABLE,
        [
            (1000, STRING, name),
            (1001, STRING, version),
            (1002, STRING, release),
            (1004, I18NSTRING, "crafted package"),
            (1005, I18NSTRING, "A package made byte by byte for the fault tests."),
            (1014, STRING, "GPL-2.0-only"),
            (1016, I18NSTRING, "Development/System"),
            (1021, STRING, "linux"),
            (1022, STRING, arch),
            (1124, STRING, "cpio"),
            (1125, STRING, compressor),
            (1126, STRING, "9"),
            (5092, STRING_ARRAY, [hashlib.sha256(payload).hexdigest()]),
            (5093, INT32, 8),  # PGPHASHALGO_SHA256
        ],
    )
    signature = _header(
        HEADER_SIGNATURES,
        [
            (SIG_SIZE, INT32, len(main) + len(payload)),
            (SIG_MD5, BIN, hashlib.md5(main + payload, usedforsecurity=False).digest()),
            (SIG_SHA1, STRING, hashlib.sha1(main, usedforsecurity=False).hexdigest()),
            (SIG_SHA256, STRING, hashlib.sha256(main).hexdigest()),
        ],
    )
    signature += b"\0" * ((-len(signature)) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_lead(f"{name}-{version}-{release}") + signature + main + payload)
    return path


def kernel_tree(release: str, top: str = "./usr/src/kernels/lab") -> Iterator[Entry]:
    """The smallest tree the tool takes for a kernel build tree of ``release``."""
    yield Entry(top, DIR, inode=1, nlink=2)
    yield Entry(f"{top}/Makefile", REG, b"all:\n", inode=2)
    yield Entry(f"{top}/.config", REG, b"CONFIG_MODULES=y\n", inode=3)
    yield Entry(
        f"{top}/include/generated/utsrelease.h",
        REG,
        f'#define UTS_RELEASE "{release}"\n'.encode(),
        inode=4,
    )
