"""The Docker engine a build talks to: found as the Docker CLI finds it, and whether it sees
this machine's files.

:func:`resolve_endpoint` reads ``DOCKER_HOST`` (with TLS), else the current CLI context, else the
default socket; :func:`connect` returns a client for an engine that answered.  An engine that
cannot see this machine's paths (:func:`engine_is_local`) gets its inputs uploaded instead of
bind-mounted (:func:`uploads_inputs`), decided once per engine address.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import urllib.parse
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import requests.exceptions
from docker.tls import TLSConfig

from builder import log
from builder.errors import ConfigError, DockerError

DEFAULT_ADDRESS = "unix:///var/run/docker.sock"
UPLOAD_ENV = "XDB_DOCKER_UPLOAD"


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
