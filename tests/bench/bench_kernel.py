"""Benchmark: reading kernel-devel out of a large ISO, and a fully cached `kernel` call.

Compares, in the same run and on the same file, the pipeline's extraction as the pipeline does
it (builder.iso.extract, in the running process) with the alternative of shelling out to
`xorriso -osirrox on -indev ISO -extract PATH OUT` from that process, and reports the peak RSS
of a fresh process doing each (the pipeline's figure includes the Python interpreter).
Goals (the script exits 1 when one is missed):
  * the pipeline is no slower than the xorriso subprocess;
  * the pipeline's peak RSS stays under 100 MB for every ISO size;
  * a second `python -m builder kernel` with everything cached takes under 0.5 s.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from builder import log  # noqa: E402
from builder.iso import extract  # noqa: E402
from tests.support.kernelrpm import build_kernel_devel_rpm, installed_headers, make_iso  # noqa: E402

ROUNDS = 5
SIZES_MB = (320, 1200)


def peak_rss_kib(cmd: list[str]) -> int:
    """Peak RSS of one process, measured in a fresh intermediate so earlier children don't count."""
    probe = (
        "import resource, subprocess, sys;"
        "subprocess.run(sys.argv[1:], check=True, capture_output=True);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, *cmd], check=True, capture_output=True, text=True, cwd=REPO
    )
    return int(out.stdout.strip())


def main() -> int:
    log.set_quiet(True)
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-kernel-") as temp:
        work = Path(temp)
        rpm = build_kernel_devel_rpm(work / "rpm")
        inner = f"domain0/RPMS/{rpm.parent.name}/{rpm.name}"
        print(f"kernel-devel RPM: {rpm.name}, {rpm.stat().st_size / 1e6:.1f} MB")
        for size_mb in SIZES_MB:
            iso = make_iso(work / f"iso{size_mb}", {inner: rpm}, padding=size_mb << 20)
            print(f"\nISO of {iso.stat().st_size / 1e6:.0f} MB")
            ours_cmd = [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; from builder.iso import extract; "
                "extract(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))",
                str(iso),
                inner,
                str(work / "ours.rpm"),
            ]
            xorriso_out = work / "xorriso.rpm"
            xorriso_cmd = [
                "xorriso",
                "-osirrox",
                "on",
                "-indev",
                str(iso),
                "-extract",
                "/" + inner,
                str(xorriso_out),
            ]
            subprocess.run(xorriso_cmd, check=True, capture_output=True)  # warm the page cache
            ours_times, theirs_times = [], []
            for _ in range(ROUNDS):
                (work / "ours.rpm").unlink(missing_ok=True)
                started = time.perf_counter()
                extract(iso, inner, work / "ours.rpm")
                ours_times.append(time.perf_counter() - started)
                xorriso_out.unlink(missing_ok=True)
                started = time.perf_counter()
                subprocess.run(xorriso_cmd, check=True, capture_output=True)
                theirs_times.append(time.perf_counter() - started)
            if (work / "ours.rpm").read_bytes() != rpm.read_bytes():
                failures.append("the pipeline's copy differs from the RPM")
            ours, theirs = statistics.median(ours_times), statistics.median(theirs_times)
            ours_rss = peak_rss_kib(ours_cmd) / 1024
            (work / "ours.rpm").unlink()
            xorriso_out.unlink(missing_ok=True)
            theirs_rss = peak_rss_kib(xorriso_cmd) / 1024
            for label, median, rss in (
                ("pipeline, in process", ours, ours_rss),
                ("xorriso subprocess", theirs, theirs_rss),
            ):
                print(f"  {label:32} median {median * 1000:5.0f} ms, peak RSS {rss:4.0f} MB")
            if ours > theirs:
                failures.append(f"{size_mb} MB ISO: pipeline {ours:.3f} s > xorriso {theirs:.3f} s")
            if ours_rss >= 100:
                failures.append(f"{size_mb} MB ISO: pipeline peak RSS {ours_rss:.0f} MB >= 100 MB")
            last_iso = iso

        release = installed_headers().release
        specs = work / "specs"
        specs.mkdir()
        (specs / "lab.yaml").write_text(
            "targets:\n  lab:\n    name: Lab\n    arch: x86_64\n    kernel:\n"
            f"      package: kernel-xen-devel\n      release: {release}\n      source:\n"
            f"        iso: file://{last_iso}\n        path: {inner}\n"
            "    container:\n      family: centos7-x86_64\n    consumer: el7\n"
        )
        kernel_cmd = [
            sys.executable,
            "-m",
            "builder",
            "kernel",
            "--xcp",
            "lab",
            "--specs",
            str(specs),
            "--cache",
            str(work / "cache"),
        ]
        started = time.perf_counter()
        subprocess.run(kernel_cmd, check=True, capture_output=True, cwd=REPO)
        first = time.perf_counter() - started
        first_rss = peak_rss_kib(kernel_cmd) / 1024  # second call, cached: the common case
        cached_times = []
        for _ in range(ROUNDS):
            started = time.perf_counter()
            subprocess.run(kernel_cmd, check=True, capture_output=True, cwd=REPO)
            cached_times.append(time.perf_counter() - started)
        cached = statistics.median(cached_times)
        print(f"\n`kernel` first call (hash ISO, extract RPM and tree): {first:.2f} s")
        print(
            f"`kernel` cached call: median {cached * 1000:.0f} ms of {ROUNDS}, "
            f"peak RSS {first_rss:.0f} MB"
        )
        if cached >= 0.5:
            failures.append(f"cached kernel call took {cached:.3f} s >= 0.5 s")
    for failure in failures:
        print(f"GOAL MISSED: {failure}")
    print("all goals met" if not failures else f"{len(failures)} goal(s) missed")
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
