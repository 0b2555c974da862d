"""``publish``: turn finished builds into GPG-signed yum repositories, atomically."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from builder import log
from builder.errors import ConfigError
from builder.files import readable_by_all
from builder.publish import layout, publisher, sign
from builder.registry import load_registry
from builder.specs import Consumer, Registry

DESCRIPTION = """\
Sign every new RPM under --artifacts with rpmsign, make yum metadata with createrepo_c,
sign repomd.xml (repomd.xml.asc), verify every signature, then switch the published
repository atomically. One repository per consumer family and $basearch:
  REPO/el5/i386/   (V3 SHA-1 signatures made with gpg1, from Debian's gnupg1, and 'sha'
                    metadata checksums, for rpm 4.4 / yum 3)
  REPO/el7/x86_64/ (V4 SHA-256 signatures)
Next to them: RPM-GPG-KEY-xcp-drbd-builder and one .repo file per family.

Publishing is incremental: packages already published are kept where they are, in the
package store REPO/packages/, never re-signed or copied; the same file name with different
content is refused. Before a new version goes live, every published package is checked
against the digest it had when it was signed (one stat per package unchanged since its last
check, a full read of any other); a changed one stops the publish (exit 11). Metadata
versions live in REPO/versions/, REPO/current points at the live one, the previous --keep
versions stay. Build directories without manifest.json, or named *.partial, are skipped with a
warning. Everything under REPO is readable by all whatever the umask, which still decides
who may write there. `python -m builder verify --repo REPO` audits the whole published tree.

Signing happens on this host only; the key is chosen by fingerprint and used without a
prompt (loopback pinentry; --passphrase-file for a protected key). For el5, the primary key
is copied into a private temporary GnuPG 1 home for the run and must be one rpm 4.4
verifies (RSA 1024-4096 bits or DSA-1024, primary key signing).
"""

EPILOG = """\
environment (for CI; options win):
  XDB_ARTIFACTS        --artifacts
  XDB_REPO             --repo
  XDB_SIGNING_KEY      --key (fingerprint, key id or user id of a secret key)
  GNUPGHOME            --gnupg-home (default ~/.gnupg)
  XDB_PASSPHRASE_FILE  --passphrase-file
  XDB_REPO_URL         --base-url

examples:
  python -m builder keygen --gnupg-home ./gnupg
  python -m builder publish --artifacts artifacts --repo public --key FPR --gnupg-home ./gnupg
  python -m builder publish --print-repo-file https://example.org/drbd --consumer el5
"""


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    parser = sub.add_parser(
        "publish",
        parents=[common],
        help="sign built RPMs and publish them as yum repositories",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    env = os.environ.get
    parser.add_argument(
        "--artifacts",
        metavar="DIR",
        type=Path,
        default=env("XDB_ARTIFACTS"),
        help="build outputs: DIR/<target>/<drbd version>/ (default: $XDB_ARTIFACTS)",
    )
    parser.add_argument(
        "--repo",
        metavar="DIR",
        type=Path,
        default=env("XDB_REPO"),
        help="published tree, served as is by a web server (default: $XDB_REPO)",
    )
    parser.add_argument(
        "--key",
        metavar="ID",
        default=env("XDB_SIGNING_KEY"),
        help="signing key: fingerprint preferred; a key whose primary cannot sign signs with "
        "its newest signing subkey, or with the subkey named (default: $XDB_SIGNING_KEY)",
    )
    parser.add_argument(
        "--gnupg-home",
        metavar="DIR",
        type=Path,
        default=None,
        help="GnuPG home holding the secret key (default: $GNUPGHOME or ~/.gnupg)",
    )
    parser.add_argument(
        "--passphrase-file",
        metavar="FILE",
        type=Path,
        default=env("XDB_PASSPHRASE_FILE"),
        help="passphrase of a protected key (default: $XDB_PASSPHRASE_FILE)",
    )
    parser.add_argument(
        "--base-url",
        metavar="URL",
        default=env("XDB_REPO_URL"),
        help="URL the repo is served at, for the .repo files (default: $XDB_REPO_URL, "
        "else a file:// URL of --repo)",
    )
    parser.add_argument(
        "--keep",
        metavar="N",
        type=int,
        default=3,
        help="published versions to keep, the current one included (default: 3)",
    )
    parser.add_argument(
        "--lock-timeout",
        metavar="SECONDS",
        type=float,
        default=600.0,
        help="how long to wait for another publish to finish; 0 fails at once (default: 600)",
    )
    parser.add_argument(
        "--createrepo",
        metavar="PATH",
        default=None,
        help="createrepo_c to use (default: the fastest on PATH that writes the checksums the "
        "consumer needs, probed once and remembered in REPO/.createrepo.json)",
    )
    parser.add_argument(
        "--print-repo-file",
        metavar="URL",
        default=None,
        help="only print the .repo file for a repo served at URL (needs --consumer), then exit",
    )
    parser.add_argument(
        "--consumer",
        choices=[c.value for c in Consumer],
        default=None,
        help="consumer family for --print-repo-file",
    )
    parser.set_defaults(func=run)


def _require(value: object, option: str, variable: str) -> None:
    if value in (None, ""):
        raise ConfigError(f"{option} is required.", hint=f"Pass {option} or set {variable}.")


def options_from_args(args: argparse.Namespace) -> publisher.PublishOptions:
    _require(args.artifacts, "--artifacts", "XDB_ARTIFACTS")
    _require(args.repo, "--repo", "XDB_REPO")
    _require(args.key, "--key", "XDB_SIGNING_KEY")
    if args.keep < 1:
        raise ConfigError(f"--keep must be at least 1, not {args.keep}.")
    if args.lock_timeout < 0:
        raise ConfigError(f"--lock-timeout must not be negative, not {args.lock_timeout}.")
    return publisher.PublishOptions(
        artifacts=Path(args.artifacts),
        repo=Path(args.repo),
        key=str(args.key),
        gnupg_home=(args.gnupg_home or sign.default_gnupg_home()).absolute(),
        passphrase_file=Path(args.passphrase_file) if args.passphrase_file else None,
        base_url=args.base_url,
        keep=args.keep,
        lock_timeout=args.lock_timeout,
        createrepo=args.createrepo,
        specs=tuple(args.specs),
    )


def run(args: argparse.Namespace) -> int:
    if args.print_repo_file is not None:
        if args.consumer is None:
            raise ConfigError(
                "--print-repo-file needs --consumer el5 or el7 (one .repo file per family)."
            )
        print(layout.served_repo_file(args.print_repo_file, Consumer(args.consumer)), end="")
        return 0
    options = options_from_args(args)
    cached: list[Registry] = []

    def registry() -> Registry:
        if not cached:
            cached.append(load_registry(options.specs))
        return cached[0]

    # The tree is served by a web server, which is not the user that publishes.
    with log.step(f"Publish {options.artifacts} to {options.repo}"), readable_by_all():
        result = publisher.publish(options, registry)
    if result.version is None:
        print(f"{options.repo}: unchanged, {result.total_packages} package(s)")
    else:
        print(
            f"{options.repo}: published {len(result.new_packages)} new package(s), "
            f"{result.total_packages} in total, version {result.version.name}"
        )
    return 0
