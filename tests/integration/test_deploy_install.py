"""The runbook's install step on an EL5 dom0, with pygpgme present, absent, or absent and allowed.

The step writes to /etc (the key, the .repo file, the DRBD resource): it runs in a private mount
namespace with an overlay over /etc, so this machine's /etc stays untouched and the overlay's
upper directory shows exactly what the step wrote. The dom0's programs are stubs that log their
calls; `python` is the real interpreter, with or without a `gpgme` module to import.
"""

from __future__ import annotations

import configparser
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.deploy.configs import REPO_FILE_WITHOUT_PYGPGME
from tests.deploy_support import pool_data, render_pool

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Run:
    returncode: int
    stderr: str
    written: Path  # the overlay's upper directory: what the step wrote under /etc
    calls: list[str]  # the stubbed programs the step ran, in order


def stub(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


@pytest.fixture(scope="module")
def can_overlay_etc(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.mktemp("overlay-probe")
    (base / "upper").mkdir()
    (base / "work").mkdir()
    probe = subprocess.run(
        ["unshare", "--mount", "sh", "-c", _mount_etc(base) + " && touch /etc/.xdb-probe"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot overlay /etc in a mount namespace here: {probe.stderr.strip()}")


def _mount_etc(base: Path) -> str:
    """/etc as a dom0 sees it: this machine's, plus ``base/dom0-etc``; writes go to ``upper``."""
    dom0 = base / "dom0-etc"
    (dom0 / "yum.repos.d").mkdir(parents=True, exist_ok=True)
    (dom0 / "yum.repos.d" / "CentOS-Base.repo").write_text("[base]\nenabled=0\n")
    options = f"lowerdir={dom0}:/etc,upperdir={base / 'upper'},workdir={base / 'work'}"
    return f"mount -t overlay overlay -o {shlex.quote(options)} /etc"


def run_install(tmp_path: Path, output: Path, *, pygpgme: bool) -> Run:
    base = tmp_path / "host"
    for name in ("upper", "work", "bin", "python-path"):
        (base / name).mkdir(parents=True)
    log = base / "calls"
    bin_dir = base / "bin"
    record = f'echo "$(basename "$0") $*" >> {log}'
    stub(bin_dir, "uname", "echo xcp1")
    stub(bin_dir, "ip", 'echo "6: $4    inet 10.0.0.1/24 brd 10.0.0.255 scope global $4"')
    # curl -fsS -o FILE URL: write a stand-in key where the runbook asks for it.
    stub(bin_dir, "curl", f'{record}\necho "KEY from $4" > "$3"')
    for name in ("gpg", "rpm", "yum", "drbdadm", "modprobe", "logger"):
        stub(bin_dir, name, record)
    stub(bin_dir, "python", f'{record}\nexec {shlex.quote(sys.executable)} "$@"')
    if pygpgme:
        (base / "python-path" / "gpgme.py").write_text('"""Stands in for pygpgme."""\n')
    env = f"PATH={bin_dir}:/usr/bin:/bin PYTHONPATH={base / 'python-path'}"
    script = f"{_mount_etc(base)} && exec env {env} sh {output / 'xcp1' / 'runbook.sh'} install"
    result = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return Run(result.returncode, result.stderr, base / "upper", calls)


def installed_repo(run: Run) -> configparser.SectionProxy:
    parser = configparser.ConfigParser()
    parser.read_string((run.written / "yum.repos.d" / "xcp-drbd-builder.repo").read_text())
    return parser["xcp-drbd-builder"]


@pytest.mark.usefixtures("can_overlay_etc")
def test_with_pygpgme_the_repo_is_enabled_with_repo_gpgcheck(tmp_path: Path) -> None:
    output = render_pool(tmp_path, pool_data())
    run = run_install(tmp_path, output, pygpgme=True)
    assert run.returncode == 0, run.stderr
    assert run.calls[0] == "python -c import gpgme"
    repo = installed_repo(run)
    assert (repo["gpgcheck"], repo["repo_gpgcheck"]) == ("1", "1")
    assert (run.written / "pki" / "rpm-gpg" / "RPM-GPG-KEY-xcp-drbd-builder").is_file()
    assert any(call.startswith("yum -y install drbd drbd-km-") for call in run.calls)
    assert not any(call.startswith("logger") for call in run.calls)


@pytest.mark.usefixtures("can_overlay_etc")
def test_without_pygpgme_the_step_stops_and_says_how_to_install_it(tmp_path: Path) -> None:
    output = render_pool(tmp_path, pool_data())
    run = run_install(tmp_path, output, pygpgme=False)
    assert run.returncode == 1
    assert "python cannot import gpgme (pygpgme)" in run.stderr
    assert "yum --enablerepo=base install pygpgme" in run.stderr
    assert "without_pygpgme: repo_gpgcheck=0" in run.stderr
    # Nothing was changed: no key, no .repo file, no yum.
    assert run.calls == ["python -c import gpgme"]
    assert not any(run.written.iterdir())


@pytest.mark.usefixtures("can_overlay_etc")
def test_the_recorded_override_falls_back_to_repo_gpgcheck_0_only_without_pygpgme(
    tmp_path: Path,
) -> None:
    output = render_pool(tmp_path, pool_data(**{"repo.without_pygpgme": "repo_gpgcheck=0"}))
    run = run_install(tmp_path / "without", output, pygpgme=False)
    assert run.returncode == 0, run.stderr
    assert "WARNING: python cannot import gpgme (pygpgme)" in run.stderr
    repo = installed_repo(run)
    assert (repo["gpgcheck"], repo["repo_gpgcheck"]) == ("1", "0")
    installed = (run.written / "yum.repos.d" / "xcp-drbd-builder.repo").read_text()
    assert installed == (output / "xcp1" / REPO_FILE_WITHOUT_PYGPGME).read_text()
    assert "(repo.without_pygpgme: repo_gpgcheck=0 in the pool file)" in installed
    (logged,) = [call for call in run.calls if call.startswith("logger")]
    assert "repo_gpgcheck=0 on xcp1, no pygpgme" in logged
    assert any(call.startswith("yum -y install") for call in run.calls)

    # The override only allows the fallback: where pygpgme works, the metadata is checked.
    with_pygpgme = run_install(tmp_path / "with", output, pygpgme=True)
    assert with_pygpgme.returncode == 0, with_pygpgme.stderr
    assert installed_repo(with_pygpgme)["repo_gpgcheck"] == "1"
    assert "WARNING" not in with_pygpgme.stderr
