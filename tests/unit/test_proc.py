"""proc.started: a program run beside other work, checked like proc.run, never left behind."""

from __future__ import annotations

import time

import pytest

from builder import proc
from builder.errors import CommandError


def test_a_started_program_is_checked_as_run_checks_it() -> None:
    with (
        proc.started(["sh", "-c", "echo out; echo err >&2; exit 3"], echo=False) as job,
        pytest.raises(CommandError, match="exit status 3") as raised,
    ):
        job.wait()
    assert "out" in raised.value.message
    assert "err" in raised.value.message
    with proc.started(["sh", "-c", "echo fine"], echo=False) as job:
        assert job.wait().stdout == "fine\n"


def test_a_program_that_ignores_sigterm_is_killed_when_the_work_beside_it_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(proc, "STOP_SECONDS", 0.3)

    def fail_beside_it() -> None:
        with proc.started(["sh", "-c", "trap '' TERM; sleep 30"], echo=False):
            time.sleep(0.2)  # the shell has set its trap
            raise RuntimeError("the other work failed")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="the other work failed"):
        fail_beside_it()
    assert time.monotonic() - started < 5
