"""``targets``: list the dom0 targets and DRBD versions the registry knows."""

from __future__ import annotations

import argparse
import json
from typing import Any

from builder.builds.recipes import describe_families
from builder.registry import load_registry
from builder.specs import Registry, Target

NOT_CHECKED = "not yet built against a real kernel tree of this generation"


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    parser = sub.add_parser(
        "targets",
        parents=[common],
        help="list dom0 targets and DRBD versions",
        description="List the dom0 targets and DRBD versions from specs/ and any --specs DIR.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    parser.set_defaults(func=run)


def target_dict(target: Target) -> dict[str, Any]:
    source = target.kernel_source
    return {
        "id": target.id,
        "name": target.name,
        "aliases": list(target.aliases),
        "arch": target.arch,
        "basearch": target.basearch,
        "consumer": target.consumer.value,
        "container_family": target.container_family,
        "drbd": list(target.drbd_versions),
        "checked": {v: target.checked.get(v) for v in target.drbd_versions},
        "kernel": {
            "package": target.kernel_package,
            "release": target.kernel_release,
            "runtime": target.kernel_runtime,
            "requires": target.kernel_dependency.value,
            "source": {
                "kind": source.kind.value,
                "url": source.url,
                "path": source.path,
                "repos": list(source.repos),
                "evr": source.evr,
                "sha256": source.sha256,
            },
        },
    }


def registry_dict(registry: Registry) -> dict[str, Any]:
    return {
        "targets": [target_dict(t) for t in registry.targets.values()],
        "drbd": [
            {
                "version": v.version,
                "family": v.family.value,
                "url": v.url,
                "sha256": v.sha256,
                "utils": v.utils.version if v.utils else None,
                "kernels": None
                if v.kernels is None
                else {
                    "from": v.kernels.oldest,
                    "below": v.kernels.below,
                    "why": v.kernels.why,
                    "instead": v.kernels.instead,
                },
            }
            for v in registry.drbd.values()
        ],
        "drbd_utils": [
            {"version": u.version, "url": u.url, "sha256": u.sha256}
            for u in registry.utils.values()
        ],
        "families": [
            {"family": family, "versions": versions, "dom0": dom0}
            for family, versions, dom0 in describe_families()
        ],
    }


def run(args: argparse.Namespace) -> int:
    registry = load_registry(args.specs)
    if args.json:
        print(json.dumps(registry_dict(registry), indent=2))
        return 0
    print("Targets (use the id or an alias with --xcp):")
    for target in registry.targets.values():
        aliases = f" [{', '.join(target.aliases)}]" if target.aliases else ""
        print(f"  {target.id}{aliases}: {target.name}")
        print(
            f"      {target.kernel_package} for kernel {target.kernel_release} "
            f"({target.arch}, {target.consumer.value}, from {target.kernel_source.kind.value})"
        )
        requirements = ", ".join(map(str, target.kernel_requirements("<version-release>")))
        print(f"      module packages require {requirements}")
        if target.drbd_versions:
            print(f"      DRBD that fits: {', '.join(target.drbd_versions)}")
            for name in target.drbd_versions:
                print(f"        {name}: {target.checked.get(name, NOT_CHECKED)}")
    print("DRBD versions (use with --drbd):")
    for version in registry.drbd.values():
        utils = f", userland drbd-utils {version.utils.version}" if version.utils else ""
        print(f"  {version.version}: family {version.family.value}{utils}")
        if version.kernels is not None:
            print(f"      builds against {version.kernels.describe()}: {version.kernels.why}")
    print("DRBD families and the dom0 kernels they fit:")
    for family, versions, dom0 in describe_families():
        print(f"  {family} ({versions}): {dom0}")
    return 0
