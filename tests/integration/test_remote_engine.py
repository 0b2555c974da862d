"""A build on a Docker engine that cannot see this machine's paths: a second dockerd on a TCP
port of 127.0.0.1, with its own data root, exec root, pid file and socket.  Its inputs go in
as a tar stream and its RPMs come back as one; they must be the very bytes a bind-mounted
build on the main engine makes."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import re
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest
from docker.types import Mount

from builder import log
from builder.builds import container, drbdbuild, engine, engine_inputs
from builder.cli import main
from builder.errors import BuildError, DockerError, NoSpaceError
from builder.specs import KernelRequirement
from tests.integration import buildenv
from tests.support import engines

pytestmark = [pytest.mark.integration, pytest.mark.docker]

VERSION = "8.4.1"


@pytest.fixture(scope="module")
def second_engine(docker_client: docker.DockerClient) -> Iterator[engines.SecondEngine]:
    """A dockerd of its own, started here and stopped in teardown (the main one is left be)."""
    why = engines.can_run_second_engine()
    if why:
        pytest.skip(why)
    try:
        with engines.second_engine() as started:
            yield started
    except engines.EngineFailed as exc:
        pytest.fail(str(exc))


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


@dataclass(frozen=True)
class Reference:
    tarball: Path
    rpms: dict[str, str]  # what a bind-mounted build on the main engine makes
    seconds: float


@pytest.fixture(scope="module")
def reference(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
    standin_image: str,
    kernel_tree: buildenv.KernelTree,
) -> Reference:
    work = tmp_path_factory.mktemp("reference")
    tarball = buildenv.make_drbd_source(work, VERSION)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(engine.UPLOAD_ENV, raising=False)
        assert not engine.uploads_inputs(docker_client)
        rpms, seconds = build(standin_image, kernel_tree, tarball, work / "local", docker_client)
    assert any(name.startswith("drbd-km-") for name in rpms)
    return Reference(tarball, rpms, seconds)


@pytest.fixture(scope="module")
def remote_image(
    second_engine: engines.SecondEngine, docker_client: docker.DockerClient, standin_image: str
) -> str:
    remote = second_engine.client()
    try:
        load_image(docker_client, remote, standin_image)
    finally:
        remote.close()
    return standin_image


@pytest.fixture
def remote_client(
    second_engine: engines.SecondEngine, monkeypatch: pytest.MonkeyPatch
) -> Iterator[docker.DockerClient]:
    """The second engine as the Docker CLI would find it (DOCKER_HOST), with nothing of the
    tool's kept on it yet."""
    monkeypatch.setenv("DOCKER_HOST", second_engine.address)
    monkeypatch.delenv(engine.UPLOAD_ENV, raising=False)
    # What the tool says is part of what these tests check (a `-q` run before may have
    # silenced it in this process).
    monkeypatch.setattr(log._State, "quiet", False)
    client = engine.connect()
    engine_inputs.prune(client)
    yield client
    client.close()


@dataclass(frozen=True)
class Remote:
    """The second engine with the stand-in image on it, the kernel tree its builds upload,
    and the main engine's build of the same source to compare with."""

    client: docker.DockerClient
    image: str
    kernel: buildenv.KernelTree
    reference: Reference

    def build(self, work: Path) -> tuple[dict[str, str], float]:
        """:func:`build` of the reference's source on the second engine, in ``work``."""
        return build(self.image, self.kernel, self.reference.tarball, work, self.client)


@pytest.fixture
def remote(
    remote_client: docker.DockerClient,
    remote_image: str,
    reference: Reference,
    kernel_tree: buildenv.KernelTree,
) -> Remote:
    return Remote(remote_client, remote_image, kernel_tree, reference)


def sent(err: str) -> list[str]:
    """What the tool says it sent to the engine to keep."""
    return re.findall(r"(\S+) is kept on the engine as volume", err)


def test_build_on_a_tcp_engine_uploads_its_inputs_and_makes_the_same_rpms(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *,
    remote: Remote,
) -> None:
    # The containers are kept so that what they were given can be read back.
    monkeypatch.setenv(container.KEEP_ENV, "1")
    assert engine.uploads_inputs(remote.client)
    rpms, first_seconds = remote.build(tmp_path / "first")
    kept = container.labelled_containers(remote.client)
    assert len(kept) == 2  # the userland and the module
    for run in kept:
        host_config = run.attrs["HostConfig"]
        # Nothing of this machine: the kernel tree is in the engine's own volumes.
        assert not host_config.get("Binds")
        assert {m["Type"] for m in host_config.get("Mounts") or []} <= {"volume"}
        assert all(not m["RW"] for m in run.attrs["Mounts"])
        assert run.attrs["State"]["ExitCode"] == 0
        run.remove(force=True)
    assert rpms == remote.reference.rpms
    first = sent(capsys.readouterr().err)
    volumes = engine_inputs.kept(remote.client)
    # The kernel tree's directories, each once; the tarball goes with every build.
    assert sorted(first) == sorted(v.what for v in volumes)
    assert {f"/usr/src/{d.name}" for d in remote.kernel.build_dir.parent.iterdir()} <= set(first)
    assert all(v.name.startswith(engine_inputs.VOLUME_PREFIX) for v in volumes)

    # A second build of the same kernel sends nothing large again and makes the same RPMs.
    monkeypatch.delenv(container.KEEP_ENV)
    again, again_seconds = remote.build(tmp_path / "again")
    assert again == remote.reference.rpms
    assert sent(capsys.readouterr().err) == []
    assert engine_inputs.kept(remote.client) == volumes

    # What the user sees of them, and how they go.
    assert main(["cache"]) == 0
    listing = capsys.readouterr().out
    assert all(f"    {v.name}\n" in listing and v.what in listing for v in volumes)
    assert f"{len(volumes)} kept, " in listing
    assert main(["cache", "--prune"]) == 0
    assert f"removed {len(volumes)} kept inputs" in capsys.readouterr().out
    assert engine_inputs.kept(remote.client) == []
    print(
        f"\nbind-mounted build on the main engine: {remote.reference.seconds:.1f} s; on the TCP "
        f"engine: first {first_seconds:.1f} s, kernel kept there {again_seconds:.1f} s"
    )


def test_a_kept_input_with_other_content_is_refused_and_sent_again(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    remote: Remote,
    own_containers: None,
) -> None:
    remote.build(tmp_path / "first")
    capsys.readouterr()
    # Someone else on the engine changes a header in the volume that carries our label.
    (common,) = [v for v in engine_inputs.kept(remote.client) if v.what.endswith("-common")]
    remote.client.containers.run(
        remote.image,
        ["sh", "-c", "echo '#define PLANTED 1' >> \"$(find /v -name kernel.h | head -n 1)\""],
        user="0",
        network_mode="none",
        mounts=[Mount("/v", common.name, type="volume")],
        remove=True,
    )
    rpms, _ = remote.build(tmp_path / "again")
    assert rpms == remote.reference.rpms
    err = capsys.readouterr().err
    assert f"warning: volume {common.name} on the Docker engine" in err
    assert "holds other content: removed, sending it again" in err
    assert sent(err) == [common.what]
    assert common.name in {v.name for v in engine_inputs.kept(remote.client)}


def test_builds_needing_one_input_at_once_send_it_once(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    remote: Remote,
    own_containers: None,
) -> None:
    names = ("one", "two", "three")
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        futures = [pool.submit(remote.build, tmp_path / name) for name in names]
        results = [future.result()[0] for future in futures]
    assert results == [remote.reference.rpms] * len(names)
    err = capsys.readouterr().err
    first = sent(err)
    assert sorted(first) == sorted(set(first))  # each once
    assert "holds other content" not in err
    assert "warning" not in err
    assert sorted(first) == sorted(v.what for v in engine_inputs.kept(remote.client))
    assert uploads_left(remote.client) == []


def uploads_left(client: docker.DockerClient) -> list[str]:
    return [
        str(c.name)
        for c in client.containers.list(all=True)
        if str(c.name).startswith(engine_inputs.LOCK_PREFIX)
    ]


def test_an_engine_that_dies_mid_upload_fails_clearly_and_the_next_run_starts_clean(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    second_engine: engines.SecondEngine,
    remote: Remote,
) -> None:
    common = next(d for d in remote.kernel.build_dir.parent.iterdir() if d.name.endswith("common"))
    large = engine_inputs.describe(common)
    assert large is not None
    # Watched on the engine's disk: its API waits for an upload to end before it lists the
    # container that receives it.
    filling = second_engine.root / "data" / "volumes" / large.volume / "_data"
    killed = threading.Event()

    def kill_when_filling() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if filling.is_dir() and any(filling.iterdir()):
                second_engine.kill()  # the upload of the largest input is under way
                killed.set()
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_when_filling)
    killer.start()
    try:
        with pytest.raises(DockerError) as caught:
            remote.build(tmp_path / "first")
    finally:
        killer.join()
        if not killed.is_set():
            pytest.fail("the upload ended before the engine could be killed")
        second_engine.start()
    assert caught.value.exit_code == 8
    assert (
        f"Lost the connection to the Docker engine while sending /usr/src/{common.name}"
        in caught.value.message
    )
    assert caught.value.hint == "The next run removes what was half sent and starts again."
    before = sent(capsys.readouterr().err)
    assert f"/usr/src/{common.name}" not in before

    # The engine is back: what was half sent is removed, sent again, and checked by the build.
    rpms, _ = remote.build(tmp_path / "again")
    assert rpms == remote.reference.rpms
    assert uploads_left(remote.client) == []
    after = sent(capsys.readouterr().err)
    assert f"/usr/src/{common.name}" in after
    assert sorted(before + after) == sorted(v.what for v in engine_inputs.kept(remote.client))


def test_an_engine_whose_disk_fills_keeps_nothing_half_sent(
    kernel_tree: buildenv.KernelTree, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    why = engines.can_run_second_engine()
    if why:
        pytest.skip(why)
    common = max(kernel_tree.build_dir.parent.iterdir(), key=lambda d: d.name.endswith("common"))
    large = engine_inputs.describe(common)
    small = engine_inputs.describe(kernel_tree.build_dir)
    assert large is not None
    assert small is not None
    assert large.size > 40 << 20 > small.size
    with engines.second_engine(data_mib=40) as full:
        client = full.client()
        try:
            image = tiny_image(client, tmp_path)
            with pytest.raises(NoSpaceError) as caught:
                engine_inputs.ensure(client, large, image=image, what=f"/usr/src/{common.name}")
            assert caught.value.exit_code == 16
            assert f"ran out of disk space while receiving /usr/src/{common.name}" in str(
                caught.value
            )
            assert engine_inputs.kept(client) == []
            assert client.volumes.list() == []
            assert uploads_left(client) == []
            # The space is free again: a smaller input fits and is kept.
            engine_inputs.ensure(client, small, image=image, what="/usr/src/small")
            assert [v.size for v in engine_inputs.kept(client)] == [small.size]
        finally:
            client.close()


def tiny_image(client: docker.DockerClient, work: Path) -> str:
    """An image of one small file: the lock and the filler are created from it, never run."""
    (work / "marker").write_text("an image to create containers from\n")
    archive = work / "tiny.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(work / "marker", arcname="marker")
    client.api.import_image(src=str(archive), repository="xdb-tiny", tag="1")
    return "xdb-tiny:1"


def test_the_current_context_reaches_the_tcp_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, second_engine: engines.SecondEngine
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
    monkeypatch.delenv(engine.UPLOAD_ENV, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    client = engine.connect()
    try:
        assert client.info()["DockerRootDir"] == f"{second_engine.root}/data"
        assert engine.uploads_inputs(client)
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
    monkeypatch.setenv(engine.UPLOAD_ENV, upload)
    tarball = buildenv.make_drbd_source(tmp_path, VERSION, leave_links)
    with pytest.raises(BuildError) as caught:
        build(standin_image, kernel_tree, tarball, tmp_path / "work", docker_client)
    assert caught.value.exit_code == 9
    assert "b-hard.rpm in the output is not a plain file" in str(caught.value)
    assert list((tmp_path / "work" / "out.partial").iterdir()) == []
