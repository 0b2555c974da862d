"""``verify``: audit a published repository end to end, as a careful client would.

Every check reads what clients are served (the stable names, links followed), never the
publisher's caches:

- ``current`` points at a complete version whose state names the signing key, and the key
  file served beside the repositories is that key (or the one given with ``--key-file``);
- each repository's ``repomd.xml.asc`` verifies with that key (for EL5 also as GnuPG 1.4,
  which yum 3 uses), and each metadata file ``repomd.xml`` lists has its recorded checksum;
- each package ``primary`` lists is there, with the size and checksum the metadata records,
  and rpm accepts its signature (for EL5: SHA-1 digests in version 3 packets, for rpm 4.4);
- the package index matches the version's record, lists exactly the packages the metadata
  does, with the digests they had when signed;
- each package's provenance statement is signed by the key and names the package, and its
  build manifest lists the package as an output;
- the stable names lead where publish made them lead.

Everything found is reported, not only the first problem.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from builder import log, signatures
from builder.errors import BuilderError, PublishError, VerifyError
from builder.publish import provenance, sign
from builder.publish.consumers import profile
from builder.publish.layout import KEY_FILE_NAME, repo_file_name
from builder.publish.store import STATE_FILE_NAME, STORE_DIR, State, Store, current_version
from builder.specs import Consumer

_DIGESTS: dict[str, Callable[[], hashlib._Hash]] = {
    "sha": hashlib.sha1,
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
}


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    packages: int = 0
    repositories: int = 0
    sha256: dict[str, str] = field(default_factory=dict)  # "family/file" -> digest read
    # "family/file" -> how its build's inputs were trusted (its provenance statement)
    trust: dict[str, dict[str, str]] = field(default_factory=dict)

    def problem(self, text: str) -> None:
        self.problems.append(text)


@dataclass(frozen=True)
class _Listed:
    family: str
    consumer: Consumer
    href: str
    served: Path
    checksum_type: str
    checksum: str
    size: int


def _digests(path: Path, kinds: set[str]) -> dict[str, str]:
    hashers = {kind: _DIGESTS[kind]() for kind in kinds}
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            for hasher in hashers.values():
                hasher.update(block)
    return {kind: hasher.hexdigest() for kind, hasher in hashers.items()}


def verify_repository(repo: Path, key_file: Path | None = None) -> Report:
    report = Report()
    try:
        live = current_version(repo)
    except PublishError as exc:
        report.problem(exc.message)
        return report
    if live is None:
        report.problem(f"{repo / 'current'} does not exist: nothing is published there.")
        return report
    try:
        state = State.from_file(live / STATE_FILE_NAME)
    except PublishError as exc:
        report.problem(exc.message)
        return report
    served_key = repo / KEY_FILE_NAME
    public_key = key_file or served_key
    _check_key(report, public_key, served_key, state.key)
    if report.problems:
        return report  # without the right key, no signature below means anything
    listed = list(_check_metadata(report, repo, live, public_key))
    _check_packages(report, listed, public_key)
    _check_index(report, repo, live, state, listed=listed, key=public_key)
    _check_links(report, repo, {item.consumer for item in listed})
    return report


def _check_key(report: Report, public_key: Path, served_key: Path, fingerprint: str) -> None:
    if not public_key.is_file():
        report.problem(f"The key file {public_key} is missing.")
        return
    found = signatures.key_file_fingerprints(public_key)
    if fingerprint not in found:
        report.problem(
            f"{public_key} holds {', '.join(found) or 'no key'}, but the repository is signed "
            f"with {fingerprint}."
        )
    if public_key != served_key:
        served = signatures.key_file_fingerprints(served_key) if served_key.is_file() else []
        if fingerprint not in served:
            report.problem(f"The served key file {served_key} is not the repository's key.")


def _check_metadata(report: Report, repo: Path, live: Path, public_key: Path) -> Iterator[_Listed]:
    import createrepo_c as cr

    for repomd in sorted(live.glob("*/*/repodata/repomd.xml")):
        folder = repomd.parent.parent
        family = folder.relative_to(live).as_posix()
        try:
            consumer = Consumer(family.split("/", 1)[0])
        except ValueError:
            report.problem(f"{folder} is not a repository publish makes.")
            continue
        report.repositories += 1
        with log.step(f"Verify {family}/repodata/repomd.xml and its metadata"):
            signature = repomd.with_name("repomd.xml.asc")
            try:
                sign.verify_detached(repomd, signature, public_key, consumer)
            except BuilderError as exc:
                report.problem(f"{family}: {exc.message}")
            try:
                records = list(cr.Repomd(str(repomd)).records)
            except Exception as exc:  # createrepo_c raises its own error type for bad XML
                report.problem(f"{repomd} cannot be parsed: {exc}.")
                continue
            primary = None
            for record in records:
                href = str(record.location_href or "")
                path = folder / href
                kind = str(record.checksum_type or "")
                if not href.startswith("repodata/") or "/" in href.removeprefix("repodata/"):
                    report.problem(f"{repomd} lists {href!r}, which is not in repodata/.")
                    continue
                if kind not in _DIGESTS:
                    report.problem(f"{repomd} uses the unknown checksum type {kind!r}.")
                    continue
                if not path.is_file():
                    report.problem(f"{family}/{href} is listed in repomd.xml but missing.")
                    continue
                actual = _digests(path, {kind})[kind]
                if actual != record.checksum:
                    report.problem(
                        f"{family}/{href} has {kind} {actual}; repomd.xml records "
                        f"{record.checksum}."
                    )
                    continue
                if record.type == "primary":
                    primary = path
            if primary is None:
                report.problem(f"{repomd} lists no usable primary metadata.")
                continue
            served_folder = repo / family
            for package in cr.PackageIterator(
                primary_path=str(primary), filelists_path=None, other_path=None
            ):
                href = str(package.location_href)
                yield _Listed(
                    family=family,
                    consumer=consumer,
                    href=href,
                    served=served_folder / href,
                    checksum_type=str(package.checksum_type),
                    checksum=str(package.pkgId),
                    size=int(package.size_package),
                )


def _check_packages(report: Report, listed: list[_Listed], public_key: Path) -> None:
    present: list[_Listed] = []
    with log.step(f"Check the digest of {len(listed)} package(s)"):
        for item in listed:
            where = f"{item.family}/{item.href}"
            if "/" in item.href or item.href in ("", ".", ".."):
                report.problem(f"{item.family}: primary lists {item.href!r}, not a plain name.")
                continue
            if not item.served.is_file():
                report.problem(f"{where} is listed in the metadata but cannot be fetched.")
                continue
            if item.checksum_type not in _DIGESTS:
                report.problem(f"{where}: unknown checksum type {item.checksum_type!r}.")
                continue
            size = item.served.stat().st_size
            digests = _digests(item.served, {item.checksum_type, "sha256"})
            actual = digests[item.checksum_type]
            if size != item.size or actual != item.checksum:
                report.problem(
                    f"{where} is not the file the metadata describes (size {size}, "
                    f"{item.checksum_type} {actual}; metadata: size {item.size}, "
                    f"{item.checksum})."
                )
                continue
            report.sha256[where] = digests["sha256"]  # matches the metadata: index next
            present.append(item)
    report.packages = len(listed)
    with log.step(f"Check the signature of {len(present)} package(s)"):
        verdicts = signatures.checksig([item.served for item in present], public_key)
        for item in present:
            if verdicts[item.served] != "OK":
                report.problem(f"{item.family}/{item.href}: {verdicts[item.served]}.")
        for consumer in sorted({item.consumer for item in present}):
            rules = profile(consumer)
            if rules.signature_packet is None:
                continue
            files = [item.served for item in present if item.consumer is consumer]
            for path, sigs in signatures.read_signatures(files).items():
                for tag, sig in sigs.items():
                    if sig.packet is not None and sig.packet.version != rules.signature_packet:
                        report.problem(
                            f"{consumer.value}: {path.name}: its {tag} signature is a "
                            f"{sig.packet.describe()} packet, which {rules.rpm} cannot verify."
                        )


def _check_index(
    report: Report, repo: Path, live: Path, state: State, *, listed: list[_Listed], key: Path
) -> None:
    if state.legacy:
        report.notes.append(
            f"{live.name} was published before the package store; the next publish moves its "
            "packages into it."
        )
        return
    store = Store(repo)
    try:
        entries = store.read(state.index)
    except PublishError as exc:
        report.problem(exc.message)
        return
    in_metadata = {f"{item.family}/{item.href}" for item in listed}
    indexed = {entry.path: entry for entry in entries}
    for path in sorted(in_metadata - set(indexed)):
        report.problem(f"{path} is in the metadata but not in the package index.")
    for path in sorted(set(indexed) - in_metadata):
        report.problem(f"{path} is in the package index but not in the metadata.")
    for entry in entries:
        actual = report.sha256.get(entry.path)
        if actual is not None and actual != entry.sha256:
            report.problem(
                f"{entry.path} has sha256 {actual}; it had {entry.sha256} when it was signed."
            )
    statements: dict[str, provenance.Statement] = {}
    for entry in entries:
        if not entry.provenance:
            report.notes.append(f"{entry.path} was published before provenance was recorded.")
            continue
        if entry.provenance not in statements:  # one signature check per statement
            statements[entry.provenance] = provenance.read(store.root / entry.provenance, key)
        name = entry.path.rsplit("/", 1)[1]
        statement = statements[entry.provenance]
        for problem in provenance.check(statement, name, entry.sha256, entry.source_sha256):
            report.problem(f"{entry.path}: {problem}.")
        report.trust[entry.path] = statement.trust
    strays = store.strays(entries)
    if strays:
        report.notes.append(
            f"{len(strays)} file(s) in {store.root} belong to no published version (left by an "
            f"interrupted publish; the next publish removes them): {', '.join(strays[:5])}"
        )


def _check_links(report: Report, repo: Path, consumers: set[Consumer]) -> None:
    wanted = {consumer.value: f"{STORE_DIR}/{consumer.value}" for consumer in consumers}
    wanted |= {KEY_FILE_NAME: f"current/{KEY_FILE_NAME}"}
    wanted |= {repo_file_name(c): f"current/{repo_file_name(c)}" for c in consumers}
    for name, target in sorted(wanted.items()):
        link = repo / name
        if not link.is_symlink():
            report.problem(f"{link} should be a link to {target}.")
        elif os.readlink(link) not in (target, f"current/{name}"):
            report.problem(f"{link} leads to {os.readlink(link)}, not {target}.")


def raise_for(report: Report, repo: Path) -> None:
    if report.problems:
        listing = "\n".join(f"  - {problem}" for problem in report.problems)
        raise VerifyError(
            f"{repo} failed verification: {len(report.problems)} problem(s)\n{listing}",
            hint="Republishing does not repair a changed package: restore the repository from "
            "a backup, or publish from the artifacts into a new --repo directory.",
        )
