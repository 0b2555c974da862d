"""Benchmark: publishing one new package into a repository that already holds N packages.

For N = 100, 1,000 and 5,000 (one growing el7 repository, its artifacts directory holding every
build published so far, as a CI job's would), side by side in one run, order alternated
(A B B A ...), medians and minimums:

- A: the whole ``python -m builder publish`` process adding one new package (artifact scan,
  the digest check of every published package, signing, metadata, repomd signature,
  verification, atomic switch);
- B: Debian's ``/usr/bin/createrepo_c --update`` alone over the same packages plus the same new
  one, seeded from the same previous metadata: what a user would otherwise run.

Both sides must list the same packages in their primary metadata.  Also measured: a publish
with nothing new at 100 and at 5,000 packages (two repositories, interleaved), the digest
check's own time with its stat cache and without it, and ``verify`` at 1,000 and 5,000.

Goals (exit status 1 if missed): at 5,000 packages publish <= 1.5x createrepo_c --update
alone (median of the per-pair ratios); a publish with nothing new at 5,000 <= 1.2x at 100.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from builder.publish import testkey  # noqa: E402
from tests.rpmfactory import build_rpms, write_build  # noqa: E402

SCALES = (100, 1000, 5000)
RUNS = 4  # pairs per scale, in the order A B, B A, A B, B A
NOOP_RUNS = 6
BATCH = 1000  # subpackages per rpmbuild run
DEBIAN_CREATEREPO = "/usr/bin/createrepo_c"
FAMILY = ("el7", "x86_64")
STEP_MS = re.compile(r"✓ Check the (\d+) published package\(s\).*\(([\d.]+) (ms|s)\)")


def make_packages(work: Path, count: int, prefix: str) -> list[Path]:
    found: list[Path] = []
    for start in range(0, count, BATCH):
        names = [f"{prefix}{i:05d}" for i in range(start, min(start + BATCH, count))]
        found += build_rpms(work, names, arch="x86_64", with_files=False)
    return found


def publish(artifacts: Path, target: Path, home: Path, fingerprint: str) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "builder", "publish", "--keep", "100"]
    cmd += ["--artifacts", str(artifacts), "--repo", str(target)]
    cmd += ["--key", fingerprint, "--gnupg-home", str(home)]
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"publish failed:\n{result.stderr}")
    return elapsed, result.stderr


def verify(target: Path) -> float:
    cmd = [sys.executable, "-m", "builder", "verify", "-q", "--repo", str(target)]
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"verify failed:\n{result.stderr}")
    return elapsed


def createrepo_alone(tree: Path, previous: Path, output: Path) -> float:
    """Debian's createrepo_c --update over ``tree``, seeded from ``previous``'s metadata."""
    if output.exists():
        shutil.rmtree(output)
    output.mkdir()
    cmd = [DEBIAN_CREATEREPO, "--quiet", "--update", "--update-md-path", str(previous)]
    cmd += ["--checksum", "sha256", "--general-compress-type", "gz", "--workers", "2"]
    cmd += ["--outputdir", str(output), str(tree)]
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - started


def listed(folder: Path) -> set[str]:
    """The package file names the primary metadata under ``folder/repodata`` lists."""
    import createrepo_c as cr

    repomd = folder / "repodata" / "repomd.xml"
    primary = next(r for r in cr.Repomd(str(repomd)).records if r.type == "primary")
    packages = cr.PackageIterator(
        primary_path=str(folder / primary.location_href), filelists_path=None, other_path=None
    )
    return {str(p.location_href) for p in packages}


def scratch_tree(store_folder: Path, new: Path, tree: Path) -> None:
    """The store's packages, as symbolic links, plus ``new`` (set-up, not measured).

    Not hard links: a new link moves each package's ctime, and publish would then read every
    package again, as it must for a file that may have changed.
    """
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir()
    for rpm in store_folder.glob("*.rpm"):
        (tree / rpm.name).symlink_to(rpm)
    shutil.copy2(new, tree / new.name)


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):7.3f} (min {min(values):.3f})"


def main() -> int:
    if not Path(DEBIAN_CREATEREPO).is_file():
        sys.exit(f"{DEBIAN_CREATEREPO} is missing: apt-get install createrepo-c")
    with tempfile.TemporaryDirectory(prefix="xdb-bench-") as tmp:
        work = Path(tmp)
        home = work / "gnupg"
        fingerprint = testkey.generate_test_key(home)
        try:
            return measure(work, home, fingerprint)
        finally:
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)


@dataclass
class Bench:
    work: Path
    home: Path
    fingerprint: str
    new: list[Path]
    target: Path = field(init=False)
    artifacts: Path = field(init=False)

    def __post_init__(self) -> None:
        self.target, self.artifacts = self.work / "repo", self.work / "artifacts"

    def add(self, where: Path, name: str, rpms: list[Path]) -> None:
        write_build(where, "bench", name, rpms, consumer=FAMILY[0], basearch=FAMILY[1])

    def publish(self, artifacts: Path | None = None, target: Path | None = None) -> Run:
        return publish(
            artifacts or self.artifacts, target or self.target, self.home, self.fingerprint
        )

    def live(self) -> Path:
        return (self.target / "current").resolve() / FAMILY[0] / FAMILY[1]

    def pairs(self, scale: int) -> tuple[Row, list[int]]:
        """RUNS pairs of (publish 1 new, createrepo_c alone), order alternated."""
        a_times: list[float] = []
        b_times: list[float] = []
        check_ms: list[int] = []
        for run in range(RUNS):
            package = self.new.pop(0)
            seed = self.work / "previous"
            if seed.exists():
                shutil.rmtree(seed)
            shutil.copytree(self.live(), seed)  # A moves current; B reads the same seed
            scratch_tree(
                self.target / "packages" / FAMILY[0] / FAMILY[1], package, self.work / "tree"
            )
            self.add(self.artifacts, f"new-{scale}-{run}", [package])
            for side in "AB" if run % 2 == 0 else "BA":
                if side == "A":
                    seconds, log = self.publish()
                    a_times.append(seconds)
                    check_ms += check_step_ms(log)
                else:
                    b_times.append(createrepo_alone(self.work / "tree", seed, self.work / "out"))
            if listed(self.live()) != listed(self.work / "out"):
                sys.exit(f"publish and createrepo_c list different packages at {scale}")
        return Row(len(listed(self.live())), a_times, b_times), check_ms

    def cold_check_ms(self) -> int:
        """The digest check with no stat cache: every published package read again."""
        (self.target / "packages" / ".verified").unlink()
        self.add(self.artifacts, f"cold-{len(self.new)}", [self.new.pop(0)])
        return check_step_ms(self.publish()[1])[0]


Run = tuple[float, str]


@dataclass
class Row:
    count: int
    a: list[float]
    b: list[float]

    @property
    def ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.a, self.b, strict=True)]


def check_step_ms(log: str) -> list[int]:
    """The digest check's own time, as publish's step line reports it."""
    return [round(float(m[2]) * (1 if m[3] == "ms" else 1000)) for m in STEP_MS.finditer(log)]


def measure(work: Path, home: Path, fingerprint: str) -> int:
    started = time.perf_counter()
    filler = make_packages(work / "rpms", SCALES[-1], "bench-p")
    new = make_packages(work / "new", len(SCALES) * RUNS + 2, "bench-new-")
    print(f"set-up: built {len(filler) + len(new)} RPMs in {time.perf_counter() - started:.1f} s")
    bench = Bench(work, home, fingerprint, new)
    small, small_artifacts = work / "repo-100", work / "artifacts-100"
    bench.add(small_artifacts, "fill", filler[: SCALES[0]])
    bench.publish(small_artifacts, small)
    rows: list[Row] = []
    checks: dict[int, tuple[float, int]] = {}
    verifies: dict[int, float] = {}
    filled = 0
    for scale in SCALES:
        bench.add(bench.artifacts, f"fill-{scale}", filler[filled:scale])
        took, _ = bench.publish()
        print(f"set-up: published {scale - filled} package(s) to reach {scale} in {took:.1f} s")
        filled = scale
        row, warm = bench.pairs(scale)
        rows.append(row)
        if scale >= 1000:
            checks[scale] = (statistics.median(warm), bench.cold_check_ms())
            verifies[scale] = min(verify(bench.target) for _ in range(2))
    noop: dict[str, list[float]] = {"small": [], "large": []}
    for run in range(NOOP_RUNS):
        for side in ("small", "large") if run % 2 == 0 else ("large", "small"):
            where = (small_artifacts, small) if side == "small" else (None, None)
            noop[side].append(bench.publish(*where)[0])
    return report(rows, checks, verifies, noop)


def report(
    rows: list[Row],
    checks: dict[int, tuple[float, int]],
    verifies: dict[int, float],
    noop: dict[str, list[float]],
) -> int:
    print()
    print("publish 1 new package, seconds: median (min); ratio per pair A/B")
    print("packages | publish (whole process) | createrepo_c --update alone | ratio median (min)")
    for row in rows:
        print(
            f"{row.count:8d} | {fmt(row.a):>23} | {fmt(row.b):>27} | "
            f"{statistics.median(row.ratios):.2f} ({min(row.ratios):.2f})"
        )
    print()
    print("digest check of the published packages (the step's own time):")
    for scale, (warm, cold) in checks.items():
        print(f"  {scale:5d}: {warm:.0f} ms with the stat cache, {cold} ms reading every package")
    for scale, seconds in verifies.items():
        print(f"verify, whole process, {scale} packages: {seconds:.2f} s (min of 2)")
    noop_ratio = statistics.median(noop["large"]) / statistics.median(noop["small"])
    print(
        f"publish with nothing new: {fmt(noop['small'])} s at {SCALES[0]}, "
        f"{fmt(noop['large'])} s at {rows[-1].count}: {noop_ratio:.2f}x (medians)"
    )
    failures = []
    at_top = statistics.median(rows[-1].ratios)
    if at_top > 1.5:
        failures.append(f"publish at {rows[-1].count} is {at_top:.2f}x createrepo_c (goal 1.5x)")
    if noop_ratio > 1.2:
        failures.append(
            f"no-op publish at {rows[-1].count} is {noop_ratio:.2f}x at 100 (goal 1.2x)"
        )
    for failure in failures:
        print(f"GOAL MISSED: {failure}")
    if not failures:
        print(
            f"goals met: {at_top:.2f}x createrepo_c --update at {rows[-1].count} (<= 1.5x); "
            f"no-op {noop_ratio:.2f}x from {SCALES[0]} to {rows[-1].count} (<= 1.2x)"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
