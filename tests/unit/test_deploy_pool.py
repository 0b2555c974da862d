from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.builds.recipes import Syntax
from builder.cli import main
from builder.deploy.pool import EXAMPLE_POOL, Fencing, Guard, load_pool, parse_pool, syntax_of
from builder.errors import ConfigError
from builder.registry import load_registry
from tests.deploy_support import pool_data, write_pool


def parse(data: dict[str, Any]) -> Any:
    return parse_pool(Path("/srv/pool.yaml"), yaml.safe_dump(data), load_registry())


def test_example_pool_from_init_is_valid_and_safe_by_default() -> None:
    pool = parse_pool(Path("pool.yaml"), EXAMPLE_POOL, load_registry())
    assert pool.target.id == "xcp-1.5"
    assert [h.name for h in pool.hosts] == ["xcp1", "xcp2"]
    assert pool.hosts[0].replication == ipaddress.IPv4Interface("10.0.0.1/24")
    assert pool.drbd.syntax is Syntax.V84
    assert pool.drbd.device == "/dev/drbd1"
    assert pool.drbd.fencing is Fencing.RESOURCE_ONLY
    assert pool.drbd.after_sb_0pri == "discard-zero-changes"
    assert pool.drbd.after_sb_1pri == "discard-secondary"
    assert pool.drbd.after_sb_2pri == "disconnect"
    assert pool.drbd.split_brain_handler == "/usr/lib/drbd/notify-split-brain.sh root"
    assert pool.first.name == "xcp1"
    assert pool.second.name == "xcp2"
    assert pool.repo_baseurl == "http://repo.example.lan/xcp-drbd/el5/i386/"


def test_target_alias_resolves_through_the_build_registry() -> None:
    pool = parse(pool_data(target="8.2"))
    assert pool.target.id == "xcp-ng-8.2"
    assert pool.repo_baseurl == "file:///nonexistent/xcp-drbd/el7/x86_64/"


@pytest.mark.parametrize(
    ("version", "syntax"),
    [
        ("8.3.16", Syntax.V83),
        ("8.3", Syntax.V83),
        ("8.4.1", Syntax.V84),
        ("8.4.11", Syntax.V84),
        ("9", Syntax.V9),
        ("9.2.5", Syntax.V9),
        ("8.2.7", None),
        ("10.0", None),
        ("8", None),
        ("8.4.x", None),
    ],
)
def test_drbd_version_picks_the_config_syntax(version: str, syntax: Syntax | None) -> None:
    assert syntax_of(version) is syntax


BAD_POOLS = [
    (pool_data(hosts=[pool_data()["hosts"][0]]), "hosts", "exactly two"),
    (
        pool_data(hosts=[*pool_data()["hosts"], pool_data()["hosts"][0]]),
        "hosts",
        "lists 3 host(s)",
    ),
    (pool_data(**{"hosts.1.name": "xcp1"}), "hosts[1].name", "also the name"),
    (pool_data(**{"drbd.version": "8.2.7"}), "drbd.version", "8.3.x, 8.4.x or 9.x"),
    (pool_data(**{"drbd.port": 0}), "drbd.port", "out of range"),
    (pool_data(**{"drbd.port": 70000}), "drbd.port", "out of range"),
    (pool_data(**{"drbd.port": "7789"}), "drbd.port", "whole number"),
    (pool_data(**{"drbd.minor": 256}), "drbd.minor", "out of range"),
    (pool_data(**{"hosts.0.name": "xcp1;reboot"}), "hosts[0].name", "not valid"),
    (pool_data(**{"hosts.0.disk": "/dev/sdb $(reboot)"}), "hosts[0].disk", "not valid"),
    (pool_data(**{"hosts.0.disk": "/dev/../etc/passwd"}), "hosts[0].disk", "'..'"),
    (pool_data(sr_name="sr`id`"), "sr_name", "not valid"),
    (pool_data(**{"drbd.resource": 'r0"; }'}), "drbd.resource", "not valid"),
    # drbdadm reads these as numbers: "TK_STRING | '{' expected, but got '0'".
    (pool_data(**{"hosts.1.name": 0}), "hosts[1].name", "as a number"),
    (pool_data(**{"hosts.0.name": "10M"}), "hosts[0].name", "as a number"),
    (pool_data(**{"drbd.resource": "1s"}), "drbd.resource", "as a number"),
    # drbdadm: "resync-rate 4194305 => 4194305k out of range [1..4194304]k".
    (pool_data(**{"drbd.resync_rate": 4194305}), "drbd.resync_rate", "out of range"),
    (pool_data(**{"drbd.resync_rate": "4097M"}), "drbd.resync_rate", "at most 4194304K"),
    (pool_data(**{"drbd.resync_rate": "5G"}), "drbd.resync_rate", "out of range"),
    (
        pool_data(**{"hosts.1.replication.interface": "eth1&&x"}),
        "hosts[1].replication.interface",
        "not valid",
    ),
    (
        pool_data(**{"drbd.split_brain_handler": "/bin/sh -c 'x'"}),
        "drbd.split_brain_handler",
        "absolute path",
    ),
    (pool_data(**{"repo.url": "http://x/$(id)"}), "repo.url", "not valid"),
    (pool_data(**{"repo.url": "ftp://mirror/x"}), "repo.url", "not valid"),
    (
        pool_data(**{"hosts.0.replication.address": "10.0.0.1"}),
        "hosts[0].replication.address",
        "prefix",
    ),
    (
        pool_data(**{"hosts.0.replication.address": "10.0.0.0/24"}),
        "hosts[0].replication.address",
        "usable host",
    ),
    (
        pool_data(**{"hosts.0.management.address": "300.1.1.1/24"}),
        "hosts[0].management.address",
        "not an IPv4",
    ),
    (pool_data(**{"drbd.initial_sync_from": "xcp3"}), "drbd.initial_sync_from", "xcp1, xcp2"),
    (pool_data(**{"drbd.initial_sync_from": ...}), "drbd.initial_sync_from", "missing"),
    (pool_data(**{"drbd.after_sb_2pri": "discard-secondary"}), "drbd.after_sb_2pri", "one of"),
    (pool_data(**{"drbd.fencing": "yes"}), "drbd.fencing", "one of"),
    (pool_data(target="xcp-9.9"), "target", "Unknown target"),
    (pool_data(**{"hosts.0.disk": ...}), "hosts[0].disk", "missing"),
    (pool_data(sr_name=...), "sr_name", "missing"),
    (pool_data(**{"drbd.prot": 1}), "drbd.prot", "unknown key"),
    (pool_data(**{"guard.grace_minutes": 0}), "guard.grace_minutes", "out of range"),
    (pool_data(**{"guard.grace_minutes": "10m"}), "guard.grace_minutes", "whole number"),
    (pool_data(**{"guard.hook": "page-oncall"}), "guard.hook", "absolute path"),
    (pool_data(**{"guard.hook": "/usr/bin/page; reboot"}), "guard.hook", "not valid"),
    (pool_data(**{"guard.grace": 10}), "guard.grace", "unknown key"),
    (pool_data(extra=True), "extra", "unknown key"),
]


@pytest.mark.parametrize(("data", "key", "text"), BAD_POOLS)
def test_bad_pool_names_the_key(data: dict[str, Any], key: str, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(data)
    message = str(caught.value)
    assert f"/srv/pool.yaml: {key}: " in message
    assert text in message


@pytest.mark.parametrize(("data", "key", "text"), BAD_POOLS)
def test_bad_pool_renders_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: dict[str, Any], key: str, text: str
) -> None:
    pool = write_pool(tmp_path, data)
    output = tmp_path / "out"
    code = main(["deploy", "render", "--pool", str(pool), "--output", str(output), "-q"])
    assert code == 2
    assert not output.exists()
    assert key in capsys.readouterr().err


def test_pool_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_pool(path, load_registry())


def test_missing_pool_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="deploy init"):
        load_pool(tmp_path / "pool.yaml", load_registry())


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text("hosts: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pool(path, load_registry())


def test_init_writes_the_example_and_will_not_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "pool.yaml"
    assert main(["deploy", "init", "--output", str(target), "-q"]) == 0
    assert target.read_text() == EXAMPLE_POOL
    target.write_text("# mine\n")
    assert main(["deploy", "init", "--output", str(target), "-q"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert target.read_text() == "# mine\n"
    assert main(["deploy", "init", "--output", str(target), "--force", "-q"]) == 0
    assert target.read_text() == EXAMPLE_POOL


def test_guard_defaults_and_values() -> None:
    assert parse(pool_data(guard=...)).guard == Guard()
    assert (Guard().grace_minutes, Guard().migration_minutes, Guard().hook) == (10, 5, None)
    pool = parse(
        pool_data(
            **{"guard.grace_minutes": 7, "guard.hook": "/usr/local/sbin/page-oncall --team sto"}
        )
    )
    assert pool.guard == Guard(
        grace_minutes=7, migration_minutes=5, hook="/usr/local/sbin/page-oncall --team sto"
    )


def test_example_pool_documents_the_guard() -> None:
    pool = parse_pool(Path("pool.yaml"), EXAMPLE_POOL, load_registry())
    assert pool.guard == Guard(grace_minutes=10, migration_minutes=5)
    assert "# hook: " in EXAMPLE_POOL
