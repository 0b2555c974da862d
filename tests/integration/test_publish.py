"""Publishing against real gpg, rpmsign, rpmkeys, createrepo_c and dnf as the consumer."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from builder import proc
from builder.errors import ConfigError, InputError, SigningError
from builder.publish import changes, layout, metadata, sign
from builder.publish.store import STATE_FILE_NAME
from builder.specs import Consumer
from tests.rpmfactory import build_rpms, write_build
from tests.support.http import serve_directory

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REPO_NS = "{http://linux.duke.edu/metadata/repo}"
COMMON_NS = "{http://linux.duke.edu/metadata/common}"


@dataclass(frozen=True)
class Keys:
    home: Path
    fingerprint: str
    other_home: Path
    other_fingerprint: str


def _kill_agent(home: Path) -> None:
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)


def keygen(home: Path) -> subprocess.CompletedProcess[str]:
    """``builder keygen`` into ``home``; its stdout is the new key's fingerprint."""
    return subprocess.run(
        [sys.executable, "-m", "builder", "keygen", "--gnupg-home", str(home)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    base = tmp_path_factory.mktemp("keys")
    homes = [base / "signer", base / "other"]
    fingerprints = []
    for home in homes:
        result = keygen(home)
        fingerprints.append(result.stdout.strip())
    try:
        yield Keys(homes[0], fingerprints[0], homes[1], fingerprints[1])
    finally:
        for home in homes:
            _kill_agent(home)


@dataclass(frozen=True)
class Rpms:
    el5: list[Path]
    el7: list[Path]
    el7_update: list[Path]


@pytest.fixture(scope="module")
def rpms(tmp_path_factory: pytest.TempPathFactory) -> Rpms:
    work = tmp_path_factory.mktemp("rpms")
    return Rpms(
        el5=build_rpms(work, ["drbd", "drbd-km-xen"], version="8.4.1", arch="i686"),
        el7=build_rpms(work, ["drbd-kmod", "drbd-kmod-doc"], version="9.0", arch="x86_64"),
        el7_update=build_rpms(work, ["drbd-kmod"], version="9.0", release="2", arch="x86_64"),
    )


def make_artifacts(base: Path, rpms: Rpms) -> Path:
    artifacts = base / "artifacts"
    write_build(artifacts, "xcp-1.5", "8.4.1", rpms.el5, consumer=None, basearch=None)
    write_build(artifacts, "xcp-ng-8.2", "9.0", rpms.el7, consumer="el7", basearch="x86_64")
    return artifacts


def publish_cmd(artifacts: Path, target: Path, keys: Keys, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "builder",
        "publish",
        "--artifacts",
        str(artifacts),
        "--repo",
        str(target),
        "--key",
        keys.fingerprint,
        "--gnupg-home",
        str(keys.home),
        *extra,
    ]


def run_publish(
    artifacts: Path, target: Path, keys: Keys, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        publish_cmd(artifacts, target, keys, *extra),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env=env,
    )


def published_once(tmp_path: Path, keys: Keys, rpms: Rpms) -> tuple[Path, Path]:
    """The artifacts of an EL5 and an EL7 build, published into ``tmp_path/repo``."""
    artifacts = make_artifacts(tmp_path, rpms)
    target = tmp_path / "repo"
    assert run_publish(artifacts, target, keys).returncode == 0
    return artifacts, target


def dnf_fetch(work: Path, base_url: str, package: str) -> subprocess.CompletedProcess[str]:
    """``dnf install --downloadonly`` from the el7 repo with gpgcheck and repo_gpgcheck on."""
    if work.exists():
        shutil.rmtree(work)
    repos = work / "repos"
    repos.mkdir(parents=True)
    repo_file = subprocess.run(
        [
            sys.executable,
            "-m",
            "builder",
            "publish",
            "--print-repo-file",
            base_url,
            "--consumer",
            "el7",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "gpgcheck=1" in repo_file
    assert "repo_gpgcheck=1" in repo_file
    (repos / "xcp-drbd-el7.repo").write_text(repo_file)
    try:
        return _run_dnf(work, repos, package)
    finally:
        # repo_gpgcheck makes dnf start a gpg-agent for each repo's keyring: stop them.
        for keyring in work.glob("cache/*/pubring"):
            _kill_agent(keyring)


def _run_dnf(work: Path, repos: Path, package: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "dnf",
            "-y",
            f"--installroot={work / 'root'}",
            f"--setopt=reposdir={repos}",
            f"--setopt=cachedir={work / 'cache'}",
            "--releasever=7",
            "--disablerepo=*",
            "--enablerepo=xcp-drbd-builder",
            "install",
            "--downloadonly",
            f"--downloaddir={work / 'downloads'}",
            package,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture(scope="module")
def published(
    tmp_path_factory: pytest.TempPathFactory, keys: Keys, rpms: Rpms
) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("published")
    artifacts = make_artifacts(base, rpms)
    (artifacts / "xcp-1.6" / "8.4.1.partial").mkdir(parents=True)
    (artifacts / "xcp-1.6" / "8.4.0").mkdir(parents=True)
    result = run_publish(artifacts, base / "repo", keys)
    assert result.returncode == 0, result.stderr
    assert "skipping xcp-1.6/8.4.1.partial: an unfinished build" in result.stderr
    assert "skipping xcp-1.6/8.4.0: no manifest.json" in result.stderr
    return artifacts, base / "repo"


def test_dnf_downloads_and_verifies_the_published_packages(
    published: tuple[Path, Path], tmp_path: Path, keys: Keys
) -> None:
    _, target = published
    with serve_directory(target) as url:
        result = dnf_fetch(tmp_path / "dnf", url, "drbd-kmod")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Importing GPG key" in result.stdout + result.stderr
    # keygen's key says what it is wherever it shows up.
    assert "TEST signing key - not for production" in result.stdout + result.stderr
    downloaded = tmp_path / "dnf" / "downloads" / "drbd-kmod-9.0-1.x86_64.rpm"
    assert downloaded.is_file()
    key = sign.find_key(keys.fingerprint, keys.home)
    sign.check_signatures([downloaded], key, Consumer.EL7)


def test_repo_files_and_key_sit_next_to_the_repos(published: tuple[Path, Path]) -> None:
    _, target = published
    assert "BEGIN PGP PUBLIC KEY BLOCK" in (target / layout.KEY_FILE_NAME).read_text()
    el5 = (target / "xcp-drbd-el5.repo").read_text()
    assert f"baseurl={target.resolve().as_uri()}/el5/$basearch/" in el5
    assert "repo_gpgcheck=1" in el5
    assert (target / "el5" / "i386" / "repodata" / "repomd.xml.asc").is_file()
    assert sorted(p.name for p in (target / "el7" / "x86_64").glob("*.rpm")) == [
        "drbd-kmod-9.0-1.x86_64.rpm",
        "drbd-kmod-doc-9.0-1.x86_64.rpm",
    ]


def test_the_tree_is_readable_by_a_web_server_under_a_private_umask(
    tmp_path: Path, keys: Keys, rpms: Rpms
) -> None:
    artifacts = make_artifacts(tmp_path, rpms)
    target = tmp_path / "repo"
    result = subprocess.run(
        publish_cmd(artifacts, target, keys),
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=300,
        preexec_fn=lambda: os.umask(0o077),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    made = [target, *(p for p in target.rglob("*") if not p.is_symlink())]
    assert len([p for p in made if p.name.endswith(".asc")]) == 4  # 2 repomd.xml, 2 statements
    for path in made:
        mode = stat.S_IMODE(path.stat().st_mode)
        wanted = 0o755 if path.is_dir() else 0o644
        assert mode == wanted, f"{path.relative_to(target)} is {mode:o}, not {wanted:o}"


def test_el5_repo_has_what_rpm_44_and_yum_3_need(published: tuple[Path, Path]) -> None:
    _, target = published
    el5 = target / "el5" / "i386"
    repomd = ET.parse(el5 / "repodata" / "repomd.xml").getroot()  # noqa: S314 - our own output
    kinds = {checksum.get("type") for checksum in repomd.iter(f"{REPO_NS}checksum")} | {
        checksum.get("type") for checksum in repomd.iter(f"{REPO_NS}open-checksum")
    }
    assert kinds == {"sha"}
    primary_href = next(
        data.find(f"{REPO_NS}location").get("href")  # type: ignore[union-attr]
        for data in repomd.iter(f"{REPO_NS}data")
        if data.get("type") == "primary"
    )
    assert primary_href is not None
    primary = ET.fromstring(gzip.decompress((el5 / primary_href).read_bytes()))  # noqa: S314
    package_sums = {c.get("type") for c in primary.iter(f"{COMMON_NS}checksum")}
    assert package_sums == {"sha"}
    for rpm in sorted(el5.glob("*.rpm")):
        out = subprocess.run(
            ["rpm", "-qp", "--qf", "%{RSAHEADER:pgpsig}|%{DSAHEADER:pgpsig}|%{SIGPGP:pgpsig}", rpm],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        header, dsa, legacy = out.split("|")
        assert header.startswith("RSA/SHA1,"), out
        assert legacy.startswith("RSA/SHA1,"), out  # header+payload signature for rpm 4.4
        assert dsa == "(none)"
    el7_rpm = next((target / "el7" / "x86_64").glob("*.rpm"))
    out = subprocess.run(
        ["rpm", "-qp", "--qf", "%{RSAHEADER:pgpsig}", el7_rpm],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("RSA/SHA256,")


def copy_served_tree(target: Path, destination: Path) -> Path:
    """A private copy of what clients see (the stable names, links followed), for tampering."""
    destination.mkdir()
    for name in ("el5", "el7", layout.KEY_FILE_NAME):
        if (target / name).is_dir():
            shutil.copytree(target / name, destination / name, symlinks=False)
        elif (target / name).exists():
            shutil.copyfile(target / name, destination / name)
    return destination


def test_dnf_refuses_repomd_changed_after_signing(
    published: tuple[Path, Path], tmp_path: Path
) -> None:
    _, target = published
    tree = copy_served_tree(target, tmp_path / "tampered")
    repomd = tree / "el7" / "x86_64" / "repodata" / "repomd.xml"
    text = repomd.read_text()
    repomd.write_text(text.replace("<revision>", "<revision>1"))
    assert repomd.read_text() != text
    with serve_directory(tree) as url:
        result = dnf_fetch(tmp_path / "dnf", url, "drbd-kmod")
    assert result.returncode != 0
    assert "GPG" in result.stdout + result.stderr


def test_dnf_refuses_repo_without_signature(published: tuple[Path, Path], tmp_path: Path) -> None:
    _, target = published
    tree = copy_served_tree(target, tmp_path / "unsigned")
    (tree / "el7" / "x86_64" / "repodata" / "repomd.xml.asc").unlink()
    with serve_directory(tree) as url:
        result = dnf_fetch(tmp_path / "dnf", url, "drbd-kmod")
    assert result.returncode != 0
    assert "repomd.xml.asc" in result.stdout + result.stderr


def test_dnf_refuses_package_signed_by_another_key(
    published: tuple[Path, Path], tmp_path: Path, keys: Keys, rpms: Rpms
) -> None:
    _, target = published
    tree = copy_served_tree(target, tmp_path / "foreign")
    folder = tree / "el7" / "x86_64"
    shutil.rmtree(folder / "repodata")
    foreign = folder / "drbd-kmod-9.0-1.x86_64.rpm"
    shutil.copyfile(rpms.el7[0], foreign)
    other = sign.find_key(keys.other_fingerprint, keys.other_home)
    sign.sign_rpms([foreign], other, Consumer.EL7)
    # Metadata and repomd.xml.asc are genuine: only the package's signature is foreign.
    good = sign.find_key(keys.fingerprint, keys.home)
    createrepo = metadata.find_createrepo(Consumer.EL7)
    proc.run(metadata.metadata_command(folder, folder, Consumer.EL7, None, createrepo))
    sign.detach_sign(folder / "repodata" / "repomd.xml", good, Consumer.EL7)
    with serve_directory(tree) as url:
        refused = dnf_fetch(tmp_path / "dnf", url, "drbd-kmod")
        accepted = dnf_fetch(tmp_path / "dnf2", url, "drbd-kmod-doc")
    assert refused.returncode != 0
    assert "GPG" in refused.stdout + refused.stderr or "signature" in refused.stderr
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr


def test_publish_refuses_unsigned_or_foreign_packages(
    tmp_path: Path, keys: Keys, rpms: Rpms
) -> None:
    good = sign.find_key(keys.fingerprint, keys.home)
    other = sign.find_key(keys.other_fingerprint, keys.other_home)
    unsigned = tmp_path / "unsigned.rpm"
    foreign = tmp_path / "foreign.rpm"
    shutil.copyfile(rpms.el7[0], unsigned)
    shutil.copyfile(rpms.el7[0], foreign)
    sign.sign_rpms([foreign], other, Consumer.EL7)
    with sign.public_key_file(good) as public_key:
        for package in (unsigned, foreign):
            with pytest.raises(SigningError, match="Signature check failed"):
                sign.verify_rpms([package], public_key)
    with pytest.raises(SigningError, match="not " + good.key_id):
        sign.check_signatures([foreign], good, Consumer.EL7)
    with pytest.raises(SigningError, match="has no RSAHEADER signature"):
        sign.check_signatures([unsigned], good, Consumer.EL7)
    el7_signed = tmp_path / "el7.rpm"
    shutil.copyfile(rpms.el7[0], el7_signed)
    sign.sign_rpms([el7_signed], good, Consumer.EL7)
    with pytest.raises(SigningError, match="needs SHA1"):
        sign.check_signatures([el7_signed], good, Consumer.EL5)


def test_publish_is_incremental(tmp_path: Path, keys: Keys, rpms: Rpms) -> None:
    artifacts, target = published_once(tmp_path, keys, rpms)
    first = (target / "current").resolve()
    before = {p: p.stat().st_ino for p in (target / "packages").rglob("*.rpm")}
    assert len(before) == 4
    again = run_publish(artifacts, target, keys)
    assert again.returncode == 0, again.stderr
    assert "unchanged" in again.stdout
    assert (target / "current").resolve() == first

    write_build(
        artifacts, "xcp-ng-8.2", "9.0-2", rpms.el7_update, consumer="el7", basearch="x86_64"
    )
    third = run_publish(artifacts, target, keys)
    assert third.returncode == 0, third.stderr
    assert "published 1 new package(s), 5 in total" in third.stdout
    second = (target / "current").resolve()
    assert second != first
    for old, inode in before.items():
        # The very same signed file in the store: not copied, linked or re-signed.
        assert old.stat().st_ino == inode
    assert not list(second.rglob("*.rpm")), "versions hold metadata, the store the packages"
    with serve_directory(target) as url:
        result = dnf_fetch(tmp_path / "dnf", url, "drbd-kmod-9.0-2")
    assert result.returncode == 0, result.stdout + result.stderr


def test_builds_published_before_are_not_looked_into_again(
    tmp_path: Path, keys: Keys, rpms: Rpms
) -> None:
    artifacts, target = published_once(tmp_path, keys, rpms)
    live = (target / "current").resolve()
    # A CI publish job downloads every build again: other directories, inodes and times, the
    # same manifests. Their packages are not even needed any more.
    fresh = tmp_path / "downloaded"
    shutil.copytree(artifacts, fresh)
    for rpm in fresh.rglob("*.rpm"):
        rpm.unlink()
    again = run_publish(fresh, target, keys)
    assert again.returncode == 0, again.stderr
    assert "2 build(s) (2 published before), 0 new package(s)" in again.stderr
    assert (target / "current").resolve() == live

    # Another key is refused even when every build was published before.
    foreign = run_publish(fresh, target, replace(keys, fingerprint=keys.other_fingerprint,
                                                 home=keys.other_home))  # fmt: skip
    assert foreign.returncode == 11, foreign.stderr
    assert "refusing to mix in packages" in foreign.stderr

    # A record made for another state of the index is not believed: each build is looked up.
    settled = target / "packages" / ".settled"
    record = json.loads(settled.read_text())
    record["index"]["count"] += 1
    settled.write_text(json.dumps(record))
    stale = run_publish(artifacts, target, keys)
    assert stale.returncode == 0, stale.stderr
    assert "2 build(s) (0 published before), 0 new package(s)" in stale.stderr
    assert json.loads(settled.read_text())["index"] != record["index"]  # made right again

    # A build whose manifest changed is a new build: its outputs are checked and published.
    write_build(artifacts, "xcp-ng-8.2", "9.0", [*rpms.el7, *rpms.el7_update], consumer="el7",
                basearch="x86_64")  # fmt: skip
    changed = run_publish(artifacts, target, keys)
    assert changed.returncode == 0, changed.stderr
    assert "2 build(s) (1 published before), 1 new package(s)" in changed.stderr
    assert "published 1 new package(s), 5 in total" in changed.stdout


def _generations(repodata: Path) -> dict[str, int]:
    kinds = ("primary", "filelists", "other")
    return {kind: len(list(repodata.glob(f"*-{kind}.xml.gz"))) for kind in kinds}


def test_old_metadata_is_kept_one_round_not_forever(tmp_path: Path, keys: Keys, rpms: Rpms) -> None:
    artifacts = make_artifacts(tmp_path, rpms)
    target = tmp_path / "repo"
    third = build_rpms(tmp_path, ["drbd-kmod"], version="9.0", release="3", arch="x86_64")
    updates = [("9.0-2", rpms.el7_update), ("9.0-3", third)]
    assert run_publish(artifacts, target, keys).returncode == 0
    listed = []
    for version, packages in updates:
        listed.append(
            metadata.metadata_files(
                (target / "el7" / "x86_64" / "repodata" / "repomd.xml").resolve()
            )
        )
        write_build(artifacts, "xcp-ng-8.2", version, packages, consumer="el7", basearch="x86_64")
        result = run_publish(artifacts, target, keys)
        assert result.returncode == 0, result.stderr
    el7 = (target / "current" / "el7" / "x86_64").resolve()
    assert _generations(el7 / "repodata") == {"primary": 2, "filelists": 2, "other": 2}
    newest = metadata.metadata_files(el7 / "repodata" / "repomd.xml")
    # The previous generation stays for clients that read the old repomd.xml; the first goes.
    assert {p.name for p in (el7 / "repodata").iterdir()} == {
        "repomd.xml",
        "repomd.xml.asc",
        *(href.removeprefix("repodata/") for href in newest + listed[1]),
    }
    assert not any((el7 / href).exists() for href in set(listed[0]) - set(listed[1]) - set(newest))
    with serve_directory(target) as url:
        result = dnf_fetch(tmp_path / "dnf", url, "drbd-kmod-9.0-3")
    assert result.returncode == 0, result.stdout + result.stderr


def test_same_nvr_with_other_content_is_refused(tmp_path: Path, keys: Keys, rpms: Rpms) -> None:
    artifacts, target = published_once(tmp_path, keys, rpms)
    before = (target / "current").resolve()
    rebuilt = build_rpms(tmp_path, ["drbd-kmod"], version="9.0", arch="x86_64", payload="changed")
    shutil.rmtree(artifacts / "xcp-ng-8.2")
    write_build(artifacts, "xcp-ng-8.2", "9.0", rebuilt, consumer="el7", basearch="x86_64")
    result = run_publish(artifacts, target, keys)
    assert result.returncode == 11, result.stderr
    assert "already published with different content" in result.stderr
    assert (target / "current").resolve() == before


def _published_names(target: Path) -> set[str]:
    """The packages the live metadata lists, each present where clients fetch it."""
    import createrepo_c as cr

    names = set()
    for repomd in (target / "current").resolve().glob("*/*/repodata/repomd.xml"):
        folder = repomd.parent.parent
        primary = next(r for r in cr.Repomd(str(repomd)).records if r.type == "primary")
        for package in cr.PackageIterator(
            primary_path=str(folder / primary.location_href), filelists_path=None, other_path=None
        ):
            served_file = target / folder.relative_to((target / "current").resolve())
            assert (served_file / package.location_href).is_file()
            names.add(package.location_href)
    return names


def test_a_protected_key_needs_its_passphrase_file(tmp_path: Path, rpms: Rpms) -> None:
    home = tmp_path / "protected home"
    home.mkdir(mode=0o700)
    uid = "Protected test key <protected@xcp-drbd-builder.invalid>"
    try:
        subprocess.run(
            [
                "gpg",
                "--homedir",
                str(home),
                "--batch",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "s3cret",
                "--quick-gen-key",
                uid,
                "rsa2048",
                "sign",
                "1d",
            ],
            check=True,
            capture_output=True,
        )
        artifacts = make_artifacts(tmp_path, rpms)
        cmd = [sys.executable, "-m", "builder", "publish", "--artifacts", str(artifacts)]
        cmd += ["--repo", str(tmp_path / "repo"), "--key", uid, "--gnupg-home", str(home)]
        refused = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        assert refused.returncode == 12, refused.stderr
        # EL5 signs first: the key must be exported for GnuPG 1.4, which needs the passphrase.
        assert "could not export the secret key" in refused.stderr
        assert "--passphrase-file" in refused.stderr
        assert not (tmp_path / "repo" / "current").exists()
        el7_only = tmp_path / "el7-artifacts"
        write_build(el7_only, "xcp-ng-8.2", "9.0", rpms.el7, consumer="el7", basearch="x86_64")
        el7_cmd = [sys.executable, "-m", "builder", "publish", "--artifacts", str(el7_only)]
        el7_cmd += ["--repo", str(tmp_path / "el7-repo"), "--key", uid, "--gnupg-home", str(home)]
        el7_refused = subprocess.run(el7_cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        assert el7_refused.returncode == 12, el7_refused.stderr
        assert "rpmsign could not sign" in el7_refused.stderr
        secret = tmp_path / "pass phrase"
        secret.write_text("s3cret\n")
        env = {**os.environ, "XDB_PASSPHRASE_FILE": str(secret)}
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False, env=env)
        assert done.returncode == 0, done.stderr
        assert "published 4 new package(s)" in done.stdout
        # gpg1 took the same passphrase file: the EL5 packages carry its V3 signatures.
        for package in (tmp_path / "repo" / "el5" / "i386").glob("*.rpm"):
            tags = signature_tags(package)
            for tag in (RPMSIGTAG_RSA, RPMSIGTAG_PGP):
                assert "version 3," in list_packets(tags[tag]), package.name
    finally:
        _kill_agent(home)


_NO_PASS = ("--passphrase", "")


def _gpg(home: Path, *args: str) -> str:
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", *_NO_PASS, *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def _fingerprints(home: Path, record: str, *args: str) -> list[str]:
    """Fingerprints of the ``record`` ("sec", "ssb", "pub", "sub") lines, in listed order."""
    found, last = [], ""
    for line in _gpg(home, "--with-colons", *args).splitlines():
        fields = line.split(":")
        if fields[0] == "fpr" and last == record:
            found.append(fields[9])
        last = fields[0] if fields[0] != "grp" else last
    return found


# Signature header tags (rpm's rpmtag.h): header-only RSA and DSA signatures, and the
# header+payload signatures rpm 4.4 also checks.
RPMSIGTAG_DSA = 267
RPMSIGTAG_RSA = 268
RPMSIGTAG_PGP = 1002
RPMSIGTAG_GPG = 1005
RPM_LEAD_SIZE = 96
RPM_BIN_TYPE = 7


def signature_tags(package: Path) -> dict[int, bytes]:
    """The binary tags of an RPM's signature header, by number, read from the file itself."""
    data = package.read_bytes()
    start = RPM_LEAD_SIZE
    assert data[start : start + 4] == b"\x8e\xad\xe8\x01", "no signature header after the lead"
    count, _size = struct.unpack(">II", data[start + 8 : start + 16])
    store = start + 16 + 16 * count
    tags = {}
    for index in range(count):
        entry = data[start + 16 + 16 * index : start + 32 + 16 * index]
        tag, kind, offset, length = struct.unpack(">IIII", entry)
        if kind == RPM_BIN_TYPE:
            tags[tag] = data[store + offset : store + offset + length]
    return tags


def list_packets(packet: bytes) -> str:
    """What ``gpg --list-packets`` says about one binary OpenPGP packet."""
    return subprocess.run(
        ["gpg", "--batch", "--list-packets"],
        input=packet,
        capture_output=True,
        check=True,
    ).stdout.decode()


def rpm_kv(packages: list[Path], public_key: Path, dbpath: Path) -> dict[Path, list[str]]:
    """``rpm -Kv`` per package path, with only ``public_key`` imported: the indented lines."""
    subprocess.run(["rpmkeys", "--dbpath", str(dbpath), "--import", str(public_key)], check=True)
    result = subprocess.run(
        ["rpm", "--dbpath", str(dbpath), "-Kv", *map(str, packages)],
        capture_output=True,
        text=True,
        check=True,
    )
    lines: dict[Path, list[str]] = {}
    current = Path()
    for line in result.stdout.splitlines():
        if line.startswith((" ", "\t")):
            lines[current].append(line.strip())
        else:
            current = Path(line.rstrip(":"))
            lines[current] = []
    assert sorted(lines) == sorted(packages)
    return lines


def test_el5_and_el7_from_one_build_carry_the_packets_their_rpm_verifies(
    tmp_path: Path, keys: Keys, rpms: Rpms
) -> None:
    """The very same RPM files, published for EL5 and for EL7: V3/SHA-1 versus V4/SHA-256."""
    artifacts = tmp_path / "artifacts"
    write_build(artifacts, "xcp-1.5", "8.4.1", rpms.el5, consumer="el5", basearch="i386")
    write_build(artifacts, "xcp-ng-8.2", "8.4.1", rpms.el5, consumer="el7", basearch="i386")
    target = tmp_path / "repo"
    result = run_publish(artifacts, target, keys)
    assert result.returncode == 0, result.stderr
    assert "(V3 signatures, GnuPG 1.4)" in result.stderr
    el5 = sorted((target / "el5" / "i386").glob("*.rpm"))
    el7 = sorted((target / "el7" / "i386").glob("*.rpm"))
    assert [p.name for p in el5] == [p.name for p in el7] == sorted(p.name for p in rpms.el5)
    short_id = keys.fingerprint[-8:].lower()
    key_file = target / layout.KEY_FILE_NAME

    verdicts = rpm_kv(el5 + el7, key_file, tmp_path / "rpmdb-kv")
    for package in el5:
        assert verdicts[package][0] == f"Header V3 RSA/SHA1 Signature, key ID {short_id}: OK"
        assert f"V3 RSA/SHA1 Signature, key ID {short_id}: OK" in verdicts[package]
        assert not any("V4" in line for line in verdicts[package])
        tags = signature_tags(package)
        assert RPMSIGTAG_DSA not in tags
        assert RPMSIGTAG_GPG not in tags
        for tag in (RPMSIGTAG_RSA, RPMSIGTAG_PGP):
            packets = list_packets(tags[tag])
            assert f":signature packet: algo 1, keyid {keys.fingerprint[-16:]}" in packets
            assert "version 3," in packets, (package.name, tag, packets)
            assert "digest algo 2," in packets, (package.name, tag, packets)
    for package in el7:
        assert verdicts[package][0] == f"Header V4 RSA/SHA256 Signature, key ID {short_id}: OK"
        assert not any("V3" in line for line in verdicts[package])
        tags = signature_tags(package)
        assert RPMSIGTAG_PGP not in tags  # EL7's rpm checks the header signature and digests
        packets = list_packets(tags[RPMSIGTAG_RSA])
        assert f":signature packet: algo 1, keyid {keys.fingerprint[-16:]}" in packets
        assert "version 4," in packets
        assert "digest algo 8," in packets
    checked = subprocess.run(
        ["rpmkeys", "--dbpath", str(tmp_path / "rpmdb-kv"), "--checksig", *map(str, el5 + el7)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("signatures OK") == len(el5 + el7)


def test_keygen_makes_a_key_both_consumer_families_verify(tmp_path: Path) -> None:
    home = tmp_path / "gnupg"
    try:
        result = keygen(home)
        assert "usable for el5 (rpm 4.4, V3 signatures made with gpg1) and el7" in result.stderr
        key = sign.find_key(result.stdout.strip(), home)
        # rpm 4.4 trusts only primary keys and verifies RSA up to 4096 bits.
        assert (key.algorithm, key.bits, key.is_subkey) == ("RSA", 2048, False)
        sign.check_key_for(Consumer.EL5, key, ["xcp-1.5"])
    finally:
        _kill_agent(home)


def _signed_regions(package: Path) -> tuple[bytes, bytes]:
    """(header, header + payload): what the header-only and the header+payload signatures sign."""
    data = package.read_bytes()
    count, size = struct.unpack(">II", data[RPM_LEAD_SIZE + 8 : RPM_LEAD_SIZE + 16])
    header_start = RPM_LEAD_SIZE + 16 + 16 * count + size
    header_start += -header_start % 8  # the signature header is padded to 8 bytes
    h_count, h_size = struct.unpack(">II", data[header_start + 8 : header_start + 16])
    header_end = header_start + 16 + 16 * h_count + h_size
    return data[header_start:header_end], data[header_start:]


def _mpi(data: bytes, offset: int) -> tuple[int, int]:
    bits = struct.unpack(">H", data[offset : offset + 2])[0]
    end = offset + 2 + (bits + 7) // 8
    return int.from_bytes(data[offset + 2 : end], "big"), end


def _rsa_public_numbers(home: Path, fingerprint: str) -> tuple[int, int]:
    """n and e of the primary key: the first packet of ``gpg --export`` (a V4 public key)."""
    exported = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--export", fingerprint],
        capture_output=True,
        check=True,
    ).stdout
    assert exported[0] == 0x99  # old format, tag 6 (public key), two-octet length
    body = exported[3:]
    assert body[0] == 4 and body[5] == 1  # V4 key, RSA
    n, end = _mpi(body, 6)
    e, _ = _mpi(body, end)
    return n, e


def rpm44_verdict(packet: bytes, signed: bytes, n: int, e: int, *, v4_trailer: bool = False) -> str:
    """rpm 4.4.2.3's RSA/SHA-1 check, modelled: its verifyRSASignature hashes the signed data
    and the packet's hashed part, but leaves out the V4 trailer (under ``#ifdef NOTYET``).

    ``v4_trailer`` adds it, as RFC 4880 (and every later rpm) does.
    """
    first = packet[0]
    offset = 1 + {0: 1, 1: 2, 2: 4}[first & 0x03]  # old-format packets, as gpg writes them
    body = packet[offset:]
    digest = hashlib.sha1(signed, usedforsecurity=False)
    if body[0] == 3:
        assert body[16] == 2  # SHA-1
        digest.update(body[2:7])  # signature type and creation time
        mpi_at = 19
    else:
        assert body[3] == 2
        hashed_length = struct.unpack(">H", body[4:6])[0]
        digest.update(body[: 6 + hashed_length])
        if v4_trailer:
            digest.update(b"\x04\xff" + struct.pack(">I", 6 + hashed_length))
        unhashed_at = 6 + hashed_length
        unhashed_length = struct.unpack(">H", body[unhashed_at : unhashed_at + 2])[0]
        mpi_at = unhashed_at + 2 + unhashed_length + 2
    signature, _ = _mpi(body, mpi_at)
    size = (n.bit_length() + 7) // 8
    expected = bytes.fromhex("3021300906052b0e03021a05000414") + digest.digest()
    padded = b"\x00\x01" + b"\xff" * (size - len(expected) - 3) + b"\x00" + expected
    return "OK" if pow(signature, e, n).to_bytes(size, "big") == padded else "BAD"


def test_rpm44_style_check_accepts_the_el5_packets_and_not_v4_ones(
    tmp_path: Path, keys: Keys, rpms: Rpms
) -> None:
    """What V3 buys: a V4/SHA-1 signature of the same key fails rpm 4.4's way of checking."""
    artifacts = tmp_path / "artifacts"
    write_build(artifacts, "xcp-1.5", "8.4.1", rpms.el5, consumer="el5", basearch="i386")
    target = tmp_path / "repo"
    result = run_publish(artifacts, target, keys)
    assert result.returncode == 0, result.stderr
    n, e = _rsa_public_numbers(keys.home, keys.fingerprint)
    packages = sorted((target / "el5" / "i386").glob("*.rpm"))
    assert packages
    for package in packages:
        tags = signature_tags(package)
        header, header_and_payload = _signed_regions(package)
        assert rpm44_verdict(tags[RPMSIGTAG_RSA], header, n, e) == "OK"
        assert rpm44_verdict(tags[RPMSIGTAG_PGP], header_and_payload, n, e) == "OK"
        # The model is no pushover: the same data with one byte changed fails.
        assert rpm44_verdict(tags[RPMSIGTAG_RSA], header[:-1] + b"\x00", n, e) == "BAD"

    # A modern gpg's V4 signature over the same header, with SHA-1 as rpm 4.4 wants: rpm 4.18
    # accepts it, rpm 4.4's check does not.
    v4 = tmp_path / "v4.rpm"
    shutil.copyfile(rpms.el5[0], v4)
    key = sign.find_key(keys.fingerprint, keys.home)
    subprocess.run(
        [
            "rpmsign",
            "--addsign",
            "--define",
            f"__gpg {shutil.which('gpg')}",
            "--define",
            f"_gpg_path {keys.home}",
            "--define",
            f"_gpg_name {key.signer}",
            "--define",
            "_gpg_digest_algo sha1",
            str(v4),
        ],
        capture_output=True,
        check=True,
    )
    tags = signature_tags(v4)
    assert "version 4," in list_packets(tags[RPMSIGTAG_RSA])
    with sign.public_key_file(key) as public_key:
        sign.verify_rpms([v4], public_key)  # good for rpm 4.18
    assert rpm44_verdict(tags[RPMSIGTAG_RSA], _signed_regions(v4)[0], n, e) == "BAD"
    # The trailer is the whole difference: with it, the same model accepts the V4 packet.
    assert rpm44_verdict(tags[RPMSIGTAG_RSA], _signed_regions(v4)[0], n, e, v4_trailer=True) == "OK"


def test_el5_repomd_signature_satisfies_gnupg_1_4_as_yum_3_uses_it(
    published: tuple[Path, Path], tmp_path: Path
) -> None:
    """yum 3.2.22 checks repomd.xml.asc through pygpgme, which drives GnuPG 1.4."""
    _, target = published
    home = tmp_path / "gnupg1"
    home.mkdir(mode=0o700)
    base = ["gpg1", "--homedir", str(home), "--batch", "--no-tty"]
    subprocess.run([*base, "--import", str(target / layout.KEY_FILE_NAME)], check=True)
    repodata = target / "el5" / "i386" / "repodata"
    signature, repomd = str(repodata / "repomd.xml.asc"), str(repodata / "repomd.xml")
    good = subprocess.run(
        [*base, "--status-fd", "1", "--verify", signature, repomd],
        capture_output=True,
        text=True,
        check=False,
    )
    assert good.returncode == 0, good.stderr
    assert "[GNUPG:] VALIDSIG" in good.stdout
    # The pipeline's own GnuPG 1.4 check (what yum does: key trusted, validity full) refuses a
    # repomd.xml changed after signing.
    tampered = tmp_path / "repomd.xml"
    tampered.write_text((repodata / "repomd.xml").read_text().replace("<revision>", "<revision>1"))
    sign.verify_detached_gnupg1(
        repodata / "repomd.xml", repodata / "repomd.xml.asc", target / layout.KEY_FILE_NAME
    )
    with pytest.raises(SigningError, match=r"GnuPG 1\.4, which yum 3\.2\.22"):
        sign.verify_detached_gnupg1(
            tampered, repodata / "repomd.xml.asc", target / layout.KEY_FILE_NAME
        )
    # Checked for an EL5 client, the refusal an operator reads is the one that client's yum gives.
    for consumer, said in (
        (Consumer.EL5, "GnuPG 1.4, which yum"),
        (Consumer.EL7, "does not verify"),
    ):
        with pytest.raises(SigningError, match=said):
            sign.verify_detached(
                tampered, repodata / "repomd.xml.asc", target / layout.KEY_FILE_NAME, consumer
            )


def _path_without_gpg1(tmp_path: Path) -> str:
    """A PATH with every program publish runs except gpg1."""
    bin_dir = tmp_path / "bin-without-gpg1"
    bin_dir.mkdir()
    programs = ("gpg", "gpgv", "gpgconf", "gpg-agent", "rpm", "rpmsign", "rpmkeys", "createrepo_c")
    for program in programs:
        found = shutil.which(program)
        assert found is not None, program
        (bin_dir / program).symlink_to(found)
    return str(bin_dir)


def test_el5_without_gpg1_fails_before_anything_is_signed(
    tmp_path: Path, keys: Keys, rpms: Rpms
) -> None:
    artifacts = make_artifacts(tmp_path, rpms)
    before = {p: p.read_bytes() for p in rpms.el5 + rpms.el7}
    env = {**os.environ, "PATH": _path_without_gpg1(tmp_path)}
    target = tmp_path / "repo"
    result = run_publish(artifacts, target, keys, env=env)
    assert result.returncode == 7, result.stderr
    assert "needs gpg1 (GnuPG 1.4)" in result.stderr
    assert "apt-get install gnupg1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not target.exists()  # refused before the lock, the versions or any signature
    assert {p: p.read_bytes() for p in before} == before

    # EL7 alone does not need it.
    el7_only = tmp_path / "el7-artifacts"
    write_build(el7_only, "xcp-ng-8.2", "9.0", rpms.el7, consumer="el7", basearch="x86_64")
    done = run_publish(el7_only, tmp_path / "el7-repo", keys, env=env)
    assert done.returncode == 0, done.stderr


def test_the_gnupg1_copy_of_the_key_is_private_and_removed(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile caches the directory it chose
    key = sign.find_key(keys.fingerprint, keys.home)
    with sign.gnupg1_home(key) as home:
        assert home.parent == tmp_path
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        listed = subprocess.run(
            ["gpg1", "--homedir", str(home), "--batch", "--list-secret-keys"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert keys.fingerprint[-8:] in listed
    assert not home.exists()
    with pytest.raises(RuntimeError, match="stop"), sign.gnupg1_home(key) as failed:
        raise RuntimeError("stop")
    assert not failed.exists()
    assert not list(tmp_path.glob("xdb-gnupg1-*"))


def _gen_key(home: Path, uid: str, algo: str) -> str:
    home.mkdir(mode=0o700)
    _gpg(home, "--quick-gen-key", uid, algo, "sign", "1d")
    (fingerprint,) = _fingerprints(home, "sec", "--list-secret-keys")
    return fingerprint


def test_el5_refuses_a_key_rpm_44_cannot_verify(tmp_path: Path, rpms: Rpms) -> None:
    home = tmp_path / "gnupg"
    try:
        fingerprint = _gen_key(home, "DSA-2048 <dsa@xcp-drbd-builder.invalid>", "dsa2048")
        artifacts = make_artifacts(tmp_path, rpms)
        cmd = [sys.executable, "-m", "builder", "publish", "--artifacts", str(artifacts)]
        cmd += ["--repo", str(tmp_path / "repo"), "--key", fingerprint, "--gnupg-home", str(home)]
        refused = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        assert refused.returncode == 12, refused.stderr
        assert f"Key {fingerprint} is DSA-2048" in refused.stderr
        assert "keys of 1024 bits (160-bit q, SHA-1)" in refused.stderr
        assert "xcp-1.5" in refused.stderr
        assert not (tmp_path / "repo").exists()
    finally:
        _kill_agent(home)


def test_a_certify_only_key_signs_with_its_signing_subkey(tmp_path: Path, rpms: Rpms) -> None:
    """The usual production layout: primary [C], signing subkey [S], encryption subkey [E]."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    try:
        uid = "Subkey signer <sub@xcp-drbd-builder.invalid>"
        _gpg(home, "--quick-gen-key", uid, "rsa2048", "cert", "never")
        (primary,) = _fingerprints(home, "sec", "--list-secret-keys")
        with pytest.raises(ConfigError, match="has no usable signing key"):
            sign.find_key(primary, home)

        _gpg(home, "--quick-add-key", primary, "rsa2048", "encr", "never")
        with pytest.raises(ConfigError, match="has no usable signing key"):
            sign.find_key(primary, home)
        for _ in range(2):
            _gpg(home, "--quick-add-key", primary, "rsa2048", "sign", "never")
        subkeys = _fingerprints(home, "ssb", "--list-secret-keys", primary)
        newest = subkeys[-1]
        key = sign.find_key(primary, home)
        assert (key.fingerprint, key.signing_fingerprint) == (primary, newest)
        assert key.key_id == newest[-16:].lower()
        assert sign.find_key(subkeys[1], home).signing_fingerprint == subkeys[1]

        # EL5's rpm 4.4 trusts only primary keys: a repository it could not verify is refused.
        target = tmp_path / "repo"
        cmd = [sys.executable, "-m", "builder", "publish", "--repo", str(target)]
        cmd += ["--key", primary, "--gnupg-home", str(home), "--artifacts"]
        both = make_artifacts(tmp_path, rpms)
        refused = subprocess.run(
            [*cmd, str(both)], cwd=ROOT, capture_output=True, text=True, check=False
        )
        assert refused.returncode == 12, refused.stderr
        assert "trusts only primary keys" in refused.stderr
        assert not (target / "current").exists()

        artifacts = tmp_path / "el7-artifacts"
        write_build(artifacts, "xcp-ng-8.2", "9.0", rpms.el7, consumer="el7", basearch="x86_64")
        result = subprocess.run(
            [*cmd, str(artifacts)], cwd=ROOT, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        assert f"signing with subkey {newest} of key {primary}" in result.stderr
        for package in (target / "current").resolve().rglob("*.rpm"):
            header = subprocess.run(
                ["rpm", "-qp", "--qf", "%{RSAHEADER:pgpsig}", package],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert header.endswith(f"Key ID {key.key_id}"), header

        # The published key is the whole key, so the subkey's signatures verify with it.
        exported = tmp_path / "imported"
        exported.mkdir(mode=0o700)
        _gpg(exported, "--import", str(target / layout.KEY_FILE_NAME))
        assert _fingerprints(exported, "pub", "--list-keys") == [primary]
        assert _fingerprints(exported, "sub", "--list-keys") == subkeys
        _kill_agent(exported)
        with serve_directory(target) as url:
            fetched = dnf_fetch(tmp_path / "dnf", url, "drbd-kmod")
        assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    finally:
        _kill_agent(home)


def test_nothing_to_publish_is_a_clear_error(tmp_path: Path, keys: Keys) -> None:
    (tmp_path / "artifacts" / "xcp-1.5" / "8.4.1.partial").mkdir(parents=True)
    result = run_publish(tmp_path / "artifacts", tmp_path / "repo", keys)
    assert result.returncode == 11
    assert "Nothing to publish" in result.stderr
    assert not (tmp_path / "repo" / "current").exists()


def test_a_file_that_is_not_an_rpm_is_an_input_error(tmp_path: Path, rpms: Rpms) -> None:
    garbage = tmp_path / "drbd-9.0-1.x86_64.rpm"
    garbage.write_bytes(b"this is not an RPM package\n")
    with pytest.raises(InputError, match="Cannot read an RPM header") as raised:
        changes.query_nevras([rpms.el7[0], garbage])
    assert raised.value.exit_code == 5
    assert changes.query_nevras(rpms.el7[:1]) == {rpms.el7[0]: "drbd-kmod-0:9.0-1.x86_64"}


def test_a_text_file_named_like_an_rpm_is_refused_not_read_as_a_manifest(
    rpms: Rpms, tmp_path: Path
) -> None:
    """rpm -qp reads a text file as a list of package paths unless told --nomanifest."""
    listing = tmp_path / "drbd-9.0-1.x86_64.rpm"
    listing.write_text(f"{rpms.el7[0]}\n")
    with pytest.raises(InputError, match="Cannot read an RPM header"):
        changes.query_nevras([listing])


def run_verify(target: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "builder", "verify", "--repo", str(target), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def _rewrite_in_place(path: Path, change: Callable[[bytes], bytes]) -> None:
    """Edit a file as a careless hand would, keeping its size and mtime (ctime moves)."""
    before = path.stat()
    data = change(path.read_bytes())
    assert len(data) == before.st_size
    with path.open("r+b") as handle:
        handle.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_package_changed_after_publishing_is_caught(
    tmp_path: Path, keys: Keys, rpms: Rpms
) -> None:
    artifacts, target = published_once(tmp_path, keys, rpms)
    clean = run_verify(target)
    assert clean.returncode == 0, clean.stderr
    assert "verified 4 package(s) in 2 repositories" in clean.stdout
    live = (target / "current").resolve()

    package = target / "el7" / "x86_64" / "drbd-kmod-doc-9.0-1.x86_64.rpm"
    original = package.read_bytes()
    _rewrite_in_place(package, lambda data: data[:-16] + bytes(16))
    audit = run_verify(target)
    assert audit.returncode == 15, audit.stderr
    assert "el7/x86_64/drbd-kmod-doc-9.0-1.x86_64.rpm is not the file the metadata" in audit.stderr
    assert "1 problem(s)" in audit.stderr

    write_build(
        artifacts, "xcp-ng-8.2", "9.0-2", rpms.el7_update, consumer="el7", basearch="x86_64"
    )
    refused = run_publish(artifacts, target, keys)
    assert refused.returncode == 11, refused.stderr
    assert "drbd-kmod-doc-9.0-1.x86_64.rpm changed after it was signed" in refused.stderr
    assert "Refusing to carry it into a new version" in refused.stderr
    assert (target / "current").resolve() == live
    assert "drbd-kmod-9.0-2.x86_64.rpm" not in _published_names(target)

    # Put the signed bytes back: the changed ctime makes publish read it again, and it passes.
    _rewrite_in_place(package, lambda _: original)
    restored = run_publish(artifacts, target, keys)
    assert restored.returncode == 0, restored.stderr
    assert "1 hashed" in restored.stderr
    assert run_verify(target).returncode == 0


def test_a_package_replaced_by_a_dangling_link_is_a_publish_error(
    tmp_path: Path, keys: Keys, rpms: Rpms
) -> None:
    artifacts, target = published_once(tmp_path, keys, rpms)
    package = target / "packages" / "el5" / "i386" / rpms.el5[0].name
    package.unlink()
    package.symlink_to("/nonexistent/drbd.rpm")
    write_build(
        artifacts, "xcp-ng-8.2", "9.0-2", rpms.el7_update, consumer="el7", basearch="x86_64"
    )
    result = run_publish(artifacts, target, keys)
    assert result.returncode == 11, result.stderr
    assert f"{rpms.el5[0].name} is no longer a regular file (it is a symbolic link)" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    audit = run_verify(target)
    assert audit.returncode == 15
    assert "cannot be fetched" in audit.stderr


def test_verify_trusts_the_key_given_not_the_one_served(
    tmp_path: Path, keys: Keys, rpms: Rpms
) -> None:
    _artifacts, target = published_once(tmp_path, keys, rpms)
    other = tmp_path / "other.asc"
    other.write_text(
        subprocess.run(
            ["gpg", "--homedir", str(keys.other_home), "--armor", "--export"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    result = run_verify(target, "--key-file", str(other))
    assert result.returncode == 15
    assert f"but the repository is signed with {keys.fingerprint}" in result.stderr


def test_a_repository_from_before_the_package_store_is_moved_into_it(
    tmp_path: Path, keys: Keys, rpms: Rpms
) -> None:
    """Versions used to hold their own packages; the next publish adopts them, served alike."""
    artifacts = make_artifacts(tmp_path, rpms)
    made = tmp_path / "made"
    assert run_publish(artifacts, made, keys).returncode == 0
    # Lay the same signed files out as a format-1 repository did.
    target = tmp_path / "repo"
    version = target / "versions" / "20260101T000000.000000Z"
    version.mkdir(parents=True)
    packages = []
    for consumer in ("el5", "el7"):
        shutil.copytree(made / consumer, version / consumer, symlinks=False)
        os.symlink(f"current/{consumer}", target / consumer)
    for path in sorted(version.rglob("*.rpm")):
        relative = path.relative_to(version).as_posix()
        nevra = subprocess.run(
            [
                "rpm",
                "-qp",
                "--nosignature",
                "--qf",
                "%{NAME}-0:%{VERSION}-%{RELEASE}.%{ARCH}",
                path,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        source = next(r for r in [*rpms.el5, *rpms.el7] if r.name == path.name)
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        packages.append({"path": relative, "nevra": nevra, "source_sha256": digest})
    for name in (layout.KEY_FILE_NAME, "xcp-drbd-el5.repo", "xcp-drbd-el7.repo"):
        shutil.copyfile(made / name, version / name)
        os.symlink(f"current/{name}", target / name)
    state = {"format": 1, "key": keys.fingerprint, "packages": packages}
    (version / STATE_FILE_NAME).write_text(json.dumps(state))
    os.symlink(f"versions/{version.name}", target / "current")
    assert _published_names(target) == {r.name for r in [*rpms.el5, *rpms.el7]}

    write_build(
        artifacts, "xcp-ng-8.2", "9.0-2", rpms.el7_update, consumer="el7", basearch="x86_64"
    )
    result = run_publish(artifacts, target, keys)
    assert result.returncode == 0, result.stderr
    assert "Move the 4 published package(s)" in result.stderr
    assert os.readlink(target / "el7") == "packages/el7"
    assert "drbd-kmod-9.0-2.x86_64.rpm" in _published_names(target)
    assert run_verify(target).returncode == 0
    with serve_directory(target) as url:
        old = dnf_fetch(tmp_path / "dnf", url, "drbd-kmod-9.0-1")
        new = dnf_fetch(tmp_path / "dnf-new", url, "drbd-kmod-9.0-2")
    assert old.returncode == 0, old.stdout + old.stderr
    assert new.returncode == 0, new.stdout + new.stderr


def test_each_package_traces_to_its_build_through_a_signed_statement(
    tmp_path: Path, keys: Keys, rpms: Rpms
) -> None:
    _artifacts, target = published_once(tmp_path, keys, rpms)
    # A consumer holding a package: its sha256 finds the statement, gpgv checks it.
    package = target / "el5" / "i386" / rpms.el5[0].name
    digest = hashlib.sha256(package.read_bytes()).hexdigest()
    found = [p for p in (target / "provenance").rglob("*.intoto.json") if digest in p.read_text()]
    assert len(found) == 1
    statement = json.loads(found[0].read_text())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert {"name": package.name, "digest": {"sha256": digest}} in statement["subject"]
    manifest = statement["predicate"]["manifest"]
    assert manifest["target"] == "xcp-1.5"
    assert manifest["kernel_release"].endswith("xen")
    source_digest = hashlib.sha256(rpms.el5[0].read_bytes()).hexdigest()
    assert {"file": package.name, "sha256": source_digest} in manifest["outputs"]
    keyring = tmp_path / "keyring.gpg"
    subprocess.run(
        [
            "gpg",
            "--batch",
            "--dearmor",
            "--output",
            str(keyring),
            str(target / layout.KEY_FILE_NAME),
        ],
        check=True,
    )
    checked = subprocess.run(
        ["gpgv", "--keyring", str(keyring), f"{found[0]}.asc", str(found[0])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr

    # A statement edited after signing, or one naming another package, fails verify.
    text = found[0].read_text()
    found[0].write_text(text.replace('"xcp-1.5"', '"xcp-9.9"'))
    audit = run_verify(target)
    assert audit.returncode == 15
    assert f"el5/i386/{package.name}: its provenance statement does not verify" in audit.stderr
    found[0].write_text(text)
    assert run_verify(target).returncode == 0
