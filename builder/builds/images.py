"""Build images from a build context, tagged by a sha256 of their content.

Images are tagged with a sha256 of their build context (every file's path, mode and content)
plus the build arguments, and reused while that hash is unchanged: editing a Dockerfile or
choosing another base image gives a new tag, rebuilding nothing else.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import docker
import docker.errors
import requests.exceptions

from builder import log
from builder.builds.container import LABEL
from builder.errors import DockerError

IMAGE_REPOSITORY = "xcp-drbd-builder"
# Files that never belong to an image's content (editor and VCS litter).
IGNORED_NAMES = frozenset({".git", "__pycache__", ".DS_Store"})


def context_hash(context: Path, build_args: Mapping[str, str] | None = None) -> str:
    """sha256 over the build context's files (path, executable bit, content) and build args."""
    if not (context / "Dockerfile").is_file():
        raise DockerError(f"Build context {context} has no Dockerfile.")
    digest = hashlib.sha256()
    for path in sorted(_context_files(context)):
        relative = path.relative_to(context).as_posix()
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            digest.update(f"link {relative} -> {os.readlink(path)}\0".encode())
            continue
        executable = "x" if mode & stat.S_IXUSR else "-"
        digest.update(f"file {relative} {executable}\0".encode())
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    for key, value in sorted((build_args or {}).items()):
        digest.update(f"arg {key}={value}\0".encode())
    return digest.hexdigest()


def _context_files(context: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(context):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_NAMES)
        for name in files:
            if name not in IGNORED_NAMES:
                yield Path(root) / name
        for name in dirs:
            if (Path(root) / name).is_symlink():
                yield Path(root) / name


def image_tag(
    name: str,
    context: Path,
    build_args: Mapping[str, str] | None = None,
    content_sha256: str | None = None,
) -> str:
    """The tag an image of ``context`` gets: its name and the content hash (given, when the
    caller hashed the context already)."""
    digest = content_sha256 or context_hash(context, build_args)
    return f"{IMAGE_REPOSITORY}/{name}:{digest[:16]}"


def build_image(
    client: docker.DockerClient,
    *,
    context: Path,
    name: str,
    build_args: Mapping[str, str] | None = None,
    log_file: Path | None = None,
    content_sha256: str | None = None,
) -> str:
    """Build ``context`` unless an image with its content tag exists; return the image id.

    ``content_sha256`` is :func:`context_hash` of ``context`` and ``build_args``, when known.
    """
    args = {k: v for k, v in (build_args or {}).items()}
    tag = image_tag(name, context, args, content_sha256)
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as exc:
        raise DockerError(f"Cannot look up image {tag}: {exc}") from exc
    else:
        log.info(f"image {tag} is up to date ({_short(image.id)})")
        return str(image.id)
    with log.step(f"Build image {tag} from {context}"):
        lines: list[str] = []
        sink: IO[str] | None = None
        try:
            if log_file is not None:
                log_file.parent.mkdir(parents=True, exist_ok=True)
                sink = log_file.open("w", encoding="utf-8")
            stream = client.api.build(
                path=str(context),
                tag=tag,
                buildargs=args,
                rm=True,
                forcerm=True,
                decode=True,
                labels={LABEL: "1"},
            )
            error = _read_build_output(stream, lines, sink)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise DockerError(f"Building image {tag} from {context} failed: {exc}") from exc
        finally:
            if sink is not None:
                sink.close()
        if error is not None:
            tail = "\n".join(lines[-20:])
            where = f"\nFull log: {log_file}" if log_file else ""
            raise DockerError(
                f"Building image {tag} from {context} failed: {error}\n{tail}{where}",
                hint="Check the Dockerfile and that its base image can be pulled "
                "(or name a local one with the target's container.image).",
            )
        try:
            image = client.images.get(tag)
        except docker.errors.DockerException as exc:
            raise DockerError(f"Image {tag} was built but cannot be found: {exc}") from exc
        log.info(f"image {tag} is {_short(image.id)}")
        return str(image.id)


def _read_build_output(
    stream: Iterable[dict[str, Any]], lines: list[str], sink: IO[str] | None
) -> str | None:
    """Collect the build's output lines; return its first error, if any.

    Reads to the end even after an error, so that the engine's response is released.
    """
    error = None
    for chunk in stream:
        text = chunk.get("stream") or chunk.get("status") or ""
        if text:
            lines.extend(text.rstrip("\n").splitlines())
            if sink is not None:
                sink.write(text if text.endswith("\n") else text + "\n")
        if "error" in chunk and error is None:
            error = str(chunk["error"]).strip()
    return error


def _short(image_id: str | None) -> str:
    return (image_id or "").removeprefix("sha256:")[:12]
