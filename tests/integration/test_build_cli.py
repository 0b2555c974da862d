"""`python -m builder build` end to end: a binpkg-shaped ISO holding a kernel-devel RPM of a real
kernel tree, a DRBD-shaped source tarball, the locally built stand-in image, the real engine."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from builder.builds import container
from tests.integration import buildenv

pytestmark = [pytest.mark.integration, pytest.mark.docker]

REPO = Path(__file__).resolve().parents[2]
VERSION = "8.4.1"


def drbd_section(tarball: Path) -> str:
    """The specs' ``drbd:`` section: DRBD VERSION (8.4 early) from ``tarball``."""
    return f"""drbd:
  {VERSION}:
    family: 8.4-early
    url: file://{tarball}
"""


def write_specs(
    directory: Path, *, iso: Path, rpm: Path, release: str, base_image: str, tarball: Path
) -> Path:
    inputs = buildenv.StandinInputs(iso, rpm, release, base_image)
    return inputs.write_specs(directory, drbd=drbd_section(tarball))


@dataclass(frozen=True)
class Lab(buildenv.StandinInputs):
    """A spec directory for one target and DRBD version, in a test's own directory."""

    tmp: Path

    def specs(self, alter: Callable[[Path], None] | None = None) -> Path:
        tarball = buildenv.make_drbd_source(self.tmp, VERSION, alter)
        return self.write_specs(self.tmp / "specs", drbd=drbd_section(tarball))


@pytest.fixture
def lab(tmp_path: Path, standin_inputs: buildenv.StandinInputs) -> Lab:
    return Lab(**vars(standin_inputs), tmp=tmp_path)


def build_cmd(specs: Path, tmp: Path) -> list[str]:
    return [
        sys.executable, "-m", "builder", "build", "--xcp", "lab", "--drbd", VERSION,
        "--specs", str(specs), "--cache", str(tmp / "cache"), "--artifacts", str(tmp / "artifacts"),
    ]  # fmt: skip


# Pids of the tool processes this module started: their containers carry the pid as a label,
# so leftovers are told apart from other users' containers on the same engine.
STARTED: list[int] = []


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    with start(cmd) as process:
        stdout, stderr = process.communicate(timeout=900)
    return subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)


def start(cmd: list[str]) -> subprocess.Popen[str]:
    """``cmd`` started as :func:`run` does, for a test that interrupts it."""
    process = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    STARTED.append(process.pid)
    return process


def interrupt_when_slow(
    process: subprocess.Popen[str],
    logs: list[Path],
    client: docker.DockerClient,
    *,
    seconds: float,
    what: str,
) -> str:
    """SIGTERM to ``process`` once each build of ``logs`` is in its slow step
    (``buildenv.slow_down``), each in a container of its own; checks that the tool stops as
    interrupted and leaves no container, and returns its stderr."""
    try:
        buildenv.wait_for_slow_step(process, logs, seconds=seconds, what=what)
        assert len(mine(client)) == len(logs)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=seconds * 0.4)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr[-3000:]
    assert "SIGTERM" in stderr
    assert mine(client) == []
    return stderr


def rpm_query(path: Path, fmt: str) -> str:
    return subprocess.run(
        ["rpm", "-qp", "--qf", fmt, str(path)], capture_output=True, text=True, check=True
    ).stdout


def rpm_requires(path: Path) -> list[str]:
    return subprocess.run(
        ["rpm", "-qp", "--requires", str(path)], capture_output=True, text=True, check=True
    ).stdout.splitlines()


def mine(client: docker.DockerClient) -> list[str]:
    """Containers left by the tool processes this module started."""
    return [
        str(c.name)
        for c in container.labelled_containers(client)
        if (c.labels or {}).get(container.LABEL_PID) in {str(pid) for pid in STARTED}
    ]


def test_build_produces_checked_rpms_and_a_manifest_then_does_nothing_again(
    lab: Lab,
    binpkg_iso: Path,
    kernel_release: str,
    docker_client: docker.DockerClient,
) -> None:
    tmp = lab.tmp
    specs = lab.specs()
    result = run(build_cmd(specs, tmp))
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp / "artifacts" / "lab" / VERSION
    assert f"lab / DRBD {VERSION}: built: {out}" in result.stdout

    rpms = {rpm_query(p, "%{NAME}"): p for p in out.glob("*.rpm")}
    krelver = kernel_release.replace("-", "_")
    assert set(rpms) == {"drbd", "drbd-utils", "drbd-xen", "drbd-udev", f"drbd-km-{krelver}"}
    for name, path in rpms.items():
        assert rpm_query(path, "%{VERSION}") == VERSION, name
        assert rpm_query(path, "%{ARCH}") in ("x86_64", "noarch"), name
    km = rpms[f"drbd-km-{krelver}"]
    requires = rpm_requires(km)
    assert f"drbd-utils = {VERSION}" in requires
    # dom0's kernel package (not the spec's default "kernel"), at exactly the release of the
    # kernel-devel package the module was built against
    kernel_vr = rpm_query(lab.rpm, "%{VERSION}-%{RELEASE}")
    assert f"kernel-xen = {kernel_vr}" in requires
    files = rpm_query(km, "[%{FILENAMES}\n]").splitlines()
    modules = [f for f in files if f.endswith(".ko")]
    assert modules
    assert all(f.startswith(f"/lib/modules/{kernel_release}/") for f in modules)

    # vermagic, read by modinfo from the module shipped in the RPM
    unpack = tmp / "unpacked"
    unpack.mkdir()
    payload = subprocess.run(["rpm2cpio", str(km)], capture_output=True, check=True).stdout
    subprocess.run(["cpio", "-idm", "--quiet"], input=payload, cwd=unpack, check=True)
    vermagic = subprocess.run(
        ["modinfo", "-F", "vermagic", str(unpack / modules[0].lstrip("/"))],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert vermagic.split()[0] == kernel_release

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kernel_release"] == kernel_release
    assert manifest["consumer"] == "el7"
    assert manifest["image"].startswith("sha256:")
    iso_sha = hashlib.sha256(binpkg_iso.read_bytes()).hexdigest()
    assert manifest["inputs"]["kernel_source"]["sha256"] == iso_sha
    assert any("rpmbuild -bb" in c and "kernelversion" in c for c in manifest["commands"])
    assert {o["file"] for o in manifest["outputs"]} == {p.name for p in rpms.values()}
    for output in manifest["outputs"]:
        assert hashlib.sha256((out / output["file"]).read_bytes()).hexdigest() == output["sha256"]
    assert (out / "build.log").stat().st_size > 0
    assert not list((tmp / "artifacts" / "lab").glob("*.partial"))
    assert mine(docker_client) == []

    # Same inputs: nothing to do, and it says so.
    before = (out / "manifest.json").stat().st_mtime_ns
    started = time.monotonic()
    again = run(build_cmd(specs, tmp))
    elapsed = time.monotonic() - started
    assert again.returncode == 0, again.stderr[-3000:]
    assert "up to date" in again.stdout and "nothing to do" in again.stderr
    assert (out / "manifest.json").stat().st_mtime_ns == before
    assert elapsed < 5  # the benchmark holds the 1 s goal; CI machines are noisy

    # A changed output is noticed: the build runs again.
    victim = next(out.glob("drbd-utils-*.rpm"))
    victim.write_bytes(b"tampered")
    third = run(build_cmd(specs, tmp))
    assert third.returncode == 0, third.stderr[-3000:]
    assert "built" in third.stdout
    assert rpm_query(victim, "%{NAME}") == "drbd-utils"


def test_failed_build_leaves_no_complete_looking_artifacts(
    lab: Lab, docker_client: docker.DockerClient
) -> None:
    tmp = lab.tmp

    def break_module(source: Path) -> None:
        module = source / "drbd" / "drbd_main.c"
        module.write_text(module.read_text() + "\nthis is not C;\n")

    specs = lab.specs(break_module)
    result = run(build_cmd(specs, tmp))
    assert result.returncode == 9, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "The whole log is" in result.stderr
    log_path = tmp / "artifacts" / "lab" / f"{VERSION}.build.log"
    assert str(log_path) in result.stderr
    assert "drbd_main.c" in log_path.read_text()
    assert not (tmp / "artifacts" / "lab" / VERSION).exists()
    assert not list((tmp / "artifacts" / "lab").glob("*.partial"))
    assert mine(docker_client) == []


def test_sigterm_mid_build_leaves_no_container_and_no_artifacts(
    lab: Lab, docker_client: docker.DockerClient
) -> None:
    tmp = lab.tmp
    specs = lab.specs(buildenv.slow_down)
    process = start(build_cmd(specs, tmp))
    log_path = tmp / "artifacts" / "lab" / f"{VERSION}.build.log"
    interrupt_when_slow(
        process,
        [log_path],
        docker_client,
        seconds=300,
        what="the build never reached its slow step",
    )
    assert not (tmp / "artifacts" / "lab" / VERSION).exists()
    assert not list((tmp / "artifacts" / "lab").glob("*.partial"))


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "builder", *map(str, args)])


def test_built_artifacts_publish_and_satisfy_the_deploy_check(
    lab: Lab, kernel_release: str
) -> None:
    """The CI job's chain: build, then publish what was built, then check a pool against it."""
    tmp = lab.tmp
    specs = lab.specs()
    built = run(build_cmd(specs, tmp))
    assert built.returncode == 0, built.stderr[-3000:]

    gnupg, repo = tmp / "gnupg", tmp / "repo"
    try:
        key = cli("keygen", "--gnupg-home", gnupg)
        assert key.returncode == 0, key.stderr[-3000:]
        fingerprint = key.stdout.split()[-1]
        published = cli(
            "publish", "--specs", specs, "--artifacts", tmp / "artifacts", "--repo", repo,
            "--key", fingerprint, "--gnupg-home", gnupg,
        )  # fmt: skip
        assert published.returncode == 0, published.stderr[-3000:]
    finally:
        # gpg starts an agent for the key's home; it must not outlive the test.
        subprocess.run(["gpgconf", "--homedir", str(gnupg), "--kill", "gpg-agent"], check=False)
    krelver = kernel_release.replace("-", "_")
    assert any((repo / "el7" / "x86_64").glob(f"drbd-km-{krelver}-{VERSION}-*.rpm"))

    pool = tmp / "pool.yaml"
    assert cli("deploy", "init", "--output", pool).returncode == 0
    text = pool.read_text().replace("target: xcp-1.5", "target: lab")
    pool.write_text(text.replace("http://repo.example.lan/xcp-drbd", f"file://{repo}"))
    check = cli("deploy", "check", "--pool", pool, "--specs", specs)
    assert check.returncode == 0, check.stdout + check.stderr

    # A DRBD version the repository does not carry is an error for the pool.
    pool.write_text(pool.read_text().replace(f"version: {VERSION}", "version: 8.4.0"))
    missing = cli("deploy", "check", "--pool", pool, "--specs", specs)
    assert missing.returncode == 13, missing.stdout + missing.stderr
    assert "8.4.0" in missing.stdout + missing.stderr
