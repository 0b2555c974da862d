"""The spec file of target ``lab``: a dom0 whose kernel-devel RPM sits inside an ISO, for the
tests of fetching and extracting kernel sources (no build image involved)."""

from __future__ import annotations

from pathlib import Path


def write_kernel_lab_spec(
    directory: Path, *, iso: str, inner: str, release: str, sha256: str | None = None
) -> Path:
    """``directory/lab.yaml`` with target ``lab``: kernel ``release``, its kernel-devel RPM at
    ``inner`` inside ``iso`` (pinned to ``sha256`` when given); returns ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    pin = f"\n        sha256: {sha256}" if sha256 else ""
    (directory / "lab.yaml").write_text(
        f"""targets:
  lab:
    name: Lab dom0
    arch: x86_64
    kernel:
      package: kernel-xen-devel
      release: {release}
      source:
        iso: {iso}
        path: {inner}{pin}
    container:
      family: centos7-x86_64
    consumer: el7
""",
        encoding="utf-8",
    )
    return directory
