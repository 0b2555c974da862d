"""``cache``: the build inputs kept on a Docker engine that cannot see this machine's paths."""

from __future__ import annotations

import argparse
import json

from builder import log
from builder.builds import engine, engine_inputs


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    parser = sub.add_parser(
        "cache",
        parents=[common],
        help="list or remove the build inputs kept on the Docker engine",
        description=(
            "A build on an engine elsewhere (DOCKER_HOST, a Docker context, "
            f"{engine.UPLOAD_ENV}=1) sends each large input, a kernel tree above all, once "
            "and keeps it there in a named volume labelled as this tool's, named by a digest "
            "of its content; later builds mount it read-only and check it against that digest "
            "beside the build, which counts only if they agree. The oldest go once the "
            "volumes add up to more than "
            f"{engine_inputs.CACHE_MAX_ENV} (default 10G). `cache` lists them; "
            "`cache --prune` removes every one no container uses."
        ),
    )
    parser.add_argument(
        "--prune", action="store_true", help="remove every kept input no container uses"
    )
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    client = engine.connect()
    try:
        if args.prune:
            removed, left = engine_inputs.prune(client)
            freed = sum(volume.size for volume in removed)
            if args.json:
                print(
                    json.dumps(
                        {"removed": [v.name for v in removed], "in_use": [v.name for v in left]}
                    )
                )
            else:
                print(f"removed {len(removed)} kept inputs ({log.format_bytes(freed)})")
                for volume in left:
                    print(f"left {volume.name}: in use by a container ({volume.what})")
            return 0
        kept = engine_inputs.kept(client)
        if args.json:
            print(json.dumps([vars(volume) for volume in kept], indent=2))
            return 0
        if not kept:
            print("no build inputs are kept on this engine")
            return 0
        for volume in kept:
            use = "  in use" if volume.in_use else ""
            print(f"{volume.created[:19]}  {log.format_bytes(volume.size):>9}  {volume.what}{use}")
            print(f"    {volume.name}")
        total = sum(volume.size for volume in kept)
        limit = engine_inputs.cache_limit()
        print(
            f"{len(kept)} kept, {log.format_bytes(total)} of "
            f"{engine_inputs.CACHE_MAX_ENV}={log.format_bytes(limit)}"
        )
        return 0
    finally:
        client.close()
