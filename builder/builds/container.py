"""Labelled throw-away build containers, with their inputs bind-mounted or uploaded.

Every container this tool starts carries :data:`LABEL` and is removed with ``force=True`` in a
``finally`` block (never ``auto_remove``, which can delete a container before its logs are
read).  Containers left behind by a killed run of this tool on this machine are reaped when the
next run starts.  ``XDB_KEEP_CONTAINER=1`` keeps the container for debugging.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, ClassVar

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.types import Mount

from builder import log
from builder.builds import engine
from builder.errors import BuildError, DockerError, InputError, Interrupted
from builder.locks import pid_alive
from builder.specs import DEFAULT_LIMITS, Limits

LABEL = "io.xcp-drbd-builder"
LABEL_HOST = f"{LABEL}.host"
LABEL_PID = f"{LABEL}.pid"
LABEL_KEEP = f"{LABEL}.keep"
# On a container that holds an upload's lock: the volume it fills, which goes if it is reaped.
LABEL_VOLUME = f"{LABEL}.volume"
KEEP_ENV = "XDB_KEEP_CONTAINER"
# What a build may send back through the engine (RPMs of a few MiB, a compat patch).
OUTPUT_LIMIT = 2 << 30


# ---------------------------------------------------------------------------------------------
# Containers


@dataclass(frozen=True)
class BindMount:
    """A host path made visible in the container."""

    source: Path
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class VolumeMount:
    """A named volume on the engine, mounted read-only (inputs kept there: engine_inputs)."""

    name: str
    target: str


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    image: str
    command: Sequence[str]
    user: str
    mounts: Sequence[BindMount] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    limits: Limits = DEFAULT_LIMITS
    # The mounts' content goes in as a tar stream before the container starts, and what the
    # writable ones hold comes back as one after it ends (an engine that cannot see our paths).
    upload: bool = False
    volumes: Sequence[VolumeMount] = ()


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    timed_out: bool
    out_of_memory: bool = False  # the kernel killed a process at the memory limit


def owner_labels(*, keep: bool) -> dict[str, str]:
    labels = {LABEL: "1", LABEL_HOST: socket.gethostname(), LABEL_PID: str(os.getpid())}
    if keep:
        labels[LABEL_KEEP] = "1"  # kept on purpose: reaping leaves it for the user
    return labels


def reap_leftovers(client: docker.DockerClient) -> list[str]:
    """Remove containers of earlier runs on this machine whose process is gone.

    Containers of a run that is still going (same machine, live process), containers started
    from another machine on a shared engine, and containers kept on purpose with
    ``XDB_KEEP_CONTAINER=1`` are left alone.
    """
    removed: list[str] = []
    try:
        # Sparse: the listing's own labels, no inspect per container, which a build running
        # beside this one may remove in between (404).
        containers = client.containers.list(all=True, filters={"label": LABEL}, sparse=True)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise DockerError(f"Cannot list the Docker engine's containers: {exc}") from exc
    host = socket.gethostname()
    # The locks of uploads last: the container filling a volume must be gone before the
    # volume can go, and the volume before its lock (a volume without a lock is whole).
    containers.sort(key=lambda c: LABEL_VOLUME in (c.attrs.get("Labels") or {}))
    for container in containers:
        labels = container.attrs.get("Labels") or {}
        if labels.get(LABEL_HOST) != host or labels.get(LABEL_KEEP) == "1":
            continue
        pid_text = labels.get(LABEL_PID, "")
        if pid_text.isdigit() and pid_alive(int(pid_text)):
            continue
        names = container.attrs.get("Names") or [container.id or "?"]
        name = str(names[0]).lstrip("/")
        volume = labels.get(LABEL_VOLUME)
        if volume and not _remove_half_filled(client, volume):
            continue
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            continue  # gone already
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # another run is removing it right now
                continue
            raise DockerError(f"Cannot remove container {name}: {exc}") from exc
        removed.append(name)
        log.info(f"removed container {name} left behind by an interrupted run")
    return removed


def _remove_half_filled(client: docker.DockerClient, volume: str) -> bool:
    """Remove the volume an interrupted upload was filling; whether it is gone."""
    try:
        client.volumes.get(volume).remove(force=True)
    except docker.errors.NotFound:
        return True
    except docker.errors.APIError as exc:
        log.warn(f"could not remove volume {volume}, left half-filled by an interrupted run: {exc}")
        return False
    log.info(f"removed volume {volume}, which an interrupted run had not finished filling")
    return True


def labelled_containers(client: docker.DockerClient) -> list[Container]:
    """Every container (running or not) that carries this tool's label."""
    return list(client.containers.list(all=True, filters={"label": LABEL}))


class _Running:
    """The containers this process has started and not yet removed, so that an interrupt in
    the main thread can stop the builds that other threads run (their threads then clean up
    as after any failed build), and no new container starts once it has."""

    lock = threading.Lock()
    names: ClassVar[set[str]] = set()
    stopping = threading.Event()


def stop_all(client: docker.DockerClient | None = None) -> list[str]:
    """Remove every container this process runs now, and refuse to start new ones."""
    _Running.stopping.set()
    with _Running.lock:
        names = sorted(_Running.names)
    if not names:
        return []
    try:
        client = client or engine.connect()
    except DockerError:
        return []
    for name in names:
        _remove(client, name)
    return names


def allow_new_containers() -> None:
    """Undo :func:`stop_all` (for a process that goes on after an interrupted batch)."""
    _Running.stopping.clear()


# ---------------------------------------------------------------------------------------------
# Inputs and outputs as tar streams, for an engine that cannot see this machine's paths


def _root_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # As a read-only bind mount shows them to the build user: readable, not writable.
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode &= 0o755
    return info


def pack_inputs(mounts: Sequence[BindMount], stream: IO[bytes]) -> None:
    """Write the mounts as one tar to extract at the container's ``/``.

    A read-only mount's file or directory tree lands at its target path (symlinks kept as
    links, owned by root, not writable by the build user); a writable mount becomes an empty
    directory that everyone may write to, as the bind-mounted staging directory is.
    """
    # A stream ("w|"): it may be a pipe.
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for mount in mounts:
            name = mount.target.strip("/")
            if not name or ".." in PurePosixPath(name).parts:
                raise DockerError(f"Cannot upload to {mount.target!r}: not a path below /.")
            if not mount.read_only:
                info = tarfile.TarInfo(name)
                info.type = tarfile.DIRTYPE
                info.mode = 0o777
                info.mtime = int(time.time())
                archive.addfile(info)
                continue
            archive.add(str(mount.source), arcname=name, recursive=True, filter=_root_owned)


class Packing:
    """:func:`pack_inputs` as chunks, written by a thread while the engine already extracts
    what came before (the SDK hands an iterator to requests, which sends it as it is read)."""

    def __init__(self, mounts: Sequence[BindMount]) -> None:
        self._mounts = mounts
        self._reader, self._writer = os.pipe()
        self._source = os.fdopen(self._reader, "rb", buffering=0)
        self._thread = threading.Thread(target=self._write, name="pack-inputs", daemon=True)
        self.error: BaseException | None = None

    def _write(self) -> None:
        try:
            with os.fdopen(self._writer, "wb", buffering=1 << 20) as sink:
                pack_inputs(self._mounts, sink)
        except BrokenPipeError:
            pass  # the reading side gave up: its error is the one to tell
        except OSError as exc:
            self.error = InputError(f"Cannot read the build's inputs to send them: {exc}")
        except BaseException as exc:  # handed to the reading side
            self.error = exc

    def chunks(self) -> Iterator[bytes]:
        self._thread.start()
        while chunk := self._source.read(1 << 20):
            yield chunk
        self._thread.join()
        self.check()

    def check(self) -> None:
        """Raise what went wrong on the packing side (a file that could not be read)."""
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self._source.close()  # a writer still going gets EPIPE and ends
        if self._thread.ident is not None:  # started
            self._thread.join()


@contextlib.contextmanager
def packed(mounts: Sequence[BindMount]) -> Iterator[Packing]:
    packing = Packing(mounts)
    try:
        yield packing
    finally:
        packing.close()


@dataclass(frozen=True)
class Downloaded:
    files: tuple[str, ...]  # regular files written into the destination
    refused: tuple[str, ...]  # entries at the top that are not regular files (links, devices)


def unpack_outputs(archive_file: IO[bytes], destination: Path, *, limit: int) -> Downloaded:
    """Write the regular files at the top of a ``get_archive`` tar into ``destination``.

    The tar holds the directory itself as its first entry (``out/``) and its content below.
    Only plain files directly below it are written, each under its own base name, created
    anew (never through an existing link) with the permission bits of its header cut to
    0o755; links, devices and the like (and a file another entry hard-links to) are named in
    ``refused`` for the caller to judge as it judges a bind-mounted output; deeper entries and
    names that climb out are skipped.
    """
    files: list[str] = []
    refused: list[str] = []
    linked: set[str] = set()
    total = 0
    try:
        with tarfile.open(fileobj=archive_file, mode="r:") as archive:
            for member in archive:
                parts = PurePosixPath(member.name).parts
                if len(parts) != 2 or parts[0] in ("/", "..") or parts[1] in (".", ".."):
                    continue
                name = parts[1]
                if not member.isreg():
                    refused.append(name)
                    if member.islnk():
                        # Its target has two names too: refused as a bind mount's
                        # link count would refuse both.
                        linked.add(PurePosixPath(member.linkname).name)
                    continue
                total += member.size
                if total > limit:
                    raise BuildError(
                        f"The build's output is larger than {limit >> 20} MiB; nothing of it "
                        "is kept."
                    )
                source = archive.extractfile(member)
                if source is None:
                    refused.append(name)
                    continue
                path = destination / name
                descriptor = os.open(
                    path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600
                )
                with os.fdopen(descriptor, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
                os.chmod(path, member.mode & 0o755)
                os.utime(path, (member.mtime, member.mtime))
                files.append(name)
        for name in sorted(linked.intersection(files)):
            (destination / name).unlink()
            files.remove(name)
            refused.append(name)
    except FileExistsError as exc:
        name = Path(str(exc.filename)).name
        raise BuildError(f"The build's output names {name} twice.") from None
    except tarfile.TarError as exc:
        raise DockerError(f"The engine sent back an unreadable archive: {exc}") from exc
    return Downloaded(tuple(files), tuple(refused))


def _upload(container: Container, spec: RunSpec) -> None:
    with packed(spec.mounts) as packing:
        try:
            accepted = container.put_archive("/", packing.chunks())
        except requests.exceptions.RequestException as exc:
            packing.check()
            raise DockerError(
                f"Lost the connection to the Docker engine while uploading the inputs of "
                f"container {container.name}: {exc}"
            ) from exc
        if not accepted:
            raise DockerError(f"The engine refused the inputs of container {container.name}.")


def _download(container: Container, spec: RunSpec) -> None:
    for mount in spec.mounts:
        if mount.read_only:
            continue
        with tempfile.TemporaryFile(dir=mount.source) as stream:
            chunks, _ = container.get_archive(mount.target)
            received = 0
            for chunk in chunks:
                received += len(chunk)
                if received > OUTPUT_LIMIT + (1 << 20):
                    raise BuildError(
                        f"The build's output in {mount.target} is larger than "
                        f"{OUTPUT_LIMIT >> 20} MiB; nothing of it is kept."
                    )
                stream.write(chunk)
            stream.seek(0)
            downloaded = unpack_outputs(stream, mount.source, limit=OUTPUT_LIMIT)
        for name in downloaded.refused:
            # Left for the caller's checks to refuse, as a bind-mounted link would be.
            with contextlib.suppress(OSError):
                os.symlink(f"refused: not a regular file in {mount.target}", mount.source / name)


@contextlib.contextmanager
def started_container(client: docker.DockerClient, spec: RunSpec) -> Iterator[Container]:
    """Create and start a labelled container without network; always remove it on exit."""
    if _Running.stopping.is_set():
        raise Interrupted("Stopping: no new build container is started.")
    name = f"xcp-drbd-builder-{uuid.uuid4().hex[:12]}"
    mounts = [
        Mount(target=m.target, source=str(m.source), type="bind", read_only=m.read_only)
        for m in ([] if spec.upload else spec.mounts)
    ] + [
        Mount(target=v.target, source=v.name, type="volume", read_only=True, no_copy=True)
        for v in spec.volumes
    ]
    keep = os.environ.get(KEEP_ENV) == "1"
    with _Running.lock:
        _Running.names.add(name)
    try:
        container = client.containers.create(
            spec.image,
            list(spec.command),
            name=name,
            labels=owner_labels(keep=keep),
            network_mode="none",
            user=spec.user,
            mounts=mounts,
            environment=dict(spec.environment),
            working_dir=spec.working_dir,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            mem_limit=f"{spec.limits.memory_mib}m",
            memswap_limit=f"{spec.limits.memory_mib}m",
            pids_limit=spec.limits.pids,
            nano_cpus=int(spec.limits.cpus * 1e9),
            detach=True,
        )
        if spec.upload:
            _upload(container, spec)
        container.start()
        yield container
    except docker.errors.APIError as exc:
        raise DockerError(f"Container {name} from image {spec.image} failed: {exc}") from exc
    finally:
        if keep:
            log.warn(
                f"{KEEP_ENV}=1: keeping container {name}; remove it with `docker rm -f {name}`"
            )
        else:
            _remove(client, name)
        with _Running.lock:
            _Running.names.discard(name)


def _remove(client: docker.DockerClient, name: str) -> None:
    # By name, so a container is found even if creating it was interrupted after the engine
    # made it but before the client got its id.
    for attempt in range(3):
        try:
            client.containers.get(name).remove(force=True)
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if attempt == 2:
                log.warn(f"could not remove container {name}: {exc}")
            time.sleep(0.5)


def run_logged(
    client: docker.DockerClient,
    spec: RunSpec,
    *,
    log_file: Path,
    timeout: float | None = None,
    on_line: Callable[[str], None] | None = None,
) -> RunResult:
    """Run ``spec`` to completion, appending its output to ``log_file`` as it arrives.

    With ``timeout`` (seconds) the container is killed when it runs longer; the result says so.
    """
    with started_container(client, spec) as container:
        name = container.name or ""
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(docker.errors.DockerException):
                container.kill()

        timer = threading.Timer(timeout, kill) if timeout else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            with log_file.open("ab") as sink:
                pending = b""
                for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
                    sink.write(chunk)
                    sink.flush()
                    if on_line is not None:
                        pending += chunk
                        *complete, pending = pending.split(b"\n")
                        for line in complete:
                            on_line(line.decode("utf-8", "replace"))
            status = container.wait()
            if spec.upload and int(status.get("StatusCode", -1)) == 0 and not timed_out.is_set():
                _download(container, spec)
        except requests.exceptions.RequestException as exc:
            raise DockerError(
                f"Lost the connection to the Docker engine while container {name} ran: {exc}"
            ) from exc
        finally:
            if timer is not None:
                timer.cancel()
        exit_code = int(status.get("StatusCode", -1))
        out_of_memory = False
        with contextlib.suppress(
            docker.errors.DockerException, requests.exceptions.RequestException
        ):
            container.reload()
            out_of_memory = bool((container.attrs.get("State") or {}).get("OOMKilled"))
        return RunResult(
            exit_code=exit_code,
            timed_out=timed_out.is_set(),
            out_of_memory=out_of_memory,
        )
