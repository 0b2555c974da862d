"""``build``: DRBD userland and kernel-module RPMs for one or more targets and versions."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from builder.commands.common import (
    add_input_options,
    add_state_option,
    fetch_settings,
    positive_int,
    positive_number,
    positive_seconds,
)

if TYPE_CHECKING:
    from builder.builds.plan import BuildStep

# Relative to the working directory: the outputs are the user's, never the installed
# package's (from a checkout, the README's main job lands in its artifacts/).
DEFAULT_ARTIFACTS = Path("artifacts")

DESCRIPTION = """\
Build the DRBD userland and kernel-module RPMs for each DRBD version and target, in a
container whose userland matches dom0, with the kernel release and build tree passed
explicitly. The recipe follows the DRBD source family (see `targets`): 8.3 and 8.4.0-8.4.4
build drbd and drbd-km from one tarball; 8.4.5 and later build the module from the DRBD
tarball and the userland from the drbd-utils release the version names. A userland is built
once per build image and shared by the targets that use it. The module package requires the
exact dom0 kernel it was built for. Results go to ARTIFACTS/<target>/<version>/ with a
manifest.json, only after the post-build checks passed. A target whose kernel-devel comes from
yum repositories is built once per selected kernel (--kernel), into
ARTIFACTS/<target>/<version>+k<kernel-devel version-release>/.

The sha256 of a first download that nothing vouches for yet (no pin, no lock) is recorded
once the build checked out: for a built-in version or target in the state directory
(--state), for one of a --specs DIR in DIR/checksums.lock.
"""


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    for name, help_text in (
        ("build", "build DRBD RPMs for dom0 targets"),
        ("matrix", "print the build matrix as JSON (one entry per CI job)"),
    ):
        parser = sub.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=DESCRIPTION if name == "build" else help_text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.add_argument(
            "--xcp",
            "--target",
            dest="targets",
            metavar="TARGET",
            nargs="+",
            action="extend",
            required=True,
            help="target ids or aliases (see `targets`); several allowed; `all` for every target",
        )
        parser.add_argument(
            "--drbd",
            dest="versions",
            metavar="VERSION",
            nargs="+",
            action="extend",
            default=[],
            help="DRBD versions (see `targets`); several allowed; default: the versions each "
            "target's spec lists as fitting its kernel",
        )
        parser.add_argument(
            "--kernel",
            metavar="latest|all|EVR-GLOB",
            type=kernel_choice,
            default=None,
            help="for targets whose kernel-devel comes from yum repositories: build for the "
            "newest match of the spec's evr: (latest), for every match (all), or for the "
            "matches of a glob on the version-release, one build each (default: the spec's "
            "kernel.source.kernels, else latest); targets with an ISO or RPM URL have one "
            "kernel and take only latest or all",
        )
        parser.add_argument(
            "--artifacts",
            metavar="DIR",
            type=Path,
            default=Path(os.environ.get("XDB_ARTIFACTS") or DEFAULT_ARTIFACTS),
            help=f"output directory (default: $XDB_ARTIFACTS, else ./{DEFAULT_ARTIFACTS} in "
            "the working directory)",
        )
        if name == "build":
            add_input_options(parser)
            add_state_option(parser)
            parser.add_argument(
                "--source",
                metavar="PATH",
                type=Path,
                help="the DRBD source tarball as a local file (with a single --drbd)",
            )
            parser.add_argument(
                "--utils-source",
                metavar="PATH",
                type=Path,
                help="the drbd-utils source tarball as a local file (for DRBD 8.4.5 and later, "
                "whose userland is a drbd-utils release; one drbd-utils version per run)",
            )
            limits = parser.add_argument_group(
                "limits of each build container (default: the target's container.limits, "
                "else 4096 MiB, 4096 processes, every CPU, 7200 s)"
            )
            limits.add_argument(
                "--timeout",
                metavar="SECONDS",
                type=positive_seconds,
                default=None,
                help="stop a build (and remove its container) after this long",
            )
            limits.add_argument(
                "--memory", metavar="MIB", type=positive_int, help="memory, swap included"
            )
            limits.add_argument("--pids", metavar="N", type=positive_int, help="processes")
            limits.add_argument("--cpus", metavar="N", type=positive_number, help="CPUs")
            parser.add_argument(
                "--lock-timeout",
                metavar="SECONDS",
                type=float,
                default=3600.0,
                help="wait this long for another build of the same target and version into "
                "the same --artifacts (default: 3600; 0 fails at once with exit code 14)",
            )
            parser.add_argument(
                "-j",
                "--jobs",
                metavar="N",
                type=positive_int,
                default=None,
                help="builds to run at once (default: one per CPU, %s here); a failed build does "
                "not stop the others" % (os.cpu_count() or 1),
            )
            parser.add_argument(
                "--dry-run", action="store_true", help="print the plan and do nothing"
            )
            parser.set_defaults(func=run)
        else:
            parser.set_defaults(func=run_matrix)


def kernel_choice(text: str) -> str:
    from builder.specs import KERNEL_CHOICE

    if not KERNEL_CHOICE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not latest, all, or a glob on a version-release"
        )
    return text


def _steps(args: argparse.Namespace) -> list[BuildStep]:
    # Imported here: every command's start-up pays for what cli.py imports.
    from builder.builds.plan import plan, refuse_unbuildable
    from builder.inputs import kernels
    from builder.registry import load_registry

    registry = load_registry(args.specs)
    targets = registry.targets_named(args.targets)
    # Before the kernel's repository is read: a pair that cannot build needs no download.
    refuse_unbuildable(registry, args.targets, args.versions)
    local_rpm: Path | None = getattr(args, "kernel_rpm", None)
    if local_rpm is not None:
        # The user's kernel-devel RPM is the one kernel: no repository is read.
        for target in targets:
            kernels.check_choice(target, args.kernel)
        evr = kernels.rpm_version_release(local_rpm)
        chosen: dict[str, tuple[str, ...]] = {
            t.id: (evr,) for t in targets if kernels.per_kernel(t)
        }
    else:
        chosen = kernels.resolve(targets, args.kernel, fetch_settings(args))
    return plan(registry, args.targets, args.versions, args.artifacts, chosen)


def run_matrix(args: argparse.Namespace) -> int:
    print(json.dumps({"include": [step.to_json() for step in _steps(args)]}, indent=2))
    return 0


def run(args: argparse.Namespace) -> int:
    steps = _steps(args)
    if args.dry_run:
        print(f"Plan: {len(steps)} build(s); nothing will be done (--dry-run).")
        for number, step in enumerate(steps, 1):
            lines = step.describe()
            print(f"{number}. {lines[0]}")
            for line in lines[1:]:
                print(f"   {line}")
        return 0
    from builder.builds.pipeline import BuildOptions, Outcome, run_builds, step_name
    from builder.inputs.kernel import KernelInputs

    options = BuildOptions(
        settings=fetch_settings(args),
        kernel_inputs=KernelInputs(iso=args.iso, kernel_rpm=args.kernel_rpm),
        source=args.source,
        utils_source=args.utils_source,
        timeout=args.timeout,
        lock_timeout=args.lock_timeout,
        memory_mib=args.memory,
        pids=args.pids,
        cpus=args.cpus,
        jobs=args.jobs or os.cpu_count() or 1,
    )

    def report(outcome: Outcome) -> None:
        if outcome.error is not None:
            if len(steps) == 1:
                return  # the error says it; stdout holds results only
            state = f"failed (exit code {outcome.error.exit_code})"
        else:
            state = "built" if outcome.built else "up to date"
        print(f"{step_name(outcome.step)}: {state}: {outcome.step.output_dir}", flush=True)

    run_builds(steps, options, report)
    return 0
