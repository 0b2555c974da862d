"""Signing and signature checks with the host's GnuPG, rpmsign and rpmkeys.

The signing key lives in a GnuPG home on the host and never enters a build container.  Every
signature made here is read back and verified against a throwaway keyring or rpm database that
holds only the repository's public key, so a package that is unsigned, signed by another key or
signed with a digest the consumer cannot check is refused before anything is published.

Two consumer generations matter (see ``Consumer``): EL7's rpm checks V4 header signatures with
SHA-256; EL5's rpm 4.4 needs SHA-1 digests and also reads the legacy header+payload signature,
which ``rpmsign --rpmv3`` still writes.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from builder import proc
from builder.errors import CommandError, ConfigError, SigningError
from builder.specs import Consumer

# OpenPGP public-key algorithms rpm 4.4 can verify (RFC 4880: 1 = RSA, 17 = DSA).
RPM44_KEY_ALGOS = {"1": "RSA", "17": "DSA"}
TEST_KEY_UID = (
    "xcp-drbd-builder TEST signing key - not for production <test-signing@xcp-drbd-builder.invalid>"
)
CHUNK = 400  # files per rpmsign/rpmkeys call: keeps argv well under the kernel's limit

_PGPSIG = re.compile(r"^(?P<algo>[A-Z]+)/(?P<digest>[A-Z0-9]+), .*Key ID (?P<keyid>[0-9a-f]{16})$")


@dataclass(frozen=True, kw_only=True)
class SigningKey:
    """A secret key in a GnuPG home: the key (primary fingerprint) and the (sub)key that signs.

    ``fingerprint`` names the whole key: it is what gets exported for consumers and recorded in
    the published state.  ``signing_fingerprint`` is the primary itself or one of its signing
    subkeys; signatures carry its key id and ``algorithm`` is its algorithm.
    """

    fingerprint: str
    signing_fingerprint: str
    algorithm: str  # "RSA" or "DSA"
    gnupg_home: Path
    passphrase_file: Path | None = None

    @property
    def key_id(self) -> str:
        """The key id signatures carry: the signing (sub)key's."""
        return self.signing_fingerprint[-16:].lower()

    @property
    def is_subkey(self) -> bool:
        return self.signing_fingerprint != self.fingerprint

    @property
    def signer(self) -> str:
        """The signing (sub)key for gpg ``-u``; the ``!`` stops gpg from picking another one."""
        return f"{self.signing_fingerprint}!"


@dataclass(frozen=True, kw_only=True)
class _GpgKey:
    """One ``sec`` or ``ssb`` record of ``gpg --with-colons`` with its fingerprint."""

    fingerprint: str
    algorithm: str  # OpenPGP number, "1" = RSA
    created: int
    usable: bool  # valid (not expired, revoked, invalid, disabled) and its secret is present
    can_sign: bool


def _parse_secret_keys(colons: str) -> list[tuple[_GpgKey, list[_GpgKey]]]:
    """Primary keys with their subkeys from ``gpg --with-colons --list-secret-keys``."""
    blocks: list[tuple[_GpgKey, list[_GpgKey]]] = []
    pending: list[str] | None = None
    for line in colons.splitlines():
        fields = line.split(":")
        if fields[0] in ("sec", "ssb"):
            pending = fields + [""] * (15 - len(fields))
        elif fields[0] == "fpr" and pending is not None and len(fields) > 9:
            record, pending = pending, None
            caps = record[11]
            key = _GpgKey(
                fingerprint=fields[9],
                algorithm=record[3],
                created=int(record[5] or 0),
                # i/d/r/e: invalid, disabled, revoked, expired; "#": only a stub of the secret.
                usable=record[1] not in ("i", "d", "r", "e")
                and "D" not in caps
                and record[14] != "#",
                can_sign="s" in caps,  # lower case: this (sub)key's own capability
            )
            if record[0] == "sec":
                blocks.append((key, []))
            elif blocks:
                blocks[-1][1].append(key)
    return blocks


def _choose_signer(primary: _GpgKey, subkeys: list[_GpgKey], wanted: str) -> _GpgKey | None:
    """The (sub)key to sign with: one named explicitly, else the primary, else the newest."""
    named = wanted.upper().removeprefix("0X").rstrip("!")
    if re.fullmatch(r"[0-9A-F]{8,40}", named):
        for sub in subkeys:
            if sub.fingerprint.endswith(named) and sub.usable and sub.can_sign:
                return sub
    if primary.usable and primary.can_sign:
        return primary
    # Newest by creation time; of two made in the same second, the one listed (added) last.
    signing = [
        (sub.created, n, sub) for n, sub in enumerate(subkeys) if sub.usable and sub.can_sign
    ]
    return max(signing)[2] if signing else None


def find_key(key: str, gnupg_home: Path, passphrase_file: Path | None = None) -> SigningKey:
    """Resolve a key id, fingerprint or user id to exactly one secret key usable by rpm 4.4.

    The key signs with its primary when the primary can sign (rpm before 4.13 knows only
    primary keys), otherwise with its newest valid signing subkey, or with the subkey named.
    """
    if not gnupg_home.is_dir():
        raise ConfigError(
            f"GnuPG home {gnupg_home} does not exist.",
            hint="Pass --gnupg-home DIR (or set GNUPGHOME), or make a test key with "
            "`python -m builder keygen --gnupg-home DIR`.",
        )
    result = proc.run(
        [_gpg(), "--homedir", gnupg_home, "--batch", "--with-colons", "--list-secret-keys", key],
        echo=False,
        check=False,
    )
    blocks = _parse_secret_keys(result.stdout)
    if not blocks:
        raise ConfigError(
            f"No secret key {key!r} in GnuPG home {gnupg_home}.",
            hint="List keys with `gpg --homedir DIR --list-secret-keys`, or make a test key with "
            "`python -m builder keygen`.",
        )
    if len(blocks) > 1:
        found = ", ".join(primary.fingerprint for primary, _ in blocks)
        raise ConfigError(
            f"Key {key!r} matches {len(blocks)} secret keys ({found}); pass a full fingerprint."
        )
    primary, subkeys = blocks[0]
    signer = _choose_signer(primary, subkeys, key)
    if signer is None:
        raise ConfigError(
            f"Key {primary.fingerprint} has no usable signing key: its primary key cannot sign "
            "and no subkey with the signing capability is valid and has its secret part here.",
            hint="Add a signing subkey (`gpg --quick-add-key FPR rsa3072 sign`), or import its "
            "secret part into this GnuPG home.",
        )
    if signer.algorithm not in RPM44_KEY_ALGOS:
        which = "Subkey" if signer is not primary else "Key"
        raise ConfigError(
            f"{which} {signer.fingerprint} uses OpenPGP algorithm {signer.algorithm}; rpm 4.4 on "
            "EL5 dom0 can only verify RSA or DSA signatures.",
            hint="Use an RSA signing key (`python -m builder keygen` makes one for testing).",
        )
    return SigningKey(
        fingerprint=primary.fingerprint,
        signing_fingerprint=signer.fingerprint,
        algorithm=RPM44_KEY_ALGOS[signer.algorithm],
        gnupg_home=gnupg_home,
        passphrase_file=passphrase_file,
    )


def digest_for(consumer: Consumer) -> str:
    """The signature digest the consumer's rpm can verify."""
    return "sha1" if consumer is Consumer.EL5 else "sha256"


def default_gnupg_home() -> Path:
    return Path(os.environ.get("GNUPGHOME") or Path.home() / ".gnupg")


def _gpg() -> str:
    return proc.which("gpg", hint="Install GnuPG: apt-get install gnupg gpg-agent")


def _pinentry_args(key: SigningKey) -> list[str]:
    args = ["--batch", "--pinentry-mode", "loopback"]
    if key.passphrase_file is not None:
        if not key.passphrase_file.is_file():
            raise ConfigError(f"Passphrase file {key.passphrase_file} does not exist.")
        args += ["--passphrase-file", str(key.passphrase_file.absolute())]
    return args


def generate_test_key(gnupg_home: Path, *, name: str = TEST_KEY_UID) -> str:
    """Make an unprotected RSA-2048 signing key for local use and return its fingerprint."""
    gnupg_home.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(gnupg_home, 0o700)
    proc.run(
        [
            _gpg(),
            "--homedir",
            gnupg_home,
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--quick-gen-key",
            name,
            "rsa2048",
            "sign",
            "2y",
        ],
        error=CommandError,
    )
    result = proc.run(
        [_gpg(), "--homedir", gnupg_home, "--batch", "--with-colons", "--list-secret-keys", name],
        echo=False,
    )
    fingerprints = [line.split(":")[9] for line in result.stdout.splitlines() if line[:4] == "fpr:"]
    # Several runs with the same user id: the newest key is listed last.
    return fingerprints[-1]


def export_public_key(key: SigningKey) -> str:
    """The armored public key, as consumers import it (``gpgkey=``, ``rpm --import``)."""
    result = proc.run(
        [_gpg(), "--homedir", key.gnupg_home, "--batch", "--armor", "--export", key.fingerprint],
        echo=False,
    )
    if "BEGIN PGP PUBLIC KEY BLOCK" not in result.stdout:
        raise SigningError(f"gpg exported no public key for {key.fingerprint}.")
    return result.stdout


def _chunks(items: Sequence[Path]) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def sign_rpms(files: Sequence[Path], key: SigningKey, consumer: Consumer) -> None:
    """Sign ``files`` in place with rpmsign; EL5 gets SHA-1 and the header+payload signature."""
    if not files:
        return
    gpg = _gpg()
    rpmsign = proc.which("rpmsign", hint="Install rpm: apt-get install rpm")
    # rpm splits this macro like a shell would: quote paths that may hold spaces.
    extra = " ".join(shlex.quote(arg) for arg in _pinentry_args(key))
    # Debian's rpm points %__gpg at /usr/bin/gpg2, which does not exist: name gpg explicitly.
    cmd: list[str] = [
        rpmsign,
        "--addsign",
        "--define",
        f"__gpg {gpg}",
        "--define",
        f"_gpg_path {key.gnupg_home}",
        "--define",
        f"_gpg_name {key.signer}",
        "--define",
        f"_gpg_digest_algo {digest_for(consumer)}",
        "--define",
        f"_gpg_sign_cmd_extra_args {extra}",
    ]
    if consumer is Consumer.EL5:
        cmd.append("--rpmv3")
    for chunk in _chunks(files):
        try:
            proc.run([*cmd, *chunk], env={"GNUPGHOME": str(key.gnupg_home)}, echo=False)
        except CommandError as exc:
            raise SigningError(
                f"rpmsign could not sign {len(chunk)} package(s) with key "
                f"{key.signing_fingerprint}.\n"
                f"{exc.message}",
                hint="Check that the key is usable without a prompt (--passphrase-file) and "
                "that gpg-agent allows loopback pinentry.",
            ) from exc


def read_signatures(files: Sequence[Path]) -> dict[Path, dict[str, str]]:
    """The signature tags of each RPM as rpm prints them (``RSA/SHA1, …, Key ID …``)."""
    tags = ("RSAHEADER", "DSAHEADER", "SIGPGP", "SIGGPG")
    query = "|".join(f"%{{{tag}:pgpsig}}" for tag in tags) + r"\n"
    found: dict[Path, dict[str, str]] = {}
    for chunk in _chunks(files):
        result = proc.run(
            ["rpm", "-qp", "--nosignature", "--nodigest", "--qf", query, *chunk], echo=False
        )
        lines = result.stdout.splitlines()
        if len(lines) != len(chunk):
            raise SigningError(f"rpm printed {len(lines)} lines for {len(chunk)} packages.")
        for path, line in zip(chunk, lines, strict=True):
            found[path] = dict(zip(tags, line.split("|"), strict=True))
    return found


def check_signatures(files: Sequence[Path], key: SigningKey, consumer: Consumer) -> None:
    """Refuse any RPM whose signatures are missing, by another key, or with the wrong digest."""
    want_digest = digest_for(consumer).upper()
    header_tag = "RSAHEADER" if key.algorithm == "RSA" else "DSAHEADER"
    legacy_tag = "SIGPGP" if key.algorithm == "RSA" else "SIGGPG"
    required = [header_tag] + ([legacy_tag] if consumer is Consumer.EL5 else [])
    for path, sigs in read_signatures(files).items():
        for tag in required:
            match = _PGPSIG.match(sigs[tag])
            if match is None:
                raise SigningError(f"{path.name} has no {tag} signature (rpm shows {sigs[tag]!r}).")
            if match["keyid"] != key.key_id:
                raise SigningError(
                    f"{path.name} is signed by key {match['keyid']}, not {key.key_id}."
                )
            if match["digest"] != want_digest:
                raise SigningError(
                    f"{path.name}: {tag} signature uses {match['digest']}; the {consumer.value} "
                    f"consumer needs {want_digest}."
                )


@contextlib.contextmanager
def public_key_file(key: SigningKey) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="xdb-pubkey-") as tmp:
        path = Path(tmp) / "key.asc"
        path.write_text(export_public_key(key), encoding="ascii")
        yield path


def verify_rpms(files: Sequence[Path], public_key: Path) -> None:
    """``rpmkeys --checksig`` against a throwaway rpm database holding only ``public_key``."""
    if not files:
        return
    with tempfile.TemporaryDirectory(prefix="xdb-rpmdb-") as dbpath:
        try:
            proc.run(["rpmkeys", "--dbpath", dbpath, "--import", public_key], echo=False)
        except CommandError as exc:
            raise SigningError(f"rpmkeys could not import {public_key}.\n{exc.message}") from exc
        for chunk in _chunks(files):
            result = proc.run(
                ["rpmkeys", "--dbpath", dbpath, "--checksig", *chunk], echo=False, check=False
            )
            verdicts = dict(
                line.rsplit(": ", 1) for line in result.stdout.splitlines() if ": " in line
            )
            for path in chunk:
                verdict = verdicts.get(str(path), "no answer from rpmkeys")
                if "signatures OK" not in verdict or "NOT OK" in verdict:
                    raise SigningError(
                        f"Signature check failed for {path.name}: {verdict}.",
                        hint="Refusing to publish an unsigned or badly signed package.",
                    )
            if result.returncode != 0:
                raise SigningError(f"rpmkeys --checksig failed:\n{proc.tail(result.stderr)}")


def detach_sign(file: Path, key: SigningKey, consumer: Consumer) -> Path:
    """Write ``FILE.asc``, an armored detached signature (repo_gpgcheck), via a temp file."""
    target = file.with_name(file.name + ".asc")
    partial = file.with_name(file.name + ".asc.partial")
    try:
        proc.run(
            [
                _gpg(),
                "--homedir",
                key.gnupg_home,
                *_pinentry_args(key),
                "--yes",
                "--local-user",
                key.signer,
                "--digest-algo",
                digest_for(consumer),
                "--armor",
                "--detach-sign",
                "--output",
                partial,
                file,
            ],
            echo=False,
        )
    except CommandError as exc:
        partial.unlink(missing_ok=True)
        raise SigningError(f"gpg could not sign {file}.\n{exc.message}") from exc
    os.replace(partial, target)
    return target


def verify_detached(file: Path, signature: Path, public_key: Path) -> None:
    """``gpgv`` with a keyring that holds only ``public_key``."""
    with tempfile.TemporaryDirectory(prefix="xdb-gpgv-") as tmp:
        keyring = Path(tmp) / "keyring.gpg"
        proc.run(
            [_gpg(), "--homedir", tmp, "--batch", "--dearmor", "--output", keyring, public_key],
            echo=False,
        )
        result = proc.run(
            ["gpgv", "--homedir", tmp, "--keyring", keyring, signature, file],
            echo=False,
            check=False,
        )
        if result.returncode != 0:
            raise SigningError(
                f"The signature {signature.name} does not verify {file}:\n"
                f"{proc.tail(result.stderr)}"
            )
