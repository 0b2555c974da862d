"""Benchmark: publishing one new package into a repository that already holds N packages.

For N = 100, 1,000 and 5,000 (one growing el7 repository), time the whole
``python -m builder publish`` process adding one new package (signing, metadata, repomd
signature, verification, atomic switch included) against ``createrepo_c --update`` alone on
the same tree with the same new package.  Filling the repository (signing thousands of
packages) is set-up, not measured.  Each figure is the median of three runs, each adding a
different new package.

Goals (exit status 1 if missed): at 1,000 packages, publish < 1 s and < 3x createrepo_c
--update; the publish overhead over createrepo_c (what this tool adds) does not grow with the
repository: at 5,000 it stays within 2x of the overhead at 100, plus 0.2 s.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from builder import repo, sign  # noqa: E402
from builder.specs import Consumer  # noqa: E402
from tests.rpmfactory import build_rpms, write_build  # noqa: E402

SCALES = (100, 1000, 5000)
RUNS = 3
BATCH = 1000  # subpackages per rpmbuild run


def make_packages(work: Path, count: int, prefix: str) -> list[Path]:
    found: list[Path] = []
    for start in range(0, count, BATCH):
        names = [f"{prefix}{i:05d}" for i in range(start, min(start + BATCH, count))]
        found += build_rpms(work, names, arch="x86_64", with_files=False)
    return found


def run_publish(artifacts: Path, target: Path, home: Path, fingerprint: str) -> float:
    cmd = [
        sys.executable,
        "-m",
        "builder",
        "publish",
        "-q",
        "--artifacts",
        str(artifacts),
        "--repo",
        str(target),
        "--key",
        fingerprint,
        "--gnupg-home",
        str(home),
    ]
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"publish failed:\n{result.stderr}")
    return elapsed


def createrepo_update_alone(previous: Path, new_rpm: Path, scratch: Path) -> float:
    """``createrepo_c --update`` on the previous repo tree plus the new (signed) package."""
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir()
    for rpm in previous.glob("*.rpm"):
        os.link(rpm, scratch / rpm.name)
    shutil.copytree(previous / "repodata", scratch / "repodata")
    shutil.copy2(new_rpm, scratch / new_rpm.name)
    cmd = [
        repo.find_createrepo(Consumer.EL7),
        "--quiet",
        "--update",
        "--checksum",
        "sha256",
        "--general-compress-type",
        "gz",
        "--workers",
        "2",
        str(scratch),
    ]
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - started


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="xdb-bench-") as tmp:
        work = Path(tmp)
        home = work / "gnupg"
        fingerprint = sign.generate_test_key(home)
        try:
            return measure(work, home, fingerprint)
        finally:
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)


def measure(work: Path, home: Path, fingerprint: str) -> int:
    started = time.perf_counter()
    filler = make_packages(work / "rpms", SCALES[-1], "bench-p")
    new = make_packages(work / "new", len(SCALES) * RUNS, "bench-new-")
    print(f"set-up: built {len(filler) + len(new)} RPMs in {time.perf_counter() - started:.1f} s")
    target = work / "repo"
    rows = []
    filled = 0
    for scale in SCALES:
        setup = work / f"artifacts-fill-{scale}"
        write_build(
            setup, "bench", f"fill-{scale}", filler[filled:scale], consumer="el7", basearch="x86_64"
        )
        started = time.perf_counter()
        run_publish(setup, target, home, fingerprint)
        print(
            f"set-up: published {scale - filled} package(s) to reach {scale} "
            f"in {time.perf_counter() - started:.1f} s"
        )
        filled = scale
        publish_times = []
        createrepo_times = []
        for run in range(RUNS):
            package = new.pop(0)
            previous = (target / "current").resolve() / "el7" / "x86_64"
            count = len(list(previous.glob("*.rpm")))
            artifacts = work / f"artifacts-new-{scale}-{run}"
            write_build(
                artifacts,
                "bench",
                f"new-{scale}-{run}",
                [package],
                consumer="el7",
                basearch="x86_64",
            )
            publish_times.append(run_publish(artifacts, target, home, fingerprint))
            signed = (target / "current").resolve() / "el7" / "x86_64" / package.name
            createrepo_times.append(createrepo_update_alone(previous, signed, work / "scratch"))
        rows.append((count, statistics.median(publish_times), statistics.median(createrepo_times)))

    print()
    print(
        "packages in repo | publish 1 new (whole process) | createrepo_c --update | "
        "ratio | overhead"
    )
    for count, publish_s, createrepo_s in rows:
        print(
            f"{count:16d} | {publish_s:27.3f} s | {createrepo_s:19.3f} s | "
            f"{publish_s / createrepo_s:5.2f} | {publish_s - createrepo_s:6.3f} s"
        )
    failures = []
    at_1000 = next(r for r in rows if r[0] >= 1000)
    if at_1000[1] >= 1.0:
        failures.append(f"publish at {at_1000[0]} took {at_1000[1]:.3f} s (goal < 1 s)")
    if at_1000[1] >= 3 * at_1000[2]:
        failures.append(
            f"publish at {at_1000[0]} is {at_1000[1] / at_1000[2]:.2f}x createrepo_c (goal < 3x)"
        )
    small_overhead = rows[0][1] - rows[0][2]
    large_overhead = rows[-1][1] - rows[-1][2]
    if large_overhead > 2 * small_overhead + 0.2:
        failures.append(
            f"overhead grew from {small_overhead:.3f} s at {rows[0][0]} to "
            f"{large_overhead:.3f} s at {rows[-1][0]}"
        )
    for failure in failures:
        print(f"GOAL MISSED: {failure}")
    if not failures:
        print(
            "goals met: < 1 s and < 3x createrepo_c --update at 1,000; the overhead over "
            f"createrepo_c grew {large_overhead / small_overhead:.1f}x for "
            f"{rows[-1][0] / rows[0][0]:.0f}x the packages (hard links and state file)"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
