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
import json
import os
import shutil
import socket
import stat
import tarfile
import tempfile
import threading
import time
import urllib.parse
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, ClassVar

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.tls import TLSConfig
from docker.types import Mount

from builder import log
from builder.errors import BuildError, ConfigError, DockerError, InputError, Interrupted
from builder.locks import pid_alive
from builder.specs import DEFAULT_LIMITS, Limits

LABEL = "io.xcp-drbd-builder"
LABEL_HOST = f"{LABEL}.host"
LABEL_PID = f"{LABEL}.pid"
LABEL_KEEP = f"{LABEL}.keep"
# On a container that holds an upload's lock: the volume it fills, which goes if it is reaped.
LABEL_VOLUME = f"{LABEL}.volume"
KEEP_ENV = "XDB_KEEP_CONTAINER"
IMAGE_REPOSITORY = "xcp-drbd-builder"
# Files that never belong to an image's content (editor and VCS litter).
IGNORED_NAMES = frozenset({".git", "__pycache__", ".DS_Store"})


DEFAULT_ADDRESS = "unix:///var/run/docker.sock"
UPLOAD_ENV = "XDB_DOCKER_UPLOAD"
# What a build may send back through the engine (RPMs of a few MiB, a compat patch).
OUTPUT_LIMIT = 2 << 30


@dataclass(frozen=True)
class Endpoint:
    """Where the Docker engine is, and what named it (for messages)."""

    address: str
    origin: str  # "DOCKER_HOST", "Docker context NAME", "the default socket"
    tls: TLSConfig | None = None


def _config_dir(environ: Mapping[str, str]) -> Path:
    configured = environ.get("DOCKER_CONFIG")
    if configured:
        return Path(configured)
    return Path(environ.get("HOME") or Path.home()) / ".docker"


def resolve_endpoint(environ: Mapping[str, str]) -> Endpoint:
    """The engine the Docker CLI would talk to: DOCKER_HOST, else the current context.

    docker-py's ``from_env`` reads DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH but no
    CLI context, so a user who ran ``docker context use remote`` would get the local socket.
    The context comes from DOCKER_CONTEXT, else ``currentContext`` in the CLI's config.json;
    its endpoint and TLS files sit under ``contexts/`` in a directory named by the sha256 of
    the context's name.
    """
    host = environ.get("DOCKER_HOST")
    if host:
        return Endpoint(host, "DOCKER_HOST")
    config = _config_dir(environ)
    name = environ.get("DOCKER_CONTEXT", "")
    if not name:
        try:
            data = json.loads((config / "config.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError) as exc:
            raise DockerError(
                f"Cannot read the Docker CLI configuration {config / 'config.json'}: {exc}"
            ) from exc
        current = data.get("currentContext") if isinstance(data, dict) else None
        name = current if isinstance(current, str) else ""
    if name in ("", "default"):
        return Endpoint(DEFAULT_ADDRESS, "the default socket")
    key = hashlib.sha256(name.encode()).hexdigest()
    meta_file = config / "contexts" / "meta" / key / "meta.json"
    hint = "Check `docker context ls`, or set DOCKER_HOST."
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        docker_endpoint = meta["Endpoints"]["docker"]
        address = docker_endpoint["Host"]
    except FileNotFoundError:
        raise DockerError(
            f"The current Docker context {name!r} does not exist ({meta_file} is missing).",
            hint=hint,
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DockerError(
            f"The Docker context {name!r} has no readable engine address in {meta_file}: {exc}",
            hint=hint,
        ) from None
    if not isinstance(address, str) or not address:
        raise DockerError(f"The Docker context {name!r} names no engine in {meta_file}.", hint=hint)
    tls_dir = config / "contexts" / "tls" / key / "docker"
    tls = None
    if tls_dir.is_dir():
        ca, cert, client_key = (tls_dir / f for f in ("ca.pem", "cert.pem", "key.pem"))
        verify = not bool(docker_endpoint.get("SkipTLSVerify"))
        tls = TLSConfig(
            client_cert=(str(cert), str(client_key)) if cert.is_file() else None,
            ca_cert=str(ca) if ca.is_file() and verify else None,
            verify=verify,
        )
    return Endpoint(address, f"Docker context {name}", tls)


def engine_address() -> str:
    return resolve_endpoint(os.environ).address


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


def _probe_tcp(address: str, hint: str) -> None:
    """A refused or silent port fails in seconds, not after the SDK's 60-second timeout."""
    parsed = urllib.parse.urlsplit(address.replace("tcp://", "http://", 1))
    try:
        port = parsed.port or 2375
        with socket.create_connection((parsed.hostname or "localhost", port), timeout=5):
            pass
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise DockerError(
            f"The Docker engine is not reachable at {address} ({reason}).", hint=hint
        ) from None


# The engine each client of connect() talks to, for the local/remote decision.
_ENDPOINTS: weakref.WeakKeyDictionary[docker.DockerClient, Endpoint] = weakref.WeakKeyDictionary()
# Whether each engine address gets uploads: decided (and said) once per process.
_UPLOADS: dict[str, bool] = {}


def connect() -> docker.DockerClient:
    """Return a client for a Docker engine that answered a ping, or raise :class:`DockerError`."""
    endpoint = resolve_endpoint(os.environ)
    address = endpoint.address
    hint = "Start dockerd (for example `systemctl start docker`) or set DOCKER_HOST."
    if endpoint.origin.startswith("Docker context"):
        hint = (
            f"Start the engine of {endpoint.origin}, choose another with `docker context use`, "
            "or set DOCKER_HOST."
        )
    if address.startswith("unix://"):
        # Checked first: docker-py leaks its socket when its first request fails.
        _probe_unix_socket(address, hint)
    elif address.startswith("tcp://"):
        _probe_tcp(address, hint)
    client: docker.DockerClient | None = None
    try:
        if endpoint.origin == "DOCKER_HOST":
            client = docker.from_env()  # DOCKER_TLS_VERIFY and DOCKER_CERT_PATH too
        else:
            client = docker.DockerClient(base_url=address, tls=endpoint.tls or False)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        if client is not None:
            client.close()
        raise DockerError(
            f"The Docker engine is not reachable at {address} (from {endpoint.origin}: {exc}).",
            hint=hint,
        ) from exc
    _ENDPOINTS[client] = endpoint
    return client


def engine_is_local(address: str, engine_name: str, host_name: str) -> tuple[bool, str]:
    """Whether an engine sees this machine's files at their paths, and why it was judged so.

    Only a unix socket can be this machine's engine for sure: a TCP or SSH address may be
    127.0.0.1 and still be another machine (a tunnel) or another root (an engine in a VM).
    Behind a unix socket the engine may still be elsewhere (a forwarded socket, the builder
    itself in a container with the host's socket), which its name then tells: dockerd
    reports its machine's host name.
    """
    if not address.startswith("unix://"):
        scheme = address.split("://", 1)[0] if "://" in address else address
        return False, f"{address} is a {scheme} address, not a unix socket of this machine"
    if engine_name != host_name:
        return False, (
            f"the engine behind {address} runs on {engine_name!r}, and this is {host_name!r}"
        )
    return True, f"the engine behind {address} runs on this machine ({host_name})"


def uploads_inputs(client: docker.DockerClient) -> bool:
    """Whether builds on ``client``'s engine get their inputs as uploads, not bind mounts.

    ``XDB_DOCKER_UPLOAD=1`` forces uploads, ``=0`` bind mounts; otherwise a remote engine
    (:func:`engine_is_local`) gets uploads.  Decided once per engine address.
    """
    forced = os.environ.get(UPLOAD_ENV, "")
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise ConfigError(f"{UPLOAD_ENV} must be 1 (upload inputs) or 0 (bind-mount them).")
    endpoint = _ENDPOINTS.get(client)
    address = endpoint.address if endpoint is not None else _address_of(client)
    known = _UPLOADS.get(address)
    if known is not None:
        return known
    try:
        name = str(client.info().get("Name", ""))
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise DockerError(f"Cannot ask the Docker engine at {address} about itself: {exc}") from exc
    local, why = engine_is_local(address, name, socket.gethostname())
    log.info(f"{'bind-mounting' if local else 'uploading'} build inputs: {why}")
    _UPLOADS[address] = not local
    return not local


def _address_of(client: docker.DockerClient) -> str:
    # docker-py names a unix socket http+docker://localhost (ssh: http+docker://ssh).
    base = str(client.api.base_url)
    if base == "http+docker://localhost":
        return DEFAULT_ADDRESS
    return base.replace("http+docker://", "ssh://", 1)


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


def image_tag(
    name: str,
    context: Path,
    build_args: Mapping[str, str] | None = None,
    content_sha256: str | None = None,
) -> str:
    """The tag an image of ``context`` gets: its name and the content hash (given, when the
    caller hashed the context already)."""
    digest = content_sha256 or context_hash(context, build_args)
    return f"{IMAGE_REPOSITORY}/{name}:{digest[:16]}"


def build_image(
    client: docker.DockerClient,
    *,
    context: Path,
    name: str,
    build_args: Mapping[str, str] | None = None,
    log_file: Path | None = None,
    content_sha256: str | None = None,
) -> str:
    """Build ``context`` unless an image with its content tag exists; return the image id.

    ``content_sha256`` is :func:`context_hash` of ``context`` and ``build_args``, when known.
    """
    args = {k: v for k, v in (build_args or {}).items()}
    tag = image_tag(name, context, args, content_sha256)
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
        client = client or connect()
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
