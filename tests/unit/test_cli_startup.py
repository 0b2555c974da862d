"""Start-up: a command imports what it uses, and the top-level listing matches the commands."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from builder import cli

REPO = Path(__file__).resolve().parents[2]

# Modules that belong to other stages: importing one costs start-up for nothing.
HEAVY = ("docker", "requests", "pycdlib", "rpmfile", "createrepo_c", "builder.deploy")


def imported_by(*argv: str) -> set[str]:
    """The modules a fresh ``python -m builder ARGV`` has imported when it exits."""
    probe = (
        "import atexit, json, sys, runpy\n"
        "atexit.register(lambda: print('MODULES=' + json.dumps(sorted(sys.modules)), "
        "file=sys.stderr))\n"
        f"sys.argv = ['builder', *{list(argv)!r}]\n"
        "runpy.run_module('builder', run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=False
    )
    line = next(x for x in done.stderr.splitlines() if x.startswith("MODULES="))
    return set(json.loads(line.removeprefix("MODULES=")))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY or m.startswith(HEAVY))


def commands_of(modules: set[str]) -> set[str]:
    """The command modules imported (``common`` holds helpers, not a command)."""
    return {
        m.rsplit(".", 1)[1]
        for m in modules
        if m.startswith("builder.commands.") and m != "builder.commands.common"
    }


def test_help_imports_no_command_module() -> None:
    modules = imported_by("--help")
    assert commands_of(modules) == set()
    assert heavy(modules) == []


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["targets"], "targets"),
        (["build", "--xcp", "1.5", "--drbd", "8.4.1", "--dry-run"], "build"),
        (["matrix", "--xcp", "1.5", "--drbd", "8.4.1"], "build"),
    ],
)
def test_a_command_imports_only_its_own_module(argv: list[str], command: str) -> None:
    modules = imported_by(*argv)
    assert commands_of(modules) == {command}
    assert heavy(modules) == []
    assert "builder.builds.pipeline" not in modules
    assert "builder.inputs.kernel" not in modules


def subcommand_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {action.dest: str(action.help) for action in sub._choices_actions}


def test_the_lazy_listing_says_what_each_command_says_of_itself() -> None:
    assert subcommand_help(cli.build_parser([])) == subcommand_help(cli.build_parser())
    assert list(subcommand_help(cli.build_parser())) == list(cli.COMMANDS)


def test_each_command_gets_its_full_parser() -> None:
    args = cli.build_parser(["kernel"]).parse_args(["kernel", "--xcp", "1.5", "--max-file", "9"])
    assert args.max_file == 9
    with pytest.raises(SystemExit):
        cli.build_parser([]).parse_args(["kernel", "--xcp", "1.5"])


def test_command_of_skips_top_level_options() -> None:
    assert cli.command_of(["--version"]) is None
    assert cli.command_of(["build", "--xcp", "1.5"]) == "build"
