"""The data files the tool ships, named once: the built-in registry and the build contexts.

In the repository they are the top-level ``specs/`` and ``containers/``. setuptools maps
them into the package as ``builder/data/specs`` and ``builder/data/containers``
(``package-dir`` in pyproject.toml), so a wheel, ``pip install .`` and the builder image
carry them; they are found here through ``importlib.resources``. A source checkout (run from
it, or installed editable) has no ``builder/data``: there they are read where setuptools
takes them from, beside the package.

They are read-only inputs: nothing is ever written here (recorded hashes go to the state
directory, ``builder.inputs.checksums``).

Every module that reads them takes their place from here, and this module imports nothing
heavy: the warm ``kernel`` call reads it before anything else.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

LOCK_FILE_NAME = "checksums.lock"  # input key to sha256: shipped, in a spec dir, or recorded


def _data_dir(name: str) -> Path:
    package = importlib.resources.files("builder")
    shipped = package / "data" / name
    # Build contexts, bind mounts and patch paths need real files: an installed package
    # always has them (pip unpacks wheels), only a zip import would not.
    if isinstance(shipped, Path) and shipped.is_dir():
        return shipped
    if isinstance(package, Path):
        checkout = package.parent
        if (checkout / "pyproject.toml").is_file() and (checkout / name).is_dir():
            return checkout / name
    # Missing: the commands that need it say so (builder.specs, builder.builds.rpmbuild).
    return Path(str(shipped))


SPECS_DIR = _data_dir("specs")  # targets.yaml, drbd.yaml and the pins and lock shipped with them
SHIPPED_LOCK = SPECS_DIR / LOCK_FILE_NAME  # hashes that vouch for inputs; may be absent
CONTAINERS_DIR = _data_dir("containers")  # containers/<family>/: one build context each

MISSING_HINT = (
    "The tool is installed without its data files (specs/ and containers/ inside the package): "
    "reinstall it from a wheel or a checkout with `pip install`, not from a bare copy of the "
    "builder/ directory."
)
