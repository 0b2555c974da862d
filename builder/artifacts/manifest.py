"""The artifact contract between the build stage and publishing: one directory per finished
build, ``artifacts/<target>/<build name>/``, holding its RPMs, ``build.log`` and
``manifest.json``.

A build is made in ``<build name>.partial/`` and renamed into place only after its checks
passed and its manifest was written (:func:`put_in_place`), so a directory without the suffix
is finished; :func:`scan` reads only those.  The manifest records the build's inputs with their
sha256, the image, the commands, and every output with its sha256 (:func:`write`); publishing
takes the outputs' names and digests from it (:class:`Manifest`), and the provenance statement
carries it as written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from builder import log
from builder.errors import ConfigError, InputError
from builder.files import write_atomic
from builder.specs import SAFE_NAME, Consumer, Registry

MANIFEST = "manifest.json"
BUILD_LOG = "build.log"
PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """One finished build as its manifest describes it: ``artifacts/<target>/<build name>/``
    (the build name is the DRBD version, or ``<version>+k<kernel-devel version-release>`` for
    a target built per kernel)."""

    target: str
    drbd_version: str
    build_name: str  # the directory's name: the DRBD version, or <version>+k<kernel>
    consumer: Consumer
    basearch: str
    directory: Path
    listed: Any = field(default=None, repr=False)  # "outputs" as manifest.json lists them
    manifest: bytes = b""  # manifest.json as written, for the provenance statement
    sha256: str = ""  # of those bytes: the same build, wherever its directory was copied to

    @cached_property
    def outputs(self) -> tuple[tuple[str, str], ...]:
        """(RPM file name, sha256 from the manifest) of every RPM output, checked on first use.

        Not when the manifest is read: a build publish already holds is never looked into, so
        a publish with nothing new costs the same for a build of four packages or of 4,000.
        """
        return _rpm_outputs(self.directory / MANIFEST, self.listed)


def _manifest_error(manifest: Path, problem: str) -> InputError:
    return InputError(
        f"{manifest}: {problem}",
        hint="Rebuild this target with `python -m builder build`, or move the directory aside.",
    )


def load(manifest: Path) -> tuple[bytes, dict[str, Any]]:
    try:
        raw = manifest.read_bytes()
        data = json.loads(raw)
    except OSError as exc:
        raise _manifest_error(manifest, f"cannot read: {exc.strerror}") from exc
    except ValueError as exc:
        raise _manifest_error(manifest, f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise _manifest_error(manifest, "must be a JSON object")
    return raw, data


def read(
    directory: Path,
    registry: Callable[[], Registry],
    loaded: tuple[bytes, dict[str, Any]] | None = None,
) -> Manifest:
    """The finished build in ``directory``, its manifest checked (its outputs when first used;
    ``loaded``: the manifest as :func:`load` read it already)."""
    manifest = directory / MANIFEST
    raw, data = loaded if loaded is not None else load(manifest)
    target = data.get("target") or directory.parent.name
    version = data.get("drbd_version") or directory.name
    build_name = data.get("build_name") or version
    for what, name in (("target", target), ("drbd_version", version), ("build_name", build_name)):
        if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
            raise _manifest_error(manifest, f"{what} {name!r} is not a plain name")
    consumer_value = data.get("consumer")
    basearch = data.get("basearch")
    if consumer_value is None or basearch is None:
        # Older manifests: the target registry knows the consumer and $basearch.
        known = registry().target(str(target))
        consumer_value = consumer_value or known.consumer.value
        basearch = basearch or known.basearch
    try:
        consumer = Consumer(consumer_value)
    except ValueError:
        valid = ", ".join(c.value for c in Consumer)
        raise _manifest_error(
            manifest, f"consumer {consumer_value!r} is not one of {valid}"
        ) from None
    if not isinstance(basearch, str) or not SAFE_NAME.fullmatch(basearch):
        raise _manifest_error(manifest, f"basearch {basearch!r} is not a plain name")
    return Manifest(
        target=str(target),
        drbd_version=str(version),
        build_name=str(build_name),
        consumer=consumer,
        basearch=basearch,
        directory=directory,
        listed=data.get("outputs"),
        manifest=raw,
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def _rpm_outputs(manifest: Path, outputs: Any) -> tuple[tuple[str, str], ...]:
    """(file name, sha256) of every RPM the manifest lists as an output."""
    if not isinstance(outputs, list):
        raise _manifest_error(manifest, "outputs must be a list of {file, sha256}")
    found: list[tuple[str, str]] = []
    for index, entry in enumerate(outputs):
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise _manifest_error(manifest, f"outputs[{index}] needs a file name")
        name = entry["file"]
        if not name.endswith(".rpm"):
            continue
        if "/" in name or not SAFE_NAME.fullmatch(name):
            raise _manifest_error(manifest, f"outputs[{index}].file {name!r} is not a plain name")
        digest = entry.get("sha256")
        if not isinstance(digest, str) or len(digest) != 64:
            raise _manifest_error(manifest, f"outputs[{index}].sha256 is missing or malformed")
        found.append((name, digest.lower()))
    return tuple(found)


def scan(artifacts: Path, registry: Callable[[], Registry]) -> list[Manifest]:
    """Finished builds under ``artifacts/<target>/<build name>/``; unfinished ones are
    skipped."""
    if not artifacts.is_dir():
        raise ConfigError(f"Artifacts directory {artifacts} does not exist.")
    builds: list[Manifest] = []
    for target_dir in sorted(p for p in artifacts.iterdir() if p.is_dir()):
        if target_dir.name.startswith("."):
            continue
        for build_dir in sorted(p for p in target_dir.iterdir() if p.is_dir()):
            where = build_dir.relative_to(artifacts)
            if build_dir.name.endswith(PARTIAL_SUFFIX):
                log.warn(f"skipping {where}: an unfinished build (*.partial)")
                continue
            if not (build_dir / MANIFEST).is_file():
                log.warn(f"skipping {where}: no manifest.json, so not a finished build")
                continue
            loaded = load(build_dir / MANIFEST)
            recorded = loaded[1].get("build_name") or loaded[1].get("drbd_version")
            if isinstance(recorded, str) and recorded and recorded != build_dir.name:
                # The build stage moves a finished build aside as <name>.old-<pid> before
                # putting the new one in place; an interrupt can leave that copy behind.
                log.warn(
                    f"skipping {where}: its manifest.json is for the build {recorded}, so it "
                    "is a leftover or a copy, not a finished build"
                )
                continue
            builds.append(read(build_dir, registry, loaded))
    return builds


def write(directory: Path, record: dict[str, Any]) -> None:
    """``directory/manifest.json``, written atomically."""
    write_atomic(directory / MANIFEST, (json.dumps(record, indent=2) + "\n").encode())


def partial_of(final: Path) -> Path:
    """Where the build of ``final`` is made until it is finished."""
    return final.with_name(f"{final.name}{PARTIAL_SUFFIX}")


def put_in_place(partial: Path, final: Path) -> None:
    """Put a finished ``partial`` in place of ``final``; a stale ``final`` is moved aside first."""
    old = final.with_name(f"{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    shutil.rmtree(old, ignore_errors=True)


def recover(final: Path) -> None:
    """Undo what a run killed between the two renames of :func:`put_in_place` left behind."""
    for old in sorted(final.parent.glob(f"{final.name}.old-*")):
        if not final.exists() and (old / MANIFEST).is_file():
            os.replace(old, final)
        else:
            shutil.rmtree(old, ignore_errors=True)
