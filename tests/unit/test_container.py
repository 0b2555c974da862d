from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest

from builder.builds import container, engine, images
from builder.errors import DockerError


def make_context(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text("ARG BASE_IMAGE=centos:7\nFROM ${BASE_IMAGE}\n")
    (root / "helper.sh").write_text("#!/bin/sh\necho hi\n")
    return root


def test_context_hash_is_stable_and_follows_content(tmp_path: Path) -> None:
    context = make_context(tmp_path / "ctx")
    first = images.context_hash(context)
    assert images.context_hash(context) == first
    assert images.context_hash(make_context(tmp_path / "same")) == first

    (context / "helper.sh").write_text("#!/bin/sh\necho changed\n")
    changed = images.context_hash(context)
    assert changed != first

    (context / "helper.sh").chmod(0o755)
    assert images.context_hash(context) != changed


def test_context_hash_covers_build_args_and_ignores_vcs_litter(tmp_path: Path) -> None:
    context = make_context(tmp_path / "ctx")
    plain = images.context_hash(context)
    assert images.context_hash(context, {"BASE_IMAGE": "mirror/centos:7"}) != plain
    (context / ".git").mkdir()
    (context / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (context / "__pycache__").mkdir()
    (context / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert images.context_hash(context) == plain


def test_context_without_dockerfile_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DockerError, match="has no Dockerfile"):
        images.context_hash(tmp_path)


def test_image_tag_names_family_and_hash(tmp_path: Path) -> None:
    context = make_context(tmp_path / "ctx")
    tag = images.image_tag("centos5-i686", context)
    assert tag == f"xcp-drbd-builder/centos5-i686:{images.context_hash(context)[:16]}"


def test_unreachable_engine_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    with pytest.raises(DockerError) as caught:
        engine.connect()
    assert f"not reachable at unix://{tmp_path}/no-such.sock" in str(caught.value)
    assert "Start dockerd" in str(caught.value)
    assert "set DOCKER_HOST" in str(caught.value)


@dataclass
class FakeContainer:
    """As a sparse listing gives it: labels and names in ``attrs``, nothing inspected."""

    name: str
    labels: dict[str, str]
    removed: bool = False
    gone: bool = False  # removed by a build running beside the reaper

    @property
    def id(self) -> str:
        return f"id-{self.name}"

    @property
    def attrs(self) -> dict[str, Any]:
        return {"Labels": self.labels, "Names": [f"/{self.name}"]}

    def remove(self, force: bool = False) -> None:
        assert force
        if self.gone:
            raise docker.errors.NotFound("No such container")
        self.removed = True


@dataclass
class FakeContainers:
    items: list[FakeContainer]
    filters: list[Any] = field(default_factory=list)

    def list(
        self, all: bool = False, filters: Any = None, sparse: bool = False
    ) -> list[FakeContainer]:
        assert sparse, "a full listing inspects each container, which may be gone by then"
        self.filters.append(filters)
        return self.items


@dataclass
class FakeClient:
    containers: FakeContainers


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_reaping_removes_only_this_machines_orphans() -> None:
    host = socket.gethostname()

    def labels(host_name: str, pid: int) -> dict[str, str]:
        return {
            container.LABEL: "1",
            container.LABEL_HOST: host_name,
            container.LABEL_PID: str(pid),
        }

    orphan = FakeContainer("orphan", labels(host, dead_pid()))
    live = FakeContainer("live", labels(host, os.getpid()))
    remote = FakeContainer("remote", labels("another-builder", dead_pid()))
    kept = FakeContainer("kept", {**labels(host, dead_pid()), container.LABEL_KEEP: "1"})
    vanished = FakeContainer("vanished", labels(host, dead_pid()), gone=True)
    client = FakeClient(FakeContainers([orphan, live, remote, kept, vanished]))

    removed = container.reap_leftovers(client)  # type: ignore[arg-type]

    assert removed == ["orphan"]
    assert orphan.removed
    assert not live.removed
    assert not remote.removed
    assert not kept.removed
    assert client.containers.filters == [{"label": container.LABEL}]
