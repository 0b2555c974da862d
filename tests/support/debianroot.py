"""Debian roots for the container tests, made here with debootstrap (no registry) and
``docker import``-ed, cached by a tag that hashes what went into them, so reruns skip the
debootstrap.

Every test that needs a Debian root image (the stand-in build root, the spatch helper's base)
asks for it through :func:`debootstrapped`, by suite, packages and repository name.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import docker
import docker.errors

from builder import proc
from tests.support.needs import Unavailable

DEFAULT_MIRROR = "http://deb.debian.org/debian"


def debian_mirror(suite: str) -> str:
    """The Debian archive this machine's apt uses for ``suite`` (deb822 or one-line format)."""
    for sources in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        text = sources.read_text(encoding="utf-8", errors="replace")
        for stanza in text.split("\n\n"):
            if re.search(rf"^Suites:.*\b{suite}\b", stanza, re.M):
                match = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
                if match and "security" not in match.group(1):
                    return match.group(1).rstrip("/")
    listing = Path("/etc/apt/sources.list")
    if listing.is_file():
        for line in listing.read_text(encoding="utf-8", errors="replace").splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                return words[1].rstrip("/")
    return DEFAULT_MIRROR


def debootstrapped(
    client: docker.DockerClient,
    suite: str,
    packages: tuple[str, ...],
    repository: str,
    mirror: str,
) -> str:
    """Tag of a minbase Debian ``suite`` root with ``packages`` from the archive at
    ``mirror``, debootstrapped and imported as ``repository`` if the engine lacks it."""
    recipe = f"{suite} minbase {','.join(packages)} {mirror}"
    tag = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    reference = f"{repository}:{tag}"
    try:
        client.images.get(reference)
    except docker.errors.ImageNotFound:
        pass
    else:
        return reference
    if os.geteuid() != 0:
        raise Unavailable("debootstrap needs root to make the stand-in build root")
    if shutil.which("debootstrap") is None:
        raise Unavailable("debootstrap is not installed (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(prefix="xdb-root-", dir="/var/tmp") as work:
        root = Path(work) / "root"
        proc.run(
            [
                "debootstrap",
                "--variant=minbase",
                *([f"--include={','.join(packages)}"] if packages else []),
                suite,
                root,
                mirror,
            ],
            timeout=1800,
        )
        archive = Path(work) / "root.tar"
        proc.run(["tar", "-C", root, "--numeric-owner", "-cf", archive, "."], timeout=600)
        client.api.import_image_from_file(str(archive), repository=repository, tag=tag)
    return reference
