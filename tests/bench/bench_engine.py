"""Benchmark: builds on another Docker engine, whose inputs go over the wire.

The other engine is a second dockerd on a TCP port of 127.0.0.1 with its own data root (as
the remote-engine tests start it); the build is the stand-in target's DRBD 8.4 test source
(userland and module) against the tests' kernel tree (Debian's 6.1 headers and kbuild, three
directories, 53 MiB).  Every round checks that both sides' RPMs are the same bytes.

Rows (ABBA order, ratios pair by pair):
  1. a build on the other engine of a kernel it has seen (the tree kept there), against the
     same build on the local engine with bind mounts.  Goal: A/B <= 1.2.
  2. the first build on the other engine (nothing kept: the tree is sent), against what a user
     would otherwise run: `docker cp` of the same inputs into a container there, plus the
     local build.  Goal: A/B <= 1.2.
  3. sending the tree alone: the tool's upload into volumes, against `docker cp` of the same
     directories, and against `tar c | docker exec -i … tar x` into a running container.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from builder import log  # noqa: E402
from builder.builds import engine, engine_inputs, rpmbuild  # noqa: E402
from tests.bench.abba import Goals, abba  # noqa: E402
from tests.integration import buildenv  # noqa: E402
from tests.integration.test_remote_engine import VERSION, build, load_image  # noqa: E402
from tests.support import engines  # noqa: E402

ROUNDS = 6


def kernel_dirs(kernel: buildenv.KernelTree) -> list[tuple[Path, str]]:
    """(directory here, path in the container) of each directory a build mounts."""
    mounts, _ = rpmbuild.kernel_mounts(kernel.root, kernel.build_dir)
    return [(m.source, m.target) for m in mounts]


def docker_cp(
    address: str, image: str, root: Path, dirs: list[tuple[Path, str]], tarball: Path
) -> None:
    """What a user would run: a container on the engine, `docker cp` of each input into it."""
    cli = ["docker", "-H", address]
    made = subprocess.run(
        [*cli, "create", "--network", "none", image, "true"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    name = made.stdout.strip()
    try:
        # From their common top (usr/): copied one by one, Debian's headers' link
        # scripts -> ../../lib/linux-kbuild-* climbs out of /usr/src, which `docker cp`
        # refuses ("invalid symlink").
        tops = sorted({Path(target).relative_to("/").parts[0] for _, target in dirs})
        for top in tops:
            subprocess.run([*cli, "cp", str(root / top), f"{name}:/"], check=True)
        subprocess.run([*cli, "cp", str(tarball), f"{name}:/tmp/"], check=True)
    finally:
        subprocess.run([*cli, "rm", "-f", name], check=True, capture_output=True)


def tar_exec(address: str, image: str, kernel: buildenv.KernelTree) -> None:
    """The other baseline: `tar c | docker exec -i CONTAINER tar x` into a running one."""
    cli = ["docker", "-H", address]
    made = subprocess.run(
        [*cli, "run", "-d", "--network", "none", "--user", "0", image, "sleep", "600"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    name = made.stdout.strip()
    try:
        members = [str(source.relative_to(kernel.root)) for source, _ in kernel_dirs(kernel)]
        with subprocess.Popen(
            ["tar", "-C", str(kernel.root), "-c", *members], stdout=subprocess.PIPE
        ) as packer:
            subprocess.run(
                [*cli, "exec", "-i", name, "tar", "-C", "/", "-x"], stdin=packer.stdout, check=True
            )
        if packer.returncode != 0:
            raise RuntimeError("tar c failed")
    finally:
        subprocess.run([*cli, "rm", "-f", name], check=True, capture_output=True)


def main() -> int:
    why = engines.can_run_second_engine()
    if why:
        print(f"skipped: {why}")
        return 0
    log.set_quiet(True)
    goals = Goals()
    local = engine.connect()
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as temp:
        work = Path(temp)
        kernel = buildenv.copy_kernel_tree(work / "kernel-root")
        image = rpmbuild.ensure_image(buildenv.standin_target(local, kernel), client=local)
        tarball = buildenv.make_drbd_source(work, VERSION)
        dirs = kernel_dirs(kernel)
        trees = [engine_inputs.describe(source) for source, _ in dirs]
        size = sum(tree.size for tree in trees if tree is not None)
        print(f"inputs: {len(dirs)} kernel directories, {size >> 20} MiB; the tarball")
        with engines.second_engine() as other:
            remote = other.client()
            load_image(local, remote, image)
            reference, _ = build(image, kernel, tarball, work / "reference", local)
            count = iter(range(1000))

            def run_local() -> None:
                rpms, _ = build(image, kernel, tarball, work / f"l{next(count)}", local)
                goals.check(rpms == reference, "the local build made other RPMs")

            def run_remote() -> None:
                rpms, _ = build(image, kernel, tarball, work / f"r{next(count)}", remote)
                goals.check(rpms == reference, "the build on the other engine made other RPMs")

            def forget() -> None:
                engine_inputs.prune(remote)
                # The engine's disk writes of the side before are flushed before this one
                # starts, not charged to it.
                os.sync()

            def cp_then_local() -> None:
                docker_cp(other.address, image, kernel.root, dirs, tarball)
                run_local()

            def send() -> None:
                for (_, target), tree in zip(dirs, trees, strict=True):
                    assert tree is not None
                    engine_inputs.ensure(remote, tree, image=image, what=target)

            run_remote()  # warm: the tree is kept now
            kept_row = abba(
                "a build on the other engine, kernel tree kept there",
                ("other engine", run_remote),
                ("local engine, bind mounts", run_local),
                rounds=ROUNDS,
            )
            print("\n".join(kept_row.lines()))
            goals.at_most(kept_row, 1.2)
            first_row = abba(
                "the first build on the other engine",
                ("other engine, tree sent", run_remote),
                ("docker cp of the inputs + local build", cp_then_local),
                rounds=ROUNDS,
                before=forget,
            )
            print("\n".join(first_row.lines()))
            goals.at_most(first_row, 1.2)
            for name, baseline in (
                ("docker cp", lambda: docker_cp(other.address, image, kernel.root, dirs, tarball)),
                ("tar c | docker exec -i … tar x", lambda: tar_exec(other.address, image, kernel)),
            ):
                row = abba(
                    f"sending the kernel tree: the tool against {name}",
                    ("the tool, into volumes", send),
                    (name, baseline),
                    rounds=ROUNDS,
                    before=forget,
                )
                print("\n".join(row.lines()))
            remote.close()
    shutil.rmtree(work, ignore_errors=True)
    return goals.exit_status()


if __name__ == "__main__":
    sys.exit(main())
