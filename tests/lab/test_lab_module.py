"""Our module, built by the tool, published, installed the dom0 way, loaded by a real kernel.

The DRBD 9-shaped test source (its module only has to load and say which it is), or a real
DRBD 9 release tarball named by ``XDB_LAB_DRBD9_SOURCE`` (with ``XDB_LAB_UTILS_SOURCE``, a
drbd-utils release it accepts), is built with drbd-utils' real release tarball from Debian's
source archive for the stand-in target, whose
kernel-devel is made from the headers of the kernel the guest boots. ``publish`` signs it into
a repository served on 127.0.0.1; ``deploy render`` writes the ``.repo`` file; dnf, with that
file (gpgcheck=1, repo_gpgcheck=1), installs the runbook's packages into the guest's root
before it boots, as an image builder does, so the packages' own files and scriptlets (depmod
for the module's kernel, not the running one) are what the guest boots with. The kernel
package of the dom0 is a stand-in that provides what the module requires of it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy_support import pool_data, write_pool
from tests.integration import buildenv
from tests.integration.conftest import Utils
from tests.lab import drbdlab, guest, vm
from tests.support.http import serve_directory

pytestmark = [pytest.mark.lab, pytest.mark.docker]

ROOT = Path(__file__).resolve().parents[2]
# A real DRBD 9 release tarball (LINBIT's, e.g. made with its `make tarball`) replaces the test
# source when given; CI has none within reach, so by default the test source is built.
REAL_SOURCE = os.environ.get("XDB_LAB_DRBD9_SOURCE")


def _version() -> str:
    if not REAL_SOURCE:
        return "9.2.19"
    match = re.fullmatch(r"drbd-(9\.\d+\.\d+)\.tar\.gz", Path(REAL_SOURCE).name)
    if match is None:
        raise pytest.UsageError(
            f"XDB_LAB_DRBD9_SOURCE={REAL_SOURCE}: expected a file named drbd-9.X.Y.tar.gz"
        )
    return match.group(1)


VERSION = _version()
# Its userland: a drbd-utils release tarball new enough for it (DRBD 9.2.18's kmod-drbd requires
# drbd-utils >= 9.27.0; Debian 12's is 9.22.0). Default: Debian's.
REAL_UTILS = os.environ.get("XDB_LAB_UTILS_SOURCE")


def _utils(debian: Utils) -> Utils:
    if not REAL_UTILS:
        return debian
    match = re.fullmatch(r"drbd-utils-(\d+\.\d+\.\d+)\.tar\.gz", Path(REAL_UTILS).name)
    if match is None:
        raise pytest.UsageError(
            f"XDB_LAB_UTILS_SOURCE={REAL_UTILS}: expected a file named drbd-utils-X.Y.Z.tar.gz"
        )
    return Utils(version=match.group(1), tarball=Path(REAL_UTILS).resolve())


def tool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "builder", *args],
        cwd=cwd, capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def published(
    tmp_path_factory: pytest.TempPathFactory,
    standin_inputs: buildenv.StandinInputs,
    debian_drbd_utils: Utils,
    spatch_base: str,
) -> Iterator[tuple[Path, str, Path]]:
    """(the rendered pool directory, the served repository's URL, the build's artifacts)."""
    work = tmp_path_factory.mktemp("module")
    if REAL_SOURCE:
        tarball = Path(REAL_SOURCE).resolve()
    else:
        tarball = buildenv.make_kmod_source(work, VERSION)
    utils = _utils(debian_drbd_utils)
    specs = standin_inputs.write_specs(
        work / "specs",
        spatch_base=spatch_base,
        drbd=(
            f'drbd:\n  {VERSION}:\n    family: "9"\n    url: file://{tarball}\n'
            f"    utils: {utils.version}\n"
            f"drbd-utils:\n  {utils.version}:\n    url: file://{utils.tarball}\n"
        ),
    )
    artifacts = work / "artifacts"
    built = tool(
        "build", "--xcp", "lab", "--drbd", VERSION, "--specs", str(specs),
        "--cache", str(work / "cache"), "--artifacts", str(artifacts),
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-4000:]
    home = work / "gnupg"
    fingerprint = tool("keygen", "--gnupg-home", str(home)).stdout.strip()
    repo = work / "repo"
    with serve_directory(repo) as url:
        done = tool(
            "publish", "--artifacts", str(artifacts), "--repo", str(repo), "--key", fingerprint,
            "--gnupg-home", str(home), "--base-url", url,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-4000:]
        pool = write_pool(
            work / "pool",
            pool_data(**{"target": "lab", "drbd.version": VERSION, "repo.url": url}),
        )
        rendered = work / "pool" / "out"
        argv = ["deploy", "render", "--pool", str(pool), "--output", str(rendered)]
        shown = tool(*argv, "--specs", str(specs))
        assert shown.returncode == 0, shown.stderr[-4000:]
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
        yield rendered, url, artifacts / "lab" / VERSION


def runbook_variable(runbook: str, name: str) -> str:
    match = re.search(rf"^{name}=(.*)$", runbook, re.M)
    assert match, f"the runbook sets no {name}"
    return shlex.split(match.group(1))[0]


def runbook_packages(runbook: Path) -> list[str]:
    return runbook_variable(runbook.read_text(), "PACKAGES").split()


def install_into(tree: Path, rendered: Path, build: Path, work: Path) -> None:
    """dnf --installroot with the rendered .repo file: the dom0's stand-in kernel package and
    base, then the runbook's packages from the signed repository."""
    stand_ins = buildenv.dom0_stand_ins(work, sorted(build.glob("*.rpm")))
    # XCP-ng 8.3's depmod search order, under which extra/ and the kernel's own drbd.ko rank
    # alike: the module package's override lines must decide.
    search = tree / "etc" / "depmod.d" / "00-xcpng-override.conf"
    search.parent.mkdir(parents=True, exist_ok=True)
    search.write_text("search override\n")
    # The install step's key: fetched from GPGKEY_URL to KEY_FILE. dnf runs outside the root
    # and reads a file:// gpgkey on this machine, so its copy of the .repo file names the key
    # inside the root; nothing else of the file changes.
    runbook = (rendered / "xcp1" / "runbook.sh").read_text()
    key_url, key_file = (runbook_variable(runbook, name) for name in ("GPGKEY_URL", "KEY_FILE"))
    key = tree / key_file.lstrip("/")
    key.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(key_url, timeout=30) as answer:
        key.write_bytes(answer.read())
    repos = work / "repos"
    repos.mkdir()
    repo_text = (rendered / "xcp1" / "xcp-drbd-builder.repo").read_text()
    assert f"gpgkey=file://{key_file}" in repo_text
    (repos / "xcp-drbd-builder.repo").write_text(
        repo_text.replace(f"gpgkey=file://{key_file}", f"gpgkey=file://{key}")
    )
    common = [
        "dnf", "-y", f"--installroot={tree}", f"--setopt=reposdir={repos}",
        f"--setopt=cachedir={work / 'cache'}", "--releasever=7",
        "--setopt=install_weak_deps=False",
    ]  # fmt: skip
    for args in (
        ["install", *map(str, stand_ins)],
        ["install", *runbook_packages(rendered / "xcp1" / "runbook.sh")],
    ):
        done = subprocess.run(
            [*common, *args], capture_output=True, text=True, timeout=600, check=False
        )
        # dnf imports the key with gpg, whose agent would outlive the test.
        for pubring in (work / "cache").glob("*/pubring"):
            subprocess.run(["gpgconf", "--homedir", str(pubring), "--kill", "gpg-agent"],
                           check=False)  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def booted(
    lab_image: guest.GuestImage,
    published: tuple[Path, str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[vm.Guest]:
    rendered, _url, build = published
    work = tmp_path_factory.mktemp("module-root")
    image = guest.derived_image(
        lab_image, work, lambda tree: install_into(tree, rendered, build, work)
    )
    host = vm.Guest(vm.GuestSpec("xcp1", 1, ()), image, work / "xcp1", {})
    host.accel = vm.accelerator(image, work / "kvm-probe")
    host.prepare(image.root)
    try:
        host.start()
        yield host
    finally:
        host.stop()


def test_modprobe_loads_our_module_installed_from_the_published_repository(
    booted: vm.Guest, lab_output: Path
) -> None:
    release = booted.ok("uname -r").strip()
    ours = f"/lib/modules/{release}/extra/drbd/drbd.ko"
    # The package put it there and its scriptlet indexed it for its kernel.
    owner = booted.ok(f"rpm -qf {ours}").strip()
    assert owner.startswith(f"kmod-drbd-{VERSION}_"), owner
    assert drbdlab.load_module(booted, "drbd") == ours
    log = drbdlab.kernel_log(booted)
    (lab_output / f"module-{VERSION}-kernel.log").write_text(log)
    if REAL_SOURCE:
        # DRBD's own greeting, with the release it was built from.
        assert f"drbd: initialized. Version: {VERSION} " in log, log[-3000:]
    else:
        assert "drbd: test module loaded" in log
    # Its depmod.d lines put it first, under XCP-ng 8.3's search order.
    assert booted.ok("cat /etc/depmod.d/00-xcpng-override.conf").strip() == "search override"
    assert booted.ok("rpm -qf /etc/depmod.d/drbd.conf").strip() == owner
    overrides = booted.ok("cat /etc/depmod.d/drbd.conf")
    assert re.search(rf"^override\s+drbd\s+{re.escape(release)}\s+extra/drbd$", overrides, re.M)
    # Not the kernel's own DRBD 8.4, whose file is still there.
    assert booted.ok(f"test -e /lib/modules/{release}/kernel/drivers/block/drbd/drbd.ko; echo $?")
    assert "drbd: initialized. Version: 8.4" not in log
    assert booted.ok("grep -c '^drbd ' /proc/modules").strip() == "1"
    # The userland the module requires came from the same repository.
    assert booted.ok("rpm -q --qf '%{NAME}\\n' drbd-utils").strip() == "drbd-utils"
