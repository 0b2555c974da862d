"""Benchmark: builds in parallel, and make -j inside the container.

Same run, same image, kernel tree and userland cached (what every side reuses):
  * one module: `build` as it runs by default (make -j of every CPU) against today's
    single-core build (`--cpus 1`: make -j1 in a one-CPU container), on the DRBD-sized test
    source: a module of about 20 translation units like DRBD 8.4's, each costing what a real
    DRBD unit costs to compile (see bench_build);
  * N targets (1, 2, 4) in one `build` call: default (`--jobs` one per CPU, make -j) against
    the serial run (`--jobs 1 --cpus 1`: one build after another, each on one core), on the
    same 20 units with DRBD's headers but not its code: a lighter build, on which each build's
    fixed cost weighs more (the harder case for the ratio), that keeps four serial builds
    within minutes.
Each row is ABBA-interleaved, the ratio taken round by round (min and median printed), every
run into fresh artifacts.  Both sides must make the very same RPM bytes.
Goals (exit status 1 if missed, on the medians): one module <= 0.6x; two targets <= 0.55x.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from builder.builds import engine  # noqa: E402
from tests.bench.abba import Goals, Row, abba  # noqa: E402
from tests.bench.bench_build import drbd_sized_module  # noqa: E402
from tests.integration import buildenv  # noqa: E402
from tests.support.kernelrpm import build_kernel_devel_rpm, installed_headers, make_iso  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "4"))
VERSION = "8.4.1"  # the DRBD-sized module
LIGHT = "8.4.2"  # its headers without its code, for the targets rows
COUNTS = (1, 2, 4)


def run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")


def build(
    specs: Path, cache: Path, artifacts: Path, targets: list[str], *extra: str, version: str
) -> list[str]:
    return [
        sys.executable, "-m", "builder", "build", "-q", "--xcp", *targets, "--drbd", version,
        "--specs", str(specs), "--cache", str(cache), "--artifacts", str(artifacts), *extra,
    ]  # fmt: skip


def rpms(artifacts: Path) -> dict[str, bytes]:
    return {str(p.relative_to(artifacts)): p.read_bytes() for p in sorted(artifacts.rglob("*.rpm"))}


def row(
    label: str, work: Path, specs: Path, targets: list[str], serial: list[str], *, version: str
) -> Row:
    cache = work.parent / "cache"
    ours, theirs = work / "parallel", work / "serial"
    fast = build(specs, cache, ours, targets, version=version)
    slow = build(specs, cache, theirs, targets, *serial, version=version)

    def fresh(artifacts: Path, cmd: list[str]) -> None:
        shutil.rmtree(artifacts, ignore_errors=True)
        run(cmd)

    result = abba(
        label,
        ("parallel (default)", partial(fresh, ours, fast)),
        (f"serial ({' '.join(serial)})", partial(fresh, theirs, slow)),
        rounds=ROUNDS,
    )
    made, again = rpms(ours), rpms(theirs)
    same = bool(made) and made == again
    print("\n".join(result.lines()))
    print(f"  same RPM bytes on both sides: {same} ({len(made)} RPMs)")
    if not same:
        raise SystemExit(f"{label}: the two sides made different RPMs")
    return result


def main() -> int:
    client = engine.connect()
    goals = Goals()
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as temp:
        work = Path(temp)
        rpm = build_kernel_devel_rpm(work / "rpm")
        iso = make_iso(work / "iso", {f"domain0/RPMS/{rpm.parent.name}/{rpm.name}": rpm})
        base = buildenv.standin_root_image(client)
        sized = buildenv.make_drbd_source(work, VERSION, drbd_sized_module)
        light = buildenv.make_drbd_source(work, LIGHT, partial(drbd_sized_module, functions=0))
        names = [f"lab{n}" for n in range(1, max(COUNTS) + 1)]
        specs = buildenv.write_lab_specs(
            work / "specs", targets={name: "kernel-xen" for name in names}, iso=iso, rpm=rpm,
            release=installed_headers().release, base_image=base,
            drbd="drbd:\n" + "".join(
                f"  {version}:\n    family: 8.4-early\n    url: file://{tarball}\n"
                for version, tarball in ((VERSION, sized), (LIGHT, light))
            ),
        )  # fmt: skip
        # Warm: image, kernel tree, userland (shared by every side and every row).
        run(build(specs, work / "cache", work / "warm", names[:1], version=VERSION))
        run(build(specs, work / "cache", work / "warm", names, version=LIGHT))
        print(f"{os.cpu_count()} CPUs, load " + " ".join(f"{x:.1f}" for x in os.getloadavg()))
        module = row(
            "one DRBD-sized module: make -j<CPUs> against today's single-core build",
            work / "one", specs, names[:1], ["--cpus", "1"], version=VERSION,
        )  # fmt: skip
        goals.at_most(module, 0.6)
        for count in COUNTS:
            targets = row(
                f"{count} target(s) in one build call",
                work / f"targets{count}", specs, names[:count], ["--jobs", "1", "--cpus", "1"],
                version=LIGHT,
            )  # fmt: skip
            if count == 2:
                goals.at_most(targets, 0.55)
    return goals.exit_status()


if __name__ == "__main__":
    sys.exit(main())
