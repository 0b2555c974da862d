"""The Docker engine: build images from a build context, run labelled throw-away containers.

Images are tagged with a sha256 of their build context (every file's path, mode and content)
plus the build arguments, and reused while that hash is unchanged: editing a Dockerfile or
choosing another base image gives a new tag, rebuilding nothing else.

Every container this tool starts carries :data:`LABEL` and is removed with ``force=True`` in a
``finally`` block (never ``auto_remove``, which can delete a container before its logs are
read).  Containers left behind by a killed run of this tool on this machine are reaped when the
next run starts.  ``XDB_KEEP_CONTAINER=1`` keeps the container for debugging.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.types import Mount

from builder import log
from builder.errors import DockerError, Interrupted
from builder.locks import pid_alive
from builder.specs import DEFAULT_LIMITS, Limits

LABEL = "io.xcp-drbd-builder"
LABEL_HOST = f"{LABEL}.host"
LABEL_PID = f"{LABEL}.pid"
LABEL_KEEP = f"{LABEL}.keep"
KEEP_ENV = "XDB_KEEP_CONTAINER"
IMAGE_REPOSITORY = "xcp-drbd-builder"
# Files that never belong to an image's content (editor and VCS litter).
IGNORED_NAMES = frozenset({".git", "__pycache__", ".DS_Store"})


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _probe_unix_socket(address: str, hint: str) -> None:
    path = address.removeprefix("unix://")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(5)
        probe.connect(path)
    except OSError as exc:
        reason = "no such socket" if isinstance(exc, FileNotFoundError) else exc.strerror
        raise DockerError(
            f"The Docker engine is not reachable at {address} ({reason}).", hint=hint
        ) from None
    finally:
        probe.close()


def connect() -> docker.DockerClient:
    """Return a client for a Docker engine that answered a ping, or raise :class:`DockerError`."""
    address = engine_address()
    hint = "Start dockerd (for example `systemctl start docker`) or set DOCKER_HOST."
    if address.startswith("unix://"):
        # Checked first: docker-py leaks its socket when its first request fails.
        _probe_unix_socket(address, hint)
    client: docker.DockerClient | None = None
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        if client is not None:
            client.close()
        raise DockerError(
            f"The Docker engine is not reachable at {address} ({exc}).", hint=hint
        ) from exc
    return client


# ---------------------------------------------------------------------------------------------
# Images


def context_hash(context: Path, build_args: Mapping[str, str] | None = None) -> str:
    """sha256 over the build context's files (path, executable bit, content) and build args."""
    if not (context / "Dockerfile").is_file():
        raise DockerError(f"Build context {context} has no Dockerfile.")
    digest = hashlib.sha256()
    for path in sorted(_context_files(context)):
        relative = path.relative_to(context).as_posix()
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            digest.update(f"link {relative} -> {os.readlink(path)}\0".encode())
            continue
        executable = "x" if mode & stat.S_IXUSR else "-"
        digest.update(f"file {relative} {executable}\0".encode())
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    for key, value in sorted((build_args or {}).items()):
        digest.update(f"arg {key}={value}\0".encode())
    return digest.hexdigest()


def _context_files(context: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(context):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_NAMES)
        for name in files:
            if name not in IGNORED_NAMES:
                yield Path(root) / name
        for name in dirs:
            if (Path(root) / name).is_symlink():
                yield Path(root) / name


def image_tag(name: str, context: Path, build_args: Mapping[str, str] | None = None) -> str:
    return f"{IMAGE_REPOSITORY}/{name}:{context_hash(context, build_args)[:16]}"


def build_image(
    client: docker.DockerClient,
    *,
    context: Path,
    name: str,
    build_args: Mapping[str, str] | None = None,
    log_file: Path | None = None,
) -> str:
    """Build ``context`` unless an image with its content tag exists; return the image id."""
    args = {k: v for k, v in (build_args or {}).items()}
    tag = image_tag(name, context, args)
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as exc:
        raise DockerError(f"Cannot look up image {tag}: {exc}") from exc
    else:
        log.info(f"image {tag} is up to date ({_short(image.id)})")
        return str(image.id)
    with log.step(f"Build image {tag} from {context}"):
        lines: list[str] = []
        sink: IO[str] | None = None
        try:
            if log_file is not None:
                log_file.parent.mkdir(parents=True, exist_ok=True)
                sink = log_file.open("w", encoding="utf-8")
            stream = client.api.build(
                path=str(context),
                tag=tag,
                buildargs=args,
                rm=True,
                forcerm=True,
                decode=True,
                labels={LABEL: "1"},
            )
            error = _read_build_output(stream, lines, sink)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise DockerError(f"Building image {tag} from {context} failed: {exc}") from exc
        finally:
            if sink is not None:
                sink.close()
        if error is not None:
            tail = "\n".join(lines[-20:])
            where = f"\nFull log: {log_file}" if log_file else ""
            raise DockerError(
                f"Building image {tag} from {context} failed: {error}\n{tail}{where}",
                hint="Check the Dockerfile and that its base image can be pulled "
                "(or name a local one with the target's container.image).",
            )
        try:
            image = client.images.get(tag)
        except docker.errors.DockerException as exc:
            raise DockerError(f"Image {tag} was built but cannot be found: {exc}") from exc
        log.info(f"image {tag} is {_short(image.id)}")
        return str(image.id)


def _read_build_output(
    stream: Iterable[dict[str, Any]], lines: list[str], sink: IO[str] | None
) -> str | None:
    """Collect the build's output lines; return its first error, if any.

    Reads to the end even after an error, so that the engine's response is released.
    """
    error = None
    for chunk in stream:
        text = chunk.get("stream") or chunk.get("status") or ""
        if text:
            lines.extend(text.rstrip("\n").splitlines())
            if sink is not None:
                sink.write(text if text.endswith("\n") else text + "\n")
        if "error" in chunk and error is None:
            error = str(chunk["error"]).strip()
    return error


def _short(image_id: str | None) -> str:
    return (image_id or "").removeprefix("sha256:")[:12]


# ---------------------------------------------------------------------------------------------
# Containers


@dataclass(frozen=True)
class BindMount:
    """A host path made visible in the container."""

    source: Path
    target: str
    read_only: bool = True


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    image: str
    command: Sequence[str]
    user: str
    mounts: Sequence[BindMount] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    limits: Limits = DEFAULT_LIMITS


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    timed_out: bool
    container_name: str
    out_of_memory: bool = False  # the kernel killed a process at the memory limit


def _owner_labels(*, keep: bool) -> dict[str, str]:
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
        containers = client.containers.list(all=True, filters={"label": LABEL})
    except docker.errors.DockerException as exc:
        raise DockerError(f"Cannot list containers: {exc}") from exc
    host = socket.gethostname()
    for container in containers:
        labels = container.labels or {}
        if labels.get(LABEL_HOST) != host or labels.get(LABEL_KEEP) == "1":
            continue
        pid_text = labels.get(LABEL_PID, "")
        if pid_text.isdigit() and pid_alive(int(pid_text)):
            continue
        name = container.name or container.id or "?"
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
            removed.append(name)
            log.info(f"removed container {name} left behind by an interrupted run")
    return removed


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
        client = client or connect()
    except DockerError:
        return []
    for name in names:
        _remove(client, name)
    return names


def allow_new_containers() -> None:
    """Undo :func:`stop_all` (for a process that goes on after an interrupted batch)."""
    _Running.stopping.clear()


@contextlib.contextmanager
def started_container(client: docker.DockerClient, spec: RunSpec) -> Iterator[Container]:
    """Create and start a labelled container without network; always remove it on exit."""
    if _Running.stopping.is_set():
        raise Interrupted("Stopping: no new build container is started.")
    name = f"xcp-drbd-builder-{uuid.uuid4().hex[:12]}"
    mounts = [
        Mount(target=m.target, source=str(m.source), type="bind", read_only=m.read_only)
        for m in spec.mounts
    ]
    keep = os.environ.get(KEEP_ENV) == "1"
    with _Running.lock:
        _Running.names.add(name)
    try:
        container = client.containers.create(
            spec.image,
            list(spec.command),
            name=name,
            labels=_owner_labels(keep=keep),
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
            container_name=name,
            out_of_memory=out_of_memory,
        )
