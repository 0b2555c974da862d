from __future__ import annotations

import configparser
import os
import subprocess
from pathlib import Path

import pytest

from builder import __version__
from builder.cli import main
from builder.deploy.configs import REPO_FILE_WITHOUT_PYGPGME
from builder.deploy.render import RenderedFile, write_files
from tests.deploy_support import pool_data, render_pool, write_pool

HOST_FILES = ("r0.res", "lvm.conf.snippet", "xcp-drbd-builder.repo", "runbook.sh")


def snapshot(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    return {
        str(p.relative_to(directory)): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_render_writes_every_file_per_host_with_provenance(tmp_path: Path) -> None:
    output = render_pool(tmp_path)
    pool = tmp_path / "pool.yaml"
    names = {str(p.relative_to(output)) for p in output.rglob("*") if p.is_file()}
    assert names == {"README.txt"} | {f"{h}/{f}" for h in ("xcp1", "xcp2") for f in HOST_FILES}
    for name in names:
        text = (output / name).read_text()
        assert f"xcp-drbd-builder {__version__}" in text
        assert f"from pool file {pool.resolve()}" in text
    assert os.access(output / "xcp1" / "runbook.sh", os.X_OK)


def test_rerendering_an_unchanged_pool_changes_nothing_on_disk(tmp_path: Path) -> None:
    output = render_pool(tmp_path)
    before = snapshot(output)
    render_pool(tmp_path)
    assert snapshot(output) == before


def test_changed_pool_replaces_only_the_files_that_change(tmp_path: Path) -> None:
    output = render_pool(tmp_path)
    before = snapshot(output)
    render_pool(tmp_path, pool_data(**{"hosts.1.disk": "/dev/disk/by-id/ata-DISK-THREE"}))
    after = snapshot(output)
    # The provenance header (pool sha256) changes everywhere; the new disk is where it belongs.
    assert all(after[name][2] != before[name][2] for name in before)
    assert "ata-DISK-THREE" in (output / "xcp2" / "lvm.conf.snippet").read_text()
    assert "ata-DISK-THREE" not in (output / "xcp1" / "lvm.conf.snippet").read_text()
    assert not list(output.rglob("*.partial"))


def test_write_files_is_atomic_and_cleans_up_on_failure(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("old\n")
    blocker = tmp_path / "sub"
    blocker.write_text("a file where a directory should be")
    files = {"a": RenderedFile("new\n"), "sub/b": RenderedFile("b\n")}
    with pytest.raises(Exception, match="Cannot write into"):
        write_files(tmp_path, files)
    assert (tmp_path / "a").read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "sub"]


def test_output_that_is_a_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = write_pool(tmp_path, pool_data())
    (tmp_path / "out").write_text("x")
    argv = ["deploy", "render", "--pool", str(pool), "--output", str(tmp_path / "out")]
    assert main([*argv, "--no-repo-check", "-q"]) == 13
    assert "not a directory" in capsys.readouterr().err


def test_repo_file_points_at_the_targets_consumer_directory_and_checks_signatures(
    tmp_path: Path,
) -> None:
    output = render_pool(tmp_path, pool_data(**{"repo.url": "http://repo.lan/drbd/"}))
    parser = configparser.ConfigParser()
    parser.read_string((output / "xcp1" / "xcp-drbd-builder.repo").read_text())
    section = parser["xcp-drbd-builder"]
    assert section["baseurl"] == "http://repo.lan/drbd/el5/i386/"
    assert section["gpgcheck"] == "1"
    assert section["repo_gpgcheck"] == "1"
    assert section["gpgkey"] == "file:///etc/pki/rpm-gpg/RPM-GPG-KEY-xcp-drbd-builder"
    runbook = (output / "xcp1" / "runbook.sh").read_text()
    assert "GPGKEY_URL=http://repo.lan/drbd/RPM-GPG-KEY-xcp-drbd-builder" in runbook
    assert "PACKAGES='drbd drbd-km-2.6.32.12_0.7.1.xs1.4.90.530.170661xen'" in runbook


def test_runbooks_split_the_sr_steps_between_the_hosts(tmp_path: Path) -> None:
    output = render_pool(tmp_path, pool_data(**{"drbd.initial_sync_from": "xcp2"}))
    first = (output / "xcp2" / "runbook.sh").read_text()
    second = (output / "xcp1" / "runbook.sh").read_text()
    assert "xe sr-create" in first
    assert "shared=true" in first
    assert "drbdadm primary --force" in first
    assert "xe sr-create" not in second
    assert "xe pbd-create" in second
    assert "xe pbd-plug" in second
    assert "drbdadm primary --force" not in second
    for text in (first, second):
        assert "should all run on ONE host" in text
        assert "live migration" in text
        assert "DEVICE=/dev/drbd1" in text


def test_drbd83_initial_sync_uses_its_own_syntax(tmp_path: Path) -> None:
    output = render_pool(tmp_path, pool_data(**{"drbd.version": "8.3.16"}))
    runbook = (output / "xcp1" / "runbook.sh").read_text()
    assert "drbdadm -- --overwrite-data-of-peer primary r0" in runbook


def test_lvm_snippet_rejects_the_backing_disk_and_keeps_drbd(tmp_path: Path) -> None:
    output = render_pool(tmp_path, pool_data(**{"hosts.0.disk": "/dev/disk/by-id/ata-X.Y+1"}))
    snippet = (output / "xcp1" / "lvm.conf.snippet").read_text()
    assert '"a|^/dev/drbd[0-9]+$|"' in snippet
    assert '"r|^/dev/disk/by-id/ata-X[.]Y[+]1$|"' in snippet
    assert "write_cache_state = 0" in snippet
    assert '"a|.*|"' not in snippet


def test_renaming_a_host_warns_about_its_old_runbook(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = render_pool(tmp_path)
    capsys.readouterr()
    renamed = pool_data(**{"hosts.1.name": "xcp3"})
    pool = write_pool(tmp_path, renamed)
    argv = ["deploy", "render", "--pool", str(pool), "--output", str(output), "--no-repo-check"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"{output / 'xcp2'} is from an earlier render" in err
    assert (output / "xcp3" / "runbook.sh").exists()


def test_module_only_drbd_installs_drbd_utils_and_the_kernels_module(tmp_path: Path) -> None:
    # The recipe registry, not deploy, knows what each family's hosts install.
    output = render_pool(tmp_path, pool_data(**{"drbd.version": "8.4.11"}))
    runbook = (output / "xcp1" / "runbook.sh").read_text()
    assert "PACKAGES='drbd-utils drbd-km-2.6.32.12_0.7.1.xs1.4.90.530.170661xen'" in runbook


def _install_step(runbook: str) -> str:
    start = runbook.index("step_install() {")
    return runbook[start : runbook.index("\n}\n", start)]


def test_el5_install_checks_pygpgme_before_it_enables_the_repo(tmp_path: Path) -> None:
    output = render_pool(tmp_path)
    runbook = (output / "xcp1" / "runbook.sh").read_text()
    assert "python -c 'import gpgme'" in runbook
    install = _install_step(runbook)
    # Before the key, the .repo file and yum: a stop leaves the host as it was.
    assert install.index("check_pygpgme") < install.index("curl")
    assert install.index("check_pygpgme") < install.index('cp "$REPO_SOURCE" "$REPO_FILE"')
    assert "yum --enablerepo=base install pygpgme" in runbook
    assert "vault.centos.org/5.11/os/$basearch/" in runbook
    assert "repo_gpgcheck=0" not in (output / "xcp1" / "xcp-drbd-builder.repo").read_text()
    assert not list(output.rglob("*.without-pygpgme"))
    assert REPO_FILE_WITHOUT_PYGPGME not in runbook


def test_the_repo_gpgcheck_fallback_is_explicit_and_recorded(tmp_path: Path) -> None:
    output = render_pool(tmp_path, pool_data(**{"repo.without_pygpgme": "repo_gpgcheck=0"}))
    for host in ("xcp1", "xcp2"):
        fallback = (output / host / REPO_FILE_WITHOUT_PYGPGME).read_text()
        parser = configparser.ConfigParser()
        parser.read_string(fallback)
        section = parser["xcp-drbd-builder"]
        assert (section["gpgcheck"], section["repo_gpgcheck"]) == ("1", "0")
        normal = configparser.ConfigParser()
        normal.read_string((output / host / "xcp-drbd-builder.repo").read_text())
        assert normal["xcp-drbd-builder"]["repo_gpgcheck"] == "1"
        runbook = (output / host / "runbook.sh").read_text()
        assert f'REPO_SOURCE="$HERE/{REPO_FILE_WITHOUT_PYGPGME}"' in runbook
        assert "yum --enablerepo=base install pygpgme" not in runbook
    for path in output.rglob("*"):
        if path.is_file():
            assert "(repo.without_pygpgme: repo_gpgcheck=0 in the pool file)" in path.read_text()


def test_el7_dom0s_have_pygpgme_and_no_fallback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    el7 = {"target": "xcp-ng-8.2", "drbd.version": "9.2.5"}
    output = render_pool(tmp_path, pool_data(**el7))
    assert "check_pygpgme" not in (output / "xcp1" / "runbook.sh").read_text()
    capsys.readouterr()
    pool = write_pool(tmp_path, pool_data(**el7, **{"repo.without_pygpgme": "repo_gpgcheck=0"}))
    argv = ["deploy", "render", "--pool", str(pool), "--output", str(tmp_path / "el7")]
    assert main([*argv, "--no-repo-check", "-q"]) == 2
    err = capsys.readouterr().err
    assert "repo.without_pygpgme" in err
    assert "only EL5 dom0s can lack pygpgme" in err
    assert not (tmp_path / "el7").exists()


def test_an_unknown_pygpgme_choice_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = write_pool(tmp_path, pool_data(**{"repo.without_pygpgme": "ignore"}))
    argv = ["deploy", "check", "--pool", str(pool), "--no-repo-check", "-q"]
    assert main(argv) == 2
    assert "'ignore' is not one of: stop, repo_gpgcheck=0" in capsys.readouterr().err


def test_a_line_break_in_the_pool_path_cannot_reach_the_runbook_as_a_command(
    tmp_path: Path,
) -> None:
    planted = tmp_path / "INJECTED"
    hostile = tmp_path / f"x\ntouch {planted}\n"
    hostile.mkdir(parents=True)
    output = render_pool(hostile)
    runbook = output / "xcp1" / "runbook.sh"
    text = runbook.read_text()
    assert f"touch {planted}\\n" in text  # escaped inside the comment, not a line of its own
    assert not any(line.startswith("touch ") for line in text.splitlines())
    listing = subprocess.run(
        ["sh", str(runbook)], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert "1. install" in listing.stdout + listing.stderr  # it only listed the steps
    assert not planted.exists()
    for name in HOST_FILES:
        for line in (output / "xcp1" / name).read_text().splitlines():
            assert not line.startswith("touch "), name


DAY_TWO = ("status", "guard", "split-brain", "master-change", "boot", "upgrade")


@pytest.mark.parametrize(
    ("version", "discard"),
    [
        ("8.3.16", 'drbdadm -- --discard-my-data connect "$RESOURCE"'),
        ("8.4.1", 'drbdadm connect --discard-my-data "$RESOURCE"'),
        ("9.2.5", 'drbdadm connect --discard-my-data "$RESOURCE"'),
    ],
)
def test_split_brain_recovery_uses_the_syntax_of_the_pools_drbd(
    tmp_path: Path, version: str, discard: str
) -> None:
    output = render_pool(tmp_path, pool_data(**{"drbd.version": version}))
    for host in ("xcp1", "xcp2"):
        runbook = (output / host / "runbook.sh").read_text()
        assert discard in runbook
        for step in DAY_TWO:
            assert f"    {step}) require_host;" in runbook
    forms = {
        'drbdadm -- --discard-my-data connect "$RESOURCE"',
        'drbdadm connect --discard-my-data "$RESOURCE"',
    }
    (other,) = forms - {discard}
    assert other not in runbook


def test_the_dom0_init_system_decides_how_boot_orders_drbd_before_xapi(tmp_path: Path) -> None:
    sysv = (render_pool(tmp_path / "el5", pool_data()) / "xcp1" / "runbook.sh").read_text()
    assert "chkconfig drbd on" in sysv
    assert "systemctl" not in sysv
    el7 = pool_data(**{"target": "xcp-ng-8.2", "drbd.version": "8.4.11"})
    systemd = (render_pool(tmp_path / "el7", el7) / "xcp1" / "runbook.sh").read_text()
    assert "systemctl enable drbd.service" in systemd
    assert "Before=xapi.service" in systemd
    assert "SYSTEMD_DROPIN=/etc/systemd/system/drbd.service.d/xcp-drbd-builder.conf" in systemd
    assert "chkconfig" not in systemd


@pytest.mark.parametrize("version", ["8.3.16", "8.4.1", "9.2.5"])
def test_the_resource_promotes_at_boot_and_does_not_wait_for_ever(
    tmp_path: Path, version: str
) -> None:
    res = (
        render_pool(tmp_path, pool_data(**{"drbd.version": version})) / "xcp1" / "r0.res"
    ).read_text()
    assert "wfc-timeout 120;" in res
    assert "degr-wfc-timeout 60;" in res
    if version.startswith("9"):
        assert "auto-promote yes;" in res
        assert "become-primary-on" not in res
    else:
        assert "become-primary-on both;" in res
        assert "auto-promote" not in res


def test_guard_values_reach_the_runbook_quoted_and_the_readme(tmp_path: Path) -> None:
    data = pool_data(**{"guard.grace_minutes": 12, "guard.hook": "/usr/local/bin/page --team a"})
    data["drbd"]["resource"] = "sr.a"
    output = render_pool(tmp_path, data)
    runbook = (output / "xcp2" / "runbook.sh").read_text()
    assert "GRACE_MINUTES=12\n" in runbook
    assert "GUARD_HOOK='/usr/local/bin/page --team a'\n" in runbook
    # cron skips files in /etc/cron.d with a dot in their names
    assert "CRON_FILE=/etc/cron.d/xcp-drbd-builder-guard-sr-a\n" in runbook
    readme = (output / "README.txt").read_text()
    assert "Day two:" in readme
    assert "longer than\n  12 minutes" in readme
    assert "runs `/usr/local/bin/page --team a` once" in readme
    assert "There is no default for --keep." in readme


def test_usage_lists_the_day_two_steps(tmp_path: Path) -> None:
    output = render_pool(tmp_path)
    usage = subprocess.run(
        ["sh", str(output / "xcp1" / "runbook.sh"), "no-such-step"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert usage.returncode == 2
    lines = usage.stderr.splitlines()
    assert lines[1].startswith("  1. install")
    listed = [line.split()[1] for line in lines if line.startswith("  - ")]
    assert listed == [
        "status", "guard", "guard", "split-brain", "master-change", "boot", "upgrade",
        "kernel-check",
    ]  # fmt: skip
    assert len(lines) == 1 + 7 + 8  # nothing else from the header slips into the list
