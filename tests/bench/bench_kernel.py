"""Benchmark: the cold and the warm `kernel` call on a kernel-devel of real size.

The input is made like the real thing: a ~40 MB kernel-devel RPM with ~26,500 entries
(Debian's kernel headers, one more copy of their -common tree, and incompressible files like
a real tree's objtool and vmlinux.h) inside a ~400 MB ISO.

Rows, each ABBA-interleaved with the ratio taken round by round (min and median printed):
  * cold, on tmpfs and on disk (ext4): `python -m builder kernel` with no tree, no RPM read
    out and no memo in its cache (the ISO's hash is known, as after its download), against
    the manual path `xorriso -extract` + `rpm2cpio | cpio -idm` into the same filesystem.
    Both trees must hold the same entries (type, content, symlink target).  The tool also
    verifies the RPM's digests and checks every entry; the manual path checks nothing.
  * peak RSS of one cold `kernel` process;
  * warm: `python -m builder kernel` with everything cached, against `python -c pass`;
  * for the record, the extraction alone in-process against libarchive (libarchive-c)
    extracting the same RPM with its secure-extraction flags, when libarchive-c is installed.
Goals (exit status 1 if one is missed, on the medians): cold <= 1.0x the manual path on tmpfs
and on disk; peak RSS <= 30 MB; warm <= 1.5x `python -c pass`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from builder.rpm.header import read_info  # noqa: E402
from builder.rpm.payload import extract_payload  # noqa: E402
from tests.bench.abba import Goals, abba  # noqa: E402
from tests.support.kernelrpm import build_kernel_devel_rpm, installed_headers, make_iso  # noqa: E402

COLD_ROUNDS = 6
WARM_ROUNDS = 21
ISO_PADDING = 360 << 20
PLACES = (("tmpfs", Path("/dev/shm")), ("disk", Path("/var/tmp")))


def env() -> dict[str, str]:
    # With bytecode, as an installed tool runs (some shells turn it off).
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run(cmd: list[str], **kwargs: object) -> None:
    subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, check=True, **kwargs)  # type: ignore[call-overload]


def peak_rss_mib(cmd: list[str]) -> float:
    """Peak RSS of one process, measured in a fresh intermediate so earlier children don't count."""
    probe = (
        "import resource, subprocess, sys;"
        "subprocess.run(sys.argv[1:], check=True, capture_output=True);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, *cmd],
        check=True, capture_output=True, text=True, cwd=REPO, env=env(),
    )  # fmt: skip
    return int(out.stdout.strip()) / 1024


def tree_listing(root: Path) -> dict[str, str]:
    """Every entry below ``root``: its type and content hash or symlink target."""
    found: dict[str, str] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            relative = str(path.relative_to(root))
            if path.is_symlink():
                found[relative] = "link " + os.readlink(path)
            elif path.is_dir():
                found[relative] = "dir"
            else:
                found[relative] = "file " + hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def write_specs(specs: Path, iso: Path, inner: str) -> None:
    specs.mkdir(parents=True, exist_ok=True)
    (specs / "lab.yaml").write_text(
        "targets:\n  lab:\n    name: Lab\n    arch: x86_64\n    kernel:\n"
        f"      package: kernel-xen-devel\n      release: {installed_headers().release}\n"
        f"      source:\n        iso: file://{iso}\n        path: {inner}\n"
        "    container:\n      family: centos7-x86_64\n    consumer: el7\n"
    )


def cold_row(place: str, base: Path, iso: Path, inner: str, goals: Goals) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-kernel-", dir=base))
    try:
        specs, cache, manual = work / "specs", work / "cache", work / "manual"
        write_specs(specs, iso, inner)
        tool = [
            sys.executable, "-m", "builder", "kernel", "-q", "--xcp", "lab",
            "--specs", str(specs), "--cache", str(cache),
        ]  # fmt: skip
        run(tool)  # the first call ever: hashes the ISO, as its download would
        by_hand = (
            f"mkdir -p {manual}/tree && "
            f"xorriso -osirrox on -indev {iso} -extract /{inner} {manual}/k.rpm && "
            f"cd {manual}/tree && rpm2cpio ../k.rpm | cpio -idm --quiet"
        )

        trash = work / "trash"
        trash.mkdir()

        def clean() -> None:
            # Moved aside, not deleted: deleting 26,000 files (with discard on ext4) would go
            # on in the background of the next timed run.  Removed after the row.
            for path in (cache / "kernels", cache / "rpms", cache / "memo", manual):
                if path.exists():
                    path.rename(trash / f"{len(list(trash.iterdir()))}")

        row = abba(
            f"cold kernel on {place} ({base})",
            ("python -m builder kernel", partial(run, tool)),
            ("xorriso -extract + rpm2cpio | cpio -idm", partial(run, ["sh", "-c", by_hand])),
            rounds=COLD_ROUNDS,
            before=clean,
        )
        # Each round cleaned both sides first: one more run of each, to compare what they made.
        clean()
        run(tool)
        run(["sh", "-c", by_hand])
        ours = tree_listing(next((cache / "kernels").iterdir()) / "tree")
        theirs = tree_listing(manual / "tree")
        print("\n".join(row.lines()))
        differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        print(f"  trees: {len(ours)} entries each side, {len(differ)} differ {differ[:5]}")
        goals.check(not differ, f"{place}: the tool's tree differs from cpio's in {len(differ)}")
        goals.at_most(row, 1.0)
        clean()
        rss = peak_rss_mib(tool)
        print(f"  peak RSS of a cold `kernel`: {rss:.1f} MiB (goal <= 30)")
        goals.check(rss <= 30, f"{place}: cold kernel peak RSS {rss:.1f} MiB > 30 MiB")
        warm_row(tool, goals)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def warm_row(tool: list[str], goals: Goals) -> None:
    run(tool)
    row = abba(
        "warm kernel (everything cached)",
        ("python -m builder kernel", partial(run, tool)),
        ("python -c pass", partial(run, [sys.executable, "-c", "pass"])),
        rounds=WARM_ROUNDS,
    )
    print("\n".join(row.lines()))
    goals.at_most(row, 1.5)


def libarchive_row(rpm: Path, base: Path) -> None:
    """Extraction alone, in this process: ours against libarchive's secure extraction."""
    try:
        import libarchive
        import libarchive.extract as flags
    except ImportError:
        print("libarchive-c is not installed: no libarchive row")
        return
    work = Path(tempfile.mkdtemp(prefix="bench-libarchive-", dir=base))
    ours, theirs = work / "ours", work / "theirs"
    info = read_info(rpm)
    secure = (
        flags.EXTRACT_SECURE_NODOTDOT
        | flags.EXTRACT_SECURE_NOABSOLUTEPATHS
        | flags.EXTRACT_SECURE_SYMLINKS
        | flags.EXTRACT_TIME
        | flags.EXTRACT_PERM
    )

    def clean() -> None:
        for path in (ours, theirs):
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()

    def with_libarchive() -> None:
        cwd = Path.cwd()
        os.chdir(theirs)
        try:
            libarchive.extract_file(str(rpm), secure)
        finally:
            os.chdir(cwd)

    try:
        row = abba(
            f"extraction alone on {base}, in-process",
            ("builder.rpm.payload.extract_payload", partial(extract_payload, rpm, info, ours)),
            ("libarchive secure extract_file", with_libarchive),
            rounds=COLD_ROUNDS,
            before=clean,
        )
        clean()
        extract_payload(rpm, info, ours)
        with_libarchive()
        same = tree_listing(ours) == tree_listing(theirs)
        print("\n".join(row.lines()))
        print(f"  same tree: {same}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    goals = Goals()
    with tempfile.TemporaryDirectory(prefix="bench-kernel-input-", dir="/var/tmp") as temp:
        work = Path(temp)
        rpm = build_kernel_devel_rpm(work / "rpm", copies=1, filler_mib=11)
        inner = f"domain0/RPMS/{rpm.parent.name}/{rpm.name}"
        entries = sum(1 for _ in subprocess.run(
            ["rpm", "-qpl", str(rpm)], capture_output=True, text=True, check=True
        ).stdout.splitlines())  # fmt: skip
        iso = make_iso(work / "iso", {inner: rpm}, padding=ISO_PADDING)
        print(
            f"kernel-devel RPM: {rpm.stat().st_size / 1e6:.1f} MB, {entries} entries; "
            f"ISO {iso.stat().st_size / 1e6:.0f} MB; {os.cpu_count()} CPUs, load "
            + " ".join(f"{x:.1f}" for x in os.getloadavg())
        )
        for place, base in PLACES:
            cold_row(place, base, iso, inner, goals)
        for _, base in PLACES:
            libarchive_row(rpm, base)
    return goals.exit_status()


if __name__ == "__main__":
    sys.exit(main())
