"""A throwaway signing key, so that the publish flow can be tried without a key of one's own:
what ``keygen`` makes.  Real repositories are signed with a key kept offline."""

from __future__ import annotations

import os
from pathlib import Path

from builder import proc
from builder.errors import CommandError
from builder.signatures import gpg

TEST_KEY_UID = (
    "xcp-drbd-builder TEST signing key - not for production <test-signing@xcp-drbd-builder.invalid>"
)


def generate_test_key(gnupg_home: Path, *, name: str = TEST_KEY_UID) -> str:
    """Make an unprotected RSA-2048 signing key for local use and return its fingerprint.

    Every consumer can verify its signatures: an RSA primary key of 2048 bits that signs
    itself (no subkey) is what rpm 4.4 on EL5 needs, and EL7's rpm takes it as well.
    """
    gnupg_home.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(gnupg_home, 0o700)
    proc.run(
        [
            gpg(),
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
        [gpg(), "--homedir", gnupg_home, "--batch", "--with-colons", "--list-secret-keys", name],
        echo=False,
    )
    fingerprints = [line.split(":")[9] for line in result.stdout.splitlines() if line[:4] == "fpr:"]
    # Several runs with the same user id: the newest key is listed last.
    return fingerprints[-1]
