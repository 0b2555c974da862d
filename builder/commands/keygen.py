"""``keygen``: make a test signing key so the publish flow runs without an existing key."""

from __future__ import annotations

import argparse
from pathlib import Path

from builder import log
from builder.publish import sign, testkey
from builder.specs import Consumer


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    parser = sub.add_parser(
        "keygen",
        parents=[common],
        help="make an RSA signing key for local testing",
        description=(
            "Make an unprotected RSA-2048 signing key (valid two years) in a GnuPG home and print "
            "its fingerprint. Its primary key signs, so both consumer families can verify it: "
            "rpm 4.4 on EL5 dom0s (V3 signatures, primary keys only, RSA up to 4096 bits) and "
            "EL7's rpm. Its user id says TEST and not for production: use it to try `publish` "
            "locally; sign real repositories with a key kept offline."
        ),
    )
    parser.add_argument(
        "--gnupg-home",
        metavar="DIR",
        type=Path,
        default=None,
        help="GnuPG home to create the key in (default: $GNUPGHOME or ~/.gnupg)",
    )
    parser.add_argument(
        "--name",
        default=testkey.TEST_KEY_UID,
        help="user id of the key (default: %(default)s)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    home = (args.gnupg_home or sign.default_gnupg_home()).absolute()
    with log.step(f"Make a test signing key in {home}"):
        fingerprint = testkey.generate_test_key(home, name=args.name)
        # The same checks publish makes for every consumer: a key made here must pass them.
        key = sign.find_key(fingerprint, home)
        for consumer in Consumer:
            sign.check_key_for(consumer, key, [])
        log.info("usable for el5 (rpm 4.4, V3 signatures made with gpg1) and el7")
    log.info(f"use it with: python -m builder publish --gnupg-home {home} --key {fingerprint}")
    print(fingerprint)
    return 0
