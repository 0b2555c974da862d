"""What a publish changes: the builds' packages that are new, each checked against its
manifest and against what the repository already holds under its name.

Nothing is signed or written here: :func:`changes_of` decides, and refuses a package that would
replace a published one, before the publisher touches the repository.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from builder import proc, signatures
from builder.artifacts import manifest
from builder.artifacts.manifest import Manifest
from builder.errors import InputError, PublishError
from builder.files import sha256_file
from builder.publish.layout import family_path
from builder.publish.store import Entry
from builder.specs import Consumer


def query_nevras(files: Sequence[Path]) -> dict[Path, str]:
    """name-epoch:version-release.arch of each RPM, read from its header."""
    found: dict[Path, str] = {}
    fmt = r"%{NAME}-%{EPOCHNUM}:%{VERSION}-%{RELEASE}.%{ARCH}\n"
    # A missing rpm program is the host's problem (CommandError), not a bad input file.
    rpm = proc.which("rpm", hint="Install rpm: apt-get install rpm")
    for chunk in signatures.chunks(files):
        # --nomanifest: a text file listed as an RPM is an error, not a list of more packages.
        cmd: list[str | os.PathLike[str]] = [
            rpm, "-qp", "--nomanifest", "--nosignature", "--nodigest",
        ]  # fmt: skip
        cmd += ["--qf", fmt, *chunk]
        result = proc.run(cmd, echo=False, check=False)
        if result.returncode != 0:
            raise InputError(
                f"Cannot read an RPM header (rpm -qp exited with {result.returncode}).\n"
                f"{proc.tail(result.stdout + result.stderr)}".rstrip(),
                hint="An artifact is not a valid RPM; rebuild it.",
            )
        lines = result.stdout.splitlines()
        if len(lines) != len(chunk):
            raise InputError(f"rpm printed {len(lines)} headers for {len(chunk)} packages.")
        found.update(zip(chunk, lines, strict=True))
    return found


@dataclass(frozen=True, kw_only=True)
class Published:
    """What the live version holds: its key and every package in the store's index."""

    key: str
    packages: Sequence[Entry]


@dataclass(frozen=True, kw_only=True)
class Incoming:
    """A package from the artifacts that the repository does not hold yet."""

    source: Path
    source_sha256: str
    nevra: str
    family: str
    consumer: Consumer
    build: Manifest

    @property
    def path(self) -> str:
        return f"{self.family}/{self.source.name}"


@dataclass(frozen=True, kw_only=True)
class Changes:
    """What a publish changes: the new packages, on top of those already published."""

    incoming: tuple[Incoming, ...]
    published: Sequence[Entry]
    families: dict[str, Consumer] = field(default_factory=dict)  # every family in the new version

    @property
    def changed_families(self) -> set[str]:
        return {item.family for item in self.incoming}

    @property
    def total(self) -> int:
        return len(self.published) + len(self.incoming)


Candidate = tuple[Path, str, Manifest]  # an output not published yet: file, sha256, build


def changes_of(
    builds: Sequence[Manifest],
    previous: Published | None,
    key_fingerprint: str,
    nevras: Callable[[Sequence[Path]], dict[Path, str]] = query_nevras,
    digest: Callable[[Path], str] = sha256_file,
) -> Changes:
    """Decide which inputs are new; refuse a known name-version-release with other content.

    An output whose manifest records the digest already published under its name is not
    read at all: nothing of it would be used.  Only new outputs are hashed.
    """
    if previous is not None and previous.key != key_fingerprint:
        raise PublishError(
            f"The repository is signed with key {previous.key}; refusing to mix in packages "
            f"signed with {key_fingerprint}.",
            hint="Publish with the repository's key, or start a new --repo directory.",
        )
    by_path = {p.path: p for p in previous.packages} if previous else {}
    candidates = _new_outputs(builds, by_path, digest)
    new_sources = [source for source, _, _ in candidates.values()]
    nevra_of = nevras(new_sources) if new_sources else {}
    incoming = _named(candidates, nevra_of, by_path)
    published = list(by_path.values())
    families: dict[str, Consumer] = {}
    if incoming:  # the families of the new version; nothing to make without new packages
        names = {p.path.rsplit("/", 1)[0] for p in published}
        families = {f: Consumer(f.split("/", 1)[0]) for f in names}
        families.update({item.family: item.consumer for item in incoming})
    return Changes(incoming=tuple(incoming), published=published, families=families)


def _new_outputs(
    builds: Sequence[Manifest], by_path: dict[str, Entry], digest: Callable[[Path], str]
) -> dict[str, Candidate]:
    """The outputs not published yet, by store path, each checked against its manifest."""
    candidates: dict[str, Candidate] = {}
    for build in builds:
        family = family_path(build.consumer, build.basearch)
        for name, manifest_sha in build.outputs:
            path = f"{family}/{name}"
            known = by_path.get(path)
            if known is not None and known.source_sha256 == manifest_sha:
                continue
            source = build.directory / name
            if not source.is_file():
                raise InputError(
                    f"{source} is listed in {build.directory / manifest.MANIFEST} but missing."
                )
            actual = digest(source)
            if actual != manifest_sha:
                raise InputError(
                    f"{source} has sha256 {actual}, but its manifest records {manifest_sha}.",
                    hint="The artifact changed after the build; rebuild it.",
                )
            seen = candidates.get(path)
            if seen is not None and seen[1] != actual:
                raise PublishError(
                    f"{source} and {seen[0]} have the same name but different content; both "
                    f"would be published as {path}."
                )
            if known is not None:
                raise PublishError(
                    f"{path} is already published with different content "
                    f"(sha256 {known.source_sha256}, now {actual}).",
                    hint="Never replace a package under the same name-version-release: "
                    "bump the release and rebuild.",
                )
            candidates[path] = (source, actual, build)
    return candidates


def _named(
    candidates: dict[str, Candidate], nevra_of: dict[Path, str], by_path: dict[str, Entry]
) -> list[Incoming]:
    """The new packages with their name-epoch:version-release.arch, none of which a family
    holds yet, and no two of them the same."""
    # Only new packages are looked up: a publish with nothing new skips the index.
    published = {(p.family, p.nevra): p for p in by_path.values()} if candidates else {}
    incoming: list[Incoming] = []
    claimed: dict[tuple[str, str], Path] = {}
    for source, actual, build in candidates.values():
        nevra = nevra_of[source]
        family = family_path(build.consumer, build.basearch)
        other = published.get((family, nevra))
        if other is not None:
            raise PublishError(
                f"{source.name} is {nevra}, which {family} already holds as {other.path} "
                "with different content.",
                hint="Bump the release and rebuild instead of replacing a published package.",
            )
        twin = claimed.get((family, nevra))
        if twin is not None:
            raise PublishError(f"{source} and {twin} are both {nevra} with different content.")
        claimed[(family, nevra)] = source
        incoming.append(
            Incoming(
                source=source,
                source_sha256=actual,
                nevra=nevra,
                family=family,
                consumer=build.consumer,
                build=build,
            )
        )
    return incoming


def settled_key(build: Manifest) -> str:
    """How ``.settled`` names a build: its manifest's digest and the family it goes to."""
    return f"{build.sha256} {family_path(build.consumer, build.basearch)}"
