"""Real, tiny RPMs made with rpmbuild, laid out like the build stage's artifacts.

One spec with many subpackages gives thousands of distinct, valid packages from one rpmbuild
run (a fraction of a second per thousand), which the publish tests and benchmark need.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path


def build_rpms(
    workdir: Path,
    names: Sequence[str],
    *,
    version: str = "1.0",
    release: str = "1",
    arch: str = "noarch",
    payload: str = "",
    with_files: bool = True,
    provides: Sequence[str] = (),
) -> list[Path]:
    """Build one package per name (the first is the main package) and return their paths.

    ``payload`` goes into a file of each package, so equal NVRs can differ in content.
    ``provides`` are extra capabilities of the main package (a stand-in for a system's base).
    Without files (``with_files=False``) rpmbuild is about thirty times faster per package,
    which the benchmark's thousands of packages need; the RPMs are still complete and valid.
    """
    top = workdir / f"rpmbuild-{names[0]}-{version}-{release}-{arch}"
    if top.exists():
        shutil.rmtree(top)
    (top / "SPECS").mkdir(parents=True)
    main, *subs = names
    lines = [
        f"Name: {main}",
        f"Version: {version}",
        f"Release: {release}",
        "Summary: test package",
        "License: GPL-2.0-or-later",
        *([f"BuildArch: {arch}"] if arch == "noarch" else []),
        *(f"Provides: {capability}" for capability in provides),
        "%description",
        "A test package.",
        "%install",
        "mkdir -p %{buildroot}/usr/share/xdb-test",
    ]
    for name in names if with_files else ():
        lines.append(f"echo '{name} {payload}' > %{{buildroot}}/usr/share/xdb-test/{name}")
    lines += ["%files", *([f"/usr/share/xdb-test/{main}"] if with_files else [])]
    for sub in subs:
        lines += [
            f"%package -n {sub}",
            "Summary: test subpackage",
            f"%description -n {sub}",
            "A test subpackage.",
            f"%files -n {sub}",
            *([f"/usr/share/xdb-test/{sub}"] if with_files else []),
        ]
    spec = top / "SPECS" / f"{main}.spec"
    spec.write_text("\n".join(lines) + "\n", encoding="utf-8")
    subprocess.run(
        [
            "rpmbuild",
            "-bb",
            "--define",
            f"_topdir {top}",
            "--define",
            "_buildhost test",
            "--define",
            "_binary_payload w2.gzdio",
            "--define",
            "__os_install_post %{nil}",
            "--define",
            "debug_package %{nil}",
            "--target",
            arch,
            str(spec),
        ],
        check=True,
        capture_output=True,
    )
    found = sorted((top / "RPMS").rglob("*.rpm"))
    assert len(found) == len(names), (found, names)
    return found


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_build(
    artifacts: Path,
    target: str,
    drbd_version: str,
    rpms: Sequence[Path],
    *,
    consumer: str | None,
    basearch: str | None,
) -> Path:
    """Copy ``rpms`` into ``artifacts/<target>/<version>/`` with a manifest.json like build's."""
    directory = artifacts / target / drbd_version
    directory.mkdir(parents=True, exist_ok=True)
    outputs = []
    for rpm in rpms:
        shutil.copy2(rpm, directory / rpm.name)
        outputs.append({"file": rpm.name, "sha256": sha256(rpm)})
    manifest: dict[str, object] = {
        "target": target,
        "drbd_version": drbd_version,
        "kernel_release": "2.6.32.12-0.7.1.xs1.4.90.530.170661xen",
        "outputs": outputs,
    }
    if consumer is not None:
        manifest["consumer"] = consumer
    if basearch is not None:
        manifest["basearch"] = basearch
    (directory / "build.log").write_text("test build\n", encoding="utf-8")
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return directory
