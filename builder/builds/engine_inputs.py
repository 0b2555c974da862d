"""Inputs that stay on a Docker engine that cannot see this machine's paths.

A build on another engine gets its inputs as a tar stream.  The large ones, a kernel tree
above all, are the same from one build to the next, so each read-only directory input of at
least :data:`MIN_CACHED` bytes is sent once and kept on the engine in a **named volume**:

- named by a digest of its content (:func:`describe`: every entry's type, permission bits,
  path and link target, and every regular file's sha256), labelled as this tool's with that
  digest, its size and what it was for;
- filled under an engine-wide lock (a container name, which the engine keeps unique), so two
  builds that need the same input at once upload it once; a lock whose process died on this
  machine is removed together with its half-filled volume;
- mounted read-only into the build, beside which the image's own ``find`` and ``sha256sum``
  recompute the digest of what it sees and compare it with the key; the build counts only if
  they agree.  The engine may be shared, and a volume is only a name: one whose content does
  not match is refused, removed and uploaded again, with a warning that names it;
- evicted oldest first once the tool's volumes on an engine add up to more than
  ``XDB_ENGINE_CACHE_MAX`` (default 10G).  ``python -m builder cache`` lists and prunes them.

A named volume and not an image layer: a volume is filled by the engine's archive endpoint
straight into its directory (no layer to commit), mounts at any path of any image read-only,
survives the containers that use it, and carries labels that ``docker volume ls`` filters.
Files (a source tarball, patches) are a few MiB and go with every build.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.models.volumes import Volume

from builder import log
from builder.builds import container, images
from builder.errors import ConfigError, DockerError, NoSpaceError

VOLUME_PREFIX = f"{images.IMAGE_REPOSITORY}-input-"
LOCK_PREFIX = f"{images.IMAGE_REPOSITORY}-upload-"
LABEL_DIGEST = f"{container.LABEL}.input"
LABEL_BYTES = f"{container.LABEL}.bytes"
LABEL_WHAT = f"{container.LABEL}.for"
CACHE_MAX_ENV = "XDB_ENGINE_CACHE_MAX"
DEFAULT_CACHE_MAX = 10 << 30
MIN_CACHED = 1 << 20
# The build's exit status when the n-th cached input does not match its key.
MISMATCH_STATUS = 240
MAX_VOLUMES = 8
WAIT_LIMIT = 1800.0
# Names the container's find and sha256sum print as they are (sha256sum escapes a backslash).
_PLAIN = re.compile(r"[\x21-\x5b\x5d-\x7e]+")

# The build image's own tools recompute the digest: POSIX sh, GNU find (-printf, -exec +: since
# findutils 4.2, CentOS 5 has 4.2.27), sort and sha256sum.  Arguments: pairs of directory and
# expected digest, then the build's command.  The checks run beside the build (it has the
# CPUs to spare while it waits on make), and the build counts only if every check passed: the
# outputs of a failed run are never sent back.
CHECK = r"""
n=0
checks=""
while [ "$1" != "--" ]; do
    (
        got=$(cd "$1" && { find . -mindepth 1 -printf '%y %m %p %l\n' | LC_ALL=C sort;
            find . -type f -exec sha256sum {} + | LC_ALL=C sort; } | sha256sum | cut -c1-64)
        [ "$got" = "$2" ]
    ) &
    checks="$checks $!:$n:$1"
    n=$((n + 1))
    shift 2
done
shift
"$@"
status=$?
for check in $checks; do
    pid=${check%%:*}
    rest=${check#*:}
    if ! wait "$pid"; then
        echo "xcp-drbd-builder: ${rest#*:} does not hold the input its volume is named for;" \
            "nothing this build made is kept" >&2
        exit $((240 + ${rest%%:*}))
    fi
done
exit $status
"""


@dataclass(frozen=True)
class Tree:
    """A directory's content as a key: what a volume holding it must be named for."""

    source: Path
    digest: str
    size: int  # bytes in regular files
    entries: int

    @property
    def volume(self) -> str:
        return VOLUME_PREFIX + self.digest


class _Described:
    """Digests this process computed, by directory and a signature of every entry's metadata
    (a second build of the same kernel reads no file again; any change to the tree, which
    rewrites a file's size, time or inode, is seen)."""

    lock = threading.Lock()
    trees: ClassVar[dict[tuple[Path, str], Tree | None]] = {}


def _signature(source: Path) -> str:
    digest = hashlib.sha256()
    for directory, dirnames, filenames in os.walk(source):
        for name in (*dirnames, *filenames):
            info = os.lstat(os.path.join(directory, name))
            digest.update(
                f"{directory}/{name}\0{info.st_mode}:{info.st_size}:{info.st_mtime_ns}:"
                f"{info.st_ctime_ns}:{info.st_ino}\n".encode("utf-8", "surrogateescape")
            )
    return digest.hexdigest()


def describe(source: Path) -> Tree | None:
    """The digest of ``source`` as the check in the container computes it, or ``None`` when it
    holds something the check cannot see the same way (a device, a name with spaces or
    non-ASCII bytes, a backslash): such a tree goes with every build instead.

    Remembered by the tree's metadata signature, in this process and in a small file under
    the user's cache directory, so that each build of a kernel does not read it whole again.
    """
    key = (source, _signature(source))
    with _Described.lock:
        if key in _Described.trees:
            return _Described.trees[key]
    memo = _memo_file(source)
    tree = _read_memo(memo, source, key[1])
    if tree is None:
        tree = _describe(source)
        _write_memo(memo, key[1], tree)
    with _Described.lock:
        _Described.trees[key] = tree
    return tree


def _memo_file(source: Path) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    name = hashlib.sha256(os.fsencode(source.resolve())).hexdigest()[:32]
    return Path(base) / "xcp-drbd-builder" / "engine-inputs" / f"{name}.json"


def _read_memo(memo: Path, source: Path, signature: str) -> Tree | None:
    try:
        data = json.loads(memo.read_text(encoding="utf-8"))
        if data.get("signature") != signature or not data.get("digest"):
            return None
        return Tree(source, str(data["digest"]), int(data["size"]), int(data["entries"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # none yet, or unreadable: computed again


def _write_memo(memo: Path, signature: str, tree: Tree | None) -> None:
    if tree is None:
        return
    record = {"signature": signature, "digest": tree.digest, "size": tree.size}
    record["entries"] = tree.entries
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        partial = memo.with_name(f".{memo.name}.{os.getpid()}.{threading.get_ident()}")
        partial.write_text(json.dumps(record), encoding="utf-8")
        partial.replace(memo)
    except OSError:
        pass  # a memo that cannot be kept costs the next build one more reading


def _describe(source: Path) -> Tree | None:
    listing: list[bytes] = []
    sums: list[bytes] = []
    size = 0
    for directory, dirnames, filenames in os.walk(source):
        for name in (*dirnames, *filenames):
            path = os.path.join(directory, name)
            relative = "./" + os.path.relpath(path, source)
            if not _PLAIN.fullmatch(relative):
                return None
            info = os.lstat(path)
            bits = info.st_mode & 0o755  # as the upload gives them (container._root_owned)
            if stat.S_ISLNK(info.st_mode):
                target = os.readlink(path)
                if not _PLAIN.fullmatch(target):
                    return None
                listing.append(f"l 777 {relative} {target}\n".encode())
            elif stat.S_ISDIR(info.st_mode):
                listing.append(f"d {bits:o} {relative} \n".encode())
            elif stat.S_ISREG(info.st_mode):
                listing.append(f"f {bits:o} {relative} \n".encode())
                digest = hashlib.sha256()
                with open(path, "rb") as stream:
                    for chunk in iter(lambda: stream.read(1 << 20), b""):
                        digest.update(chunk)
                sums.append(f"{digest.hexdigest()}  {relative}\n".encode())
                size += info.st_size
            else:
                return None
    whole = hashlib.sha256(b"".join(sorted(listing)) + b"".join(sorted(sums)))
    return Tree(source, whole.hexdigest(), size, len(listing))


def cache_limit(environ: dict[str, str] | None = None) -> int:
    """``XDB_ENGINE_CACHE_MAX`` in bytes (``10G``, ``512M``, a plain number of bytes)."""
    text = (os.environ if environ is None else environ).get(CACHE_MAX_ENV, "").strip()
    if not text:
        return DEFAULT_CACHE_MAX
    match = re.fullmatch(r"(\d+)([KMGT]?)i?B?", text, re.IGNORECASE)
    if match is None:
        raise ConfigError(
            f"{CACHE_MAX_ENV}={text!r} is not a size.", hint="Write it as 10G, 512M or bytes."
        )
    shift = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[match.group(2).upper()]
    return int(match.group(1)) << shift


# ---------------------------------------------------------------------------------------------
# Running a build with its large inputs in volumes


@dataclass(frozen=True)
class Prepared:
    spec: container.RunSpec
    trees: tuple[Tree, ...]  # in the order the check in the container goes through them


def prepare(client: docker.DockerClient, spec: container.RunSpec) -> Prepared:
    """``spec`` (an uploading one) with its large read-only directories in volumes on the
    engine, uploaded there first if the engine lacks them, and the check of each put beside
    its command."""
    trees: list[Tree] = []
    mounts: list[container.BindMount] = []
    volumes: list[container.VolumeMount] = []
    sent = False
    for mount in spec.mounts:
        tree = None
        # A plain target: the check's shell splits the list of them on spaces.
        plain = _PLAIN.fullmatch(mount.target) is not None
        if plain and mount.read_only and mount.source.is_dir() and len(trees) < MAX_VOLUMES:
            tree = describe(mount.source)
        if tree is None or tree.size < MIN_CACHED:
            mounts.append(mount)
            continue
        sent |= ensure(client, tree, image=spec.image, what=mount.target)
        trees.append(tree)
        volumes.append(container.VolumeMount(tree.volume, mount.target))
    if not trees:
        return Prepared(spec, ())
    if sent:  # never what this build is about to mount
        evict(client, keep={tree.volume for tree in trees})
    checks = [part for v, t in zip(volumes, trees, strict=True) for part in (v.target, t.digest)]
    command = ["/bin/sh", "-c", CHECK, "sh", *checks, "--", *spec.command]
    return Prepared(replace(spec, mounts=mounts, volumes=volumes, command=command), tuple(trees))


def run(
    client: docker.DockerClient,
    spec: container.RunSpec,
    runner: Callable[[container.RunSpec], container.RunResult],
) -> container.RunResult:
    """Run ``spec`` through ``runner`` with its large inputs kept on the engine; a volume
    whose content the build found not to match its key is removed, uploaded anew and the run
    repeated once."""
    prepared = prepare(client, spec)
    result = runner(prepared.spec)
    refused = _refused(prepared, result)
    if refused is None:
        return result
    log.warn(
        f"volume {refused.volume} on the Docker engine, labelled as this tool's copy of "
        f"{refused.source}, holds other content: removed, sending it again"
    )
    _remove_volume(client, refused.volume)
    prepared = prepare(client, spec)
    result = runner(prepared.spec)
    again = _refused(prepared, result)
    if again is not None:
        raise DockerError(
            f"Volume {again.volume} on the Docker engine changed again under a build: "
            "something else writes to this tool's volumes on that engine.",
            hint="Find out what (docker ps --filter volume=...), then run "
            "`python -m builder cache --prune`.",
        )
    return result


def _refused(prepared: Prepared, result: container.RunResult) -> Tree | None:
    index = result.exit_code - MISMATCH_STATUS
    if result.timed_out or not 0 <= index < len(prepared.trees):
        return None
    return prepared.trees[index]


# ---------------------------------------------------------------------------------------------
# Filling a volume once


def ensure(client: docker.DockerClient, tree: Tree, *, image: str, what: str) -> bool:
    """Make sure the engine holds ``tree`` in its volume (``tree.volume``), uploading it now
    unless it is there already; whether it was sent.

    The volume exists without its lock only once it is whole: it is created under the lock,
    removed again if filling it fails, and a lock whose process died takes its volume with
    it (:func:`container.reap_leftovers`).
    """
    lock_name = LOCK_PREFIX + tree.digest[:32]
    deadline = time.monotonic() + WAIT_LIMIT
    told = 0.0
    reaped = False
    while True:
        exists = _volume_exists(client, tree.volume)
        holder = _lock_holder(client, lock_name)
        if exists and holder is None:
            return False
        if not reaped:  # locks (and their volumes) of runs that died here, then look again
            container.reap_leftovers(client)
            reaped = True
            continue
        if holder is None and _take_lock(client, lock_name, image=image, volume=tree.volume):
            try:
                sent = not _volume_exists(client, tree.volume)
                if sent:
                    _fill(client, tree, image=image, what=what, lock_name=lock_name)
            except BaseException:
                _abandon(client, tree.volume, lock_name)
                raise
            else:
                _remove_container(client, lock_name)
            finally:
                # Only once the lock is gone from the engine: until then another thread of
                # this process must see it as held, not as left behind.
                _Held.release(lock_name)
            return sent
        now = time.monotonic()
        if now > deadline:
            raise DockerError(
                f"Waited {WAIT_LIMIT:.0f} s for another upload of {what} to the Docker engine "
                f"({holder or 'its lock'}) to end.",
                hint=f"If that process is gone, remove its lock: docker rm -f {lock_name}",
            )
        if now - told > 30:
            log.info(f"waiting for {holder or 'another process'} to upload {what}")
            told = now
        time.sleep(0.5)


def _volume_exists(client: docker.DockerClient, name: str) -> bool:
    try:
        client.volumes.get(name)
    except docker.errors.NotFound:
        return False
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise DockerError(f"Cannot ask the Docker engine about volume {name}: {exc}") from exc
    return True


class _Held:
    """The locks threads of this process hold now: a lock of this process's pid that none of
    them holds was left by a failed upload, one that one of them holds is in use."""

    lock = threading.Lock()
    holders: ClassVar[dict[str, int]] = {}  # lock name -> thread

    @classmethod
    def claim(cls, name: str) -> bool:
        with cls.lock:
            if name in cls.holders:
                return False
            cls.holders[name] = threading.get_ident()
            return True

    @classmethod
    def release(cls, name: str) -> None:
        with cls.lock:
            if cls.holders.get(name) == threading.get_ident():
                del cls.holders[name]

    @classmethod
    def held(cls, name: str) -> bool:
        with cls.lock:
            return name in cls.holders


def _lock_holder(client: docker.DockerClient, name: str) -> str | None:
    """Who holds lock ``name``; a lock of this very process that none of its threads holds
    (left when the engine went away mid-upload and came back) is removed with its volume."""
    try:
        lock = client.containers.get(name)
    except docker.errors.NotFound:
        return None
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise DockerError(f"Cannot ask the Docker engine about {name}: {exc}") from exc
    labels = lock.labels or {}
    pid = labels.get(container.LABEL_PID, "?")
    host = labels.get(container.LABEL_HOST, "?")
    if host == socket.gethostname() and pid == str(os.getpid()) and not _Held.held(name):
        _abandon(client, labels.get(container.LABEL_VOLUME, ""), name)
        return None
    return f"process {pid} on {host}"


def _take_lock(client: docker.DockerClient, name: str, *, image: str, volume: str) -> bool:
    if not _Held.claim(name):  # another thread of this process holds it
        return False
    labels = {**container.owner_labels(keep=False), container.LABEL_VOLUME: volume}
    try:
        client.containers.create(image, ["true"], name=name, labels=labels, network_mode="none")
    except docker.errors.APIError as exc:
        _Held.release(name)
        if exc.status_code == 409:  # someone else holds it
            return False
        raise DockerError(f"Cannot create lock {name} on the Docker engine: {exc}") from exc
    except requests.exceptions.RequestException as exc:
        _Held.release(name)
        raise DockerError(f"Lost the Docker engine while creating {name}: {exc}") from exc
    return True


def _fill_name(lock_name: str) -> str:
    """The container an upload under ``lock_name`` fills its volume through."""
    return f"{lock_name}-fill"


def _fill(
    client: docker.DockerClient, tree: Tree, *, image: str, what: str, lock_name: str
) -> None:
    labels = {
        container.LABEL: "1",
        LABEL_DIGEST: tree.digest,
        LABEL_BYTES: str(tree.size),
        LABEL_WHAT: what,
    }
    fill_name = _fill_name(lock_name)
    started = time.monotonic()
    with log.step(f"Send {what} ({log.format_bytes(tree.size)}) to the engine once"):
        try:
            client.volumes.create(tree.volume, labels=labels)
            filler = client.containers.create(
                image,
                ["true"],
                name=fill_name,
                labels=container.owner_labels(keep=False),
                network_mode="none",
                # At the build's own path, extracted from /: a link that climbs out of the
                # directory (Debian's scripts -> ../../lib/linux-kbuild-*) is then no escape
                # from the extraction root, which the engine refuses.  no_copy: nothing of the
                # image's own files at that path goes into the volume.
                mounts=[docker.types.Mount(what, tree.volume, type="volume", no_copy=True)],
            )
            with container.packed([container.BindMount(tree.source, what)]) as packing:
                try:
                    accepted = filler.put_archive("/", packing.chunks())
                except requests.exceptions.RequestException:
                    packing.check()
                    raise
        except docker.errors.APIError as exc:
            if "no space left" in str(exc).lower():
                raise NoSpaceError(
                    f"The Docker engine ran out of disk space while receiving {what} "
                    f"({log.format_bytes(tree.size)}); nothing of it is kept.",
                    hint="Free space on the engine: `python -m builder cache --prune`, "
                    f"`docker system prune`, or a lower {CACHE_MAX_ENV}.",
                ) from exc
            raise DockerError(f"The Docker engine refused {what}: {exc}") from exc
        except requests.exceptions.RequestException as exc:
            raise DockerError(
                f"Lost the connection to the Docker engine while sending {what}: {exc}",
                hint="The next run removes what was half sent and starts again.",
            ) from exc
        if not accepted:
            raise DockerError(f"The Docker engine refused {what}.")
        # Only now: after a failure, _abandon removes it before the volume.
        _remove_container(client, fill_name)
    log.info(
        f"{what} is kept on the engine as volume {tree.volume[: len(VOLUME_PREFIX) + 12]}… "
        f"({time.monotonic() - started:.1f} s)"
    )


def _abandon(client: docker.DockerClient, volume: str, lock_name: str) -> None:
    """After a failed upload: the half-filled volume goes, then its lock.  A lock that cannot
    be removed stays with its volume named in it, for the next run to reap both."""
    try:
        _remove_container(client, _fill_name(lock_name))
        if volume:
            _remove_volume(client, volume)
        _remove_container(client, lock_name)
    except DockerError as exc:
        log.warn(f"left {lock_name} on the engine for the next run to remove: {exc}")


def _remove_container(client: docker.DockerClient, name: str) -> None:
    _remove(lambda: client.containers.get(name), name)


def _remove_volume(client: docker.DockerClient, name: str) -> None:
    _remove(lambda: client.volumes.get(name), f"volume {name}")


def _remove(find: Callable[[], Container | Volume], what: str) -> None:
    """Remove what ``find`` gets from the engine, forced; gone already is fine."""
    try:
        find().remove(force=True)
    except docker.errors.NotFound:
        pass
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise DockerError(f"Cannot remove {what} from the Docker engine: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# What is kept, and keeping it bounded


@dataclass(frozen=True)
class Kept:
    name: str
    size: int
    created: str
    what: str
    in_use: bool


def kept(client: docker.DockerClient) -> list[Kept]:
    """The tool's input volumes on the engine, oldest first."""
    try:
        volumes = client.volumes.list(filters={"label": LABEL_DIGEST})
        users = client.containers.list(all=True, sparse=True)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise DockerError(f"Cannot list the Docker engine's volumes: {exc}") from exc
    used = {
        str(mount.get("Name", ""))
        for user in users
        for mount in user.attrs.get("Mounts") or []
        if mount.get("Type") == "volume"
    }
    found = []
    for volume in volumes:
        labels = volume.attrs.get("Labels") or {}
        size = labels.get(LABEL_BYTES, "0")
        found.append(
            Kept(
                name=str(volume.name),
                size=int(size) if size.isdigit() else 0,
                created=str(volume.attrs.get("CreatedAt", "")),
                what=labels.get(LABEL_WHAT, "?"),
                in_use=volume.name in used,
            )
        )
    return sorted(found, key=lambda k: (k.created, k.name))


def evict(client: docker.DockerClient, *, keep: set[str]) -> list[Kept]:
    """Remove the oldest volumes not in use (nor in ``keep``) until the rest fit
    :func:`cache_limit`."""
    limit = cache_limit()
    volumes = kept(client)
    total = sum(k.size for k in volumes)
    removed = []
    for victim in volumes:
        if total <= limit:
            break
        if victim.name in keep or victim.in_use:
            continue
        try:
            client.volumes.get(victim.name).remove()
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            continue  # mounted by a build that started meanwhile
        total -= victim.size
        removed.append(victim)
        log.info(
            f"removed volume {victim.name} ({victim.what}) from the engine: the kept inputs "
            f"were over {CACHE_MAX_ENV}={log.format_bytes(limit)}"
        )
    return removed


def prune(client: docker.DockerClient) -> tuple[list[Kept], list[Kept]]:
    """Remove every input volume no container uses: (removed, left because in use)."""
    removed: list[Kept] = []
    left: list[Kept] = []
    for volume in kept(client):
        if volume.in_use:
            left.append(volume)
            continue
        try:
            client.volumes.get(volume.name).remove()
        except docker.errors.NotFound:
            continue
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                left.append(volume)
                continue
            raise DockerError(f"Cannot remove volume {volume.name}: {exc}") from exc
        removed.append(volume)
    return removed, left
