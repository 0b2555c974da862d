"""``python -m builder publish`` killed at random points, and publishes that race.

The kill loop publishes one new package per run and kills most runs with SIGKILL, SIGTERM or
SIGINT after a random delay (seeded; the seed is printed, ``FAULT_SEED`` replays a run).
After every run, whatever happened: ``current`` is a complete version whose ``repomd.xml``
signature and packages verify, no package that was live before is gone, the next publish is
not blocked (each runs with ``--lock-timeout 0``, so a stale lock would be exit 14), and dnf
takes packages from it.  A final, unhurried publish then holds every package.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.faults.harness import Result, builder, finish, running, signal_child, spawn
from tests.faults.publishing import (
    Signer,
    add_build,
    assert_dnf_gets,
    audit,
    dnf_download,
    make_packages,
    partial_leftovers,
    publish_args,
    verify_served,
)

pytestmark = pytest.mark.integration

RUNS = 20
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_packages(tmp_path_factory.mktemp("rpms"), RUNS + 2)


def test_publish_killed_at_random_points_never_breaks_the_served_repository(
    tmp_path: Path, signer: Signer, packages: list[Path]
) -> None:
    seed = int(os.environ.get("FAULT_SEED", "20261125"))
    print(f"kill loop seed: {seed} (FAULT_SEED={seed} replays it)")
    rng = random.Random(seed)  # noqa: S311 (delays and signals, not secrets)
    artifacts, repo = tmp_path / "artifacts", tmp_path / "repo"
    add_build(artifacts, 0, packages[0])
    process = spawn(*publish_args(artifacts, repo, signer, "--lock-timeout", "0"))
    wait_until_started(process)
    started = time.monotonic()
    first = finish(process)
    duration = time.monotonic() - started
    assert first.returncode == 0, first
    live = verify_served(repo, tmp_path / "check")
    assert live == {packages[0].name}
    assert_dnf_gets(repo, tmp_path / "dnf", "fault-pkg-00")

    outcomes: list[str] = []
    for run in range(1, RUNS + 1):
        add_build(artifacts, run, packages[run])
        chosen = rng.choice(SIGNALS)
        # The first run also probes createrepo_c (remembered after): later runs are shorter.
        delay = rng.uniform(0.0, duration * 0.5)
        process = spawn(*publish_args(artifacts, repo, signer, "--lock-timeout", "0"))
        # Random points of the publish itself, not of the interpreter starting up.
        wait_until_started(process)
        time.sleep(delay)
        signalled = running(process)
        if signalled:
            signal_child(process, chosen)
        else:
            # It ended within the delay: publishes run shorter than measured (a busy machine
            # slowed the first), so later delays are drawn within what this one took.
            duration = min(duration, delay)
        result = finish(process, timeout=120)
        outcomes.append(f"{run}: {chosen.name if signalled else '-'} after {delay:.2f} s -> "
                        f"{result.returncode}")  # fmt: skip
        assert_ends_well(result, chosen if signalled else None)
        served = verify_served(repo, tmp_path / "check")
        assert live <= served, f"run {run} lost {sorted(live - served)}"
        assert served <= {p.name for p in packages[: run + 1]}
        if result.returncode == 0:
            assert packages[run].name in served
        live = served
        newest = max(served)
        assert_dnf_gets(repo, tmp_path / "dnf", newest.rsplit("-1.0-", 1)[0])
    print("\n".join(outcomes))
    killed = [line for line in outcomes if "-> 0" not in line]
    assert len(killed) >= RUNS // 2, f"too few runs were interrupted:\n{chr(10).join(outcomes)}"

    last = builder(*publish_args(artifacts, repo, signer, "--lock-timeout", "0"))
    assert last.returncode == 0, last
    assert verify_served(repo, tmp_path / "check") == {p.name for p in packages[: RUNS + 1]}
    assert partial_leftovers(repo) == []
    audit(repo)
    assert_dnf_gets(repo, tmp_path / "dnf", f"fault-pkg-{RUNS:02d}")


@pytest.mark.parametrize(
    ("step", "sent"),
    [
        ("Check the 1 published", signal.SIGKILL),
        ("Sign 1 new", signal.SIGTERM),
        ("Make metadata", signal.SIGINT),
        ("Sign and verify", signal.SIGKILL),
        ("Switch", signal.SIGKILL),
    ],
)
def test_publish_killed_in_each_step_leaves_the_served_repository_as_it_was(
    tmp_path: Path, signer: Signer, packages: list[Path], step: str, sent: signal.Signals
) -> None:
    """The kill loop's points are random; these are the steps one by one."""
    artifacts, repo = tmp_path / "artifacts", tmp_path / "repo"
    add_build(artifacts, 0, packages[0])
    assert builder(*publish_args(artifacts, repo, signer)).returncode == 0
    before = verify_served(repo, tmp_path / "check")
    add_build(artifacts, 1, packages[1])
    process = spawn(*publish_args(artifacts, repo, signer))
    assert process.stderr is not None
    seen = []
    for raw in process.stderr:
        seen.append(raw.decode())
        if seen[-1].strip().startswith(f"▸ {step}"):
            signal_child(process, sent)
            break
    result = finish(process)
    assert result.returncode == (-signal.SIGKILL if sent is signal.SIGKILL else 130), "".join(
        seen
    ) + str(result)
    both = {packages[0].name, packages[1].name}
    served = verify_served(repo, tmp_path / "check")
    # Killed while switching, the switch happened or it did not; anything else, it did not.
    assert served == before or (step == "Switch" and served == both), served
    assert_dnf_gets(repo, tmp_path / "dnf", "fault-pkg-00")
    if served == before:
        assert dnf_download(repo, tmp_path / "dnf-new", "fault-pkg-01").returncode != 0
    after = builder(*publish_args(artifacts, repo, signer, "--lock-timeout", "0"))
    assert after.returncode == 0, after
    assert verify_served(repo, tmp_path / "check") == both
    assert partial_leftovers(repo) == []
    audit(repo)
    assert_dnf_gets(repo, tmp_path / "dnf", "fault-pkg-01")


def wait_until_started(process: subprocess.Popen[bytes]) -> None:
    """Read the child's stderr up to the line saying that the publish began."""
    assert process.stderr is not None
    for raw in process.stderr:
        if raw.decode().startswith("▸ Publish"):
            return
    raise AssertionError("publish ended before it began")


def assert_ends_well(result: Result, sent: signal.Signals | None) -> None:
    """A run ends in success, in a clean interruption, or killed; never blocked or confused."""
    assert result.returncode != 14, f"blocked by a stale lock:\n{result}"
    assert "Traceback" not in result.stderr and "This is a bug" not in result.stderr, result
    if sent is None or result.returncode == 0:
        assert result.returncode == 0, result
    elif result.returncode == -sent and "published" in result.stdout:
        # The signal came after the work was done and reported, while Python shut down.
        assert sent is not signal.SIGKILL or "version" in result.stdout
    elif sent is signal.SIGKILL:
        assert result.returncode == -signal.SIGKILL, result
    else:
        # SIGTERM and SIGINT become a clean stop: exit 130 with one line saying so.
        assert result.returncode == 130, result
        assert "error: " in result.stderr and (
            "interrupted" in result.stderr or "Stopped by signal" in result.stderr
        ), result


def test_two_publishes_at_once_take_turns_or_one_says_it_is_locked(
    tmp_path: Path, signer: Signer, packages: list[Path]
) -> None:
    """One publish holds the lock (stopped with SIGSTOP in the middle of its work, so the
    overlap is certain): a second with --lock-timeout 0 exits 14 naming it, a third waits;
    once the first goes on, both finish and the repository holds everything, verified."""
    artifacts, repo = tmp_path / "artifacts", tmp_path / "repo"
    add_build(artifacts, 0, packages[0])
    assert builder(*publish_args(artifacts, repo, signer)).returncode == 0
    add_build(artifacts, 1, packages[1])
    holder = spawn(*publish_args(artifacts, repo, signer))
    assert holder.stderr is not None
    try:
        seen = []
        for raw in holder.stderr:
            line = raw.decode()
            seen.append(line)
            if line.strip().startswith("▸ Plan"):  # logged under the lock
                signal_child(holder, signal.SIGSTOP)
                break
        assert running(holder), "".join(seen)
        refused = builder(*publish_args(artifacts, repo, signer, "--lock-timeout", "0"))
        assert refused.returncode == 14, refused
        assert f"Another publish (pid {holder.pid})" in refused.stderr, refused
        waiting = spawn(*publish_args(artifacts, repo, signer, "--lock-timeout", "120"))
        time.sleep(1.0)
        assert running(waiting), "the second publish did not wait for the lock"
    finally:
        signal_child(holder, signal.SIGCONT)
    held = finish(holder)
    waited = finish(waiting)
    assert held.returncode == 0, "".join(seen) + str(held)
    assert waited.returncode == 0, waited
    assert f"waiting for another publish (pid {holder.pid})" in waited.stderr
    assert "unchanged" in waited.stdout  # it found the first one's work done
    assert verify_served(repo, tmp_path / "check") == {packages[0].name, packages[1].name}
    assert partial_leftovers(repo) == []
    audit(repo)
    assert_dnf_gets(repo, tmp_path / "dnf", "fault-pkg-01")
