"""Yum metadata for one consumer family folder: createrepo_c, chosen once, run with the
consumer's checksums, and the files a ``repomd.xml`` lists."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

from builder import proc
from builder.errors import PublishError
from builder.files import write_atomic
from builder.publish.consumers import profile
from builder.publish.store import link_or_copy
from builder.specs import Consumer

CREATEREPO_CHOICE = ".createrepo.json"
_REPO_NS = "{http://linux.duke.edu/metadata/repo}"
FALLBACK_BIN = ("/usr/bin",)  # Debian's createrepo_c, even when PATH leaves it out


def _candidates() -> list[str]:
    found: dict[str, str] = {}  # real path -> first name on PATH (/bin is /usr/bin on Debian)
    for directory in [*os.environ.get("PATH", "").split(os.pathsep), *FALLBACK_BIN]:
        path = Path(directory or ".") / "createrepo_c"
        if os.access(path, os.X_OK):
            found.setdefault(os.path.realpath(path), str(path))
    return list(found.values())


def _identity(path: str) -> str:
    info = os.stat(path)
    return f"{os.path.realpath(path)} {info.st_ino} {info.st_size} {info.st_mtime_ns}"


def find_createrepo(
    consumer: Consumer, explicit: str | None = None, memo: Path | None = None
) -> str:
    """The fastest createrepo_c on PATH that can write the consumer's checksum type.

    Some builds (PyPI wheels, newer distributions) drop SHA-1, which EL5's yum needs; Debian's
    0.17 keeps it.  A wrapper script first on PATH (a Python environment's shim) can take ten
    times as long as the program it wraps.  Each candidate is probed once, on an empty
    directory, and the choice is remembered in ``memo`` until PATH or a candidate changes.
    """
    checksum = checksum_for(consumer)
    if explicit:
        return explicit
    candidates = _candidates()
    if not candidates:
        raise PublishError("createrepo_c is not installed.", hint="apt-get install createrepo-c")
    key = "\n".join([checksum, *(_identity(c) for c in candidates)])
    remembered = _read_choice(memo)
    if remembered.get(key) in candidates:
        return remembered[key]
    timings: list[tuple[float, str]] = []
    for candidate in candidates:
        with tempfile.TemporaryDirectory(prefix="xdb-probe-") as tmp:
            started = time.perf_counter()
            result = proc.run(
                [candidate, "-q", "--no-database", "-s", checksum, tmp], echo=False, check=False
            )
            elapsed = time.perf_counter() - started
        if result.returncode == 0:
            timings.append((elapsed, candidate))
    if not timings:
        raise PublishError(
            f"No createrepo_c on PATH can write {checksum!r} checksums, which the "
            f"{consumer.value} consumer needs (tried {', '.join(candidates)}).",
            hint="Debian's createrepo-c package supports them: apt-get install createrepo-c, "
            "or name one with --createrepo PATH.",
        )
    chosen = min(timings)[1]
    if memo is not None:
        remembered = {k: v for k, v in remembered.items() if k.split("\n", 1)[0] != checksum}
        remembered[key] = chosen
        with contextlib.suppress(OSError):
            write_atomic(memo, (json.dumps(remembered, indent=1) + "\n").encode())
    return chosen


def _read_choice(memo: Path | None) -> dict[str, str]:
    if memo is None:
        return {}
    try:
        data = json.loads(memo.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items()}


def checksum_for(consumer: Consumer) -> str:
    return profile(consumer).repodata_checksum


def metadata_command(
    packages: Path, output: Path, consumer: Consumer, previous: Path | None, createrepo: str
) -> list[str]:
    """createrepo_c over the store's ``packages`` folder into ``output``/repodata.

    ``--update`` reuses ``previous``'s entries for files whose size and mtime are unchanged.
    That is safe here: store files are never replaced, and they are checked against their
    signed digest before every publish.
    """
    cmd = [
        createrepo,
        "--quiet",
        "--checksum",
        checksum_for(consumer),
        "--general-compress-type",
        "gz",
        "--workers",
        "2",
        "--outputdir",
        str(output),
    ]
    if not profile(consumer).sqlite_metadata:
        cmd.append("--no-database")
    if previous is not None and (previous / "repodata" / "repomd.xml").is_file():
        cmd += ["--update", "--update-md-path", str(previous)]
    return [*cmd, str(packages)]


def keep_previous_metadata(folder: Path, prior: Path | None) -> None:
    """Keep last version's metadata files one more round, and no older ones.

    A client that fetched the old ``repomd.xml`` just before the switch then asks for the old
    ``…-primary.xml.gz``; with unique file names that file is still there, instead of a 404.
    Only the files the previous ``repomd.xml`` lists are kept: the previous ``repodata/`` also
    holds the generation before it, and copying all of it would keep every generation forever.
    """
    if prior is None:
        return
    for href in metadata_files(prior / "repodata" / "repomd.xml"):
        target = folder / href
        if not target.exists() and (prior / href).is_file():
            link_or_copy(prior / href, target)


def metadata_files(repomd: Path) -> list[str]:
    """The ``repodata/…`` files a ``repomd.xml`` lists, relative to its repository.

    Read with the standard library: ``repomd.xml`` is a short list of ``<location href>``,
    and importing createrepo_c's bindings costs more than a publish of one package spends
    on everything else it parses.
    """
    from xml.etree import ElementTree

    try:
        # The previous version's own file; expat 2.4+ bounds entity expansion besides.
        root = ElementTree.parse(repomd).getroot()  # noqa: S314
    except (OSError, ElementTree.ParseError) as exc:
        raise PublishError(f"The published metadata {repomd} cannot be parsed: {exc}.") from None
    hrefs: list[str] = []
    for data in root.iter(f"{_REPO_NS}data"):
        location = data.find(f"{_REPO_NS}location")
        href = location.get("href", "") if location is not None else ""
        parts = href.split("/")
        if len(parts) != 2 or parts[0] != "repodata" or parts[1] in ("", ".", ".."):
            raise PublishError(f"{repomd} lists {href!r}, which is not a file in repodata/.")
        hrefs.append(href)
    return hrefs
