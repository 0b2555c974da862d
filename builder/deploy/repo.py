"""Read the package list of a published yum repository: ``repomd.xml`` → primary metadata.

Used by ``deploy check`` to tell whether the repository really carries the DRBD version a pool
asks for.  The repository can be a local directory, a ``file://`` URL or an ``http(s)://`` URL;
anything that stops the read is a :class:`RepoUnreachable` with a reason, which the check
reports as a warning (the repository may simply not be reachable from where ``check`` runs).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import requests

REPO_NS = "{http://linux.duke.edu/metadata/repo}"
COMMON_NS = "{http://linux.duke.edu/metadata/common}"
MAX_METADATA_BYTES = 256 * 1024 * 1024
TIMEOUT_SECONDS = 15


class RepoUnreachable(Exception):
    """The repository metadata could not be read; the message says why."""


class RepoNotFound(RepoUnreachable):
    """The server or directory answered, but this repository is not there (HTTP 404, no file)."""


@dataclass(frozen=True, kw_only=True, order=True)
class Package:
    name: str
    version: str
    release: str
    arch: str

    @property
    def nvra(self) -> str:
        return f"{self.name}-{self.version}-{self.release}.{self.arch}"


def _read(base: str, relative: str) -> bytes:
    """Read ``relative`` below the repository ``base`` (a path or a URL)."""
    if base.startswith(("http://", "https://")):
        url = urllib.parse.urljoin(base.rstrip("/") + "/", relative)
        try:
            response = requests.get(url, timeout=TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            raise RepoUnreachable(f"cannot fetch {url}: {_short_reason(exc)}") from exc
        if response.status_code == 404:
            raise RepoNotFound(f"{url} does not exist (HTTP 404)")
        if response.status_code != 200:
            raise RepoUnreachable(f"cannot fetch {url}: HTTP {response.status_code}")
        return response.content
    path = local_path(base) / relative
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise RepoNotFound(f"{path} does not exist") from exc
    except OSError as exc:
        raise RepoUnreachable(f"cannot read {path}: {exc.strerror or exc}") from exc


def _short_reason(exc: requests.RequestException) -> str:
    """requests' messages nest three exceptions deep; say what happened in a few words."""
    text = str(exc)
    for marker, reason in (
        ("NameResolutionError", "the host name does not resolve"),
        ("Name or service not known", "the host name does not resolve"),
        ("Connection refused", "connection refused"),
        ("timed out", "timed out"),
        ("CERTIFICATE_VERIFY_FAILED", "TLS certificate verification failed"),
    ):
        if marker in text:
            return reason
    return text if len(text) <= 200 else text[:200] + "…"


def local_path(base: str) -> Path:
    """The directory a local path or ``file://`` URL names."""
    if not base.startswith("file://"):
        return Path(base)
    parsed = urllib.parse.urlparse(base)
    if parsed.netloc not in ("", "localhost"):
        raise RepoUnreachable(f"{base}: file:// URLs must name a local path")
    return Path(urllib.parse.unquote(parsed.path))


def _decompress(name: str, data: bytes) -> bytes:
    try:
        if name.endswith(".gz"):
            return gzip.decompress(data)
        if name.endswith(".bz2"):
            return bz2.decompress(data)
        if name.endswith(".xz"):
            return lzma.decompress(data)
        if name.endswith(".zst"):
            try:
                import zstandard
            except ImportError as exc:
                raise RepoUnreachable(f"{name} is zstd-compressed; install zstandard") from exc

            return bytes(
                zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_METADATA_BYTES)
            )
    except (OSError, EOFError, lzma.LZMAError, ValueError) as exc:
        raise RepoUnreachable(f"{name} is not valid compressed data: {exc}") from exc
    return data


def primary_location(repomd: bytes) -> str:
    try:
        root = ET.fromstring(repomd)  # noqa: S314 (repomd.xml from a repo the user names)
    except ET.ParseError as exc:
        raise RepoUnreachable(f"repodata/repomd.xml is not valid XML: {exc}") from exc
    for data in root.findall(f"{REPO_NS}data"):
        if data.get("type") == "primary":
            location = data.find(f"{REPO_NS}location")
            href = location.get("href") if location is not None else None
            if href:
                return href
    raise RepoUnreachable("repodata/repomd.xml names no primary metadata")


def read_packages(base: str) -> list[Package]:
    """Every package the repository at ``base`` (directory holding ``repodata/``) lists."""
    href = primary_location(_read(base, "repodata/repomd.xml"))
    if href.startswith("/") or ".." in href.split("/"):
        raise RepoUnreachable(f"repomd.xml points outside the repository: {href!r}")
    primary = _decompress(href, _read(base, href))
    try:
        root = ET.fromstring(primary)  # noqa: S314
    except ET.ParseError as exc:
        raise RepoUnreachable(f"{href} is not valid XML: {exc}") from exc
    packages = []
    for element in root.findall(f"{COMMON_NS}package"):
        name = element.findtext(f"{COMMON_NS}name")
        arch = element.findtext(f"{COMMON_NS}arch")
        version = element.find(f"{COMMON_NS}version")
        if not name or not arch or version is None:
            continue
        packages.append(
            Package(
                name=name,
                version=version.get("ver", ""),
                release=version.get("rel", ""),
                arch=arch,
            )
        )
    return sorted(packages)
