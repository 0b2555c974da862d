"""What the tool accepts as a place to read from: a URL of a scheme it fetches, or a local file
given as a path or a ``file://`` URL."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

URL_SCHEMES = ("http://", "https://", "file://")


class NotLocal(ValueError):
    """A ``file://`` URL that names another host: this machine cannot read it."""


def local_path(url: str) -> Path | None:
    """The local path a plain path or a ``file://`` URL names; None for a network URL."""
    if url.startswith("file://"):
        parsed = urllib.parse.urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise NotLocal(f"{url}: file:// URLs must name a local path")
        return Path(urllib.parse.unquote(parsed.path))
    if "://" not in url:
        return Path(url)
    return None
