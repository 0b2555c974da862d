"""``verify``: audit a published repository end to end and say what is wrong."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from builder import log
from builder.errors import ConfigError

DESCRIPTION = """\
Check a tree made by `publish` the way a careful client would, reading what is served:
the key file is the repository's key (or the one given with --key-file, obtained out of
band); every repomd.xml.asc verifies with it (for el5 also as GnuPG 1.4, as yum 3 does);
every metadata file has the checksum repomd.xml records; every package the metadata lists
is there with the recorded size and checksum and a signature rpm accepts (for el5: SHA-1,
version 3 packets); the package index matches the live version and the metadata; the
stable names lead where publish made them lead.

Every problem is listed; the exit code is 15 if there is any. Nothing is changed.
Publish itself checks each published package against its signed digest before a new
version goes live (cheaply: a package whose inode, size, mtime and ctime are unchanged
since its last check is not read again); verify reads everything, every time.
"""

EPILOG = """\
examples:
  python -m builder verify --repo public
  python -m builder verify --repo public --key-file ./RPM-GPG-KEY-from-our-wiki
"""


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    parser = sub.add_parser(
        "verify",
        parents=[common],
        help="audit a published repository: keys, signatures, checksums, index",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--repo",
        metavar="DIR",
        type=Path,
        default=os.environ.get("XDB_REPO"),
        help="published tree, as publish --repo (default: $XDB_REPO)",
    )
    parser.add_argument(
        "--key-file",
        metavar="FILE",
        type=Path,
        default=None,
        help="the public key to trust, instead of the key file the repository serves",
    )
    parser.set_defaults(func=run)


def print_trust(trust: dict[str, dict[str, str]]) -> None:
    """Per published package, how its build's inputs were trusted; weaker than a vendor
    signature or a pin is marked, so that an operator sees which modules rest on it."""
    if not trust:
        return
    from builder.publish import provenance

    print("How the inputs of each published package were trusted (provenance):")
    for path in sorted(trust):
        record = trust[path]
        if not record:
            print(f"  {path}: not recorded (built before trust was recorded)")
            continue
        parts = []
        for key, how in record.items():
            weak = " (!)" if provenance.weak(how) else ""
            parts.append(f"{provenance.INPUT_NAMES.get(key, key)} {how}{weak}")
        print(f"  {path}: {'; '.join(parts)}")


def run(args: argparse.Namespace) -> int:
    from builder.publish import verify

    if not args.repo:
        raise ConfigError("--repo is required.", hint="Pass --repo or set XDB_REPO.")
    repo = Path(args.repo)
    if not repo.is_dir():
        raise ConfigError(f"{repo} is not a directory.")
    if args.key_file is not None and not Path(args.key_file).is_file():
        raise ConfigError(f"--key-file {args.key_file} does not exist.")
    with log.step(f"Verify {repo}"):
        report = verify.verify_repository(repo, args.key_file)
    for note in report.notes:
        log.warn(note)
    verify.raise_for(report, repo)
    print_trust(report.trust)
    print(
        f"{repo}: verified {report.packages} package(s) in {report.repositories} "
        f"repositor{'y' if report.repositories == 1 else 'ies'}: signatures, checksums and "
        "index all good"
    )
    return 0
