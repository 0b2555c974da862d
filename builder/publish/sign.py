"""Signing and signature checks with the host's GnuPG, rpmsign and rpmkeys.

The signing key lives in a GnuPG home on the host and never enters a build container.  Every
signature made here is read back and verified against a throwaway keyring or rpm database that
holds only the repository's public key, so a package that is unsigned, signed by another key or
signed with a digest the consumer cannot check is refused before anything is published.

Two consumer generations matter (see ``Consumer``). EL7's rpm checks V4 header signatures with
SHA-256. EL5's rpm 4.4 needs SHA-1 digests, reads the legacy header+payload signature (which
``rpmsign --rpmv3`` still writes), and verifies only OpenPGP *version 3* signature packets: its
``verifyRSASignature`` leaves out the V4 hash trailer (``#ifdef NOTYET`` in rpm 4.4.2.3), so
every V4 signature comes out BAD.  GnuPG 2.1 and later cannot make V3 signatures; GnuPG 1.4
(``gpg1``, Debian's ``gnupg1``) can, so EL5 packages are signed with ``gpg1
--force-v3-sigs`` from a copy of the key in a temporary GnuPG 1 home that lives only while
rpmsign runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

from builder import log, proc
from builder.artifacts.manifest import Manifest
from builder.errors import CommandError, ConfigError, SigningError
from builder.publish.consumers import profile
from builder.signatures import (
    check_detached,
    checksig,
    chunks,
    gpg,
    read_signatures,
)
from builder.specs import Consumer

# OpenPGP public-key algorithms rpm 4.4 can verify (RFC 4880: 1 = RSA, 17 = DSA).
RPM44_KEY_ALGOS = {"1": "RSA", "17": "DSA"}
GNUPG1_PACKAGE = "gnupg1"

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
    bits: int  # of the signing (sub)key
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
    bits: int
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
                bits=int(record[2] or 0),
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
    result = _gpg(gnupg_home, "--batch", "--with-colons", "--list-secret-keys", key, check=False)
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
    if passphrase_file is not None:
        _warn_if_readable_by_others(passphrase_file)
    return SigningKey(
        fingerprint=primary.fingerprint,
        signing_fingerprint=signer.fingerprint,
        algorithm=RPM44_KEY_ALGOS[signer.algorithm],
        bits=signer.bits,
        gnupg_home=gnupg_home,
        passphrase_file=passphrase_file,
    )


def _warn_if_readable_by_others(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # a missing file is reported where it is used
    if mode & 0o077:
        log.warn(
            f"passphrase file {path} can be read by other users (mode {mode & 0o777:o}); "
            f"`chmod 600 {path}` keeps the signing key's passphrase yours"
        )


def check_key_for(consumer: Consumer, key: SigningKey, targets: Sequence[str]) -> None:
    """Refuse a key whose signatures the consumer's rpm on the dom0s of ``targets`` could not
    verify.

    A repository its consumers cannot verify is worse than none: every package would be
    refused on the dom0, after publishing, instead of here.
    """
    rules = profile(consumer)
    name = consumer.value.upper()
    where = f"{name} dom0s ({', '.join(targets)})" if targets else f"{name} dom0s"
    rpm = rules.rpm
    if rules.primary_key_only and key.is_subkey:
        raise SigningError(
            f"Key {key.fingerprint} would sign with its subkey {key.signing_fingerprint}, "
            f"but {rpm} on {where} trusts only primary keys and would refuse every package "
            "as NOKEY.",
            hint="Sign with a key whose primary key can sign (for example one made by "
            "`python -m builder keygen`, or `gpg --quick-gen-key NAME rsa2048 sign`).",
        )
    if rules.key_bits is None:
        return
    low, high = rules.key_bits[key.algorithm]
    if not low <= key.bits <= high:
        allowed = f"{low}" if low == high else f"{low} to {high}"
        raise SigningError(
            f"Key {key.fingerprint} is {key.algorithm}-{key.bits}; {rpm} on {where} verifies "
            f"{key.algorithm} signatures only from keys of {allowed} bits"
            + (" (160-bit q, SHA-1)" if key.algorithm == "DSA" else "")
            + ".",
            hint="Sign with an RSA key of 2048 to 4096 bits whose primary key can sign (for "
            "example `gpg --quick-gen-key NAME rsa3072 sign`, or `python -m builder keygen`).",
        )


def check_signing_key(key: SigningKey, builds: Sequence[Manifest]) -> None:
    """Before the lock and before anything is signed: a host or key that cannot make the
    signatures a consumer's rpm verifies would publish a repository its dom0s refuse."""
    targets: dict[Consumer, set[str]] = {}
    for build in builds:
        targets.setdefault(build.consumer, set()).add(build.target)
    for consumer, names in sorted(targets.items()):
        check_key_for(consumer, key, sorted(names))
        if profile(consumer).v3_signatures:
            require_gpg1(sorted(names))
    if key.is_subkey:
        log.warn(
            f"signing with subkey {key.signing_fingerprint} of key {key.fingerprint}: rpm before "
            "4.13 trusts only primary keys; check that every consumer's rpm is newer"
        )


def gpg1() -> str:
    """GnuPG 1.4, the one GnuPG that still makes the V3 signatures EL5's rpm 4.4 verifies."""
    return proc.which(
        "gpg1",
        hint=f"Install GnuPG 1.4: apt-get install {GNUPG1_PACKAGE} (Debian's package "
        f"{GNUPG1_PACKAGE}; GnuPG 2.1 and later cannot make V3 signatures).",
    )


def require_gpg1(targets: Sequence[str]) -> str:
    """``gpg1``'s path, or an error saying why EL5 needs it and which package has it."""
    try:
        return gpg1()
    except CommandError as exc:
        raise CommandError(
            f"Signing for EL5 dom0s ({', '.join(targets)}) needs gpg1 (GnuPG 1.4), which is not "
            "installed or not on PATH: rpm 4.4 verifies only V3 signatures, and only GnuPG 1.4 "
            "still makes them. Nothing was signed.",
            hint=exc.hint,
        ) from None


def default_gnupg_home() -> Path:
    return Path(os.environ.get("GNUPGHOME") or Path.home() / ".gnupg")


def _gpg(
    home: Path, *args: str | os.PathLike[str], input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The host's gpg on the GnuPG home ``home``, without echo: how publish runs gpg."""
    return _gnupg(gpg(), home, args, input=input, check=check)


def _gpg1(
    home: Path, *args: str | os.PathLike[str], input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """GnuPG 1.4 on a GnuPG 1 home of its own, in batch mode, without echo."""
    return _gnupg(gpg1(), home, ("--batch", *args), input=input, check=check)


def _gnupg(
    program: str,
    home: Path,
    args: Sequence[str | os.PathLike[str]],
    *,
    input: str | None,
    check: bool,
) -> subprocess.CompletedProcess[str]:
    """gpg or gpg1 on the GnuPG home ``home``, output captured, without echo: the one place
    where signing runs either."""
    return proc.run([program, "--homedir", home, *args], input=input, echo=False, check=check)


def _pinentry_args(key: SigningKey) -> list[str]:
    args = ["--batch", "--pinentry-mode", "loopback"]
    if key.passphrase_file is not None:
        if not key.passphrase_file.is_file():
            raise ConfigError(f"Passphrase file {key.passphrase_file} does not exist.")
        args += ["--passphrase-file", str(key.passphrase_file.absolute())]
    return args


def export_public_key(key: SigningKey) -> str:
    """The armored public key, as consumers import it (``gpgkey=``, ``rpm --import``)."""
    result = _gpg(key.gnupg_home, "--batch", "--armor", "--export", key.fingerprint)
    if "BEGIN PGP PUBLIC KEY BLOCK" not in result.stdout:
        raise SigningError(f"gpg exported no public key for {key.fingerprint}.")
    return result.stdout


@contextlib.contextmanager
def gnupg1_home(key: SigningKey) -> Iterator[Path]:
    """A private GnuPG 1 home holding a copy of the key's primary secret key, removed on exit.

    GnuPG 2.1 and later keep secret keys in gpg-agent's own format, which GnuPG 1.4 cannot
    read: the key is exported in OpenPGP format (still protected by its passphrase, if it has
    one) and imported into a fresh home made by ``mkdtemp`` (mode 0700, a unique name).  Only
    the primary key is copied: it is the one that signs for EL5.  The armored key travels
    through pipes, never through a file of its own, and the home is removed in ``finally``.
    """
    gpg1()  # missing, it is reported before anything is exported
    home = Path(tempfile.mkdtemp(prefix="xdb-gnupg1-"))
    try:
        exported = _gpg(
            key.gnupg_home,
            *_pinentry_args(key),
            "--armor",
            "--export-secret-keys",
            f"{key.fingerprint}!",
            check=False,
        )
        if exported.returncode != 0 or "BEGIN PGP PRIVATE KEY BLOCK" not in exported.stdout:
            raise SigningError(
                f"gpg could not export the secret key {key.fingerprint} for GnuPG 1.4, which "
                f"makes the V3 signatures EL5 needs:\n{proc.tail(exported.stderr)}",
                hint="A protected key needs its passphrase: --passphrase-file FILE (or "
                "XDB_PASSPHRASE_FILE); check that gpg-agent allows loopback pinentry.",
            )
        imported = _gpg1(home, "--no-tty", "--import", input=exported.stdout, check=False)
        listed = _gpg1(
            home,
            "--with-colons",
            "--fingerprint",
            "--list-secret-keys",
            key.fingerprint,
            check=False,
        )
        if imported.returncode != 0 or f":{key.fingerprint}:" not in listed.stdout:
            raise SigningError(
                f"GnuPG 1.4 could not import the secret key {key.fingerprint}:\n"
                f"{proc.tail(imported.stderr)}",
                hint="GnuPG 1.4 knows RSA and DSA keys only; sign EL5 packages with an RSA key.",
            )
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _gpg1_args(key: SigningKey) -> list[str]:
    """gpg1's options under rpmsign: no prompt, V3 packets; --passphrase-file needs no agent."""
    args = ["--batch", "--no-tty", "--force-v3-sigs"]
    if key.passphrase_file is not None:
        if not key.passphrase_file.is_file():
            raise ConfigError(f"Passphrase file {key.passphrase_file} does not exist.")
        args += ["--passphrase-file", str(key.passphrase_file.absolute())]
    return args


def sign_rpms(files: Sequence[Path], key: SigningKey, consumer: Consumer) -> None:
    """Sign ``files`` in place with rpmsign.

    As the consumer's profile says: EL7, V4 signatures with SHA-256 made by gpg; EL5, V3
    signatures with SHA-1 made by gpg1, in both the header-only and the header+payload
    signature (``--rpmv3``).
    """
    if not files:
        return
    if profile(consumer).v3_signatures:
        with gnupg1_home(key) as home:
            _rpmsign(files, key, gpg=gpg1(), home=home, extra=_gpg1_args(key), consumer=consumer)
    else:
        _rpmsign(
            files,
            key,
            gpg=gpg(),
            home=key.gnupg_home,
            extra=_pinentry_args(key),
            consumer=consumer,
        )


def _rpmsign(
    files: Sequence[Path],
    key: SigningKey,
    *,
    gpg: str,
    home: Path,
    extra: Sequence[str],
    consumer: Consumer,
) -> None:
    rpmsign = proc.which("rpmsign", hint="Install rpm: apt-get install rpm")
    # rpm splits this macro like a shell would: quote paths that may hold spaces.
    extra_args = " ".join(shlex.quote(arg) for arg in extra)
    # Debian's rpm points %__gpg at /usr/bin/gpg2, which does not exist: name gpg explicitly.
    cmd: list[str] = [
        rpmsign,
        "--addsign",
        "--define",
        f"__gpg {gpg}",
        "--define",
        f"_gpg_path {home}",
        "--define",
        f"_gpg_name {key.signer}",
        "--define",
        f"_gpg_digest_algo {profile(consumer).signature_digest}",
        "--define",
        f"_gpg_sign_cmd_extra_args {extra_args}",
    ]
    if profile(consumer).header_and_payload_signature:
        cmd.append("--rpmv3")
    for chunk in chunks(files):
        try:
            proc.run([*cmd, *chunk], env={"GNUPGHOME": str(home)}, echo=False)
        except CommandError as exc:
            raise SigningError(
                f"rpmsign could not sign {len(chunk)} package(s) with key "
                f"{key.signing_fingerprint} ({os.path.basename(gpg)}).\n"
                f"{exc.message}",
                hint="Check that the key is usable without a prompt (--passphrase-file) and "
                "that gpg-agent allows loopback pinentry.",
            ) from exc


def check_signatures(files: Sequence[Path], key: SigningKey, consumer: Consumer) -> None:
    """Refuse any RPM whose signatures are missing, by another key, or unfit for the consumer.

    Unfit: a digest or (for EL5) a signature packet version the consumer's rpm cannot verify.
    """
    rules = profile(consumer)
    want_digest = rules.signature_digest.upper()
    want_version = rules.signature_packet
    header_tag = "RSAHEADER" if key.algorithm == "RSA" else "DSAHEADER"
    legacy_tag = "SIGPGP" if key.algorithm == "RSA" else "SIGGPG"
    required = [header_tag] + ([legacy_tag] if rules.header_and_payload_signature else [])
    for path, sigs in read_signatures(files).items():
        for tag in required:
            sig = sigs[tag]
            match = _PGPSIG.match(sig.text)
            if match is None or sig.packet is None:
                raise SigningError(f"{path.name} has no {tag} signature (rpm shows {sig.text!r}).")
            if match["keyid"] != key.key_id:
                raise SigningError(
                    f"{path.name} is signed by key {match['keyid']}, not {key.key_id}."
                )
            if match["digest"] != want_digest:
                raise SigningError(
                    f"{path.name}: {tag} signature uses {match['digest']}; the {consumer.value} "
                    f"consumer needs {want_digest}."
                )
            if want_version is not None and sig.packet.version != want_version:
                raise SigningError(
                    f"{path.name}: {tag} signature is a {sig.packet.describe()} packet; the "
                    f"{consumer.value} consumer's rpm verifies only version {want_version} "
                    "signature packets.",
                    hint=f"Sign {consumer.value} packages with gpg1 (Debian's {GNUPG1_PACKAGE}) "
                    "and --force-v3-sigs, as publish does.",
                )


@contextlib.contextmanager
def public_key_file(key: SigningKey) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="xdb-pubkey-") as tmp:
        path = Path(tmp) / "key.asc"
        path.write_text(export_public_key(key), encoding="ascii")
        yield path


def verify_rpms(files: Sequence[Path], public_key: Path) -> None:
    """Refuse the first file whose signature ``rpmkeys --checksig`` does not accept."""
    for path, verdict in checksig(files, public_key).items():
        if verdict != "OK":
            raise SigningError(
                f"Signature check failed for {path.name}: {verdict}.",
                hint="Refusing to publish an unsigned or badly signed package.",
            )


def detach_sign(file: Path, key: SigningKey, consumer: Consumer) -> Path:
    """Write ``FILE.asc``, an armored detached signature (repo_gpgcheck), via a temp file."""
    target = file.with_name(file.name + ".asc")
    partial = file.with_name(file.name + ".asc.partial")
    try:
        _gpg(
            key.gnupg_home,
            *_pinentry_args(key),
            "--yes",
            "--local-user",
            key.signer,
            "--digest-algo",
            profile(consumer).signature_digest,
            "--armor",
            "--detach-sign",
            "--output",
            partial,
            file,
        )
    except CommandError as exc:
        partial.unlink(missing_ok=True)
        raise SigningError(f"gpg could not sign {file}.\n{exc.message}") from exc
    os.chmod(partial, 0o644)  # served beside the file it signs, whatever the umask
    os.replace(partial, target)
    return target


def verify_detached(file: Path, signature: Path, public_key: Path, consumer: Consumer) -> None:
    """``gpgv`` with a keyring that holds only ``public_key``; where the consumer's yum checks
    through pygpgme (EL5), GnuPG 1.4's verdict first, since it is the one that yum gives."""
    if profile(consumer).metadata_check_needs_pygpgme:
        verify_detached_gnupg1(file, signature, public_key)
    verdict = check_detached(file, signature, public_key)
    if not verdict.good:
        raise SigningError(
            f"The signature {signature.name} does not verify {file}:\n{verdict.detail}"
        )


def verify_detached_gnupg1(file: Path, signature: Path, public_key: Path) -> None:
    """Verify as yum 3.2.22 does on CentOS 5: GnuPG 1.4 (through pygpgme), key trusted fully.

    yum imports the repository's key into a keyring of its own, marks it ultimately trusted,
    and accepts ``repomd.xml`` only when the first signature is valid with full or ultimate
    validity.  The same steps with the host's GnuPG 1.4 catch a signature it cannot read.
    """
    gpg1()  # missing, it is reported before a keyring is made
    with tempfile.TemporaryDirectory(prefix="xdb-gnupg1-verify-") as name:
        tmp = Path(name)
        _gpg1(tmp, "--no-tty", "--import", public_key)
        listed = _gpg1(tmp, "--no-tty", "--with-colons", "--fingerprint", "--list-keys")
        trust = "".join(
            f"{line.split(':')[9]}:6:\n"
            for line in listed.stdout.splitlines()
            if line.startswith("fpr:")
        )
        _gpg1(tmp, "--no-tty", "--import-ownertrust", input=trust)
        result = _gpg1(
            tmp, "--no-tty", "--status-fd", "1", "--verify", signature, file, check=False
        )
        status = {line.split()[1] for line in result.stdout.splitlines() if line.count(" ")}
        trusted = {"TRUST_FULLY", "TRUST_ULTIMATE"} & status
        if result.returncode != 0 or "VALIDSIG" not in status or not trusted:
            raise SigningError(
                f"GnuPG 1.4, which yum 3.2.22 on EL5 uses through pygpgme, does not accept the "
                f"signature {signature.name} of {file}:\n"
                f"{proc.tail(result.stderr or result.stdout)}"
            )


class Detached(NamedTuple):
    """A file to sign apart (``FILE.asc``): with the digest ``digest_of``'s clients read, and
    verified as ``check_as``'s client verifies it."""

    file: Path
    digest_of: Consumer
    check_as: Consumer


class Signer:
    """The signing of one publish: its key, the public half exported once, and every signature
    read back against that public key alone before anything relies on it.

    Each call takes a whole batch (the new packages of one consumer family, every file signed
    apart), so a publish enters the signing code once per thing it signs or checks.
    """

    def __init__(self, key: SigningKey, cleanup: contextlib.ExitStack) -> None:
        self.key = key
        self._cleanup = cleanup  # closed when the Signer's block ends

    @cached_property
    def public_key(self) -> Path:
        """The key's public half, armored as consumers import it; exported when first needed,
        so a publish with nothing to sign runs no gpg for it."""
        return self._cleanup.enter_context(public_key_file(self.key))

    def sign_packages(self, files: Sequence[Path], consumer: Consumer) -> None:
        """Sign ``files`` in place for ``consumer`` and check the signature packets."""
        sign_rpms(files, self.key, consumer)
        check_signatures(files, self.key, consumer)

    def verify_packages(self, files: Sequence[Path]) -> None:
        """rpm's own verdict on ``files``, with only the repository's key known."""
        verify_rpms(files, self.public_key)

    def sign_files(self, files: Sequence[Detached]) -> None:
        """``FILE.asc`` beside each of ``files``, each verified before the next is signed."""
        for file, digest_of, check_as in files:
            signature = detach_sign(file, self.key, digest_of)
            verify_detached(file, signature, self.public_key, check_as)


@contextlib.contextmanager
def signer(
    key: str, gnupg_home: Path, passphrase_file: Path | None, builds: Sequence[Manifest]
) -> Iterator[Signer]:
    """The ``Signer`` of the secret key ``key`` names (see :func:`find_key`), checked against
    the consumers of ``builds`` (see :func:`check_signing_key`), while the block runs; what it
    exported is removed after."""
    found = find_key(key, gnupg_home, passphrase_file)
    check_signing_key(found, builds)
    with contextlib.ExitStack() as cleanup:
        yield Signer(found, cleanup)
