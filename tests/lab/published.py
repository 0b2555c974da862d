"""The module packages the tool builds, published where the lab's guests install them from.

The DRBD 9-shaped test source (its module only has to load and say which it is), or a real
DRBD 9 release tarball named by ``XDB_LAB_DRBD9_SOURCE`` (with ``XDB_LAB_UTILS_SOURCE``, a
drbd-utils release it accepts), is built with drbd-utils' real release tarball from Debian's
source archive for the stand-in target, whose kernel-devel is made from the headers of the
kernel the guests boot. ``publish`` signs it into a repository served on 127.0.0.1 for the
whole session; ``deploy render`` writes the pool's files for the guests, which reach the
repository at :data:`GUEST_URL`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy_support import write_pool
from tests.integration import buildenv
from tests.integration.conftest import Utils
from tests.lab import guest, vm
from tests.lab.labpool import lab_pool
from tests.support.http import serve_directory

ROOT = Path(__file__).resolve().parents[2]
# A real DRBD 9 release tarball (LINBIT's, e.g. made with its `make tarball`) replaces the test
# source when given; CI has none within reach, so by default the test source is built.
REAL_SOURCE = os.environ.get("XDB_LAB_DRBD9_SOURCE")
# The repository, as the guest reaches it (through QEMU's user network, to 127.0.0.1).
GUEST_URL = f"http://{vm.REPO_ADDRESS}"


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


@pytest.fixture(scope="session")
def published(
    tmp_path_factory: pytest.TempPathFactory,
    standin_inputs: buildenv.StandinInputs,
    debian_drbd_utils: Utils,
    spatch_base: str,
) -> Iterator[tuple[Path, str, Path]]:
    """(the rendered pool directory, the served repository's URL, the build's artifacts)."""
    work = tmp_path_factory.mktemp("published")
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
        # Rendered as for the guest, which reaches the repository at REPO_ADDRESS; the same
        # pool at this machine's URL first, whose render reads the repository to check it
        # carries the packages (the guest's URL leads nowhere from here).
        rendered = work / "pool" / "out"
        for base, checked in ((url, work / "checked"), (GUEST_URL, rendered)):
            pool = write_pool(
                checked.parent / f"pool-{checked.name}",
                lab_pool(**{"target": "lab", "drbd.version": VERSION, "repo.url": base}),
            )
            argv = ["deploy", "render", "--pool", str(pool), "--output", str(checked)]
            if base == GUEST_URL:
                argv.append("--no-repo-check")
            shown = tool(*argv, "--specs", str(specs))
            assert shown.returncode == 0, shown.stderr[-4000:]
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
        yield rendered, url, artifacts / "lab" / VERSION


def install_into(tree: Path, build: Path, work: Path) -> None:
    """What the dom0 brings before the runbook runs, put into the guest's root as an image
    builder does: the vendor's kernel package and base (stand-ins that provide what our
    packages require of them, installed with dnf --installroot) and yum, curl and gpg."""
    stand_ins = buildenv.dom0_stand_ins(work, sorted(build.glob("*.rpm")))
    # XCP-ng 8.3's depmod search order, under which extra/ and the kernel's own drbd.ko rank
    # alike: the module package's override lines must decide.
    search = tree / "etc" / "depmod.d" / "00-xcpng-override.conf"
    search.parent.mkdir(parents=True, exist_ok=True)
    search.write_text("search override\n")
    done = subprocess.run(
        [
            "dnf", "-y", f"--installroot={tree}", f"--setopt=cachedir={work / 'cache'}",
            "--releasever=7", "--setopt=install_weak_deps=False", "--setopt=reposdir=/dev/null",
            "install", *map(str, stand_ins),
        ],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    guest.add_yum(tree)


@pytest.fixture(scope="session")
def installed_image(
    lab_image: guest.GuestImage,
    published: tuple[Path, str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> guest.GuestImage:
    """The lab's root with what the dom0 brings before the runbook runs (:func:`install_into`)."""
    _rendered, _url, build = published
    work = tmp_path_factory.mktemp("installed-root")
    return guest.derived_image(lab_image, work, lambda tree: install_into(tree, build, work))
