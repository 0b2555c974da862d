"""Publishing logic without external tools: artifacts, planning, locking, pointers, CLI."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from builder import cli
from builder.artifacts.manifest import scan
from builder.commands import publish
from builder.errors import CommandError, ConfigError, InputError, PublishError
from builder.files import sha256_file
from builder.publish import changes, store
from builder.publish.layout import family_path, served_repo_file
from builder.registry import load_registry
from builder.specs import Consumer

FPR = "8491801EA5E36A6613E10D71C5E71C6396DBB809"


def make_build(
    artifacts: Path, target: str, version: str, files: dict[str, bytes], **manifest: object
) -> Path:
    directory = artifacts / target / version
    directory.mkdir(parents=True)
    outputs = []
    for name, content in files.items():
        (directory / name).write_bytes(content)
        outputs.append({"file": name, "sha256": sha256_file(directory / name)})
    data = {"target": target, "drbd_version": version, "outputs": outputs, **manifest}
    (directory / "manifest.json").write_text(json.dumps(data))
    return directory


def fake_nevras(files: Sequence[Path]) -> dict[Path, str]:
    """NEVRA from the file name, as rpm would read it from these test names."""
    return {f: f.name.removesuffix(".rpm") for f in files}


def test_scan_skips_unfinished_builds_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_build(tmp_path, "xcp-1.5", "8.4.1", {"drbd-8.4.1-1.i686.rpm": b"a"})
    (tmp_path / "xcp-1.5" / "8.4.2.partial").mkdir()
    (tmp_path / "xcp-1.6" / "8.4.1").mkdir(parents=True)
    builds = scan(tmp_path, load_registry)
    assert [b.directory.name for b in builds] == ["8.4.1"]
    err = capsys.readouterr().err
    assert "skipping xcp-1.5/8.4.2.partial: an unfinished build" in err
    assert "skipping xcp-1.6/8.4.1: no manifest.json" in err


def test_scan_skips_build_directories_named_unlike_their_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    finished = make_build(tmp_path, "xcp-1.5", "8.4.1", {"drbd-8.4.1-2.i686.rpm": b"new"})
    # What the build stage leaves when interrupted between its two renames, and a hand copy.
    left = make_build(tmp_path, "xcp-1.5", "8.4.1.old-4242", {"drbd-8.4.1-1.i686.rpm": b"old"})
    copied = make_build(tmp_path, "xcp-1.5", "8.4.1 copy", {"drbd-8.4.1-1.i686.rpm": b"old"})
    for directory in (left, copied):
        data = json.loads((directory / "manifest.json").read_text())
        data["drbd_version"] = "8.4.1"
        (directory / "manifest.json").write_text(json.dumps(data))
    builds = scan(tmp_path, load_registry)
    assert [b.directory for b in builds] == [finished]
    assert [b.directory / name for b in builds for name, _ in b.outputs] == [
        finished / "drbd-8.4.1-2.i686.rpm"
    ]
    err = capsys.readouterr().err
    assert "skipping xcp-1.5/8.4.1.old-4242: its manifest.json is for the build 8.4.1" in err
    assert "skipping xcp-1.5/8.4.1 copy: its manifest.json is for the build 8.4.1" in err


def test_consumer_comes_from_manifest_or_the_target_registry(tmp_path: Path) -> None:
    make_build(tmp_path, "xcp-1.5", "8.4.1", {"a-1-1.i686.rpm": b"a"})
    make_build(
        tmp_path, "custom", "9.0", {"b-1-1.x86_64.rpm": b"b"}, consumer="el7", basearch="x86_64"
    )
    builds = {b.target: b for b in scan(tmp_path, load_registry)}
    families = {t: family_path(b.consumer, b.basearch) for t, b in builds.items()}
    assert families["xcp-1.5"] == "el5/i386"
    assert families["custom"] == "el7/x86_64"


def test_unknown_target_without_consumer_names_the_target(tmp_path: Path) -> None:
    make_build(tmp_path, "mystery", "9.0", {"b-1-1.x86_64.rpm": b"b"})
    with pytest.raises(ConfigError, match="Unknown target 'mystery'"):
        scan(tmp_path, load_registry)


def test_bad_manifests_are_input_errors(tmp_path: Path) -> None:
    directory = make_build(tmp_path, "xcp-1.5", "8.4.1", {"a-1-1.i686.rpm": b"a"})
    (directory / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        scan(tmp_path, load_registry)
    (directory / "manifest.json").write_text(
        json.dumps({"consumer": "el6", "basearch": "i386", "outputs": []})
    )
    with pytest.raises(InputError, match="consumer 'el6' is not one of"):
        scan(tmp_path, load_registry)
    (directory / "manifest.json").write_text(
        json.dumps({"target": "xcp-1.5", "outputs": [{"file": "../x.rpm", "sha256": "0" * 64}]})
    )
    with pytest.raises(InputError, match="not a plain name"):
        [build.outputs for build in scan(tmp_path, load_registry)]  # checked when first used


def plan(artifacts: Path, previous: changes.Published | None, key: str = FPR) -> changes.Changes:
    builds = scan(artifacts, load_registry)
    return changes.changes_of(builds, previous, key, nevras=fake_nevras)


def published_after(result: changes.Changes, key: str = FPR) -> changes.Published:
    """What the repository holds once ``result`` went live (signed digests made up)."""
    added = [
        store.Entry(i.path, i.nevra, i.source_sha256, "f" * 64, 1, "") for i in result.incoming
    ]
    return changes.Published(key=key, packages=[*result.published, *added])


def test_plan_reuses_unchanged_packages_and_adds_new_ones(tmp_path: Path) -> None:
    make_build(tmp_path, "xcp-1.5", "8.4.1", {"a-1-1.i686.rpm": b"a", "b-1-1.i686.rpm": b"b"})
    first = plan(tmp_path, None)
    assert [i.path for i in first.incoming] == [
        "el5/i386/a-1-1.i686.rpm",
        "el5/i386/b-1-1.i686.rpm",
    ]
    again = plan(tmp_path, published_after(first))
    assert again.incoming == ()
    make_build(tmp_path, "xcp-1.5", "8.4.2", {"c-1-1.i686.rpm": b"c"})
    third = plan(tmp_path, published_after(first))
    assert [i.path for i in third.incoming] == ["el5/i386/c-1-1.i686.rpm"]
    assert third.total == 3
    assert third.families == {"el5/i386": Consumer.EL5}


def test_plan_reads_only_new_outputs(tmp_path: Path) -> None:
    directory = make_build(tmp_path, "xcp-1.5", "8.4.1", {"a-1-1.i686.rpm": b"a"})
    first = published_after(plan(tmp_path, None))
    make_build(tmp_path, "xcp-1.5", "8.4.2", {"c-1-1.i686.rpm": b"c"})
    hashed: list[str] = []

    def digest(path: Path) -> str:
        hashed.append(path.name)
        return sha256_file(path)

    (directory / "a-1-1.i686.rpm").unlink()  # published already: the artifact is not needed
    builds = scan(tmp_path, load_registry)
    result = changes.changes_of(builds, first, FPR, nevras=fake_nevras, digest=digest)
    assert hashed == ["c-1-1.i686.rpm"]
    assert [i.path for i in result.incoming] == ["el5/i386/c-1-1.i686.rpm"]


def test_plan_refuses_same_file_with_other_content(tmp_path: Path) -> None:
    make_build(tmp_path, "xcp-1.5", "8.4.1", {"a-1-1.i686.rpm": b"a"})
    first = plan(tmp_path, None)
    (tmp_path / "xcp-1.5" / "8.4.1").rename(tmp_path / "old")
    make_build(tmp_path, "xcp-1.5", "8.4.1", {"a-1-1.i686.rpm": b"changed"})
    with pytest.raises(PublishError, match="already published with different content"):
        plan(tmp_path, published_after(first))


def test_plan_refuses_same_nevra_under_another_file_name(tmp_path: Path) -> None:
    previous = changes.Published(
        key=FPR,
        packages=[store.Entry("el5/i386/x.rpm", "a-1-1.i686", "0" * 64, "1" * 64, 1, "")],
    )
    make_build(tmp_path, "xcp-1.5", "8.4.1", {"a-1-1.i686.rpm": b"a"})
    with pytest.raises(PublishError, match=r"already holds as el5/i386/x\.rpm"):
        plan(tmp_path, previous)


def test_plan_refuses_two_inputs_with_one_name_and_two_contents(tmp_path: Path) -> None:
    make_build(tmp_path, "xcp-1.5", "8.4.1", {"drbd-8-1.i686.rpm": b"one"})
    make_build(tmp_path, "xcp-1.6", "8.4.1", {"drbd-8-1.i686.rpm": b"two"})
    with pytest.raises(PublishError, match="same name but different content"):
        plan(tmp_path, None)


def test_plan_checks_the_manifest_hash(tmp_path: Path) -> None:
    directory = make_build(tmp_path, "xcp-1.5", "8.4.1", {"a-1-1.i686.rpm": b"a"})
    (directory / "a-1-1.i686.rpm").write_bytes(b"tampered")
    with pytest.raises(InputError, match="but its manifest records"):
        plan(tmp_path, None)


def test_plan_refuses_to_mix_keys(tmp_path: Path) -> None:
    make_build(tmp_path, "xcp-1.5", "8.4.1", {"a-1-1.i686.rpm": b"a"})
    first = plan(tmp_path, None)
    with pytest.raises(PublishError, match="refusing to mix"):
        plan(tmp_path, published_after(first), key="0" * 40)


def test_state_round_trips_and_rejects_garbage(tmp_path: Path) -> None:
    state = store.State(key=FPR, index=store.Mark(length=10, sha256="1" * 64, count=2))
    path = tmp_path / "state.json"
    path.write_text(state.to_json())
    assert store.State.from_file(path) == state
    path.write_text('{"format": 99}')
    with pytest.raises(PublishError, match="unreadable"):
        store.State.from_file(path)


def test_repo_file_checks_package_and_metadata_signatures() -> None:
    text = served_repo_file("https://example.org/drbd/", Consumer.EL5)
    assert text.splitlines() == [
        "[xcp-drbd-builder]",
        "name=DRBD for Xen dom0 (el5, $basearch)",
        "baseurl=https://example.org/drbd/el5/$basearch/",
        "enabled=1",
        "gpgcheck=1",
        "repo_gpgcheck=1",
        "gpgkey=https://example.org/drbd/RPM-GPG-KEY-xcp-drbd-builder",
        "metadata_expire=1h",
    ]


def test_prune_keeps_the_newest_and_the_current(tmp_path: Path) -> None:
    folder = tmp_path / "versions"
    for name in ("20260101T000000Z", "20260102T000000Z", "20260103T000000Z", "20260104T000000Z"):
        (folder / name).mkdir(parents=True)
    os.symlink("versions/20260101T000000Z", tmp_path / "current")
    removed = store.prune_versions(tmp_path, keep=2)
    assert [p.name for p in removed] == ["20260102T000000Z"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "20260101T000000Z",
        "20260103T000000Z",
        "20260104T000000Z",
    ]


def test_cli_reads_ci_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDB_ARTIFACTS", str(tmp_path / "a"))
    monkeypatch.setenv("XDB_REPO", str(tmp_path / "r"))
    monkeypatch.setenv("XDB_SIGNING_KEY", FPR)
    monkeypatch.setenv("GNUPGHOME", str(tmp_path / "g"))
    args = cli.build_parser().parse_args(["publish"])
    options = publish.options_from_args(args)
    assert options.artifacts == tmp_path / "a"
    assert options.repo == tmp_path / "r"
    assert options.key == FPR
    assert options.gnupg_home == tmp_path / "g"


def test_cli_names_the_missing_option(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("XDB_ARTIFACTS", "XDB_REPO", "XDB_SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["publish", "--repo", "/tmp/r", "--key", FPR]) == 2
    assert "--artifacts is required" in capsys.readouterr().err
    assert cli.main(["publish", "--print-repo-file", "http://h/"]) == 2
    assert "needs --consumer" in capsys.readouterr().err
    assert cli.main(["publish", "--print-repo-file", "http://h/", "--consumer", "el7"]) == 0
    assert "baseurl=http://h/el7/$basearch/" in capsys.readouterr().out


def test_missing_rpm_program_is_a_command_error_not_a_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "drbd-8.4.1-1.i686.rpm"
    package.write_bytes(b"not looked at")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(CommandError, match="'rpm' is not installed") as raised:
        changes.query_nevras([package])
    assert raised.value.exit_code == 7
