"""A build on a Docker engine that cannot see this machine's paths: a second dockerd on a TCP
port of 127.0.0.1, with its own data root, exec root, pid file and socket.  Its inputs go in
as a tar stream and its RPMs come back as one; they must be the very bytes a bind-mounted
build on the main engine makes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest

from builder import proc
from builder.builds import container, drbdbuild
from builder.errors import BuildError
from builder.specs import KernelRequirement
from tests.integration import buildenv

pytestmark = [pytest.mark.integration, pytest.mark.docker]

VERSION = "8.4.1"


@dataclass(frozen=True)
class Engine:
    address: str
    root: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def second_engine(docker_client: docker.DockerClient) -> Iterator[Engine]:
    """A dockerd of its own, started here and stopped in teardown (the main one is left be)."""
    dockerd = shutil.which("dockerd")
    if dockerd is None or shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("a second engine needs dockerd, ip (iproute2) and root")
    # Short: containerd's socket lives under the exec root, and unix socket paths are short.
    root = Path(tempfile.mkdtemp(prefix="xdb-d2-", dir="/tmp"))
    address = f"tcp://127.0.0.1:{free_port()}"
    # A bridge of its own, never `--bridge=none`: dockerd started with that deletes the
    # interface docker0 on its way up, which is the running engine's bridge.  The address is
    # from TEST-NET-2 (RFC 5737), which no network routes.
    bridge = f"xdb{os.getpid() % 1_000_000}"
    main_bridge = Path("/sys/class/net/docker0")
    had_main_bridge = main_bridge.exists()
    proc.run(["ip", "link", "add", "name", bridge, "type", "bridge"], echo=False)
    log_file = (root / "dockerd.log").open("wb")
    try:
        proc.run(["ip", "addr", "add", "198.51.100.1/24", "dev", bridge], echo=False)
        daemon = subprocess.Popen(
            [
                dockerd,
                f"--host={address}",
                f"--host=unix://{root}/docker.sock",
                f"--data-root={root}/data",
                f"--exec-root={root}/exec",
                f"--pidfile={root}/docker.pid",
                f"--bridge={bridge}",
                # The host's firewall is the running engine's: left alone.
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    except BaseException:
        log_file.close()
        proc.run(["ip", "link", "delete", bridge], echo=False, check=False)
        raise
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                # The SDK asks the engine's version as it is made: inside the retry loop.
                client = docker.DockerClient(base_url=address.replace("tcp://", "http://"))
                client.ping()
                break
            except (docker.errors.DockerException, OSError) as exc:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    text = (root / "dockerd.log").read_text(errors="replace")[-2000:]
                    pytest.fail(f"the second dockerd did not start ({exc}):\n{text}")
                time.sleep(0.5)
        client.close()
        yield Engine(address, root)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log_file.close()
        proc.run(["ip", "link", "delete", bridge], echo=False, check=False)
        shutil.rmtree(root, ignore_errors=True)
    assert main_bridge.exists() or not had_main_bridge, "the running engine lost docker0"


def load_image(source: docker.DockerClient, destination: docker.DockerClient, image: str) -> None:
    """``docker save`` from one engine piped into ``docker load`` on the other."""
    # The SDK hands ``data`` to requests, which sends an iterator chunk by chunk: the image
    # is never held whole in memory (the type stubs name only bytes and files).
    chunks = source.images.get(image).save(named=True)
    destination.images.load(chunks)  # type: ignore[arg-type]
    assert destination.images.get(image).id == image


def build(
    image: str,
    kernel: buildenv.KernelTree,
    tarball: Path,
    work: Path,
    client: docker.DockerClient,
) -> tuple[dict[str, str], float]:
    """(RPM name -> sha256, seconds) of a cold build: userland and module."""
    output = work / "out.partial"
    output.mkdir(parents=True)
    started = time.monotonic()
    built = drbdbuild.build_drbd(
        buildenv.drbd_build(
            image,
            kernel,
            tarball,
            version=VERSION,
            requires=(KernelRequirement("kernel-xen", "=", "6.1-1"),),
        ),
        output_dir=output,
        log_file=work / "build.log",
        cache_dir=work / "cache",
        timeout=900,
        client=client,
    )
    seconds = time.monotonic() - started
    assert list(output.glob(".*")) == [], "the staging directory was left behind"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in built.rpms}, seconds


def test_build_on_a_tcp_engine_uploads_its_inputs_and_makes_the_same_rpms(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    second_engine: Engine,
    docker_client: docker.DockerClient,
    standin_image: str,
    kernel_tree: buildenv.KernelTree,
    own_containers: None,
) -> None:
    tarball = buildenv.make_drbd_source(tmp_path, VERSION)
    monkeypatch.delenv(container.UPLOAD_ENV, raising=False)
    assert not container.uploads_inputs(docker_client)
    local, local_seconds = build(
        standin_image, kernel_tree, tarball, tmp_path / "local", docker_client
    )

    # The engine comes from DOCKER_HOST, as the Docker CLI's would; its containers are kept
    # so that what they were given can be read back.
    monkeypatch.setenv("DOCKER_HOST", second_engine.address)
    monkeypatch.setenv(container.KEEP_ENV, "1")
    remote_client = container.connect()
    try:
        load_image(docker_client, remote_client, standin_image)
        assert container.uploads_inputs(remote_client)
        remote, remote_seconds = build(
            standin_image, kernel_tree, tarball, tmp_path / "remote", remote_client
        )
        kept = container.labelled_containers(remote_client)
        assert len(kept) == 2  # the userland and the module
        for run in kept:
            host_config = run.attrs["HostConfig"]
            assert run.attrs["Mounts"] == []
            assert not host_config.get("Binds")
            assert not host_config.get("Mounts")
            assert run.attrs["State"]["ExitCode"] == 0
            run.remove(force=True)
    finally:
        remote_client.close()
    print(
        f"\nbind-mounted build on the main engine: {local_seconds:.1f} s; "
        f"uploaded build on the TCP engine: {remote_seconds:.1f} s"
    )
    assert remote == local
    assert any(name.startswith("drbd-km-") for name in remote)


def test_the_current_context_reaches_the_tcp_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, second_engine: Engine
) -> None:
    """`docker context use` moves the engine, though docker-py's from_env reads no context."""
    key = hashlib.sha256(b"second").hexdigest()
    meta = tmp_path / "contexts" / "meta" / key / "meta.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(
        json.dumps({"Name": "second", "Endpoints": {"docker": {"Host": second_engine.address}}})
    )
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "second"}))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.delenv(container.UPLOAD_ENV, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    client = container.connect()
    try:
        assert client.info()["DockerRootDir"] == f"{second_engine.root}/data"
        assert container.uploads_inputs(client)
    finally:
        client.close()


def leave_links(source: Path) -> None:
    """A hostile source: its build leaves a symlink to a host file and a hard-linked pair."""
    makefile = source / "Makefile"
    makefile.write_text(
        makefile.read_text().replace(
            "tools: user/drbdadm\n",
            "tools: user/drbdadm\n"
            "\tln -s /etc/passwd /build/out/c-link.rpm\n"
            "\techo x > /build/out/a-made.txt\n"
            "\tln /build/out/a-made.txt /build/out/b-hard.rpm\n",
        )
    )


@pytest.mark.parametrize("upload", ["0", "1"], ids=["bind mounts", "uploads"])
def test_links_left_in_the_output_fail_the_build_alike(
    upload: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    docker_client: docker.DockerClient,
    standin_image: str,
    kernel_tree: buildenv.KernelTree,
    own_containers: None,
) -> None:
    monkeypatch.setenv(container.UPLOAD_ENV, upload)
    tarball = buildenv.make_drbd_source(tmp_path, VERSION, leave_links)
    with pytest.raises(BuildError) as caught:
        build(standin_image, kernel_tree, tarball, tmp_path / "work", docker_client)
    assert caught.value.exit_code == 9
    assert "b-hard.rpm in the output is not a plain file" in str(caught.value)
    assert list((tmp_path / "work" / "out.partial").iterdir()) == []
