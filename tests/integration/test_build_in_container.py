"""DRBD RPMs built in a real container from a real kernel tree, checked with rpm and modinfo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import docker
import pytest

from builder import proc
from builder.builds import container, drbdbuild, postbuild, recipes, rpmbuild
from builder.errors import BuildError, CheckError, DockerError
from builder.specs import DEFAULT_LIMITS, KernelRequirement, Limits, Target
from tests.integration import buildenv

pytestmark = [pytest.mark.integration, pytest.mark.docker]

VERSION = "8.4.1"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Built:
    result: drbdbuild.Built
    output: Path
    kernel: buildenv.KernelTree


@dataclass(frozen=True)
class Standin:
    """What every build here runs on: the stand-in image, the kernel tree, the engine."""

    image: str
    kernel: buildenv.KernelTree
    client: docker.DockerClient


@pytest.fixture
def standin(
    standin_image: str,
    kernel_tree: buildenv.KernelTree,
    docker_client: docker.DockerClient,
    own_containers: None,
) -> Standin:
    """The stand-in, for a test whose builds must leave no container behind."""
    return Standin(standin_image, kernel_tree, docker_client)


def build(
    standin: Standin,
    work: Path,
    tarball: Path,
    *,
    timeout: float = 900,
    kernel_release: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> drbdbuild.Built:
    output = work / "out.partial"
    output.mkdir(exist_ok=True)
    build = replace(
        buildenv.drbd_build(
            standin.image,
            standin.kernel,
            tarball,
            version=VERSION,
            kernel_release=kernel_release,
            requires=(KernelRequirement("kernel-xen", "=", "6.1-1"),),
        ),
        limits=limits,
    )
    return drbdbuild.build_drbd(
        build,
        output_dir=output,
        log_file=work / "build.log",
        cache_dir=work / "cache",
        timeout=timeout,
        client=standin.client,
    )


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory,
    standin_image: str,
    kernel_tree: buildenv.KernelTree,
    docker_client: docker.DockerClient,
) -> Built:
    work = tmp_path_factory.mktemp("build")
    tarball = buildenv.make_drbd_source(work, VERSION)
    result = build(Standin(standin_image, kernel_tree, docker_client), work, tarball)
    return Built(result=result, output=work / "out.partial", kernel=kernel_tree)


def query(rpm: Path, fmt: str) -> str:
    return proc.run(["rpm", "-qp", "--qf", fmt, rpm], echo=False).stdout


def by_name(built: Built) -> dict[str, Path]:
    return {query(path, "%{NAME}"): path for path in built.result.rpms}


def test_build_gives_the_drbd_packages_for_the_target(built: Built) -> None:
    km = recipes.km_package_name(built.kernel.release)
    packages = by_name(built)
    assert {"drbd", "drbd-utils", "drbd-xen", "drbd-udev", km} <= set(packages)
    for path in packages.values():
        assert path.parent == built.output
        assert query(path, "%{VERSION}-%{RELEASE}") == f"{VERSION}-1"
        assert query(path, "%{ARCH}") in ("x86_64", "noarch")
    assert query(packages[km], "%{ARCH}") == "x86_64"
    assert list(built.output.glob(".*")) == [], "the staging directory was left behind"


def test_module_package_requires_the_same_userland_and_holds_the_module(built: Built) -> None:
    km = by_name(built)[recipes.km_package_name(built.kernel.release)]
    requires = proc.run(["rpm", "-qp", "--requires", km], echo=False).stdout.splitlines()
    assert f"drbd-utils = {VERSION}" in requires
    # exactly the dom0 kernel package it was built for, through DRBD's DRBD_KMOD_REQUIRES
    assert "kernel-xen = 6.1-1" in requires
    files = proc.run(["rpm", "-qpl", km], echo=False).stdout.splitlines()
    module = f"/lib/modules/{built.kernel.release}/kernel/drivers/block/drbd.ko"
    assert module in files
    utils = proc.run(["rpm", "-qpl", by_name(built)["drbd-utils"]], echo=False).stdout
    assert "/sbin/drbdadm" in utils.splitlines()


def test_module_vermagic_is_the_target_kernel(built: Built, tmp_path: Path) -> None:
    km = by_name(built)[recipes.km_package_name(built.kernel.release)]
    proc.run(["sh", "-c", 'rpm2cpio "$0" | cpio -idm --quiet', km], cwd=tmp_path, echo=False)
    module = tmp_path / f"lib/modules/{built.kernel.release}/kernel/drivers/block/drbd.ko"
    vermagic = proc.run(["modinfo", "-F", "vermagic", module], echo=False).stdout
    assert vermagic.split()[0] == built.kernel.release
    assert "DRBD-shaped" in proc.run(["modinfo", "-F", "description", module], echo=False).stdout


def test_build_is_recorded_for_the_manifest(built: Built) -> None:
    result = built.result.module
    log_text = result.log_file.read_text()
    assert "rpmbuild -bb" in log_text
    assert "Wrote:" in log_text  # rpmbuild's own output is in the full log
    joined = "\n".join(result.commands)
    assert f"kernelversion {built.kernel.release}" in joined
    kdir = built.result.kdir
    assert f"kdir {kdir}" in joined
    assert kdir == "/" + built.kernel.build_dir.relative_to(built.kernel.root).as_posix()
    assert result.source_date_epoch == buildenv.SOURCE_MTIME
    assert result.image.startswith("sha256:")
    assert result.shell == "/bin/sh -c"  # x86_64: no linux32
    # the build time inside the RPM header is SOURCE_DATE_EPOCH, not the wall clock
    assert query(result.rpms[0], "%{BUILDTIME}") == str(buildenv.SOURCE_MTIME)
    assert query(result.rpms[0], "%{BUILDHOST}") == recipes.BUILD_HOST


def test_module_built_for_another_kernel_is_rejected(built: Built) -> None:
    km = recipes.km_package_name(built.kernel.release)
    other = "2.6.32.12-0.7.1.xs1.4.90.530.170661xen"
    expect = postbuild.Expectation(
        kernel_release=other,
        arch="x86_64",
        version=VERSION,
        packages=frozenset({"drbd-utils", km}),
        module_package=km,
    )
    with pytest.raises(CheckError) as caught:
        postbuild.check_packages(built.result.rpms, expect)
    message = str(caught.value)
    assert f"built for kernel {built.kernel.release}" in message
    assert other in message


def test_kernel_tree_of_another_release_stops_the_module_build(
    tmp_path: Path, standin: Standin
) -> None:
    """drbd-km.spec's %prep compares kdir's release with kernelversion before compiling."""
    tarball = buildenv.make_drbd_source(tmp_path, VERSION)
    output = tmp_path / "out.partial"
    output.mkdir()
    with pytest.raises(BuildError) as caught:
        build(
            standin,
            tmp_path,
            tarball,
            kernel_release="2.6.32.12-0.7.1.xs1.4.90.530.170661xen",
        )
    message = str(caught.value)
    assert f"test {standin.kernel.release} = 2.6.32.12-0.7.1.xs1.4.90.530.170661xen" in message
    assert "(%prep)" in message
    assert list(output.iterdir()) == []


def test_image_is_reused_while_its_context_is_unchanged(
    standin_image: str, standin_target: Target, docker_client: docker.DockerClient
) -> None:
    started = time.monotonic()
    assert rpmbuild.ensure_image(standin_target, client=docker_client) == standin_image
    assert time.monotonic() - started < 5


def test_image_whose_base_cannot_be_had_fails_with_a_docker_error(
    standin_target: Target, docker_client: docker.DockerClient
) -> None:
    missing = replace(standin_target, base_image="xcp-drbd-builder-test/no-such-root:0")
    with pytest.raises(DockerError) as caught:
        rpmbuild.ensure_image(missing, client=docker_client)
    assert "Building image xcp-drbd-builder/standin-context:" in str(caught.value)
    assert "container.image" in str(caught.value)
    tags = [t for image in docker_client.images.list() for t in image.tags]
    assert not any("no-such-root" in t for t in tags)


def test_source_that_fails_to_compile_gives_a_readable_error(
    tmp_path: Path, standin: Standin
) -> None:
    def break_userland(source: Path) -> None:
        program = source / "user" / "drbdadm.c"
        program.write_text(program.read_text().replace("return 0;", "return 0"))

    tarball = buildenv.make_drbd_source(tmp_path, VERSION, break_userland)
    with pytest.raises(BuildError) as caught:
        build(standin, tmp_path, tarball)
    message = str(caught.value)
    assert "Building DRBD 8.4.1 userland failed (exit status" in message
    assert "drbdadm.c" in message
    assert "error:" in message
    assert f"The whole log is {tmp_path / 'build.log'}" in message
    assert list((tmp_path / "out.partial").iterdir()) == []


def test_missing_build_requirement_stops_rpmbuild(tmp_path: Path, standin: Standin) -> None:
    """Dependency checks stay on: a BuildRequires nobody provides fails the build."""

    def require_more(source: Path) -> None:
        spec = source / "drbd.spec.in"
        spec.write_text(spec.read_text().replace("BuildRequires: udev", "BuildRequires: docbook"))

    tarball = buildenv.make_drbd_source(tmp_path, VERSION, require_more)
    with pytest.raises(BuildError) as caught:
        build(standin, tmp_path, tarball)
    assert "docbook is needed by drbd-8.4.1-1" in str(caught.value)


RUNNER = """
import json, signal, sys
from pathlib import Path
from builder.builds import drbdbuild
from builder.errors import BuilderError, Interrupted
from tests.integration import buildenv

def stop(signum, frame):
    raise Interrupted("stopped by SIGTERM")

signal.signal(signal.SIGTERM, stop)
args = json.loads(sys.argv[1])
try:
    kernel = buildenv.KernelTree(
        root=Path(args["root"]), build_dir=Path(args["kdir"]), release=args["release"]
    )
    build = buildenv.drbd_build(args["image"], kernel, Path(args["tarball"]), version="8.4.1")
    drbdbuild.build_drbd(
        build, output_dir=Path(args["output"]), log_file=Path(args["log"]),
        cache_dir=Path(args["output"]).parent / "cache",
    )
except BuilderError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
except KeyboardInterrupt:
    print("error: interrupted", file=sys.stderr)
    sys.exit(130)
"""


@pytest.mark.parametrize(
    "stop",
    [(signal.SIGTERM, "stopped by SIGTERM"), (signal.SIGINT, "interrupted")],
    ids=["SIGTERM", "Ctrl-C"],
)
def test_signal_mid_build_removes_the_container(
    stop: tuple[int, str],
    tmp_path: Path,
    standin_image: str,
    kernel_tree: buildenv.KernelTree,
    docker_client: docker.DockerClient,
) -> None:
    tarball = buildenv.make_drbd_source(tmp_path, VERSION, buildenv.slow_down)
    output = tmp_path / "out.partial"
    output.mkdir()
    log_file = tmp_path / "build.log"
    args = {
        "image": standin_image,
        "tarball": str(tarball),
        "root": str(kernel_tree.root),
        "kdir": str(kernel_tree.build_dir),
        "release": kernel_tree.release,
        "output": str(output),
        "log": str(log_file),
    }
    runner = subprocess.Popen(
        [sys.executable, "-c", RUNNER, json.dumps(args)],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        mine = {container.LABEL_PID: str(runner.pid)}
        buildenv.wait_for_slow_step(
            runner, [log_file], seconds=120, what="the build never reached its slow step"
        )
        running = [
            c
            for c in container.labelled_containers(docker_client)
            if all((c.labels or {}).get(k) == v for k, v in mine.items())
        ]
        assert len(running) == 1
        assert running[0].status == "running"
        runner.send_signal(stop[0])
        _, stderr = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert runner.returncode == 130
    assert stop[1] in stderr
    left = [
        c.name
        for c in container.labelled_containers(docker_client)
        if (c.labels or {}).get(container.LABEL_PID) == str(runner.pid)
    ]
    assert left == []
    assert list(output.iterdir()) == []
    assert os.path.exists(log_file)


def test_build_that_runs_too_long_is_stopped(tmp_path: Path, standin: Standin) -> None:
    tarball = buildenv.make_drbd_source(tmp_path, VERSION, buildenv.slow_down)
    output = tmp_path / "out.partial"
    started = time.monotonic()
    with pytest.raises(BuildError, match=r"failed \(timed out after 8 s\)"):
        build(standin, tmp_path, tarball, timeout=8)
    assert time.monotonic() - started < 60
    assert list(output.iterdir()) == []


def test_build_containers_run_within_their_limits_and_say_which_one_stopped_them(
    tmp_path: Path, standin: Standin
) -> None:
    def report_limits(source: Path) -> None:
        makefile = source / "Makefile"
        makefile.write_text(
            makefile.read_text().replace(
                "tools: user/drbdadm\n",
                "tools: user/drbdadm\n"
                # cgroup v2, else v1
                "\tcat /sys/fs/cgroup/memory.max 2>/dev/null"
                " || cat /sys/fs/cgroup/memory/memory.limit_in_bytes\n"
                "\tcat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max\n",
            )
        )

    limits = Limits(memory_mib=512, pids=300, cpus=1.0, timeout=600)
    tarball = buildenv.make_drbd_source(tmp_path, VERSION, report_limits)
    build(standin, tmp_path, tarball, limits=limits)
    lines = (tmp_path / "build.log").read_text().splitlines()
    assert str(512 << 20) in lines
    assert "300" in lines

    def eat_memory(source: Path) -> None:
        makefile = source / "Makefile"
        makefile.write_text(
            makefile.read_text().replace(
                "tools: user/drbdadm\n",
                "tools: user/drbdadm\n"
                "\tperl -e '$$x = \"a\" x (400 * 1024 * 1024); print length $$x'\n",
            )
        )

    hungry = tmp_path / "hungry"
    hungry.mkdir()
    tarball = buildenv.make_drbd_source(hungry, VERSION, eat_memory)
    small = replace(limits, memory_mib=128)
    with pytest.raises(BuildError, match="killed at its memory limit of 128 MiB") as caught:
        build(standin, hungry, tarball, limits=small)
    assert "--memory" in str(caught.value)
