"""Publishing for the fault cases: a signing key, many small packages, and a consumer's view.

What a published repository must be after any fault is checked the way its consumers see it:
through ``current`` and the stable links beside it (never through the layout under
``versions/``, which is the tool's own business), by ``gpgv`` for ``repomd.xml.asc``, by
``rpmkeys --checksig`` and the metadata's sha256 for every package, and by dnf with
``gpgcheck`` and ``repo_gpgcheck`` on.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from tests.faults.harness import REPO, builder
from tests.rpmfactory import build_rpms, write_build

TARGET = "xcp-ng-8.2"  # an el7 consumer, x86_64
KEY_FILE = "RPM-GPG-KEY-xcp-drbd-builder"
REPO_NS = "{http://linux.duke.edu/metadata/repo}"
COMMON_NS = "{http://linux.duke.edu/metadata/common}"


@dataclass(frozen=True)
class Signer:
    home: Path
    fingerprint: str


def make_signer(home: Path) -> Signer:
    result = builder("keygen", "--gnupg-home", home, timeout=120)
    assert result.returncode == 0, result
    return Signer(home, result.stdout.strip())


def kill_agents(*homes: Path) -> None:
    """Stop the gpg-agents gpg started for these homes (publish's and dnf's keyrings)."""
    for home in homes:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)


def make_packages(work: Path, count: int, *, filler: int = 0) -> list[Path]:
    """``count`` distinct, valid noarch-free x86_64 packages from one rpmbuild run."""
    names = [f"fault-pkg-{n:02d}" for n in range(count)]
    return build_rpms(work, names, version="1.0", arch="x86_64", payload="x" * filler)


def add_build(artifacts: Path, index: int, rpm: Path) -> Path:
    """A finished build ``9.0.<index>`` of the el7 target holding ``rpm``."""
    return write_build(artifacts, TARGET, f"9.0.{index}", [rpm], consumer="el7", basearch="x86_64")


def publish_args(artifacts: Path, repo: Path, signer: Signer, *extra: str) -> list[str | Path]:
    return [
        "publish", "--artifacts", artifacts, "--repo", repo, "--key", signer.fingerprint,
        "--gnupg-home", signer.home, *extra,
    ]  # fmt: skip


def _run(command: list[str | Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, check=False, timeout=120
    )


def verify_served(repo: Path, work: Path) -> set[str]:
    """Check what a client of ``repo`` gets is complete and signed; return its package names.

    ``work`` is a scratch directory (removed and made again).
    """
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    current = repo / "current"
    assert current.is_symlink() and current.resolve().is_dir(), "current is not a version"
    served = repo / "el7" / "x86_64"
    key = repo / KEY_FILE
    assert key.is_file(), f"{key} is missing"
    keyring = work / "keyring.gpg"
    dearmored = _run(["gpg", "--batch", "--dearmor", "--output", keyring, key])
    assert dearmored.returncode == 0, dearmored.stderr
    repomd = served / "repodata" / "repomd.xml"
    checked = _run(["gpgv", "--keyring", keyring, f"{repomd}.asc", repomd])
    assert checked.returncode == 0, f"repomd.xml signature: {checked.stderr}"
    root = ET.parse(repomd).getroot()  # noqa: S314 (the repository under test)
    hrefs = {
        data.get("type"): (data.find(f"{REPO_NS}location"), data.find(f"{REPO_NS}checksum"))
        for data in root.findall(f"{REPO_NS}data")
    }
    location, recorded = hrefs["primary"]
    assert location is not None and recorded is not None
    primary_file = served / str(location.get("href"))
    assert hashlib.sha256(primary_file.read_bytes()).hexdigest() == recorded.text
    primary = ET.fromstring(gzip.decompress(primary_file.read_bytes()))  # noqa: S314
    packages: dict[Path, str] = {}
    for package in primary.findall(f"{COMMON_NS}package"):
        href = package.find(f"{COMMON_NS}location")
        digest = package.find(f"{COMMON_NS}checksum")
        assert href is not None and digest is not None
        packages[served / str(href.get("href"))] = str(digest.text)
    assert packages, "the repository lists no package"
    for path, expected in packages.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == expected, f"{path} changed"
    database = work / "rpmdb"
    database.mkdir()
    imported = _run(["rpmkeys", "--dbpath", database, "--import", key])
    assert imported.returncode == 0, imported.stderr
    signatures = _run(["rpmkeys", "--dbpath", database, "--checksig", *packages])
    assert signatures.returncode == 0, signatures.stdout + signatures.stderr
    lines = signatures.stdout.splitlines()
    assert len(lines) == len(packages) and all(
        line.endswith("digests signatures OK") for line in lines
    ), signatures.stdout
    return {path.name for path in packages}


def dnf_download(repo: Path, work: Path, package: str) -> subprocess.CompletedProcess[str]:
    """``dnf install --downloadonly PACKAGE`` from ``repo`` as a file:// URL, with the
    ``.repo`` file publish prints (gpgcheck=1, repo_gpgcheck=1)."""
    if work.exists():
        shutil.rmtree(work)
    repos = work / "repos"
    repos.mkdir(parents=True)
    printed = builder("publish", "--print-repo-file", repo.resolve().as_uri(), "--consumer", "el7")
    assert printed.returncode == 0, printed
    assert "gpgcheck=1" in printed.stdout and "repo_gpgcheck=1" in printed.stdout
    (repos / "xcp-drbd-el7.repo").write_text(printed.stdout)
    try:
        return subprocess.run(
            [
                "dnf", "-y", f"--installroot={work / 'root'}", f"--setopt=reposdir={repos}",
                f"--setopt=cachedir={work / 'cache'}", "--releasever=7", "--disablerepo=*",
                "--enablerepo=xcp-drbd-builder", "install", "--downloadonly",
                f"--downloaddir={work / 'downloads'}", package,
            ],
            capture_output=True, text=True, check=False, timeout=120, cwd=REPO,
        )  # fmt: skip
    finally:
        # repo_gpgcheck makes dnf start a gpg-agent for each repository's keyring.
        kill_agents(*work.glob("cache/*/pubring"))


def assert_dnf_gets(repo: Path, work: Path, package: str) -> None:
    result = dnf_download(repo, work, package)
    assert result.returncode == 0, result.stdout + result.stderr
    assert list((work / "downloads").glob(f"{package}-*.rpm")), result.stdout


def partial_leftovers(repo: Path) -> list[Path]:
    """Anything under the repository whose name says it is unfinished."""
    return [
        p
        for p in repo.rglob("*")
        if p.name.endswith(".partial") or ".partial-" in p.name or p.name.startswith(".incoming-")
    ]


def audit(repo: Path) -> None:
    """``verify`` accepts the whole tree, and finds nothing an interrupted run left behind."""
    result = _run([sys.executable, "-m", "builder", "verify", "--repo", repo])
    assert result.returncode == 0, result.stderr
    assert "belong to no published version" not in result.stderr, result.stderr
