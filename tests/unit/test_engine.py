"""Which engine, local or not, and the tar streams that carry a remote build's inputs and
outputs (hostile archives included)."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import stat
import tarfile
from pathlib import Path

import pytest

from builder.builds import container, engine
from builder.errors import BuildError, ConfigError, DockerError


def write_context(config: Path, name: str, host: str, *, tls: bool = False) -> None:
    key = hashlib.sha256(name.encode()).hexdigest()
    meta = config / "contexts" / "meta" / key / "meta.json"
    meta.parent.mkdir(parents=True)
    endpoint = {"Host": host, "SkipTLSVerify": False}
    meta.write_text(json.dumps({"Name": name, "Endpoints": {"docker": endpoint}}))
    if tls:
        certs = config / "contexts" / "tls" / key / "docker"
        certs.mkdir(parents=True)
        for file in ("ca.pem", "cert.pem", "key.pem"):
            (certs / file).write_text("not a real certificate\n")


def test_docker_host_wins_over_any_context(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "far"}))
    write_context(tmp_path, "far", "tcp://far.example:2376")
    environ = {"DOCKER_HOST": "tcp://10.0.0.5:2375", "DOCKER_CONFIG": str(tmp_path)}
    endpoint = engine.resolve_endpoint(environ)
    assert (endpoint.address, endpoint.origin) == ("tcp://10.0.0.5:2375", "DOCKER_HOST")


def test_the_current_context_names_the_engine_with_its_tls_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "far"}))
    write_context(tmp_path, "far", "tcp://far.example:2376", tls=True)
    endpoint = engine.resolve_endpoint({"DOCKER_CONFIG": str(tmp_path)})
    assert endpoint.address == "tcp://far.example:2376"
    assert endpoint.origin == "Docker context far"
    assert endpoint.tls is not None
    assert endpoint.tls.verify is True
    assert endpoint.tls.cert is not None
    assert endpoint.tls.cert[0].endswith("cert.pem")


def test_docker_context_variable_and_home_config(tmp_path: Path) -> None:
    config = tmp_path / ".docker"
    config.mkdir()
    (config / "config.json").write_text(json.dumps({"currentContext": "far"}))
    write_context(config, "far", "tcp://far.example:2376")
    write_context(config, "near", "ssh://builder@near.example")
    assert engine.resolve_endpoint({"HOME": str(tmp_path)}).address == ("tcp://far.example:2376")
    chosen = engine.resolve_endpoint({"HOME": str(tmp_path), "DOCKER_CONTEXT": "near"})
    assert chosen.address == "ssh://builder@near.example"
    default = engine.resolve_endpoint({"HOME": str(tmp_path), "DOCKER_CONTEXT": "default"})
    assert default.address == engine.DEFAULT_ADDRESS


def test_no_configuration_is_the_default_socket(tmp_path: Path) -> None:
    endpoint = engine.resolve_endpoint({"HOME": str(tmp_path)})
    assert endpoint.address == "unix:///var/run/docker.sock"
    assert endpoint.origin == "the default socket"


def test_a_context_that_does_not_exist_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "gone"}))
    with pytest.raises(DockerError) as caught:
        engine.resolve_endpoint({"DOCKER_CONFIG": str(tmp_path)})
    assert caught.value.exit_code == 8
    assert "'gone' does not exist" in str(caught.value)
    assert "docker context ls" in str(caught.value)


def test_unreachable_tcp_engine_is_exit_code_8_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # bound, not listening: nothing answers on that port
    address = f"tcp://127.0.0.1:{port}"
    monkeypatch.setenv("DOCKER_HOST", address)
    with pytest.raises(DockerError) as caught:
        engine.connect()
    assert caught.value.exit_code == 8
    assert f"not reachable at {address}" in str(caught.value)


def test_unreachable_context_engine_names_the_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_context(tmp_path, "far", f"unix://{tmp_path}/no-such.sock")
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.setenv("DOCKER_CONTEXT", "far")
    with pytest.raises(DockerError) as caught:
        engine.connect()
    assert f"not reachable at unix://{tmp_path}/no-such.sock" in str(caught.value)
    assert "Docker context far" in str(caught.value)


@pytest.mark.parametrize(
    ("address", "name", "local", "why"),
    [
        ("unix:///var/run/docker.sock", "vm", True, "runs on this machine"),
        ("unix:///var/run/docker.sock", "ci-runner-7", False, "runs on 'ci-runner-7'"),
        ("tcp://127.0.0.1:2375", "vm", False, "is a tcp address"),
        ("ssh://builder@far.example", "vm", False, "is a ssh address"),
    ],
)
def test_only_a_unix_socket_to_this_host_is_local(
    address: str, name: str, local: bool, why: str
) -> None:
    judged, reason = engine.engine_is_local(address, name, "vm")
    assert judged is local
    assert why in reason


def test_upload_can_be_forced_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    client = object()
    monkeypatch.setenv(engine.UPLOAD_ENV, "1")
    assert engine.uploads_inputs(client)  # type: ignore[arg-type]
    monkeypatch.setenv(engine.UPLOAD_ENV, "0")
    assert not engine.uploads_inputs(client)  # type: ignore[arg-type]
    monkeypatch.setenv(engine.UPLOAD_ENV, "yes")
    with pytest.raises(ConfigError, match="XDB_DOCKER_UPLOAD must be 1"):
        engine.uploads_inputs(client)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Inputs


def test_inputs_land_at_their_targets_read_only_and_the_output_is_open(tmp_path: Path) -> None:
    tarball = tmp_path / "drbd-8.4.1.tar.gz"
    tarball.write_bytes(b"source")
    tarball.chmod(0o666)
    tree = tmp_path / "linux-headers"
    (tree / "scripts").mkdir(parents=True)
    (tree / "scripts" / "run.sh").write_text("#!/bin/sh\n")
    (tree / "scripts" / "run.sh").chmod(0o775)
    (tree / "Makefile").write_text("all:\n")
    (tree / "link").symlink_to("scripts/run.sh")
    staging = tmp_path / "out"
    staging.mkdir()
    stream = io.BytesIO()
    container.pack_inputs(
        [
            container.BindMount(tarball, "/build/input/drbd-8.4.1.tar.gz"),
            container.BindMount(tree, "/usr/src/linux-headers"),
            container.BindMount(staging, "/build/out", read_only=False),
        ],
        stream,
    )
    stream.seek(0)
    with tarfile.open(fileobj=stream) as archive:
        members = {m.name: m for m in archive}
        assert archive.extractfile("build/input/drbd-8.4.1.tar.gz").read() == b"source"  # type: ignore[union-attr]
    assert set(members) == {
        "build/input/drbd-8.4.1.tar.gz",
        "usr/src/linux-headers",
        "usr/src/linux-headers/Makefile",
        "usr/src/linux-headers/link",
        "usr/src/linux-headers/scripts",
        "usr/src/linux-headers/scripts/run.sh",
        "build/out",
    }
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())
    assert members["build/input/drbd-8.4.1.tar.gz"].mode == 0o644
    assert members["usr/src/linux-headers/scripts/run.sh"].mode == 0o755
    assert members["usr/src/linux-headers/link"].issym()
    assert members["usr/src/linux-headers/link"].linkname == "scripts/run.sh"
    assert members["build/out"].isdir()
    assert members["build/out"].mode == 0o777


def test_a_target_outside_the_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DockerError, match="not a path below /"):
        container.pack_inputs([container.BindMount(tmp_path, "/build/../../etc")], io.BytesIO())


# ---------------------------------------------------------------------------------------------
# Outputs: what the engine sends back is not trusted


def archive_of(*members: tuple[tarfile.TarInfo, bytes]) -> io.BytesIO:
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    stream.seek(0)
    return stream


def entry(
    name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = link
    info.mtime = 1324339200
    return info


def test_regular_files_at_the_top_come_back_with_their_time(tmp_path: Path) -> None:
    stream = archive_of(
        (entry("out", tarfile.DIRTYPE, 0o777), b""),
        (entry("out/drbd-8.4.1-1.x86_64.rpm", mode=0o4755), b"rpm bytes"),
        (entry("out/sub", tarfile.DIRTYPE), b""),
        (entry("out/sub/deeper.rpm"), b"not taken"),
    )
    got = container.unpack_outputs(stream, tmp_path, limit=1 << 20)
    assert got.files == ("drbd-8.4.1-1.x86_64.rpm",)
    assert got.refused == ("sub",)
    rpm = tmp_path / "drbd-8.4.1-1.x86_64.rpm"
    assert rpm.read_bytes() == b"rpm bytes"
    assert stat.S_IMODE(rpm.stat().st_mode) == 0o755  # no set-uid bit from the archive
    assert rpm.stat().st_mtime == 1324339200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drbd-8.4.1-1.x86_64.rpm"]


@pytest.mark.parametrize(
    "hostile",
    [
        entry("out/evil.rpm", tarfile.SYMTYPE, link="/etc/shadow"),
        entry("out/evil.rpm", tarfile.LNKTYPE, link="../../etc/shadow"),
        entry("out/evil.rpm", tarfile.CHRTYPE),
        entry("out/evil.rpm", tarfile.FIFOTYPE),
    ],
    ids=["symlink", "hard link", "device", "fifo"],
)
def test_links_and_devices_are_refused_not_made(tmp_path: Path, hostile: tarfile.TarInfo) -> None:
    got = container.unpack_outputs(archive_of((hostile, b"")), tmp_path, limit=1 << 20)
    assert got == container.Downloaded(files=(), refused=("evil.rpm",))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name", ["/etc/cron.d/evil", "../evil.rpm", "out/../../evil.rpm", "out/..", "evil.rpm"]
)
def test_names_that_climb_out_or_sit_elsewhere_are_skipped(tmp_path: Path, name: str) -> None:
    work = tmp_path / "out"
    work.mkdir()
    got = container.unpack_outputs(archive_of((entry(name), b"x")), work, limit=1 << 20)
    assert got.files == ()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["out"]


def test_an_output_through_an_existing_link_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    work = tmp_path / "out"
    work.mkdir()
    (work / "a.rpm").symlink_to(victim)
    with pytest.raises(BuildError, match=r"names a\.rpm twice"):
        container.unpack_outputs(archive_of((entry("out/a.rpm"), b"x")), work, limit=1 << 20)
    assert victim.read_text() == "keep me\n"


def test_a_name_sent_twice_is_refused(tmp_path: Path) -> None:
    stream = archive_of((entry("out/a.rpm"), b"one"), (entry("out/a.rpm"), b"two"))
    with pytest.raises(BuildError, match="twice"):
        container.unpack_outputs(stream, tmp_path, limit=1 << 20)


def test_output_beyond_the_limit_is_refused(tmp_path: Path) -> None:
    stream = archive_of((entry("out/a.rpm"), b"a" * 600), (entry("out/b.rpm"), b"b" * 600))
    with pytest.raises(BuildError, match="larger than"):
        container.unpack_outputs(stream, tmp_path, limit=1000)


def test_a_broken_archive_is_a_docker_error(tmp_path: Path) -> None:
    with pytest.raises(DockerError, match="unreadable archive"):
        container.unpack_outputs(io.BytesIO(b"\x00garbage" * 100), tmp_path, limit=1 << 20)


def test_a_file_with_a_hard_link_beside_it_is_refused_under_both_names(tmp_path: Path) -> None:
    stream = archive_of(
        (entry("out/drbd.rpm"), b"x"),
        (entry("out/other.txt", tarfile.LNKTYPE, link="out/drbd.rpm"), b""),
    )
    got = container.unpack_outputs(stream, tmp_path, limit=1 << 20)
    assert got == container.Downloaded(files=(), refused=("other.txt", "drbd.rpm"))
    assert list(tmp_path.iterdir()) == []
