"""Several builds at once, end to end on the real engine: a failure does not stop the
other build, an interrupt leaves no container and no complete-looking artifact, and the
RPMs are the very bytes a serial build makes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from tests.integration import buildenv
from tests.integration.test_build_cli import Lab, interrupt_when_slow, lab, mine, run, start

pytestmark = [pytest.mark.integration, pytest.mark.docker]

__all__ = ["lab"]  # the fixture, used by name
FIRST, SECOND = "8.4.1", "8.4.2"


def break_module(source: Path) -> None:
    module = source / "drbd" / "drbd_main.c"
    module.write_text(module.read_text() + "\nthis is not C;\n")


def two_versions(lab: Lab, alter: dict[str, Callable[[Path], None] | None]) -> Path:
    """Specs for the lab target with DRBD 8.4.1 and 8.4.2, each source altered as given."""
    entries = ""
    for version in (FIRST, SECOND):
        directory = lab.tmp / f"src-{version}"
        directory.mkdir()
        tarball = buildenv.make_drbd_source(directory, version, alter.get(version))
        entries += f"  {version}:\n    family: 8.4-early\n    url: file://{tarball}\n"
    return lab.write_specs(lab.tmp / "specs", drbd="drbd:\n" + entries)


def build(specs: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "builder", "build", "--xcp", "lab", "--drbd", FIRST, SECOND,
        "--specs", str(specs), "--cache", str(out / "cache"), "--artifacts",
        str(out / "artifacts"), *extra,
    ]  # fmt: skip


def test_a_failing_build_does_not_stop_the_other(
    lab: Lab, docker_client: docker.DockerClient
) -> None:
    # The first in the plan fails: one build after the other would never reach the second.
    specs = two_versions(lab, {FIRST: break_module})
    result = run(build(specs, lab.tmp, "--jobs", "2"))
    assert result.returncode == 9, result.stderr[-3000:]
    artifacts = lab.tmp / "artifacts" / "lab"
    assert f"lab / DRBD {SECOND}: built: {artifacts / SECOND}" in result.stdout
    assert f"lab / DRBD {FIRST}: failed (exit code 9)" in result.stdout
    assert (artifacts / SECOND / "manifest.json").is_file()
    assert not (artifacts / FIRST).exists()
    assert "drbd_main.c" in (artifacts / f"{FIRST}.build.log").read_text()
    assert not list(artifacts.glob("*.partial"))
    # The failure is told with the build's name on its lines.
    assert f"[lab {FIRST}] warning: lab / DRBD {FIRST} failed" in result.stderr
    assert mine(docker_client) == []


def test_sigterm_stops_every_running_build_and_leaves_nothing(
    lab: Lab, docker_client: docker.DockerClient
) -> None:
    slow = buildenv.slow_down
    specs = two_versions(lab, {FIRST: slow, SECOND: slow})
    process = start(build(specs, lab.tmp, "--jobs", "2"))
    logs = [lab.tmp / "artifacts" / "lab" / f"{v}.build.log" for v in (FIRST, SECOND)]
    interrupt_when_slow(
        process, logs, docker_client, seconds=600, what="the two builds never ran at once"
    )
    artifacts = lab.tmp / "artifacts" / "lab"
    assert not (artifacts / FIRST).exists() and not (artifacts / SECOND).exists()
    assert not list(artifacts.glob("*.partial"))


def test_parallel_builds_make_the_bytes_a_serial_build_makes(lab: Lab) -> None:
    specs = two_versions(lab, {})
    serial, parallel = lab.tmp / "serial", lab.tmp / "parallel"
    # Today's way: one build at a time, make on one CPU; then both at once with make -j2.
    first = run(build(specs, serial, "--jobs", "1", "--cpus", "1"))
    assert first.returncode == 0, first.stderr[-3000:]
    second = run(build(specs, parallel, "--jobs", "2", "--cpus", "2"))
    assert second.returncode == 0, second.stderr[-3000:]
    for version in (FIRST, SECOND):
        made = {p.name: p.read_bytes() for p in (serial / "artifacts/lab" / version).glob("*.rpm")}
        again = {
            p.name: p.read_bytes() for p in (parallel / "artifacts/lab" / version).glob("*.rpm")
        }
        assert made and made.keys() == again.keys()
        for name, content in made.items():
            assert content == again[name], f"{version}/{name} differs"
        manifest = (parallel / "artifacts/lab" / version / "manifest.json").read_text()
        assert "_smp_mflags -j2" in manifest
