"""Fuzzed pool files and spec files through ``deploy render``, ``targets``, ``build --dry-run``.

Values carry shell metacharacters, command substitutions, quotes, line breaks (a trailing one
too), control characters, non-UTF-8 bytes, the wrong type or a huge size.  Every input is
either refused with exit code 2 and a message naming the file and the key, or rendered into
files that their real parsers accept: every runbook by ``sh -n``, ``bash -n`` and shellcheck,
every resource file by the drbdadm of its syntax, every LVM snippet by lvmconfig, every
``.repo`` file as one section of known keys.  No injected command ever runs (each one would
create a canary file), and nothing is written outside the output directory.

The examples are drawn with a fixed seed (``derandomize``), so CI sees the same ones each run.
"""

from __future__ import annotations

import configparser
import copy
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from builder.builds.recipes import Syntax
from builder.deploy import pool
from builder.deploy.checks import CHECK_IDS
from builder.deploy.pool import syntax_of
from builder.yamlreader import printable
from tests.deploy_support import BASE_POOL
from tests.faults.harness import REPO, Result, builder, changes, snapshot

pytestmark = pytest.mark.integration

CANARY = "fault-canary"  # every injected command creates a file of this name
Key = tuple[str | int, ...]

# Pieces an attacker or a careless editor puts into a value; CANARY is replaced by an absolute
# path under the example's directory.
PAYLOADS = (
    "; touch CANARY",
    "$(touch CANARY)",
    "`touch CANARY`",
    "'; touch CANARY; '",
    '"; touch CANARY; "',
    "\ntouch CANARY\n",
    "\n",
    "\r\n",
    "\\",
    "|touch CANARY",
    "&& touch CANARY",
    "> CANARY",
    "# comment",
    " ",
    "\t",
    "\0",
    "\x1b[2J",
    "}",
    "{",
    "${IFS}",
    "*",
    "..",
    "/../../..",
    "é",
    "\u2028",
    "\ufeff",
    "x" * 5000,
)

WRONG_TYPES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)


def hostile_text(base: str) -> st.SearchStrategy[str]:
    """``base`` with payloads before, inside or after it, or a payload alone, or any text."""
    payload = st.sampled_from(PAYLOADS)
    return st.one_of(
        st.builds(lambda p: base + p, payload),
        st.builds(lambda p: p + base, payload),
        st.builds(lambda p, cut: base[:cut] + p + base[cut:], payload, st.integers(0, len(base))),
        payload,
        st.text(max_size=40),
    )


def key_paths(data: Any, prefix: Key = ()) -> Iterator[Key]:
    """Every leaf of a YAML document, as a tuple of keys and list indexes."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from key_paths(value, (*prefix, key))
    elif isinstance(data, list) and data and isinstance(data[0], dict):
        for index, value in enumerate(data):
            yield from key_paths(value, (*prefix, index))
    else:
        yield prefix


def get(data: Any, key: Key) -> Any:
    for part in key:
        data = data[part]
    return data


def put(data: Any, key: Key, value: Any) -> None:
    for part in key[:-1]:
        data = data[part]
    data[key[-1]] = value


def dotted(key: Key) -> str:
    """A key as the tool's messages write it: ``hosts[1].replication.address``."""
    text = ""
    for part in key:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# Characters some patterns allow (disks: ``:+@``, URLs: ``~:%@+=,``): values made of them pass
# validation and reach the renderers, where each must still be quoted right.
PLAIN = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.+~:@/=,%-]{0,30}\Z")
VERSIONS = ("8.3.16", "8.4.1", "8.4.11", "9.2.5", "9.0")
# Values the pool file's own patterns accept, by the key's last name.
ACCEPTED = {
    "name": st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,12}[a-z0-9])?(?:\.[a-z0-9]{1,5}){0,2}\Z"),
    "resource": st.from_regex(pool.RESOURCE_NAME, fullmatch=True),
    "sr_name": st.from_regex(pool.SR_NAME, fullmatch=True),
    "interface": st.from_regex(pool.INTERFACE, fullmatch=True),
    "disk": st.from_regex(pool.DISK, fullmatch=True),
    "resync_rate": st.from_regex(pool.RATE, fullmatch=True),
    "fence_peer_handler": st.from_regex(pool.HANDLER, fullmatch=True),
    "split_brain_handler": st.from_regex(pool.HANDLER, fullmatch=True),
    "url": st.from_regex(pool.URL, fullmatch=True),
    "gpgkey": st.from_regex(pool.URL, fullmatch=True),
    "version": st.sampled_from(VERSIONS),
}


def near_valid(key: Key, base: Any) -> st.SearchStrategy[Any]:
    """Unusual values of the right shape, which validation may well accept."""
    if isinstance(base, int):
        return st.integers(-1, 70000)
    if not isinstance(base, str):
        return st.lists(PLAIN, max_size=3)
    if isinstance(key[-1], str) and key[-1] in ACCEPTED:
        return ACCEPTED[key[-1]]
    prefix = base.split("://")[0] + "://" if "://" in base else ""
    if base.startswith("/"):
        prefix = "/dev/" if base.startswith("/dev/") else "/"
    argument = st.sampled_from(["", " --x", " a=b", " root@host"] if prefix == "/" else [""])
    return st.builds(lambda tail, arg: f"{prefix}{tail}{arg}", PLAIN, argument)


def mutation(base: dict[str, Any]) -> st.SearchStrategy[tuple[Key, Any]]:
    def for_key(key: Key) -> st.SearchStrategy[tuple[Key, Any]]:
        value = get(base, key)
        text = str(value) if not isinstance(value, list) else " ".join(map(str, value))
        accepted = near_valid(key, value)
        values = st.one_of(hostile_text(text), WRONG_TYPES, accepted, accepted)
        return st.tuples(st.just(key), values)

    return st.sampled_from(sorted(key_paths(base), key=dotted)).flatmap(for_key)


def with_canary(value: Any, canary: Path) -> Any:
    if isinstance(value, str):
        return value.replace("CANARY", str(canary))
    if isinstance(value, list):
        return [with_canary(v, canary) for v in value]
    if isinstance(value, dict):
        return {with_canary(k, canary): with_canary(v, canary) for k, v in value.items()}
    return value


NON_UTF8 = "@NON-UTF-8@"


def dump(data: dict[str, Any]) -> bytes:
    """The document as YAML bytes; a value holding NON_UTF8 gets raw invalid bytes there."""
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return text.encode("utf-8").replace(NON_UTF8.encode(), b"\xff\xfe\xc0")


# Directory names for the pool file: issue 9's first finding was a path with a line break.
POOL_DIRS = ("pool", "x\ntouch fault-canary\n", "$(touch fault-canary)", "a'b\"c `d` $e", " \t")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def mutated(
    base: dict[str, Any], mutations: list[tuple[Key, Any]], broken_bytes: bool, canary: Path
) -> Any:
    """A copy of ``base`` with ``mutations`` made, the first one's value followed by bytes
    that are not UTF-8 when ``broken_bytes``, and the canary's path filled in."""
    data = copy.deepcopy(base)
    for key, value in mutations:
        put(data, key, value)
    if broken_bytes:
        key, value = mutations[0]
        put(data, key, f"{value}{NON_UTF8}")
    return with_canary(data, canary)


def example_dir(workspace: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=workspace))


def run_here(
    directory: Path, command: Sequence[str | Path], **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in command],
        cwd=directory,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, **env},
    )


def cli(directory: Path, *args: str | Path) -> Result:
    """The CLI run from the example's directory (so a stray relative write lands there)."""
    return builder(*args, cwd=directory, env={"PYTHONPATH": str(REPO)}, timeout=120)


def assert_refused_naming(result: Result, file: Path, keys: set[str]) -> None:
    """Exit 2, one paragraph naming ``file`` and one of ``keys`` (or the whole file's fault)."""
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr and "This is a bug" not in result.stderr, result
    message = result.stderr.split("error: ", 1)[-1]
    assert message.startswith(f"{file}"), result
    rest = message[len(str(file)) :]
    if rest.startswith((": not UTF-8", ": cannot read", ": not valid YAML", ": the top level")):
        return
    assert any(rest.startswith(f": {printable(key)}: ") for key in keys), result


def all_keys(data: Any, prefix: Key = ()) -> set[str]:
    """Every key path in ``data`` as messages write them, list items included."""
    found = {dotted(prefix)} if prefix else set()
    if isinstance(data, dict):
        for key, value in data.items():
            found |= all_keys(value, (*prefix, str(key)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found |= all_keys(value, (*prefix, index))
    return found


DRBDADM = {
    Syntax.V83: "/usr/lib/drbd/drbdadm-83",
    Syntax.V84: "/usr/lib/drbd/drbdadm-84",
    Syntax.V9: "/usr/sbin/drbdadm",
}
RENDERED = re.compile(r"README\.txt|[A-Za-z0-9][A-Za-z0-9.-]*/[A-Za-z0-9][\w.+-]*")
REPO_KEYS = {"name", "baseurl", "enabled", "gpgcheck", "repo_gpgcheck", "gpgkey"}


def check_rendered(output: Path, version: str, work: Path) -> None:
    """Every rendered file parses with the program that will read it."""
    files = sorted(p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file())
    assert files, "nothing rendered"
    for name in files:
        assert RENDERED.fullmatch(name), f"rendered file name {name!r}"
    syntax = syntax_of(version)
    assert syntax is not None
    for runbook in output.glob("*/runbook.sh"):
        for shell in ("sh", "bash"):
            parsed = run_here(work, [shell, "-n", runbook])
            assert parsed.returncode == 0, (shell, parsed.stderr, runbook.read_text())
        if shutil.which("shellcheck"):
            # Every finding counts, down to style; SC2034: a runbook sets FIRST and not every
            # host's steps read it.
            checked = run_here(work, ["shellcheck", "--exclude=SC2034", runbook])
            assert checked.returncode == 0, checked.stdout
        # Listing the steps (what an operator does first) runs nothing from the pool file.
        listing = run_here(work, ["sh", runbook])
        assert listing.returncode == 2 and "1. install" in listing.stderr, listing
    for resource in output.glob("*/*.res"):
        which = resource.stem if syntax is Syntax.V83 else "all"
        parsed = run_here(work, [DRBDADM[syntax], "-c", resource, "dump", which])
        assert parsed.returncode == 0, (parsed.stderr, resource.read_text())
    for snippet in output.glob("*/lvm.conf.snippet"):
        system = work / "lvm"
        system.mkdir(exist_ok=True)
        shutil.copy(snippet, system / "lvm.conf")
        for command in (["lvmconfig", "--validate"], ["lvmconfig", "devices/filter"]):
            parsed = run_here(work, command, LVM_SYSTEM_DIR=str(system))
            assert parsed.returncode == 0 and "Failed" not in parsed.stderr, (
                command, parsed.stderr, snippet.read_text(),
            )  # fmt: skip
        shutil.rmtree(system)
    for repo_file in output.glob("*/xcp-drbd-builder.repo*"):
        parser = configparser.ConfigParser(interpolation=None, strict=True)
        parser.read_string(repo_file.read_text(encoding="utf-8"))
        assert parser.sections() == ["xcp-drbd-builder"], repo_file.read_text()
        section = parser["xcp-drbd-builder"]
        assert set(section) == REPO_KEYS, repo_file.read_text()
        assert re.fullmatch(r"\S+", section["baseurl"]), repo_file.read_text()


def render_and_check(
    work: Path, pool_file: Path, version: str, keys: set[str], *specs: str | Path
) -> Result:
    output = work / "out"
    before = snapshot(work)
    overrides = [arg for check in CHECK_IDS for arg in ("--override", check)]
    result = cli(
        work, "deploy", "render", "--pool", pool_file, "--output", output, "--no-repo-check",
        *overrides, *specs,
    )  # fmt: skip
    assert result.returncode in (0, 2), result
    after = snapshot(work)
    moved = changes(before, after)
    outside = [p for p in moved["added"] if not (p == "out" or p.startswith("out/"))]
    assert outside == [] and moved["removed"] == [] and moved["changed"] == [], moved
    if result.returncode == 2:
        assert_refused_naming(result, pool_file.resolve(), keys)
        assert not output.exists()
    else:
        check_rendered(output, version, work)
    return result


def no_canary(workspace: Path) -> None:
    assert not list(workspace.rglob(CANARY)), "an injected command ran"


# --- pool.yaml -------------------------------------------------------------------------------


@settings(
    max_examples=80,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    mutations=st.lists(mutation(BASE_POOL), min_size=1, max_size=2),
    directory=st.sampled_from(POOL_DIRS),
    broken_bytes=st.sampled_from([False, False, False, True]),
)
@example(mutations=[(("sr_name",), "drbd-sr\n")], directory="pool", broken_bytes=False)
@example(mutations=[(("drbd", "resource"), "r0\n")], directory="pool", broken_bytes=False)
@example(mutations=[(("repo", "url"), "http://x/\n[evil]")], directory="pool", broken_bytes=False)
@example(mutations=[(("sr_name",), "sr")], directory=POOL_DIRS[1], broken_bytes=False)
@example(mutations=[(("sr_name",), "sr")], directory=POOL_DIRS[3], broken_bytes=False)
@example(mutations=[(("drbd", "version"), "8.3.16")], directory="pool", broken_bytes=False)
@example(mutations=[(("drbd", "version"), "9.2.5")], directory="pool", broken_bytes=False)
@example(mutations=[(("sr_name",), "sr")], directory="pool", broken_bytes=True)
@example(mutations=[(("hosts", 1, "name"), 0)], directory="pool", broken_bytes=False)
@example(mutations=[(("drbd", "resync_rate"), 4194305)], directory="pool", broken_bytes=False)
def test_fuzzed_pool_files_are_refused_or_render_files_that_parse(
    workspace: Path, mutations: list[tuple[Key, Any]], directory: str, broken_bytes: bool
) -> None:
    work = example_dir(workspace)
    canary = work / CANARY
    data = mutated(BASE_POOL, mutations, broken_bytes, canary)
    pool_dir = work / directory
    pool_dir.mkdir()
    pool_file = pool_dir / "pool.yaml"
    pool_file.write_bytes(dump(data))
    version = data["drbd"]["version"]
    rendered = render_and_check(work, pool_file, str(version), all_keys(data))
    assert rendered.returncode == 2 or not broken_bytes
    no_canary(workspace)


# --- spec files ------------------------------------------------------------------------------

BASE_SPEC: dict[str, Any] = {
    "targets": {
        "lab": {
            "name": "Lab dom0",
            "aliases": ["lab-alias"],
            "arch": "i686",
            "basearch": "i386",
            "kernel": {
                "package": "kernel-xen-devel",
                "runtime": "kernel-xen",
                "release": "2.6.32.12-0.7.1.xs1.4.90.530.170661xen",
                "source": {
                    "iso": "http://downloads.example/XCP/binpkg.iso",
                    "path": "domain0/RPMS/i686/kernel-xen-devel.rpm",
                },
            },
            "container": {
                "family": "centos5-i686",
                "limits": {"memory_mib": 2048, "pids": 1024, "cpus": 1, "timeout": 600},
            },
            "consumer": "el5",
            "drbd": ["8.4.1"],
            "build": {"configure": ["--with-km"], "cflags": "-O2", "make": {"V": "1"}},
        }
    },
    "drbd": {
        "8.4.1": {
            "family": "8.4-early",
            "url": "http://downloads.example/drbd-8.4.1.tar.gz",
            "cflags": "-O2 -fcommon",
            "rpmbuild": ["--without", "manual"],
        }
    },
}


@settings(
    max_examples=50,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    mutations=st.lists(mutation(BASE_SPEC), min_size=1, max_size=2),
    renamed=st.one_of(st.none(), st.none(), hostile_text("lab")),
    broken_bytes=st.sampled_from([False, False, False, True]),
)
@example(mutations=[(("targets", "lab", "basearch"), "i386\n")], renamed=None, broken_bytes=False)
@example(mutations=[(("targets", "lab", "name"), "Lab\n[evil]\nbaseurl=http://x/")],
         renamed=None, broken_bytes=False)  # fmt: skip
@example(mutations=[(("targets", "lab", "arch"), "i686")], renamed="lab\n", broken_bytes=False)
@example(mutations=[(("targets", "lab", "arch"), "i686")], renamed=None, broken_bytes=True)
def test_fuzzed_spec_files_are_refused_or_give_files_that_parse(
    workspace: Path, mutations: list[tuple[Key, Any]], renamed: str | None, broken_bytes: bool
) -> None:
    work = example_dir(workspace)
    canary = work / CANARY
    data = mutated(BASE_SPEC, mutations, broken_bytes, canary)
    keys = all_keys(data)
    if renamed is not None:
        renamed = with_canary(renamed, canary)
        data["targets"] = {renamed: data["targets"].pop("lab")}
        moved = {k.replace("targets.lab", f"targets.{renamed}", 1) for k in keys}
        keys |= moved | {f"targets.{renamed}"}
    specs = work / "specs"
    specs.mkdir()
    spec_file = specs / "lab.yaml"
    spec_file.write_bytes(dump(data))

    before = snapshot(work)
    listed = cli(work, "targets", "--json", "--specs", specs)
    assert listed.returncode in (0, 2), listed
    if listed.returncode == 2:
        assert_refused_naming(listed, spec_file, keys)
        assert not broken_bytes or "not UTF-8" in listed.stderr
        assert snapshot(work) == before, "a refused spec file left something behind"
        no_canary(workspace)
        return
    assert not broken_bytes
    target = renamed if renamed is not None else "lab"
    artifacts = work / "artifacts"
    planned = cli(work, "build", "--dry-run", "--xcp", target, "--specs", specs,
                  "--artifacts", artifacts)  # fmt: skip
    assert planned.returncode in (0, 2), planned
    if planned.returncode == 2:
        # A name the registry holds but the command line cannot name (or a plan it refuses).
        assert "Traceback" not in planned.stderr and "error: " in planned.stderr, planned
    assert not artifacts.exists(), "a dry run wrote into --artifacts"
    assert snapshot(work) == before, "targets or build --dry-run wrote something"

    pool_dir = work / "pool"
    pool_dir.mkdir()
    pool_file = pool_dir / "pool.yaml"
    document = copy.deepcopy(BASE_POOL)
    document["target"] = target
    pool_file.write_bytes(dump(document))
    version = str(document["drbd"]["version"])
    render_and_check(work, pool_file, version, all_keys(document), "--specs", specs)
    no_canary(workspace)
