"""Read the package list of a published yum repository: ``repomd.xml`` → primary metadata.

Used by ``deploy check`` to tell whether the repository really carries the DRBD version a pool
asks for.  The repository can be a local directory, a ``file://`` URL or an ``http(s)://`` URL;
anything that stops the read is a :class:`RepoUnreachable` with a reason, which the check
reports as a warning (the repository may simply not be reachable from where ``check`` runs).
"""

from __future__ import annotations

import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from builder import urls

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
        import requests

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


def _short_reason(exc: Exception) -> str:
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
    try:
        path = urls.local_path(base)
    except urls.NotLocal as exc:
        raise RepoUnreachable(str(exc)) from None
    if path is None:
        raise RepoUnreachable(f"{base} is not a local path or file:// URL")
    return path


def read_packages(base: str) -> list[Package]:
    """Every package the repository at ``base`` (directory holding ``repodata/``) lists."""
    from builder.errors import InputError
    from builder.inputs.yumsource import primary_metadata, read_primary

    with tempfile.TemporaryDirectory(prefix="xdb-repo-") as temp:
        repomd = Path(temp) / "repomd.xml"
        repomd.write_bytes(_read(base, "repodata/repomd.xml"))
        try:
            href = primary_metadata(repomd).href
        except InputError as exc:
            raise RepoUnreachable(f"repodata/repomd.xml: {exc.message}") from exc
        if href.startswith("/") or ".." in href.split("/"):
            raise RepoUnreachable(f"repomd.xml points outside the repository: {href!r}")
        primary = Path(temp) / href.rsplit("/", 1)[-1]
        primary.write_bytes(_read(base, href))
        try:
            listed = read_primary(primary)
        except InputError as exc:
            raise RepoUnreachable(f"{href}: {exc.message}") from exc
    packages = [
        Package(name=p.name, version=p.version, release=p.release, arch=p.arch) for p in listed
    ]
    return sorted(packages)
