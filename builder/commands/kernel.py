"""``kernel``: fetch, verify and extract a target's dom0 kernel build tree."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder import log, resources
from builder.commands.common import add_input_options, add_state_option
from builder.errors import ConfigError
from builder.inputs import kernel_memo

if TYPE_CHECKING:
    from builder.inputs.kernel import KernelTree

DESCRIPTION = """\
Fetch the target's kernel-devel package (from its ISO, RPM URL or yum repository, or from the
files you give), verify its sha256 against the pinned or locked value, extract it safely into
the cache, find the kernel build tree, and check that the tree's kernel release is the one
dom0 runs. Prints the release and the build tree's path.

Without a pin or a lock that vouches for it, the first file that checks out is trusted and
its sha256 recorded: for a built-in target in the state directory (--state), for a target of
a --specs DIR in DIR/checksums.lock. Delete the entry (or the file) to trust a new file.
"""


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    parser = sub.add_parser(
        "kernel",
        parents=[common],
        help="fetch, verify and extract a dom0 kernel build tree",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--xcp",
        "--target",
        dest="target",
        metavar="TARGET",
        required=True,
        help="target id or alias (see `targets`), e.g. 1.5 or xcp-ng-8.2",
    )
    add_input_options(parser)
    add_state_option(parser)
    parser.add_argument(
        "--output",
        metavar="DIR",
        type=Path,
        help="also copy the extracted tree here (DIR must not exist yet)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    parser.set_defaults(func=run)


def copy_tree(tree: KernelTree, output: Path) -> KernelTree:
    from builder.inputs.kernel import KernelTree

    if output.exists():
        raise ConfigError(f"--output {output} already exists; choose a new directory.")
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with log.step(f"copying the tree to {output}"):
            shutil.copytree(tree.root, partial, symlinks=True)
        os.replace(partial, output)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return KernelTree(
        release=tree.release,
        root=output,
        build_dir=output / tree.build_dir.relative_to(tree.root),
        rpm=tree.rpm,
        rpm_nvra=tree.rpm_nvra,
        rpm_sha256=tree.rpm_sha256,
        rpm_version_release=tree.rpm_version_release,
        source=tree.source,
        source_sha256=tree.source_sha256,
        source_trust=tree.source_trust,
        rpm_trust=tree.rpm_trust,
    )


def _print(target: str, result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"target": target, **result}, indent=2))
    else:
        print(f"kernel release: {result['release']}")
        print(f"build tree:     {result['build_dir']}")


def run(args: argparse.Namespace) -> int:
    spec_dirs = [Path(d).resolve() for d in args.specs]
    state: Path = args.state.resolve()
    # The state directory's lock (builder.inputs.checksums.state_lock), present or not.
    locks = [state / resources.LOCK_FILE_NAME]
    key = [
        args.target,
        [str(d) for d in spec_dirs],
        str(args.cache.resolve()),
        *(str(p.resolve()) if p is not None else None for p in (args.iso, args.kernel_rpm)),
        str(args.mirror.resolve()) if args.mirror is not None else None,
        str(state),
    ]
    if args.output is None:
        remembered = kernel_memo.recall(args.cache, key, spec_dirs, locks=locks)
        if remembered is not None:
            log.info(f"kernel tree unchanged since the last call: {remembered['build_dir']}")
            target = remembered.pop("target")
            _print(target, remembered, args.json)
            return 0
    from builder.commands.common import fetch_settings
    from builder.inputs.kernel import KernelInputs, prepare_kernel
    from builder.registry import load_registry
    from builder.specs import SourceKind

    registry = load_registry(args.specs)
    target = registry.target(args.target)
    inputs = KernelInputs(iso=args.iso, kernel_rpm=args.kernel_rpm)
    tree = prepare_kernel(target, fetch_settings(args), inputs)
    if args.output is not None:
        tree = copy_tree(tree, args.output)
    elif target.kernel_source.kind is not SourceKind.YUM or args.kernel_rpm is not None:
        # Yum-sourced trees are not remembered: a newer kernel there must be found.
        result = {"target": target.id, **tree.to_json()}
        kernel_memo.remember(args.cache, key, spec_dirs, tree.files, result, locks=locks)
    _print(target.id, tree.to_json(), args.json)
    return 0
