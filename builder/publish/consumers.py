"""What each consumer generation (a dom0's rpm and yum) needs of a repository: the one table.

Publishing, signing, ``verify`` and deploy read these profiles instead of testing for a
consumer by name.  A new generation (el8, el9) is one more :class:`Consumer` value in
``builder.specs`` and one more row here, with the facts of its rpm and yum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from builder.specs import Consumer

# Key sizes rpm 4.4.2.3 verifies: it reads a DSA signature's r and s as 160-bit numbers (DSA-1024
# with SHA-1; larger DSA keys need a longer hash), and an RSA number through a 2048-character hex
# buffer (at most 8176 bits; GnuPG makes up to 4096).
RPM44_KEY_BITS = {"RSA": (1024, 4096), "DSA": (1024, 1024)}


@dataclass(frozen=True, kw_only=True)
class Profile:
    consumer: Consumer
    rpm: str  # the rpm that verifies packages, for messages
    yum: str  # the yum that reads the metadata, for messages
    repodata_checksum: str  # createrepo_c --checksum: what its yum can read
    sqlite_metadata: bool  # whether its yum reads createrepo_c's sqlite databases
    signature_digest: str  # OpenPGP digest of package and metadata signatures
    # The signature packet version its rpm verifies (None: the V4 packets GnuPG 2 makes). V3
    # packets come only from GnuPG 1.4 (gpg1 --force-v3-sigs).
    signature_packet: int | None
    # Its rpm checks the header+payload signature (tag SIGPGP/SIGGPG) as well as the
    # header-only one: rpmsign --rpmv3 writes both.
    header_and_payload_signature: bool
    primary_key_only: bool  # its rpm trusts only primary keys: a subkey's signature is NOKEY
    key_bits: Mapping[str, tuple[int, int]] | None  # key sizes its rpm verifies, by algorithm
    # Its yum checks repomd.xml.asc only through the gpgme Python module (pygpgme), with the
    # GnuPG 1.4 underneath: publish checks the signature that way too, deploy checks the module.
    metadata_check_needs_pygpgme: bool

    @property
    def v3_signatures(self) -> bool:
        return self.signature_packet == 3


PROFILES: dict[Consumer, Profile] = {
    Consumer.EL5: Profile(
        consumer=Consumer.EL5,
        rpm="rpm 4.4",  # 4.4.2.3
        yum="yum 3.2.22",
        repodata_checksum="sha",
        sqlite_metadata=False,  # yum 3 builds its own sqlite cache from the XML
        signature_digest="sha1",
        signature_packet=3,
        header_and_payload_signature=True,
        primary_key_only=True,
        key_bits=RPM44_KEY_BITS,
        metadata_check_needs_pygpgme=True,
    ),
    Consumer.EL7: Profile(
        consumer=Consumer.EL7,
        rpm="rpm 4.11",
        yum="yum 3.4.3",
        repodata_checksum="sha256",
        sqlite_metadata=True,
        signature_digest="sha256",
        signature_packet=None,
        header_and_payload_signature=False,
        # rpm 4.11 trusts only primary keys too; publish warns rather than refuses (see
        # builder.publish.sign.check_signing_key).
        primary_key_only=False,
        key_bits=None,
        metadata_check_needs_pygpgme=False,
    ),
}


def profile(consumer: Consumer) -> Profile:
    return PROFILES[consumer]
