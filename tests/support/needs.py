"""What a test needs from this machine, and the one way to say it is missing: a skip that
names what to install, or, under CI (``CI`` set), a failure, since CI provides everything."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


class Unavailable(Exception):
    """Something the tests need is missing on this machine (message says what)."""


def unavailable(reason: str) -> NoReturn:
    """Skip the test for ``reason``; fail it instead under CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)
