"""An RPM file's lead and headers, read without ``rpm``: the few tags this tool needs, and the
digests the file carries.

``read_info`` reads the lead and the two headers' indexes and decodes only the tags it needs
(a kernel-devel header lists some 26,000 files).  ``verify_integrity`` checks the payload
sha256 or the header+payload MD5 in one pass over the file.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from builder.errors import InputError
from builder.files import READ_CHUNK


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


def text_of(value: Any) -> str:
    """A header value as text: bytes decoded, the first of a list, None as empty."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list) and value:
        return text_of(value[0])
    return "" if value is None else str(value)


def corrupt(path: Path, detail: str) -> InputError:
    return InputError(
        f"{path} is not a valid RPM: {detail}.",
        hint="The file is corrupt or truncated; delete it (or its cached download) and fetch it "
        "again, or pass the right file.",
    )


LEAD_SIZE = 96
HEADER_MAGIC = b"\x8e\xad\xe8\x01"
HEADER_INTRO = struct.Struct(">4s4xII")  # magic and version, reserved, index entries, store size
INDEX_ENTRY = struct.Struct(">iiii")  # tag, type, offset, count
# rpm's own bounds for one header (hdrchkTags, hdrchkData)
MAX_INDEX = 0xFFFF
MAX_STORE = 256 << 20
MAX_VALUE = 4096  # the longest tag value read (names, versions, digests)
STRING, BIN, STRING_ARRAY, I18NSTRING = 6, 7, 8, 9
SIGTAG_MD5 = 1004  # header + payload MD5, in the signature header
TAGS = {
    1000: "name",
    1001: "version",
    1002: "release",
    1022: "arch",
    1125: "archive_compression",
    5092: "payloaddigest",
    261: "sigmd5",  # the same MD5, where the main header carries it
}


def _header(stream: IO[bytes], path: Path, wanted: dict[int, str]) -> tuple[int, dict[str, Any]]:
    """Read one header structure at the stream's position: (its offset, wanted tags' values).

    Only the index and the store are read, and only the wanted tags decoded: a kernel-devel
    header lists some 26,000 files, which nothing here needs.
    """
    start = stream.tell()
    intro = stream.read(HEADER_INTRO.size)
    if len(intro) != HEADER_INTRO.size:
        raise corrupt(path, "it ends inside its headers")
    magic, count, store_size = HEADER_INTRO.unpack(intro)
    if magic != HEADER_MAGIC:
        raise corrupt(path, "its header cannot be parsed (no header magic)")
    if count > MAX_INDEX or store_size > MAX_STORE:
        raise corrupt(path, f"its header is implausibly large ({count} tags, {store_size} bytes)")
    index = stream.read(count * INDEX_ENTRY.size)
    if len(index) != count * INDEX_ENTRY.size:
        raise corrupt(path, "it ends inside its headers")
    store = stream.tell()
    if store_size:
        stream.seek(store + store_size - 1)
        if len(stream.read(1)) != 1:
            raise corrupt(path, "it ends inside its headers")
    values: dict[str, Any] = {}
    for tag, kind, offset, number in INDEX_ENTRY.iter_unpack(index):
        name = wanted.get(tag)
        if name is None:
            continue
        if not 0 <= offset < store_size or number < 0:
            raise corrupt(path, f"its header's tag {tag} points outside the header")
        # Only the wanted values are read: short strings and a 16-byte digest.
        stream.seek(store + offset)
        data = stream.read(min(MAX_VALUE, store_size - offset))
        if kind == BIN:
            values[name] = data[:number]
        elif kind in (STRING, STRING_ARRAY, I18NSTRING):
            end = data.find(b"\0")
            if end < 0:
                raise corrupt(path, f"its header's tag {tag} is not terminated")
            values[name] = data[:end]
    stream.seek(store + store_size)
    return start, values


def read_info(path: Path) -> RpmInfo:
    try:
        with path.open("rb") as stream:
            lead = stream.read(LEAD_SIZE)
            if lead[:4] != b"\xed\xab\xee\xdb" or len(lead) != LEAD_SIZE:
                raise corrupt(path, "it does not start with the RPM lead magic")
            _, signature = _header(stream, path, {SIGTAG_MD5: "sigmd5"})
            # The signature header is padded to a multiple of 8 bytes.
            stream.seek((-stream.tell()) % 8, os.SEEK_CUR)
            header_offset, headers = _header(stream, path, TAGS)
            payload_offset = stream.tell()
    except OSError as exc:
        raise corrupt(path, f"it cannot be read ({exc.strerror or exc})") from None
    headers = {**signature, **headers}
    try:
        sigmd5 = headers.get("sigmd5")
        digest = headers.get("payloaddigest")
        return RpmInfo(
            name=text_of(headers["name"]),
            version=text_of(headers["version"]),
            release=text_of(headers["release"]),
            arch=text_of(headers.get("arch", b"noarch")),
            compressor=text_of(headers.get("archive_compression", b"gzip")),
            payload_offset=payload_offset,
            header_offset=header_offset,
            sigmd5=sigmd5 if isinstance(sigmd5, bytes) and len(sigmd5) == 16 else None,
            payload_digest=text_of(digest) if digest else None,
        )
    except KeyError as exc:
        raise corrupt(path, f"its header has no {exc.args[0]} tag") from None


def verify_integrity(path: Path, info: RpmInfo) -> str:
    """Check the digest the RPM carries: the payload sha256, or the header+payload MD5.

    Returns the sha256 of the whole file, taken in the same pass (what the cache and the lock
    file record), so that the file is read once.
    """
    if info.payload_digest is None and info.sigmd5 is None:
        raise corrupt(path, "it carries neither a payload digest nor a header+payload MD5")
    payload = hashlib.sha256()
    whole = hashlib.md5(usedforsecurity=False)
    everything = hashlib.sha256()
    with path.open("rb") as stream:
        position = 0
        while chunk := stream.read(READ_CHUNK):
            everything.update(chunk)
            end = position + len(chunk)
            if end > info.header_offset:
                whole.update(chunk[max(0, info.header_offset - position) :])
            if end > info.payload_offset:
                payload.update(chunk[max(0, info.payload_offset - position) :])
            position = end
    if info.payload_digest is not None and payload.hexdigest() != info.payload_digest:
        raise corrupt(path, "its payload does not match the payload digest in its header")
    if info.sigmd5 is not None and whole.digest() != info.sigmd5:
        raise corrupt(path, "its header and payload do not match the MD5 in its signature")
    return everything.hexdigest()
