"""Provenance: a signed statement per published build, tracing each package to its inputs.

At publish time each build that adds packages gets an in-toto Statement (v1): its subjects are
the signed packages as served (file name and sha256), its predicate the build's
``manifest.json`` (kernel, DRBD and drbd-utils sources with their sha256, the build image, the
commands, the unsigned outputs).  The statement is stored beside the packages, in
``REPO/packages/provenance/<target>/<version>/<digest>.intoto.json``, with a detached signature
by the repository key (``.asc``), and the package index records which statement covers each
package.  A consumer holding a package finds its statement with ``grep -rl <sha256>`` under
``REPO/provenance/`` and checks it with ``gpgv``; ``verify`` checks every one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import log
from builder.errors import SigningError
from builder.publish import sign
from builder.publish.changes import Incoming
from builder.publish.layout import PROVENANCE_DIR
from builder.specs import SAFE_NAME, Consumer

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "urn:xcp-drbd-builder:build-manifest:v1"
SUFFIX = ".intoto.json"


def statement(manifest: bytes, subjects: Sequence[tuple[str, str]], key_fingerprint: str) -> bytes:
    """The statement for packages ``subjects`` ((file name, signed sha256)) of one build."""
    data = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": digest}} for name, digest in subjects],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "manifest": json.loads(manifest),
            "manifestSha256": hashlib.sha256(manifest).hexdigest(),
            "signedBy": key_fingerprint,
        },
    }
    return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8")


def relative_path(target: str, version: str, body: bytes) -> str:
    """Where a statement lives under the store; names were checked as plain names."""
    if not (SAFE_NAME.fullmatch(target) and SAFE_NAME.fullmatch(version)):
        raise ValueError(f"{target!r}/{version!r} is not a plain target/version name")
    digest = hashlib.sha256(body).hexdigest()[:16]
    return f"{PROVENANCE_DIR}/{target}/{version}/{digest}{SUFFIX}"


# The inputs a manifest's "trust" names, in words; how an input was trusted is weak when it
# rests on neither a vendor signature nor a pin or lock (an operator should see those).
INPUT_NAMES = {
    "kernel_source": "kernel source",
    "kernel_rpm": "kernel-devel",
    "drbd_source": "DRBD",
    "utils_source": "drbd-utils",
}
WEAK_TRUST = ("first-use", "insecure", "unknown")


def weak(how: str) -> bool:
    """Whether an input trusted ``how`` (a manifest's "trust" value) rests on nothing strong."""
    return how.startswith(WEAK_TRUST)


def recorded_manifest(path: Path) -> dict[str, Any]:
    """The build manifest a statement carries, read without checking its signature (verify
    does that); a malformed statement is a ValueError or OSError."""
    data: Any = json.loads(path.read_bytes())
    if not isinstance(data, dict) or data.get("predicateType") != PREDICATE_TYPE:
        raise ValueError("not a statement publish writes")
    manifest = data["predicate"]["manifest"]
    if not isinstance(manifest, dict):
        raise ValueError("its predicate holds no manifest")
    return manifest


def signature_consumer(key: sign.SigningKey) -> Consumer:
    """SHA-256 signatures, except for a DSA-1024 key, which can only make SHA-1 ones."""
    return Consumer.EL5 if key.algorithm == "DSA" else Consumer.EL7


@dataclass
class Statement:
    """A statement as read back: what it says, and what is wrong with it as a whole."""

    problems: list[str]
    subjects: dict[str, str]  # package file name -> signed sha256
    outputs: dict[str, str]  # build output file name -> unsigned sha256
    # input -> how it was trusted (the manifest's "trust"; empty for builds made before it)
    trust: dict[str, str] = field(default_factory=dict)


def write_statements(
    store_root: Path, signed: Sequence[tuple[Incoming, Path, str]], key: sign.SigningKey
) -> tuple[dict[int, str], list[sign.Detached]]:
    """One statement per build with new packages (``signed``: each new package, its file in
    the store and that file's sha256), under ``store_root``: where each is, by build, and the
    files to sign apart with ``key`` before anything relies on them.
    """
    by_build: dict[int, list[tuple[Incoming, str]]] = {}
    for item, _, digest in signed:
        by_build.setdefault(id(item.build), []).append((item, digest))
    where: dict[int, str] = {}
    unsigned: list[sign.Detached] = []
    with log.step(f"Write the provenance of {len(by_build)} build(s)"):
        for build_id, items in by_build.items():
            build = items[0][0].build
            subjects = [(item.source.name, digest) for item, digest in items]
            body = statement(build.manifest, subjects, key.fingerprint)
            relative = relative_path(build.target, build.drbd_version, body)
            path = store_root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
            os.chmod(path, 0o644)
            unsigned.append(sign.Detached(path, signature_consumer(key), Consumer.EL7))
            where[build_id] = relative
    return where, unsigned


def read(path: Path, public_key: Path) -> Statement:
    """Check a statement's signature and form once; each package it covers is then looked up."""
    signature = path.with_name(path.name + ".asc")
    if not path.is_file() or not signature.is_file():
        return Statement([f"its provenance statement {path} or its signature is missing"], {}, {})
    problems: list[str] = []
    try:
        sign.verify_detached(path, signature, public_key, Consumer.EL7)
    except SigningError as exc:
        problems.append(f"its provenance statement does not verify: {exc.message}")
    try:
        data: Any = json.loads(path.read_bytes())
        subjects = {s["name"]: s["digest"]["sha256"] for s in data["subject"]}
        manifest = data["predicate"]["manifest"]
        outputs = {o["file"]: o["sha256"] for o in manifest["outputs"]}
        recorded = manifest.get("trust")
        trust = {str(k): str(v) for k, v in recorded.items()} if isinstance(recorded, dict) else {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problems.append(f"its provenance statement {path.name} is malformed ({exc})")
        return Statement(problems, {}, {})
    if data.get("_type") != STATEMENT_TYPE or data.get("predicateType") != PREDICATE_TYPE:
        problems.append(f"{path.name} is not a statement publish writes")
    return Statement(problems, subjects, outputs, trust)


def check(statement: Statement, name: str, signed_sha256: str, source_sha256: str) -> list[str]:
    """Problems with ``statement`` as the record of package ``name``."""
    if statement.problems:
        return statement.problems
    problems = []
    if statement.subjects.get(name) != signed_sha256:
        problems.append("its provenance statement does not name it with its sha256")
    if statement.outputs.get(name) != source_sha256:
        problems.append("the build manifest in its provenance statement does not list it")
    return problems
