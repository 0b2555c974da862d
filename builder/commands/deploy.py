"""``deploy``: a dual-primary DRBD storage repository for two dom0 hosts, from ``pool.yaml``.

``deploy init`` writes a commented example pool file, ``deploy check`` runs the safety checks,
``deploy render`` writes the DRBD resource files, ``lvm.conf`` settings, yum ``.repo`` file and
a step-by-step runbook for each host.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from builder import log
from builder.deploy.checks import CHECK_IDS, Finding, Severity, run_checks
from builder.deploy.pool import EXAMPLE_POOL, Pool, load_pool
from builder.deploy.render import RenderedFile, render_pool, write_files
from builder.deploy.repo import Package, RepoUnreachable, read_packages
from builder.errors import ConfigError, DeployError
from builder.registry import load_registry

DESCRIPTION = """\
Render everything needed to put a dual-primary DRBD device under an LVM storage repository
shared by two dom0 hosts, from a small pool description (pool.yaml), and check that
description against the dangers of dual-primary DRBD.

  init    write a commented example pool.yaml
  check   run the safety checks (exit status 13 when any error is found)
  render  run the checks, then write per-host files into --output DIR
"""

EPILOG = """\
examples:
  python -m builder deploy init --output pool.yaml
  python -m builder deploy check --pool pool.yaml
  python -m builder deploy render --pool pool.yaml --output deploy/
"""


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    parser = sub.add_parser(
        "deploy",
        help="render and check a two-host dual-primary DRBD storage repository",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="deploy_command", metavar="ACTION", required=True)

    init = actions.add_parser(
        "init",
        parents=[common],
        help="write a commented example pool.yaml",
        description="Write a commented example pool file to edit.",
    )
    init.add_argument(
        "--output",
        metavar="FILE",
        type=Path,
        default=Path("pool.yaml"),
        help="where to write it (default: pool.yaml; '-' prints it)",
    )
    init.add_argument("--force", action="store_true", help="replace an existing file")
    init.set_defaults(func=run_init)

    check = actions.add_parser(
        "check",
        parents=[common],
        help="check a pool file for unsafe settings",
        description=(
            "Validate the pool file and run the safety checks. Each finding says what is wrong, "
            "why it matters and how to fix it. Exit status 13 when any error is found."
        ),
    )
    _pool_options(check)
    check.set_defaults(func=run_check)

    render = actions.add_parser(
        "render",
        parents=[common],
        help="write DRBD, LVM, yum and runbook files per host",
        description=(
            "Run the safety checks, then write into DIR, per host: the DRBD resource file, the "
            "lvm.conf settings, the yum .repo file and runbook.sh. Errors stop the render "
            "unless overridden by id; files are replaced atomically and only when they change."
        ),
    )
    _pool_options(render)
    render.add_argument(
        "--output", metavar="DIR", type=Path, required=True, help="directory to write into"
    )
    render.add_argument(
        "--override",
        metavar="CHECK",
        action="append",
        default=[],
        choices=CHECK_IDS,
        help="render despite this failed check (repeatable; the files record it). "
        f"CHECK is one of: {', '.join(CHECK_IDS)}",
    )
    render.set_defaults(func=run_render)


def _pool_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pool", metavar="FILE", type=Path, required=True, help="pool.yaml")
    parser.add_argument(
        "--no-repo-check",
        action="store_true",
        help="do not read the yum repository to check that it carries the DRBD packages",
    )


def _skip_repo(base: str) -> list[Package]:
    raise RepoUnreachable("skipped (--no-repo-check)")


def _load_and_check(args: argparse.Namespace) -> tuple[Pool, list[Finding]]:
    registry = load_registry(args.specs)
    pool = load_pool(args.pool, registry)
    with log.step(f"Checking {args.pool}"):
        findings = run_checks(pool, reader=_skip_repo if args.no_repo_check else read_packages)
    return pool, findings


def run_init(args: argparse.Namespace) -> int:
    if str(args.output) == "-":
        sys.stdout.write(EXAMPLE_POOL)
        return 0
    output: Path = args.output
    if output.exists() and not args.force:
        raise ConfigError(
            f"{output} already exists; not replacing it.",
            hint="Pass --force to replace it, or --output another file.",
        )
    write_files(output.parent, {output.name: RenderedFile(EXAMPLE_POOL)})
    log.info(f"Wrote {output}: edit the hosts, disks and networks, then run `deploy check`.")
    return 0


def run_check(args: argparse.Namespace) -> int:
    _, findings = _load_and_check(args)
    for finding in findings:
        print(finding.format())
    errors = [f for f in findings if f.severity is Severity.ERROR]
    warnings = len(findings) - len(errors)
    if errors:
        raise DeployError(
            f"{len(errors)} safety check(s) failed and {warnings} warning(s) for {args.pool}.",
            hint="Fix the pool file as each finding says.",
        )
    print(f"{args.pool}: no errors, {warnings} warning(s).")
    return 0


def run_render(args: argparse.Namespace) -> int:
    pool, findings = _load_and_check(args)
    overrides = set(args.override)
    blocking = []
    overridden = []
    for finding in findings:
        if finding.severity is Severity.WARNING:
            log.warn(finding.format(severity=False))
        elif finding.id in overrides:
            log.warn(f"overridden error {finding.format(severity=False)}")
            overridden.append(finding.id)
        else:
            blocking.append(finding)
    if blocking:
        for finding in blocking:
            print(finding.format(), file=sys.stderr)
        ids = " ".join(f"--override {i}" for i in sorted({f.id for f in blocking}))
        raise DeployError(
            f"Not rendering: {len(blocking)} safety check(s) failed for {args.pool}; "
            "nothing was written.",
            hint=f"Fix the pool file, or accept the risk explicitly with: {ids}",
        )
    files = render_pool(pool, overridden=sorted(set(overridden)))
    output: Path = args.output
    if output.exists() and not output.is_dir():
        raise DeployError(f"{output} exists and is not a directory.")
    with log.step(f"Writing {len(files)} files into {output}"):
        changed = write_files(output, files)
    hosts = {host.name for host in pool.hosts}
    for runbook in sorted(output.glob("*/runbook.sh")):
        if runbook.parent.name not in hosts:
            log.warn(
                f"{runbook.parent} is from an earlier render for a host no longer in the pool; "
                "remove it so nobody runs it."
            )
    if changed:
        for name in changed:
            print(output / name)
    else:
        log.info(f"{output}: every file is already up to date; nothing changed.")
    return 0
