"""``python -m builder build`` racing itself, and finishing onto a full disk.

The builds are real: the Debian stand-in image, a kernel-devel RPM of the installed kernel
headers read out of a binpkg-shaped ISO, a DRBD 8.4-style source tarball, the Docker engine.
The module shares one cache, so the userland and the kernel tree are made once.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from builder.builds import container
from tests.faults.disks import assert_says_disk_is_full, fill, small_disk
from tests.faults.harness import Result, builder, finish, running, spawn
from tests.faults.harness import snapshot as tree_snapshot
from tests.integration import buildenv
from tests.rpmfactory import build_rpms, write_build

pytestmark = [pytest.mark.integration, pytest.mark.docker]

VERSION = "8.4.1"


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory, standin_inputs: buildenv.StandinInputs) -> Path:
    """Target ``lab`` on the stand-in image, its kernel-devel inside a local ISO, and DRBD
    VERSION from a local tarball."""
    work = tmp_path_factory.mktemp("lab")
    tarball = buildenv.make_drbd_source(work, VERSION)
    drbd = f"drbd:\n  {VERSION}:\n    family: 8.4-early\n    url: file://{tarball}\n"
    return standin_inputs.write_specs(work / "specs", drbd=drbd)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def build_args(specs: Path, cache: Path, artifacts: Path, *extra: str) -> list[str | Path]:
    return [
        "build", "--xcp", "lab", "--drbd", VERSION, "--specs", specs, "--cache", cache,
        "--artifacts", artifacts, *extra,
    ]  # fmt: skip


def assert_complete(directory: Path) -> None:
    """A finished build: a manifest whose outputs are all there, with their recorded hashes."""
    manifest = json.loads((directory / "manifest.json").read_text())
    outputs = {o["file"]: o["sha256"] for o in manifest["outputs"]}
    assert outputs and {p.name for p in directory.glob("*.rpm")} == set(outputs)
    for name, digest in outputs.items():
        assert hashlib.sha256((directory / name).read_bytes()).hexdigest() == digest


def no_partials(artifacts: Path) -> list[Path]:
    return [p for p in artifacts.rglob("*") if p.name.endswith(".partial") or ".old-" in p.name]


def mine(client: docker.DockerClient, *pids: int) -> list[str]:
    return [
        str(c.name)
        for c in container.labelled_containers(client)
        if (c.labels or {}).get(container.LABEL_PID) in {str(pid) for pid in pids}
    ]


def wait_for_build_step(process: Iterator[bytes] | None) -> list[str]:
    """Read stderr until the build holds its lock (it logs the image or the build step)."""
    assert process is not None
    seen = []
    for raw in process:
        line = raw.decode()
        seen.append(line)
        if "build image for lab" in line or f"lab / DRBD {VERSION}" in line:
            return seen
    raise AssertionError("the build ended before it began:\n" + "".join(seen))


def test_two_builds_of_one_target_and_version_take_turns(
    tmp_path: Path, specs: Path, cache: Path, docker_client: docker.DockerClient
) -> None:
    artifacts = tmp_path / "artifacts"
    first = spawn(*build_args(specs, cache, artifacts))
    seen = wait_for_build_step(first.stderr)
    assert running(first), "".join(seen)
    # A second one that will not wait: exit 14, naming the one in the way.
    refused = builder(*build_args(specs, cache, artifacts, "--lock-timeout", "0"))
    assert refused.returncode == 14, refused
    assert f"Another build (pid {first.pid}) of lab/{VERSION}" in refused.stderr, refused
    # A third one that waits, then finds the first one's work done.
    waiting = spawn(*build_args(specs, cache, artifacts))
    time.sleep(2)
    first_result = finish(first, timeout=900)
    waited = finish(waiting, timeout=900)
    assert first_result.returncode == 0, "".join(seen) + str(first_result)
    assert waited.returncode == 0, waited
    assert f"waiting for another build (pid {first.pid}) of lab/{VERSION}" in waited.stderr
    assert "up to date" in waited.stdout, waited
    assert_complete(artifacts / "lab" / VERSION)
    assert no_partials(artifacts) == []
    assert mine(docker_client, first.pid, waiting.pid) == []
    assert not refused.stdout


def earlier_build(artifacts: Path, work: Path) -> Path:
    """A finished build of another version already in the artifacts directory."""
    rpms = build_rpms(work, ["drbd-earlier"], version="8.4.0", arch="x86_64")
    return write_build(artifacts, "lab", "8.4.0", rpms, consumer="el7", basearch="x86_64")


def test_a_build_finishing_onto_a_full_artifacts_disk(
    tmp_path: Path, specs: Path, cache: Path, docker_client: docker.DockerClient
) -> None:
    with small_disk(tmp_path / "disk", "16m") as disk:
        artifacts = disk / "artifacts"
        earlier = earlier_build(artifacts, tmp_path / "rpms")
        kept = tree_snapshot(earlier)
        filler = fill(disk, leave=64 << 10)
        process = spawn(*build_args(specs, cache, artifacts))
        full: Result = finish(process, timeout=900)
        assert full.returncode != 0, full
        assert not (artifacts / "lab" / VERSION).exists()
        assert no_partials(artifacts) == []
        assert tree_snapshot(earlier) == kept
        assert mine(docker_client, process.pid) == []
        # Room again: the same command builds.
        filler.unlink()
        again = builder(*build_args(specs, cache, artifacts, "--lock-timeout", "0"), timeout=900)
        assert again.returncode == 0, again
        assert_complete(artifacts / "lab" / VERSION)
        assert tree_snapshot(earlier) == kept
    # Last, so that a wrong message does not hide how the rest went.
    assert_says_disk_is_full(full.returncode, full.stderr, disk)
