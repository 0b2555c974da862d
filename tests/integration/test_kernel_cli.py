"""`python -m builder kernel` on real inputs: an ISO from xorriso holding an rpmbuild-made
kernel-devel RPM of Debian's real kernel tree, served from disk and over HTTP on 127.0.0.1."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.registry import load_registry
from tests import rpmfactory
from tests.integration.conftest import Utils
from tests.support.http import serve
from tests.support.kernelrpm import build_small_rpm, make_iso
from tests.support.labspec import write_kernel_lab_spec
from tests.support.vendorrepo import key_yaml, make_vendor, signed_repository, yum_target_spec

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def specs_dir(
    tmp_path: Path, *, iso: str, inner: str, release: str, sha256: str | None = None
) -> Path:
    return write_kernel_lab_spec(
        tmp_path / "specs", iso=iso, inner=inner, release=release, sha256=sha256
    )


def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    # The state directory of the test, never the user's (the built-in targets record there).
    env = {**os.environ, "XDG_STATE_HOME": str(cache.parent / "state")}
    return subprocess.run(
        [sys.executable, "-m", "builder", *args, "--cache", str(cache)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
        check=False,
    )


def lab_kernel(specs: Path, *args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    """``kernel --xcp lab`` with the spec directory ``specs``."""
    return run_cli("kernel", "--xcp", "lab", "--specs", str(specs), *args, cache=cache)


def inner_path(rpm: Path) -> str:
    return f"domain0/RPMS/{rpm.parent.name}/{rpm.name}"


def leftovers(cache: Path) -> list[Path]:
    return [
        p
        for p in cache.rglob("*")
        if p.name.endswith((".partial", ".part")) or ".partial-" in p.name
    ]


def test_kernel_from_a_local_iso(
    tmp_path: Path, binpkg_iso: Path, kernel_rpm: Path, kernel_release: str
) -> None:
    specs = specs_dir(
        tmp_path,
        iso="file:///nonexistent.iso",
        inner=inner_path(kernel_rpm),
        release=kernel_release,
    )
    cache = tmp_path / "cache"
    result = lab_kernel(
        specs,
        "--iso",
        str(binpkg_iso),
        "--json",
        cache=cache,
    )
    assert result.returncode == 0, result.stderr
    tree = json.loads(result.stdout)
    assert tree["release"] == kernel_release
    build_dir = Path(tree["build_dir"])
    assert (build_dir / "Makefile").is_file()
    assert (build_dir / ".config").is_file()
    # The headers' scripts symlink points into the kbuild tree, which came along.
    assert (build_dir / "scripts" / "Makefile.build").is_file()
    lock = json.loads((specs / "checksums.lock").read_text())  # a --specs DIR keeps its own
    assert "file:///nonexistent.iso" in lock
    assert lock[f"file:{kernel_rpm.name}"] == tree["rpm_sha256"]
    assert not (tmp_path / "state").exists()

    # Everything cached: the second call only stats its inputs.
    started = time.monotonic()
    again = lab_kernel(specs, "--iso", str(binpkg_iso), cache=cache)
    elapsed = time.monotonic() - started
    assert again.returncode == 0, again.stderr
    assert f"build tree:     {build_dir}" in again.stdout
    assert "unchanged since the last call" in again.stderr
    assert elapsed < 2.0  # generous for a loaded CI machine; the benchmark holds the goal
    assert not leftovers(cache)

    # A changed ISO is looked at again (here: the same content, so the same tree).
    os.utime(binpkg_iso)
    third = lab_kernel(specs, "--iso", str(binpkg_iso), cache=cache)
    assert third.returncode == 0, third.stderr
    assert "unchanged since the last call" not in third.stderr
    assert f"build tree:     {build_dir}" in third.stdout


def test_404_is_a_clear_download_error(
    tmp_path: Path, kernel_rpm: Path, kernel_release: str
) -> None:
    (tmp_path / "www").mkdir()
    with serve(tmp_path / "www") as (base, state):
        specs = specs_dir(
            tmp_path,
            iso=f"{base}/missing.iso",
            inner=inner_path(kernel_rpm),
            release=kernel_release,
        )
        result = lab_kernel(specs, cache=tmp_path / "cache")
    assert result.returncode == 3
    assert "HTTP 404" in result.stderr and "Traceback" not in result.stderr
    assert len(state.requests) == 1


def test_truncated_iso(
    tmp_path: Path, binpkg_iso: Path, kernel_rpm: Path, kernel_release: str
) -> None:
    truncated = tmp_path / "short.iso"
    truncated.write_bytes(binpkg_iso.read_bytes()[: binpkg_iso.stat().st_size // 2])
    specs = specs_dir(
        tmp_path, iso=f"file://{truncated}", inner=inner_path(kernel_rpm), release=kernel_release
    )
    result = lab_kernel(specs, cache=tmp_path / "cache")
    assert result.returncode == 5
    assert "truncated" in result.stderr
    assert not (specs / "checksums.lock").exists()
    assert not list((tmp_path / "cache").rglob("*.rpm*"))


def test_iso_without_the_kernel_package(
    tmp_path: Path, kernel_rpm: Path, kernel_release: str
) -> None:
    other = build_small_rpm(tmp_path / "other", name="xapi-core", files={"/opt/x": "x"}, links={})
    iso = make_iso(tmp_path, {f"domain0/RPMS/x86_64/{other.name}": other})
    specs = specs_dir(
        tmp_path, iso=f"file://{iso}", inner=inner_path(kernel_rpm), release=kernel_release
    )
    result = lab_kernel(specs, cache=tmp_path / "cache")
    assert result.returncode == 5
    assert kernel_rpm.name in result.stderr and other.name in result.stderr  # says what is there


def test_corrupt_rpm(tmp_path: Path, kernel_rpm: Path, kernel_release: str) -> None:
    data = bytearray(kernel_rpm.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / kernel_rpm.name
    bad.write_bytes(bytes(data))
    specs = specs_dir(
        tmp_path, iso="file:///unused.iso", inner=inner_path(kernel_rpm), release=kernel_release
    )
    result = lab_kernel(
        specs,
        "--kernel-rpm",
        str(bad),
        cache=tmp_path / "cache",
    )
    assert result.returncode == 5
    assert "not a valid RPM" in result.stderr
    assert not list((tmp_path / "cache").glob("kernels/*"))


def test_tree_for_another_kernel_release(
    tmp_path: Path, binpkg_iso: Path, kernel_rpm: Path, kernel_release: str
) -> None:
    specs = specs_dir(
        tmp_path,
        iso=f"file://{binpkg_iso}",
        inner=inner_path(kernel_rpm),
        release="2.6.32.12-0.7.1.xs1.4.90.530.170661xen",
    )
    result = lab_kernel(specs, cache=tmp_path / "cache")
    assert result.returncode == 6
    assert kernel_release in result.stderr
    assert "2.6.32.12-0.7.1.xs1.4.90.530.170661xen" in result.stderr


def test_a_tree_naming_two_releases_is_refused_with_both(
    tmp_path: Path, kernel_release: str
) -> None:
    """Debian's headers as shipped: UTS_RELEASE is uname -r, kernel.release the upstream
    version. DRBD 9's build would name its files after the second."""
    from tests.support.kernelrpm import build_kernel_devel_rpm

    rpm = build_kernel_devel_rpm(tmp_path / "rpm", kernel_release_file=False)
    iso = make_iso(tmp_path / "iso", {f"domain0/RPMS/{rpm.parent.name}/{rpm.name}": rpm})
    specs = specs_dir(tmp_path, iso=f"file://{iso}", inner=inner_path(rpm), release=kernel_release)
    result = lab_kernel(specs, cache=tmp_path / "cache")
    assert result.returncode == 6, result.stderr
    upstream = Path(
        glob.glob("/usr/src/linux-headers-*-amd64")[-1], "include/config/kernel.release"
    )
    assert f"UTS_RELEASE is {kernel_release}" in result.stderr
    assert f"include/config/kernel.release is {upstream.read_text().strip()}" in result.stderr
    assert not (specs / "checksums.lock").exists()  # nothing trusted


def test_shell_metacharacters_in_target(tmp_path: Path) -> None:
    result = run_cli("kernel", "--xcp", "1.5`touch /tmp/pwned`", cache=tmp_path / "cache")
    assert result.returncode == 2
    assert "only letters" in result.stderr
    assert not os.path.exists("/tmp/pwned")


def test_kernel_from_a_yum_repository_picks_the_newest_matching_package(
    tmp_path: Path, kernel_release: str
) -> None:
    """XCP-ng style: the target names yum repositories and a version-release glob."""
    from tests.support.kernelrpm import build_kernel_devel_rpm

    base_repo, updates_repo = tmp_path / "www" / "base", tmp_path / "www" / "updates"
    real = build_kernel_devel_rpm(tmp_path / "real", name="kernel-devel")
    older = build_small_rpm(
        tmp_path / "older", name="kernel-devel", files={"/usr/src/x": "x"}, links={},
        version="6.1.0", release="1",
    )  # fmt: skip
    outside_glob = build_small_rpm(
        tmp_path / "newer", name="kernel-devel", files={"/usr/src/y": "y"}, links={},
        version="9.9.9", release="1",
    )  # fmt: skip
    vendor = make_vendor(tmp_path / "vendor")  # the honest mirror: all signed by the vendor
    signed_repository(base_repo, [older], vendor)
    signed_repository(updates_repo, [real, outside_glob], vendor)
    vendor.stop()
    cache = tmp_path / "cache"
    with serve(tmp_path / "www") as (base, state):
        specs = yum_target_spec(
            tmp_path / "specs", repos=[f"{base}/base/", f"{base}/updates/"],
            release=kernel_release, evr="6.1.0-*", trust=key_yaml(vendor, "        "),
        )  # fmt: skip
        result = run_cli("kernel", "--xcp", "ng", "--specs", str(specs), "--json", cache=cache)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["rpm_nvra"] == real.name.removesuffix(".rpm")
        fetched = [path for path, _ in state.requests]
    assert f"/updates/{real.name}" in fetched
    assert f"/updates/{outside_glob.name}" not in fetched
    assert f"/base/{older.name}" not in fetched


def test_a_uname_r_target_whose_vendor_kernel_lacks_the_provide_is_refused_before_download(
    tmp_path: Path,
) -> None:
    """The module would require kernel-uname-r = 4.19.0+1, which the vendor's kernel package
    of that version-release does not provide: no dom0 could install it."""
    repo = tmp_path / "www" / "base"
    repo.mkdir(parents=True)
    devel = build_small_rpm(
        tmp_path / "devel", name="kernel-devel", files={"/usr/src/x": "x"}, links={},
        version="4.19.19", release="8.0.10.1",
    )  # fmt: skip
    kernel = rpmfactory.build_rpms(
        tmp_path / "kernel", ["kernel"], version="4.19.19", release="8.0.10.1", arch="x86_64",
        provides=["kernel-uname-r = 4.19.0+2"],
    )[0]  # fmt: skip
    for rpm in (devel, kernel):
        shutil.copy(rpm, repo / rpm.name)
    subprocess.run(["createrepo_c", "--quiet", str(repo)], check=True)
    with serve(tmp_path / "www") as (base, state):
        specs = yum_target_spec(
            tmp_path / "specs", repos=[f"{base}/base/"], release="4.19.0+1", requires="uname-r",
            trust="        insecure: a test of the provides check alone\n",
        )  # fmt: skip
        result = run_cli("kernel", "--xcp", "ng", "--specs", str(specs), cache=tmp_path / "c")
        fetched = [path for path, _ in state.requests]
    assert result.returncode == 2, result.stderr
    assert "require kernel-uname-r = 4.19.0+1, but kernel-4.19.19-8.0.10.1.x86_64 provides" in (
        result.stderr
    )
    assert "kernel-uname-r = 4.19.0+2" in result.stderr
    assert "not verifying the signatures of" in result.stderr  # said on every insecure run
    assert f"/base/{devel.name}" not in fetched


def test_the_shipped_drbd_utils_pin_is_debian_s_verified_upstream_tarball(
    debian_drbd_utils: Utils,
) -> None:
    """The pin came from Debian's .dsc, verified by apt against the archive's signed index (the
    fixture checks the .dsc's line): the registry and Debian still agree."""
    entry = load_registry().utils.get(debian_drbd_utils.version)
    if entry is None:
        pytest.skip(f"the registry has no drbd-utils {debian_drbd_utils.version} entry")
    digest = hashlib.sha256(debian_drbd_utils.tarball.read_bytes()).hexdigest()
    assert entry.sha256 == digest
