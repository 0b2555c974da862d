"""Downloads done once, right: cache, resume, retry, verify.

Every input (ISO, kernel RPM, DRBD tarball, repo metadata) comes through :func:`fetch`:

* a local file (``--iso PATH``, a ``file://`` URL, or a ``--mirror DIR`` holding the file by
  name) is used in place, never copied;
* an HTTP(S) URL streams to ``<cache>/downloads/<url hash>/<name>.part``, resumes an interrupted
  ``.part`` with a Range request, retries with exponential backoff on network errors and 5xx
  (never on 4xx), and is renamed into place only after its sha256 and the caller's structural
  check pass;
* the sha256 must match the pinned or locked value; a download that does not match is deleted
  and the error names both hashes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from builder import log
from builder.errors import ChecksumError, FetchError, InputError, NoSpaceError, no_space
from builder.files import READ_CHUNK, HashCache
from builder.inputs.checksums import CHANGED_HINT, PINNED, ChecksumLock, Vouched, mismatch
from builder.rpm.payload import DEFAULT_LIMITS, ExtractLimits
from builder.urls import NotLocal, local_path

if TYPE_CHECKING:
    import requests

RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True, kw_only=True)
class FetchSettings:
    cache_dir: Path
    # Where the hashes of the built-in entries' inputs are recorded (builder.inputs.checksums)
    state_dir: Path
    mirror: Path | None = None
    retries: int = 4
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    timeout: float = 60.0  # seconds without data before a connection is given up
    extract_limits: ExtractLimits = DEFAULT_LIMITS  # what a kernel-devel may unpack to

    @property
    def hashes(self) -> HashCache:
        return HashCache(self.cache_dir / "hashes")


@dataclass(frozen=True, kw_only=True)
class Input:
    """What to fetch: the caller's description of one input."""

    what: str  # human name, e.g. "kernel ISO for xcp-1.5"
    url: str | None
    file_name: str
    key: str  # key in the lock files
    pinned: str | None = None
    lock: ChecksumLock | None = None
    local: Path | None = None  # a user-given file that replaces the URL
    note: str | None = None  # how to get the file when there is no URL


@dataclass(frozen=True)
class Fetched:
    path: Path
    sha256: str
    origin: str
    untrusted: Input | None = None  # no pinned or locked hash yet: see trust()
    downloaded: bool = False  # a copy in the download cache (not the user's own file)
    vouched: Vouched | None = None  # the pinned or locked hash it matched

    @property
    def trusted_as(self) -> str:
        """How this input was trusted, as the manifest records it: pin, lock or first-use."""
        if self.untrusted is not None or self.vouched is None:
            return "first-use"
        return self.vouched.kind

    def discard(self) -> bool:
        """Delete a download that nothing ever vouched for, once a later check refused what
        it holds, so that the next run fetches it again; True if it was deleted."""
        if not self.downloaded or self.untrusted is None:
            return False
        self.path.unlink(missing_ok=True)
        return True

    def trust(self) -> None:
        """Record the hash of a first download in its lock file, once the caller has checked
        everything it can (a package that is then refused must not be trusted on later runs)."""
        item = self.untrusted
        if item is not None and item.lock is not None and item.lock.get(item.key) is None:
            item.lock.record(item.key, self.sha256)
            log.warn(
                f"{item.file_name}: trusted on first use (no pin, no shipped hash and no vendor "
                f"signature vouch for it); its sha256 {self.sha256} is recorded in "
                f"{item.lock.path}, and every later use must match it"
            )


Verifier = Callable[[Path], object]  # raises InputError; the result is ignored


def _vouched(item: Input) -> Vouched | None:
    if item.lock is not None:
        return item.lock.vouched(item.key, item.pinned)
    return Vouched(item.pinned, PINNED, "pin") if item.pinned else None


def fetch(
    item: Input, settings: FetchSettings, *, verify: Verifier | None = None, fresh: bool = False
) -> Fetched:
    """Return a verified local copy of ``item``, downloading it if needed.

    ``fresh`` downloads again even when a cached copy exists (mutable files such as a yum
    repository's repomd.xml), falling back to the cached copy when the download fails.
    """
    vouched = _vouched(item)
    local = item.local
    if local is None and settings.mirror is not None:
        candidate = settings.mirror / item.file_name
        if candidate.is_file():
            local = candidate
    if local is None and item.url is not None:
        try:
            local = local_path(item.url)
        except NotLocal as exc:
            raise FetchError(
                f"Cannot read the {item.what}: {exc}.",
                hint="Use file:///path for a file on this machine, or an http(s):// URL.",
            ) from None
    if local is not None:
        return _use_local(item, local, vouched=vouched, settings=settings, verify=verify)
    if item.url is None:
        raise FetchError(
            f"No download URL is known for the {item.what} ({item.file_name}).",
            hint=item.note or "Pass the file on the command line or put it in a --mirror DIR.",
        )
    if fresh:
        dest = cache_path(settings, item.url, item.file_name)
        try:
            return _use_download(
                item,
                item.url,
                vouched=vouched,
                settings=settings,
                verify=verify,
                refresh=True,
            )
        except FetchError as exc:
            if not dest.is_file():
                raise
            log.warn(f"{exc.message} Using the cached copy from an earlier run.")
    return _use_download(item, item.url, vouched=vouched, settings=settings, verify=verify)


def _use_local(
    item: Input,
    path: Path,
    *,
    vouched: Vouched | None,
    settings: FetchSettings,
    verify: Verifier | None,
) -> Fetched:
    if not path.is_file():
        raise FetchError(
            f"The {item.what} {path} does not exist or is not a regular file.",
            hint="Check the path given on the command line, in the spec, or in --mirror.",
        )
    actual = settings.hashes.sha256(path)
    if vouched is not None and actual != vouched.sha256:
        raise ChecksumError(
            f"The {item.what} {path} has sha256 {actual}, but {vouched.sha256} was expected "
            f"({vouched.source}).",
            hint=f"Your file was left in place. Use the right file. {CHANGED_HINT}",
        )
    # Only a pinned or locked hash vouches for the content: a file that merely was hashed
    # before (perhaps as another kind of input, or by a run that then refused it) is checked.
    if vouched is None and verify is not None:
        verify(path)
    return Fetched(
        path=path,
        sha256=actual,
        origin=str(path),
        untrusted=None if vouched is not None else item,
        vouched=vouched,
    )


def cache_path(settings: FetchSettings, url: str, file_name: str) -> Path:
    bucket = hashlib.sha256(url.encode()).hexdigest()[:16]
    return settings.cache_dir / "downloads" / bucket / file_name


def _use_download(
    item: Input,
    url: str,
    *,
    vouched: Vouched | None,
    settings: FetchSettings,
    verify: Verifier | None,
    refresh: bool = False,
) -> Fetched:
    dest = cache_path(settings, url, item.file_name)
    hashes = settings.hashes
    if dest.is_file() and not refresh:
        actual = hashes.sha256(dest)
        if vouched is None or actual == vouched.sha256:
            return _downloaded(dest, actual, url, item, vouched)
        log.warn(f"cached {dest.name} does not match its expected sha256; downloading it again")
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    actual = download(url, part, settings, what=item.what)
    if vouched is not None and actual != vouched.sha256:
        part.unlink(missing_ok=True)
        raise mismatch(dest, f"The downloaded {item.what}", vouched.sha256, actual, vouched.source)
    if verify is not None:
        try:
            verify(part)
        except InputError:
            part.unlink(missing_ok=True)
            raise
    os.replace(part, dest)
    hashes.store(dest, actual)
    return _downloaded(dest, actual, url, item, vouched)


def _downloaded(dest: Path, actual: str, url: str, item: Input, vouched: Vouched | None) -> Fetched:
    """A download in the cache; one that nothing vouched for is trusted only after the
    checks of whoever asked for it (``untrusted``)."""
    return Fetched(
        path=dest,
        sha256=actual,
        origin=url,
        untrusted=None if vouched is not None else item,
        downloaded=True,
        vouched=vouched,
    )


def _session() -> requests.Session:
    import requests

    session = requests.Session()
    session.headers["User-Agent"] = "xcp-drbd-builder"
    return session


def download(url: str, part: Path, settings: FetchSettings, *, what: str) -> str:
    """Download ``url`` into ``part`` (resuming what is there) and return its sha256."""
    import requests

    attempt = 0
    # One session for every attempt: a retry resumes on a fresh connection from its pool.
    with _session() as session:
        while True:
            try:
                return _download_once(session, url, part, settings, what)
            except _Retryable as exc:
                attempt += 1
                if attempt > settings.retries:
                    raise FetchError(
                        f"Downloading the {what} from {url} failed after {attempt} attempts: "
                        f"{exc}.",
                        hint="Check the network or the URL; the partial file is kept and the "
                        "next run resumes it. Air-gapped: pass the file or a --mirror DIR.",
                    ) from None
                delay = settings.backoff * 2 ** (attempt - 1)
                log.warn(f"{exc}; retrying in {delay:.1f} s ({attempt}/{settings.retries})")
                time.sleep(delay)
            except requests.exceptions.InvalidURL as exc:
                raise FetchError(f"Invalid URL for the {what}: {url} ({exc}).") from None


class _Retryable(Exception):
    pass


def _check_answer(response: requests.Response, have: int, part: Path, url: str, what: str) -> None:
    """Raise for an answer that is not the (rest of the) file: retry, or stop for good."""
    status = response.status_code
    if status == 416 and have:
        # The partial file is as long as (or longer than) the remote one: start again.
        part.unlink()
        raise _Retryable("the partial download did not fit the remote file")
    if status in RETRY_STATUS:
        raise _Retryable(f"HTTP {status} {response.reason}")
    if status >= 400:
        raise FetchError(
            f"Downloading the {what} failed: HTTP {status} {response.reason} for {url}.",
            hint="The URL is wrong or the file was removed upstream. Fix the spec's URL, "
            "or pass a local copy of the file (air-gapped: --mirror DIR).",
        )
    if status == 206:
        start = _range_start(response.headers.get("Content-Range", ""))
        if start != have:
            # Appending bytes from elsewhere in the file would make a corrupt copy.
            part.unlink(missing_ok=True)
            raise _Retryable(
                f"the server sent bytes from {start if start is not None else '?'} when asked "
                f"to resume at {have}; starting again"
            )


def _range_start(content_range: str) -> int | None:
    """The first byte of a ``Content-Range: bytes START-END/TOTAL`` answer."""
    unit, _, spec = content_range.strip().partition(" ")
    start = spec.partition("-")[0]
    return int(start) if unit == "bytes" and start.isdigit() else None


def _download_once(
    session: requests.Session, url: str, part: Path, settings: FetchSettings, what: str
) -> str:
    import requests

    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = session.get(url, headers=headers, stream=True, timeout=settings.timeout)
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise _Retryable(f"cannot connect: {type(exc).__name__}") from None
    with contextlib.closing(response):
        _check_answer(response, have, part, url, what)
        status = response.status_code
        digest = hashlib.sha256()
        if status == 206 and have:
            with part.open("rb") as existing:
                while chunk := existing.read(READ_CHUNK):
                    digest.update(chunk)
            mode = "ab"
            log.info(f"resuming {part.name[:-5]} at {log.format_bytes(have)}")
        else:
            have = 0
            mode = "wb"
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        progress = log.Progress(f"downloading {part.name[:-5]}", total, done=have)
        received = have
        try:
            with part.open(mode) as out:
                for chunk in response.iter_content(READ_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    progress.advance(len(chunk))
        except requests.exceptions.RequestException as exc:
            raise _Retryable(f"transfer interrupted: {type(exc).__name__}") from None
        except OSError as exc:  # writing, not the network: retrying would not help
            raise (NoSpaceError if no_space(exc) else FetchError)(
                f"Cannot write {part}: {exc.strerror or exc}.",
                hint="Free some disk space or choose another --cache DIR; the next run resumes.",
            ) from None
        finally:
            progress.finish()
        if total is not None and received < total:
            raise _Retryable(f"transfer ended early at {received} of {total} bytes")
        return digest.hexdigest()
