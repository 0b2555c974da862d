"""OpenPGP checks against one public key, never a user's keyring: whose key signed a detached
signature (``gpgv``), which primary keys a key file holds, and rpm's verdict on packages
(``rpmkeys`` with a throwaway database that holds only that key).  Also what an RPM's
signature tags hold (``read_signatures``): rpm's description and the OpenPGP packet's version
and algorithms, which decide whether a consumer's rpm can verify it.

Every stage uses these: the kernel source's vendor signatures (inputs), the repository the
tool publishes and ``verify`` (publish).
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from builder import proc
from builder.errors import CommandError, SigningError

FILES_PER_CALL = 400  # files per rpmkeys call: keeps argv well under the kernel's limit


def gpg() -> str:
    return proc.which("gpg", hint="Install GnuPG: apt-get install gnupg gpg-agent")


def chunks(files: Sequence[Path], size: int = FILES_PER_CALL) -> Iterator[Sequence[Path]]:
    for start in range(0, len(files), size):
        yield files[start : start + size]


def key_file_fingerprints(public_key: Path) -> list[str]:
    """Fingerprints of the primary keys in an armored (or binary) key file."""
    with tempfile.TemporaryDirectory(prefix="xdb-showkey-") as tmp:
        result = proc.run(
            [gpg(), "--homedir", tmp, "--batch", "--with-colons", "--show-keys", public_key],
            echo=False,
            check=False,
        )
    found: list[str] = []
    primary = False
    for line in result.stdout.splitlines():
        fields = line.split(":")
        if fields[0] in ("pub", "sub"):
            primary = fields[0] == "pub"
        elif fields[0] == "fpr" and primary and len(fields) > 9:
            found.append(fields[9])
            primary = False
    return found


@dataclass(frozen=True)
class Verdict:
    """What ``gpgv`` said about one detached signature."""

    good: bool
    signer: str | None  # the fingerprint (good) or key id (unknown key) that made it
    detail: str  # gpgv's own words, for messages


def check_detached(file: Path, signature: Path, public_key: Path) -> Verdict:
    """``gpgv`` with a keyring that holds only ``public_key``: who signed ``file``."""
    with tempfile.TemporaryDirectory(prefix="xdb-gpgv-") as tmp:
        keyring = Path(tmp) / "keyring.gpg"
        proc.run(
            [gpg(), "--homedir", tmp, "--batch", "--dearmor", "--output", keyring, public_key],
            echo=False,
        )
        result = proc.run(
            ["gpgv", "--homedir", tmp, "--status-fd", "1", "--keyring", keyring, signature, file],
            echo=False,
            check=False,
        )
    status = [
        line.split()[1:] for line in result.stdout.splitlines() if line.startswith("[GNUPG:] ")
    ]
    signer = None
    for words in status:
        if words[0] == "VALIDSIG" and len(words) > 1:
            signer = words[-1] if len(words) >= 10 else words[1]  # the primary key's fingerprint
        elif words[0] in ("ERRSIG", "NO_PUBKEY", "BADSIG") and len(words) > 1 and signer is None:
            signer = words[1]
    good = result.returncode == 0 and any(words[0] == "VALIDSIG" for words in status)
    return Verdict(good, signer, proc.tail(result.stderr).strip())


@contextlib.contextmanager
def _rpm_database(public_key: Path) -> Iterator[str]:
    """A throwaway rpm database that knows ``public_key`` and no other key."""
    with tempfile.TemporaryDirectory(prefix="xdb-rpmdb-") as dbpath:
        try:
            proc.run(["rpmkeys", "--dbpath", dbpath, "--import", public_key], echo=False)
        except CommandError as exc:
            raise SigningError(f"rpmkeys could not import {public_key}.\n{exc.message}") from exc
        yield dbpath


def checksig(files: Sequence[Path], public_key: Path) -> dict[Path, str]:
    """rpmkeys' verdict on each file, against a throwaway rpm database holding only the key."""
    verdicts: dict[Path, str] = {}
    if not files:
        return verdicts
    with _rpm_database(public_key) as dbpath:
        for chunk in chunks(files):
            result = proc.run(
                ["rpmkeys", "--dbpath", dbpath, "--checksig", *chunk], echo=False, check=False
            )
            said = dict(line.rsplit(": ", 1) for line in result.stdout.splitlines() if ": " in line)
            for path in chunk:
                verdict = said.get(str(path), "no answer from rpmkeys")
                good = "signatures OK" in verdict and "NOT OK" not in verdict
                verdicts[path] = "OK" if good else verdict
            if result.returncode != 0 and all(verdicts[p] == "OK" for p in chunk):
                raise SigningError(f"rpmkeys --checksig failed:\n{proc.tail(result.stderr)}")
    return verdicts


SIGNATURE_LINE = re.compile(r"^\s*(Header )?V\d \S+ Signature, key ID ([0-9a-f]+): (.*)$")


@dataclass(frozen=True)
class RpmSignatures:
    """rpmkeys -Kv on one package: its header and header+payload signatures."""

    header: str | None  # "OK", "NOKEY", "BAD"…; None: no header signature
    whole: str | None  # the header+payload signature's verdict; None: none
    key_ids: tuple[str, ...]  # the key ids the signatures name
    digests_ok: bool

    @property
    def good(self) -> bool:
        return self.header == "OK" and self.whole in ("OK", None) and self.digests_ok


def rpm_signatures(path: Path, public_key: Path) -> RpmSignatures:
    """What ``rpmkeys --checksig -v`` says of ``path`` with only ``public_key`` known.

    rpm 4.14 and later sign the header only (the header holds the payload's digest); older
    rpmsign writes a header+payload signature too, which must then also verify.
    """
    with _rpm_database(public_key) as dbpath:
        result = proc.run(
            ["rpmkeys", "--dbpath", dbpath, "--checksig", "-v", path], echo=False, check=False
        )
    header = whole = None
    key_ids: list[str] = []
    digests_ok = True
    for line in result.stdout.splitlines():
        match = SIGNATURE_LINE.match(line)
        if match:
            verdict = match.group(3).strip()
            key_ids.append(match.group(2))
            if match.group(1):
                header = verdict
            else:
                whole = verdict
        elif "digest:" in line and not line.rstrip().endswith(": OK"):
            digests_ok = False
    return RpmSignatures(header, whole, tuple(dict.fromkeys(key_ids)), digests_ok)


# RFC 4880 numbers, for messages.
PUBKEY_ALGOS = {1: "RSA", 3: "RSA(sign-only)", 17: "DSA", 19: "ECDSA", 22: "EdDSA"}
HASH_ALGOS = {1: "MD5", 2: "SHA1", 3: "RIPEMD160", 8: "SHA256", 9: "SHA384", 10: "SHA512"}


# Signature header tags 268 and 267 (RSA, DSA: header only), 1002 and 1005 (PGP, GPG: header
# and payload), by the names rpm --queryformat knows them under.
SIGNATURE_TAGS = ("RSAHEADER", "DSAHEADER", "SIGPGP", "SIGGPG")


@dataclass(frozen=True, kw_only=True)
class SignaturePacket:
    """The fields of an OpenPGP signature packet that decide whether a consumer can verify it."""

    version: int
    pubkey_algo: int  # RFC 4880: 1 RSA, 17 DSA
    hash_algo: int  # RFC 4880: 2 SHA-1, 8 SHA-256

    def describe(self) -> str:
        algo = PUBKEY_ALGOS.get(self.pubkey_algo, f"algorithm {self.pubkey_algo}")
        digest = HASH_ALGOS.get(self.hash_algo, f"hash {self.hash_algo}")
        return f"V{self.version} {algo}/{digest}"


def parse_signature_packet(raw: bytes) -> SignaturePacket:
    """Read the version and algorithms of one OpenPGP signature packet (RFC 4880 5.2)."""
    if not raw or not raw[0] & 0x80:
        raise ValueError("not an OpenPGP packet")
    first = raw[0]
    if first & 0x40:  # new format: tag in the low six bits, then a one-, two- or five-octet length
        tag, offset = first & 0x3F, 1
        length_octet = raw[offset] if len(raw) > offset else 0
        offset += 1 if length_octet < 192 else 2 if length_octet < 224 else 5
    else:  # old format: tag in bits 5-2, length type in bits 1-0
        tag = (first >> 2) & 0x0F
        offset = 1 + {0: 1, 1: 2, 2: 4, 3: 0}[first & 0x03]
    if tag != 2:
        raise ValueError(f"packet tag {tag} is not a signature")
    body = raw[offset:]
    if body[:1] == b"\x03" and len(body) >= 17:
        # version, hashed length (5), type, time (4), key id (8), public-key and hash algorithms
        return SignaturePacket(version=3, pubkey_algo=body[15], hash_algo=body[16])
    if len(body) >= 4 and body[0] >= 4:
        return SignaturePacket(version=body[0], pubkey_algo=body[2], hash_algo=body[3])
    raise ValueError("truncated signature packet")


@dataclass(frozen=True, kw_only=True)
class Signature:
    """One signature tag of an RPM: rpm's description and the packet itself."""

    text: str  # rpm's ``:pgpsig`` view, e.g. "RSA/SHA1, <date>, Key ID <16 hex digits>"
    packet: SignaturePacket | None  # None when the tag is absent


def read_signatures(files: Sequence[Path]) -> dict[Path, dict[str, Signature]]:
    """The signature tags of each RPM: rpm's view (``RSA/SHA1, …, Key ID …``) and the packet."""
    query = "|".join(f"%{{{tag}:pgpsig}}|%{{{tag}}}" for tag in SIGNATURE_TAGS) + r"\n"
    found: dict[Path, dict[str, Signature]] = {}
    for chunk in chunks(files):
        result = proc.run(
            ["rpm", "-qp", "--nomanifest", "--nosignature", "--nodigest", "--qf", query, *chunk],
            echo=False,
        )
        lines = result.stdout.splitlines()
        if len(lines) != len(chunk):
            raise SigningError(f"rpm printed {len(lines)} lines for {len(chunk)} packages.")
        for path, line in zip(chunk, lines, strict=True):
            fields = line.split("|")
            if len(fields) != 2 * len(SIGNATURE_TAGS):
                raise SigningError(f"rpm printed an unexpected signature line for {path.name}.")
            sigs: dict[str, Signature] = {}
            for index, tag in enumerate(SIGNATURE_TAGS):
                text, raw = fields[2 * index], fields[2 * index + 1]
                packet = None
                if raw != "(none)":
                    try:
                        packet = parse_signature_packet(bytes.fromhex(raw))
                    except ValueError as exc:
                        raise SigningError(
                            f"{path.name}: the {tag} signature is not a valid OpenPGP "
                            f"signature packet ({exc})."
                        ) from None
                sigs[tag] = Signature(text=text, packet=packet)
            found[path] = sigs
    return found
