"""The CI publish and upload scripts, with a key from the environment as a secret store gives it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.rpmfactory import build_rpms, write_build

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "ci" / "scripts"


def test_publish_takes_the_key_from_the_environment_and_never_shows_it(tmp_path: Path) -> None:
    home = tmp_path / "signer"
    fingerprint = subprocess.run(
        [sys.executable, "-m", "builder", "keygen", "--gnupg-home", str(home)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    secret = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--armor", "--export-secret-keys", fingerprint],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
    rpms = build_rpms(tmp_path / "rpms", ["drbd-kmod"], version="9.0", arch="x86_64")
    artifacts = tmp_path / "artifacts"
    write_build(artifacts, "xcp-ng-8.2", "9.0", rpms, consumer="el7", basearch="x86_64")
    env = {
        **os.environ,
        "XDB_SIGNING_KEY_ASC": secret,
        "XDB_SIGNING_KEY": fingerprint,
        "XDB_PASSPHRASE": "",
        "TMPDIR": str(tmp_path),
    }
    result = subprocess.run(
        [str(SCRIPTS / "publish"), str(artifacts), str(tmp_path / "public")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified 1 package(s) in 1 repository" in result.stdout
    key_lines = [line for line in secret.splitlines() if len(line) > 40]
    log = result.stdout + result.stderr
    assert not any(line in log for line in key_lines)
    assert "PRIVATE KEY" not in log
    assert not list(tmp_path.glob("xdb-gnupg.*")), "the temporary GnuPG home is removed"
    for path in (tmp_path / "public").rglob("*"):
        if path.is_file() and not path.name.endswith(".rpm"):
            assert "PRIVATE KEY" not in path.read_text(errors="replace")

    # A local upload target: the same tree, links kept, the switch last.
    served = tmp_path / "www"
    uploaded = subprocess.run(
        [str(SCRIPTS / "upload"), str(tmp_path / "public"), str(served)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert uploaded.returncode == 0, uploaded.stderr
    assert os.readlink(served / "el7") == "packages/el7"
    check = subprocess.run(
        [sys.executable, "-m", "builder", "verify", "--repo", str(served)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr


def test_gather_places_each_jobs_build_and_refuses_a_changed_output(tmp_path: Path) -> None:
    rpms = build_rpms(tmp_path / "rpms", ["drbd", "drbd-km-xen"], version="8.4.1", arch="i686")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    # What the artifact download leaves: one folder per job holding that build's files.
    for job, (target, version) in enumerate([("xcp-1.5", "8.4.1"), ("xcp-1.6", "8.4.1")]):
        built = write_build(tmp_path / f"job{job}", target, version, rpms, consumer="el5",
                            basearch="i386")  # fmt: skip
        built.rename(incoming / f"build-{target}-{version}")

    def gather() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(SCRIPTS / "gather"), str(incoming), str(tmp_path / "artifacts")],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            check=False,
        )

    tampered = incoming / "build-xcp-1.6-8.4.1" / rpms[0].name
    original = tampered.read_bytes()
    middle = len(original) // 2
    tampered.write_bytes(original[:middle] + bytes([original[middle] ^ 1]) + original[middle + 1 :])
    refused = gather()
    assert refused.returncode == 1
    assert f"{tampered} has sha256" in refused.stderr
    tampered.write_bytes(original)
    result = gather()
    assert result.returncode == 0, result.stderr
    for target in ("xcp-1.5", "xcp-1.6"):
        placed = tmp_path / "artifacts" / target / "8.4.1"
        assert sorted(p.name for p in placed.iterdir()) == sorted(
            ["build.log", "manifest.json", *(r.name for r in rpms)]
        )
