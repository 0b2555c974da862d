"""What EL5's rpm 4.4 can verify, decided without gpg: packets, keys, and a host without gpg1."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from builder import signatures
from builder.errors import CommandError, SigningError
from builder.publish import sign
from builder.publish.consumers import profile
from builder.specs import Consumer

PRIMARY = "0123456789ABCDEF0123456789ABCDEF01234567"
SUBKEY = "89ABCDEF0123456789ABCDEF0123456789ABCDEF"


def old_format(body: bytes) -> bytes:
    """An old-format signature packet (tag 2) with a two-octet length, as gpg1 writes it."""
    return bytes([0x89]) + struct.pack(">H", len(body)) + body


def new_format(body: bytes) -> bytes:
    """A new-format signature packet (tag 2) with a one-octet length."""
    return bytes([0xC2, len(body)]) + body


V3_BODY = (
    bytes([3, 5, 0x00])
    + struct.pack(">I", 1_700_000_000)
    + bytes.fromhex("9417506D5BDD4B63")
    + bytes([1, 2])  # RSA, SHA-1
    + b"\x95\xfc"  # leading 16 bits of the digest
    + b"\x00\x08\xff"  # a (short) MPI
)
V4_BODY = bytes([4, 0x00, 1, 8]) + b"\x00\x00" + b"\x00\x00" + b"\x12\x34" + b"\x00\x08\xff"


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (old_format(V3_BODY), (3, 1, 2)),
        (new_format(V3_BODY), (3, 1, 2)),
        (old_format(V4_BODY), (4, 1, 8)),
        (new_format(bytes([4, 0x00, 17, 2]) + b"\x00" * 8), (4, 17, 2)),
    ],
)
def test_signature_packets_are_read_in_both_formats(
    packet: bytes, expected: tuple[int, int, int]
) -> None:
    parsed = signatures.parse_signature_packet(packet)
    assert (parsed.version, parsed.pubkey_algo, parsed.hash_algo) == expected


def test_packet_descriptions_name_what_rpm_44_cares_about() -> None:
    assert signatures.parse_signature_packet(old_format(V3_BODY)).describe() == "V3 RSA/SHA1"
    assert signatures.parse_signature_packet(old_format(V4_BODY)).describe() == "V4 RSA/SHA256"


@pytest.mark.parametrize(
    ("packet", "problem"),
    [
        (b"", "not an OpenPGP packet"),
        (b"\x01\x02", "not an OpenPGP packet"),
        (bytes([0x99, 0, 3]) + b"\x04\x00\x00", "packet tag 6 is not a signature"),
        (old_format(V3_BODY[:10]), "truncated"),
    ],
)
def test_what_is_not_a_signature_packet_is_refused(packet: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        signatures.parse_signature_packet(packet)


def key(algorithm: str = "RSA", bits: int = 2048, signer: str = PRIMARY) -> sign.SigningKey:
    return sign.SigningKey(
        fingerprint=PRIMARY,
        signing_fingerprint=signer,
        algorithm=algorithm,
        bits=bits,
        gnupg_home=Path("/nonexistent"),
    )


@pytest.mark.parametrize(
    ("algorithm", "bits"), [("RSA", 1024), ("RSA", 2048), ("RSA", 4096), ("DSA", 1024)]
)
def test_keys_rpm_44_verifies_pass(algorithm: str, bits: int) -> None:
    sign.check_key_for(Consumer.EL5, key(algorithm, bits), ["xcp-1.5"])


@pytest.mark.parametrize(
    ("algorithm", "bits", "message"),
    [
        ("DSA", 2048, "is DSA-2048; rpm 4.4 on EL5 dom0s (xcp-1.5, xcp-1.6) verifies DSA "),
        ("DSA", 3072, "keys of 1024 bits (160-bit q, SHA-1)"),
        ("RSA", 8192, "is RSA-8192; rpm 4.4 on EL5 dom0s (xcp-1.5, xcp-1.6) verifies RSA "),
        ("RSA", 768, "keys of 1024 to 4096 bits."),
    ],
)
def test_keys_rpm_44_cannot_verify_are_refused(algorithm: str, bits: int, message: str) -> None:
    with pytest.raises(SigningError) as raised:
        sign.check_key_for(Consumer.EL5, key(algorithm, bits), ["xcp-1.5", "xcp-1.6"])
    assert message in raised.value.message
    assert raised.value.exit_code == 12
    assert raised.value.hint is not None
    assert "rsa3072 sign" in raised.value.hint


def test_a_signing_subkey_is_refused_for_el5() -> None:
    with pytest.raises(SigningError, match="trusts only primary keys"):
        sign.check_key_for(Consumer.EL5, key(signer=SUBKEY), ["xcp-1.5"])


def test_without_gpg1_the_error_names_the_debian_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CommandError) as raised:
        sign.require_gpg1(["xcp-1.5"])
    error = raised.value
    assert error.exit_code == 7
    assert "EL5 dom0s (xcp-1.5) needs gpg1 (GnuPG 1.4)" in error.message
    assert "Nothing was signed" in error.message
    assert error.hint is not None
    assert "apt-get install gnupg1" in error.hint


def test_consumers_get_their_digest_and_packet_version() -> None:
    el5, el7 = profile(Consumer.EL5), profile(Consumer.EL7)
    assert (el5.signature_digest, el5.signature_packet) == ("sha1", 3)
    assert el7.signature_digest == "sha256"
    assert el7.signature_packet is None


def test_a_passphrase_file_others_can_read_gets_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text("hunter2\n")
    secret.chmod(0o600)
    sign._warn_if_readable_by_others(secret)
    assert capsys.readouterr().err == ""
    secret.chmod(0o644)
    sign._warn_if_readable_by_others(secret)
    err = capsys.readouterr().err
    assert "can be read by other users (mode 644)" in err
    assert f"chmod 600 {secret}" in err
