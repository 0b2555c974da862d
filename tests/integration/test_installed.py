"""The tool as users install it: a wheel built with setuptools, installed into a fresh venv,
run from a directory that is not the checkout; and an editable install of a checkout.

The wheel must carry the registry (specs/) and the build contexts (containers/) and nothing
else of the checkout, and the installed package must never be written to: with its
site-packages read-only, ``kernel`` records trust in the state directory.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.kernelrpm import build_small_rpm, make_iso

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# Checkout entries that are no sources: never copied into the build's copy of it.
NOT_SOURCES = {".git", "build", "dist", "artifacts", ".nox", ".hypothesis"}
CACHES = shutil.ignore_patterns(
    "__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache", ".pytest_cache"
)

XCP15_ISO = "http://downloads.xen.org/XCP/53341/sources/binpkg.iso"
XCP15_RPM = "kernel-xen-devel-2.6.32.12-0.7.1.xs1.4.90.530.170661.i686.rpm"
XCP15_RELEASE = "2.6.32.12-0.7.1.xs1.4.90.530.170661xen"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def builds_without_isolation() -> bool:
    """Whether this interpreter can build the wheel offline: setuptools >= 64, and before
    70.1 the wheel package for bdist_wheel."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    version = _version(importlib.metadata.version("setuptools"))
    if version < (64,):
        return False
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


def copy_checkout(dest: Path) -> Path:
    """The checkout as setuptools sees it, without build leftovers, caches or .git: a build in
    place would write build/ and *.egg-info into the user's checkout, and a stale build/lib
    would go into the wheel."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        top = {n for n in names if n in NOT_SOURCES or n.endswith(".egg-info")}
        return (top if Path(directory) == REPO else set()) | CACHES(directory, names)

    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
    return dest


def pip(*args: str, python: str = sys.executable) -> None:
    done = subprocess.run(
        [python, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"pip {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


@dataclass(frozen=True)
class Venv:
    root: Path
    python: Path
    site: Path  # its site-packages (purelib)

    def run(
        self, *args: str, cwd: Path, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``python -m builder ARGS`` of this venv, from ``cwd``, with its own state and cache."""
        environment = {
            key: value for key, value in os.environ.items() if not key.startswith("PYTHON")
        }
        environment.update(
            XDG_STATE_HOME=str(cwd / "xdg-state"),
            XDG_CACHE_HOME=str(cwd / "xdg-cache"),
            PYTHONDONTWRITEBYTECODE="1",  # what the tool writes is the question, not Python
            **(env or {}),
        )
        return subprocess.run(
            [str(self.python), "-m", "builder", *args],
            cwd=cwd,
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def module_file(self, cwd: Path) -> Path:
        done = subprocess.run(
            [str(self.python), "-c", "import builder; print(builder.__file__)"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
        )
        return Path(done.stdout.strip())


def make_venv(root: Path) -> Venv:
    # The dependencies come from this interpreter's packages: nothing to download.
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(root)],
        check=True,
        timeout=300,
    )
    python = root / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return Venv(root=root, python=python, site=Path(site))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_checkout(tmp_path_factory.mktemp("checkout") / "xcp-drbd-builder")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory, source: Path) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Without this interpreter's setuptools, pip fetches one from PyPI for the build.
    offline = ["--no-build-isolation"] if builds_without_isolation() else []
    pip("wheel", "--no-deps", *offline, "-w", str(out), str(source))
    (built,) = out.glob("xcp_drbd_builder-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Venv:
    venv = make_venv(tmp_path_factory.mktemp("venv") / "venv")
    # --ignore-installed: the venv sees this interpreter's packages, maybe this tool among
    # them (an editable install); its own copy must be the wheel's.
    pip("install", "--no-deps", "--no-index", "--ignore-installed", str(wheel),
        python=str(venv.python))  # fmt: skip
    return venv


def data_files(root: Path) -> set[str]:
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_the_wheel_holds_the_package_and_its_data_and_nothing_else(
    wheel: Path, source: Path
) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = {n for n in archive.namelist() if ".dist-info/" not in n}
    expected = {f"builder/{p}" for p in data_files(source / "builder")}
    for name in ("specs", "containers"):
        expected |= {f"builder/data/{name}/{p}" for p in data_files(source / name)}
    assert "builder/data/containers/centos5-i686/Dockerfile" in names
    assert "builder/data/containers/README.md" in names
    assert "builder/data/specs/targets.yaml" in names
    assert "builder/builds/kmp.macros" in names
    assert sorted(expected - names) == []  # every module, every data file and subdirectory
    assert sorted(names - expected) == []  # no tests, ci/, artifacts, caches


def test_the_installed_wheel_runs_from_anywhere(installed: Venv, tmp_path: Path) -> None:
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    module = installed.module_file(elsewhere)
    assert module.is_relative_to(installed.root), module  # the venv's copy, not the checkout's
    targets = installed.run("targets", "--json", cwd=elsewhere)
    assert targets.returncode == 0, targets.stderr
    assert {"xcp-1.5", "xcp-ng-8.3"} <= {t["id"] for t in json.loads(targets.stdout)["targets"]}
    plan = installed.run("build", "--xcp", "1.5", "--drbd", "8.4.1", "--dry-run", cwd=elsewhere)
    assert plan.returncode == 0, plan.stderr
    context = installed.site / "builder" / "data" / "containers" / "centos5-i686"
    assert f"build context {context}" in plan.stdout
    assert "output:  artifacts/xcp-1.5/8.4.1" in plan.stdout  # the working directory's
    assert sorted(p.name for p in elsewhere.iterdir()) == []  # a dry run writes nothing


def test_the_installed_wheel_renders_a_deployment_with_its_day_two_steps(
    installed: Venv, tmp_path: Path
) -> None:
    # The day-two steps are shell files shipped beside builder/deploy/daytwo.py.
    assert installed.run("deploy", "init", cwd=tmp_path).returncode == 0
    render = installed.run(
        "deploy", "render", "--pool", "pool.yaml", "--no-repo-check", "--output", "out",
        cwd=tmp_path,
    )  # fmt: skip
    assert render.returncode == 0, render.stderr
    runbook = (tmp_path / "out" / "xcp1" / "runbook.sh").read_text()
    assert "step_split_brain()" in runbook and "boot_enable()" in runbook


def snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every path under ``root``: mode, size, mtime and content hash of the files."""
    found: dict[str, tuple[int, int, int, str]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        found[str(path.relative_to(root))] = (info.st_mode, info.st_size, info.st_mtime_ns, digest)
    return found


@pytest.fixture
def read_only_site(installed: Venv) -> Iterator[Path]:
    """The venv's site-packages made read-only (chmod -R a-w), its modes restored after."""
    paths = [installed.site, *installed.site.rglob("*")]
    modes = {path: path.lstat().st_mode for path in paths if not path.is_symlink()}
    for path, mode in modes.items():
        path.chmod(stat.S_IMODE(mode) & ~0o222)
    try:
        yield installed.site
    finally:
        for path, mode in modes.items():
            path.chmod(stat.S_IMODE(mode))


def xcp15_iso(workdir: Path) -> tuple[Path, Path]:
    """A binpkg.iso for the built-in xcp-1.5 target: a small kernel-xen-devel whose build
    tree reports XCP 1.5's kernel release, at the path the target names."""
    tree = "/usr/src/kernels/2.6.32.12-0.7.1.xs1.4.90.530.170661-i686"
    rpm = build_small_rpm(
        workdir / "rpm",
        name="kernel-xen-devel",
        files={
            f"{tree}/Makefile": "all:",
            f"{tree}/include/linux/utsrelease.h": f'#define UTS_RELEASE "{XCP15_RELEASE}"',
        },
        links={},
        version="2.6.32.12",
        release="0.7.1.xs1.4.90.530.170661",
    )
    return make_iso(workdir, {f"domain0/RPMS/i686/{XCP15_RPM}": rpm}), rpm


def test_kernel_records_trust_in_the_state_dir_and_never_in_the_package(
    installed: Venv, read_only_site: Path, tmp_path: Path
) -> None:
    iso, rpm = xcp15_iso(tmp_path / "inputs")
    before = snapshot(read_only_site)
    work = tmp_path / "work"
    work.mkdir()
    cache = tmp_path / "cache"
    args = ("kernel", "--xcp", "1.5", "--iso", str(iso), "--cache", str(cache), "--json")

    first = installed.run(*args, cwd=work)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["release"] == XCP15_RELEASE
    state_lock = work / "xdg-state" / "xcp-drbd-builder" / "checksums.lock"
    recorded = {
        XCP15_ISO: hashlib.sha256(iso.read_bytes()).hexdigest(),
        f"file:{XCP15_RPM}": hashlib.sha256(rpm.read_bytes()).hexdigest(),
    }
    assert json.loads(state_lock.read_text()) == recorded
    assert f"in {state_lock}" in first.stderr  # says where it recorded

    # Warm: answered from the memo, which knows the state directory's lock.
    again = installed.run(*args, cwd=work)
    assert again.returncode == 0, again.stderr
    assert "unchanged since the last call" in again.stderr
    # Trust reset: the lock deleted, the next call checks the file and records it again.
    state_lock.unlink()
    reset = installed.run(*args, cwd=work)
    assert reset.returncode == 0, reset.stderr
    assert "unchanged since the last call" not in reset.stderr
    assert json.loads(state_lock.read_text()) == recorded
    # A recorded hash is held against the next file passed as the same ISO.
    other = make_iso(tmp_path / "other", {f"domain0/RPMS/i686/{XCP15_RPM}": rpm}, padding=1 << 20)
    refused = installed.run("kernel", "--xcp", "1.5", "--iso", str(other),
                            "--cache", str(cache), cwd=work)  # fmt: skip
    assert refused.returncode == 4, refused.stderr
    assert f"recorded in {state_lock}" in refused.stderr
    # --state names another place.
    chosen = tmp_path / "chosen-state"
    elsewhere = installed.run(*args, "--state", str(chosen), cwd=work)
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert json.loads((chosen / "checksums.lock").read_text()) == recorded

    assert snapshot(read_only_site) == before
    assert not (read_only_site / "builder" / "data" / "specs" / "checksums.lock").exists()


@pytest.fixture(scope="module")
def editable(tmp_path_factory: pytest.TempPathFactory, source: Path) -> Venv:
    venv = make_venv(tmp_path_factory.mktemp("venv-editable") / "venv")
    offline = ["--no-build-isolation"] if builds_without_isolation() else []
    pip("install", "--no-deps", *offline, "--ignore-installed", "-e", str(source),
        python=str(venv.python))  # fmt: skip
    return venv


def test_an_editable_install_reads_the_checkouts_data(
    editable: Venv, source: Path, tmp_path: Path
) -> None:
    assert editable.module_file(tmp_path) == source / "builder" / "__init__.py"
    plan = editable.run("build", "--xcp", "1.5", "--drbd", "8.4.1", "--dry-run", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert f"build context {source / 'containers' / 'centos5-i686'}" in plan.stdout
