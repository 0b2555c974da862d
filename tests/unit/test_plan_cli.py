from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from builder.builds.plan import plan
from builder.cli import main
from builder.registry import load_registry


def test_plan_is_the_cross_product_in_order_without_duplicates(tmp_path: Path) -> None:
    steps = plan(
        load_registry(), ["1.5", "xcp-1.6", "xcp-1.5"], ["8.4.1", "8.3.16", "8.4.1"], tmp_path
    )
    assert [(s.target.id, s.drbd.version) for s in steps] == [
        ("xcp-1.5", "8.4.1"),
        ("xcp-1.5", "8.3.16"),
        ("xcp-1.6", "8.4.1"),
        ("xcp-1.6", "8.3.16"),
    ]
    assert steps[0].output_dir == tmp_path / "xcp-1.5" / "8.4.1"
    assert steps[0].build_context.name == "centos5-i686"


def test_dry_run_prints_the_plan_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    artifacts = tmp_path / "artifacts"
    code = main(
        ["build", "--xcp", "1.5", "--drbd", "8.4.1", "--dry-run", "--artifacts", str(artifacts)]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "xcp-1.5 / DRBD 8.4.1" in out
    assert "2.6.32.12-0.7.1.xs1.4.90.530.170661xen" in out
    assert "binpkg.iso" in out
    assert str(artifacts / "xcp-1.5" / "8.4.1") in out
    assert not artifacts.exists()


def test_the_default_artifacts_are_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Never beside the installed package: ./artifacts, or $XDB_ARTIFACTS."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("XDB_ARTIFACTS", raising=False)
    assert main(["build", "--xcp", "1.5", "--drbd", "8.4.1", "--dry-run"]) == 0
    assert "output:  artifacts/xcp-1.5/8.4.1\n" in capsys.readouterr().out
    monkeypatch.setenv("XDB_ARTIFACTS", str(tmp_path / "ci"))
    assert main(["build", "--xcp", "1.5", "--drbd", "8.4.1", "--dry-run"]) == 0
    assert f"output:  {tmp_path}/ci/xcp-1.5/8.4.1\n" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing


def test_matrix_is_json_for_ci(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["matrix", "--xcp", "1.5", "1.6", "--drbd", "8.4.1"]) == 0
    matrix = json.loads(capsys.readouterr().out)
    assert [(e["target"], e["drbd"]) for e in matrix["include"]] == [
        ("xcp-1.5", "8.4.1"),
        ("xcp-1.6", "8.4.1"),
    ]


@pytest.mark.parametrize(
    ("argv", "code", "text"),
    [
        (["build", "--xcp", "9.9", "--drbd", "8.4.1", "--dry-run"], 2, "Valid targets: xcp-1.5"),
        (["build", "--xcp", "1.5", "--drbd", "7.0", "--dry-run"], 2, "Valid versions: 8.3.16"),
        (["build", "--xcp", "1.5;reboot", "--drbd", "8.4.1", "--dry-run"], 2, "only letters"),
        (["kernel", "--xcp", "$(id)"], 2, "only letters"),
        (["targets", "--specs", "/nonexistent"], 2, "does not exist"),
    ],
)
def test_errors_are_one_paragraph_with_distinct_exit_codes(
    argv: list[str], code: int, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert text in err
    assert "Traceback" not in err


def test_targets_json_lists_every_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["targets", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    ids = [t["id"] for t in data["targets"]]
    assert {"xcp-1.5", "xcp-1.6", "xenserver-6.2", "xcp-ng-8.2", "xcp-ng-8.3"} <= set(ids)
    assert {"8.3.16", "8.4.0", "8.4.4"} <= {v["version"] for v in data["drbd"]}
    late = next(v for v in data["drbd"] if v["version"] == "8.4.11")
    assert late["kernels"]["below"] == "4.18"
    assert "bioset" in late["kernels"]["why"]


def test_targets_shows_per_pair_what_it_was_built_against(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    found = re.search(r"^  xcp-ng-8\.3 .*?(?=^  \S|^\S)", out, re.M | re.S)
    assert found is not None
    block = found.group(0)
    assert "DRBD that fits: 9.2.18" in block
    assert "9.2.18: built 2026-12-04 through `build` against vanilla Linux 4.19.13" in block
    assert "8.4.11: family 8.4, userland drbd-utils 9.22.0\n      builds against kernels " in out


def test_xenserver_without_url_explains_how_to_get_the_iso(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["kernel", "--xcp", "6.2", "--cache", str(tmp_path)]) == 3
    assert "--iso PATH" in capsys.readouterr().err


def test_an_os_error_is_an_error_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    rpm = tmp_path / "k.rpm"
    rpm.write_bytes(b"not read: the cache fails first")
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "t.yaml").write_text(
        "targets:\n  t:\n    name: T\n    arch: x86_64\n    kernel:\n      package: k\n"
        f"      release: r\n      source:\n        rpm: file://{rpm}\n"
        "    container:\n      family: centos7-x86_64\n    consumer: el7\n"
    )
    code = main(["kernel", "--xcp", "t", "--specs", str(specs), "--cache", str(not_a_dir)])
    err = capsys.readouterr().err
    assert code == 1
    assert "Not a directory" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["build", "--xcp", "1.5", "--drbd", "8.4.1", "--timeout", "0"], "more than 0"),
        (["build", "--xcp", "1.5", "--drbd", "8.4.1", "--timeout", "-5"], "more than 0"),
        (["kernel", "--xcp", "1.6", "--iso", "/x.iso"], "--iso is for targets"),
        (["kernel", "--xcp", "1.5", "--iso", "/x.iso", "--kernel-rpm", "/x.rpm"], "not both"),
    ],
)
def test_inputs_that_would_be_ignored_are_refused(
    argv: list[str], text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main([*argv, "--cache", str(tmp_path)])
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    assert code == 2
    assert text in capsys.readouterr().err


def test_all_stands_for_every_target_once(tmp_path: Path) -> None:
    registry = load_registry()
    steps = plan(registry, ["all", "1.5"], ["8.4.1"], tmp_path)
    assert [s.target.id for s in steps] == list(registry.targets)


def test_a_reader_that_goes_away_is_not_an_error() -> None:
    import subprocess
    import sys

    with subprocess.Popen(
        [sys.executable, "-m", "builder", "matrix", "--xcp", "1.5", "1.6"],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()  # the reader is gone before anything is written
        errors = process.stderr.read()
        code = process.wait(timeout=30)
    assert code == 0
    assert b"error" not in errors


def test_ctrl_c_inside_a_finalizer_stops_the_next_command_quietly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Python cannot raise out of a ``__del__``; the interrupt is kept for the next command."""
    import sys

    from builder import cli, proc

    class Finalized:
        def __del__(self) -> None:
            raise KeyboardInterrupt

    previous = sys.unraisablehook
    sys.unraisablehook = cli._unraisable
    try:
        Finalized()  # collected at once: the interrupt lands in __del__
        with pytest.raises(KeyboardInterrupt):
            proc.run(["true"], echo=False)
    finally:
        sys.unraisablehook = previous
        proc.pending_interrupt.clear()
    assert "Traceback" not in capsys.readouterr().err
    assert proc.run(["true"], echo=False).returncode == 0
