"""The repository's front page: what it holds, that nothing in a name becomes markup, and that
the same published state gives the same bytes."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from builder.publish import frontpage, frontpage_data, provenance
from builder.publish.layout import FRONT_PAGE, KEY_FILE_NAME, served_repo_file
from builder.publish.store import Entry, Store, stable_links
from builder.specs import Consumer
from tests.support.htmlpage import Page

FPR = "8491801EA5E36A6613E10D71C5E71C6396DBB809"
BASE = "https://drbd.example.org/repo"
HOSTILE = '<script>alert(1)</script>"\'><img src=x onerror="alert(2)">&amp;'


def module(row: tuple[str, str, str, str, str, str]) -> frontpage_data.Module:
    """A module package from (target, DRBD, uname -r, kernel-devel, NEVRA, family)."""
    target, drbd, kernel, evr, nvra, family = row
    name, epoch, version, release, arch = frontpage_data.split_nevra(nvra)
    return frontpage_data.Module(
        target=target,
        drbd_version=drbd,
        kernel_release=kernel,
        kernel_evr=evr,
        name=name,
        epoch=epoch,
        version=version,
        release=release,
        arch=arch,
        path=f"{family}/{name}-{version}-{release}.{arch}.rpm",
    )


def sample_page(hostile: str = "") -> frontpage_data.FrontPage:
    """Two families, three targets, four module packages; ``hostile`` goes into every string
    a spec file, a manifest or a package can bring."""
    xen = "2.6.32.12-0.7.1.xs1.4.90.530.170661xen"
    modules = tuple(
        module(row)
        for row in [
            ("xcp-1.5", "8.4.1", xen, "", f"drbd-km-{xen}-0:8.4.1-1.i686", "el5/i386"),
            ("xcp-1.5", "8.3.16", xen, "", f"drbd-km-{xen}-0:8.3.16-1.i686", "el5/i386"),
            (
                "xcp-ng-8.3",
                "9.2.18",
                "4.19.0+1",
                "4.19.19-8.0.29.xcpng8.3",
                "kmod-drbd-0:9.2.18_4.19.0+1-1.0.29.x86_64",
                "el7/x86_64",
            ),
            (
                f"xcp-ng-8.3{hostile}",
                "9.2.18",
                f"4.19.0+1{hostile}",
                "4.19.19-8.0.30.xcpng8.3",
                f"kmod-drbd-0:9.2.18_4.19.0+1-1.0.30{hostile}.x86_64",
                "el7/x86_64",
            ),
        ]
    )
    build = frontpage_data.Build(
        statement="provenance/xcp-ng-8.3/9.2.18/0123456789abcdef.intoto.json",
        target=f"xcp-ng-8.3{hostile}",
        build_name="9.2.18+k4.19.19-8.0.30.xcpng8.3",
        drbd_version="9.2.18",
        kernel_release=f"4.19.0+1{hostile}",
        kernel_evr="4.19.19-8.0.30.xcpng8.3",
        image=f"sha256:{'ab' * 32}{hostile}",
        source_date_epoch=1735689600,
        tool="xcp-drbd-builder 0.1",
        inputs=(
            frontpage_data.Input(
                what="kernel-devel",
                name=f"kernel-devel-4.19.19-8.0.30.xcpng8.3.x86_64{hostile}",
                sha256="cd" * 32,
                trust=f"vendor-signature 34AC2EB6{hostile}",
            ),
            frontpage_data.Input(
                what="DRBD", name="drbd-9.2.18.tar.gz", sha256="ef" * 32, trust="first-use"
            ),
        ),
        packages=(f"kmod-drbd-9.2.18_4.19.0+1-1.0.30{hostile}.x86_64.rpm",),
    )
    return frontpage_data.FrontPage(
        version="20261205T061355.123456Z",
        base_url=BASE,
        fingerprint=FPR,
        families=(
            frontpage_data.Family(
                consumer=Consumer.EL5,
                folders=("el5/i386",),
                repo_file="xcp-drbd-el5.repo",
                repo_text=served_repo_file(BASE, Consumer.EL5),
            ),
            frontpage_data.Family(
                consumer=Consumer.EL7,
                folders=("el7/x86_64",),
                repo_file="xcp-drbd-el7.repo",
                repo_text=served_repo_file(BASE, Consumer.EL7) + f"# {hostile}\n",
            ),
        ),
        targets=(
            frontpage_data.Target(
                id="xcp-1.5", name="XCP 1.5 (beta, build 53341)", family="el5/i386"
            ),
            frontpage_data.Target(id="xcp-ng-8.3", name="XCP-ng 8.3", family="el7/x86_64"),
            frontpage_data.Target(
                id=f"xcp-ng-8.3{hostile}", name=f"XCP-ng {hostile}", family="el7/x86_64"
            ),
        ),
        modules=modules,
        builds=(build,),
    )


def test_hostile_names_stay_text_everywhere() -> None:
    source = frontpage.render(sample_page(HOSTILE))
    page = Page(source)
    # No element or attribute came from a name: only what the page itself writes.
    assert "script" not in page.tags
    assert "img" not in page.tags
    assert not [a for a in page.attributes if a[1].startswith("on")]
    # Each hostile string reads back whole, as text: in the table, the targets, the
    # provenance, the .repo file and a title attribute (quotes did not end it).
    assert page.all_text.count(HOSTILE) >= 8
    assert ("td", "title", f"XCP-ng {HOSTILE}") in page.attributes
    row = next(r for r in page.rows if r[0] == f"xcp-ng-8.3{HOSTILE}")
    assert row == [
        f"xcp-ng-8.3{HOSTILE}",
        "9.2.18",
        f"4.19.0+1{HOSTILE}",
        "4.19.19-8.0.30.xcpng8.3",
        f"kmod-drbd-9.2.18_4.19.0+1-1.0.30{HOSTILE}",
        "x86_64",
    ]
    # A link made from a package name is a path below the page, percent-encoded.
    links = [value for tag, name, value in page.attributes if tag == "a" and name == "href"]
    assert "el7/x86_64/kmod-drbd-9.2.18_4.19.0%2B1-1.0.30%3Cscript%3E" in " ".join(links)
    assert "<script>" not in source and "<img" not in source


def test_the_table_holds_every_module_package_once_and_nothing_else() -> None:
    page = sample_page()
    rows = Page(frontpage.render(page)).rows
    assert sorted(rows) == sorted(
        [
            [m.target, m.drbd_version, m.kernel_release, m.kernel_evr or "not recorded", m.nvr,
             m.arch]
            for m in page.modules
        ]
    )  # fmt: skip
    # Versions sort as versions: 8.3.16 before 8.4.1 within a target.
    assert [r[1] for r in rows if r[0] == "xcp-1.5"] == ["8.3.16", "8.4.1"]


def test_same_state_same_bytes_whatever_the_order_it_comes_in() -> None:
    page = sample_page(HOSTILE)
    shuffled = replace(
        page,
        families=page.families[::-1],
        targets=page.targets[::-1],
        modules=page.modules[::-1],
        builds=page.builds[::-1],
    )
    first = frontpage.render(page)
    assert frontpage.render(page) == first
    assert frontpage.render(shuffled) == first


def test_the_page_links_only_below_itself_and_loads_nothing() -> None:
    page = Page(frontpage.render(sample_page(HOSTILE)))
    for tag, name, value in page.attributes:
        if name in ("href", "src", "action", "srcset", "poster", "data"):
            assert not re.match(r"^[a-z][a-z0-9+.-]*:|^//", value, re.I), (tag, name, value)
    assert not {"script", "img", "iframe", "link", "object", "embed"} & set(page.tags)
    anchors = {value for _, name, value in page.attributes if name == "id"}
    assert "#verify" in [value for _, name, value in page.attributes if name == "href"]
    assert "verify" in anchors
    # The commands to run on dom0 name the served URL in full; the fingerprint reads as gpg's.
    text = page.all_text
    assert f"curl -fsS -o /etc/yum.repos.d/xcp-drbd-builder.repo {BASE}/xcp-drbd-el5.repo" in text
    assert "8491 801E A5E3 6A66 13E1  0D71 C5E7 1C63 96DB B809" in text
    assert "print it unspaced: 8491801EA5E36A6613E10D71C5E71C6396DBB809" in text
    assert "python -m builder verify --repo DIR" in text
    assert "import gpgme" in text  # el5's yum needs pygpgme for repo_gpgcheck=1


def statement(store_root: Path, manifest: dict[str, object], files: list[str]) -> str:
    body = provenance.statement(
        json.dumps(manifest).encode(), [(name, "0" * 64) for name in files], FPR
    )
    relative = provenance.relative_path(str(manifest["target"]), "build", body)
    (store_root / relative).parent.mkdir(parents=True, exist_ok=True)
    (store_root / relative).write_bytes(body)
    return relative


def test_collect_reads_each_build_from_its_statement(tmp_path: Path) -> None:
    manifest = {
        "target": "xcp-ng-8.3",
        "drbd_version": "9.2.18",
        "build_name": "9.2.18+k4.19.19-8.0.30.xcpng8.3",
        "kernel_release": "4.19.0+1",
        "kernel_evr": "4.19.19-8.0.30.xcpng8.3",
        "image": "sha256:" + "ab" * 32,
        "source_date_epoch": 1735689600,
        "inputs": {
            "tool": "xcp-drbd-builder 0.1",
            "kernel_rpm": {
                "nvra": "kernel-devel-4.19.19-8.0.30.xcpng8.3.x86_64",
                "sha256": "c" * 64,
            },
            "drbd_source": {"file": "drbd-9.2.18.tar.gz", "sha256": "d" * 64},
            "utils_source": None,
        },
        "trust": {"kernel_rpm": "vendor-signature 34AC", "drbd_source": "first-use"},
    }
    kmod = "kmod-drbd-9.2.18_4.19.0+1-1.0.30.x86_64.rpm"
    utils = "drbd-utils-9.22.0-1.x86_64.rpm"
    relative = statement(tmp_path, manifest, [kmod, utils])
    entries = [
        Entry(f"el7/x86_64/{kmod}", "kmod-drbd-0:9.2.18_4.19.0+1-1.0.30.x86_64", "1" * 64,
              "2" * 64, 1, relative),
        Entry(f"el7/x86_64/{utils}", "drbd-utils-0:9.22.0-1.x86_64", "3" * 64, "4" * 64, 1,
              relative),
        # Published before provenance: still in the table, its build not recorded.
        Entry("el5/i386/drbd-km-2.6.32xen-8.4.1-1.i686.rpm", "drbd-km-2.6.32xen-0:8.4.1-1.i686",
              "5" * 64, "6" * 64, 1, ""),
        # A statement that is gone: the page says so instead of failing the publish.
        Entry("el7/x86_64/kmod-drbd-9.2.18_4.19.0+1-1.0.29.x86_64.rpm",
              "kmod-drbd-0:9.2.18_4.19.0+1-1.0.29.x86_64", "7" * 64, "8" * 64, 1,
              "provenance/xcp-ng-8.3/build/ffffffffffffffff.intoto.json"),
    ]  # fmt: skip
    families = {"el7/x86_64": Consumer.EL7, "el5/i386": Consumer.EL5}
    page = frontpage_data.collect(
        entries=entries,
        store_root=tmp_path,
        families=families,
        repo_files={c: served_repo_file(BASE, c) for c in families.values()},
        fingerprint=FPR,
        base_url=BASE,
        version="20261205T061355.123456Z",
        target_names={"xcp-ng-8.3": "XCP-ng 8.3"},
    )
    assert [t.name for t in page.targets] == ["XCP-ng 8.3"]
    assert sorted((m.target, m.kernel_evr, m.nvr) for m in page.modules) == [
        ("", "", "drbd-km-2.6.32xen-8.4.1-1"),
        ("", "", "kmod-drbd-9.2.18_4.19.0+1-1.0.29"),
        ("xcp-ng-8.3", "4.19.19-8.0.30.xcpng8.3", "kmod-drbd-9.2.18_4.19.0+1-1.0.30"),
    ]
    read = next(b for b in page.builds if not b.problem)
    assert read.packages == (kmod, utils)
    assert [(i.what, i.trust) for i in read.inputs] == [
        ("kernel-devel", "vendor-signature 34AC"),
        ("DRBD", "first-use"),
    ]
    assert read.weak_trust
    lost = next(b for b in page.builds if b.problem)
    assert "cannot be read" in lost.problem
    text = Page(frontpage.render(page)).all_text
    assert "2025-01-01 00:00 UTC" in text  # SOURCE_DATE_EPOCH, the packages' build time
    assert "first-use (!)" in text
    assert "Published before provenance was recorded" in text
    assert "el5/i386/drbd-km-2.6.32xen-8.4.1-1.i686.rpm" in text


def test_split_nevra_and_natural_order() -> None:
    assert frontpage_data.split_nevra("kmod-drbd-0:9.2.18_4.19.0+1-1.0.30.x86_64") == (
        "kmod-drbd", "", "9.2.18_4.19.0+1", "1.0.30", "x86_64",
    )  # fmt: skip
    assert frontpage_data.split_nevra("drbd-utils-2:9.22.0-1.el7.x86_64")[1] == "2"
    versions = ["8.4.10", "8.4.9", "9.2.18", "8.3.16"]
    assert sorted(versions, key=frontpage.natural) == ["8.3.16", "8.4.9", "8.4.10", "9.2.18"]
    assert frontpage_data.is_module_package("drbd-km-2.6.32.43_0.4.1.xs1.6.10.734.170748xen")
    assert frontpage_data.is_module_package("kmod-drbd")
    assert not frontpage_data.is_module_package("drbd-utils")


def test_a_page_of_the_users_own_at_the_root_is_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    families = {"el7/x86_64": Consumer.EL7}
    packages = Store(tmp_path)
    packages.family_dir("el7/x86_64").mkdir(parents=True)
    stable_links(tmp_path, packages, families)
    assert (tmp_path / FRONT_PAGE).readlink() == Path("current") / FRONT_PAGE
    assert (tmp_path / KEY_FILE_NAME).readlink() == Path("current") / KEY_FILE_NAME

    (tmp_path / FRONT_PAGE).unlink()
    (tmp_path / FRONT_PAGE).write_text("<p>ours</p>")
    stable_links(tmp_path, packages, families)
    assert (tmp_path / FRONT_PAGE).read_text() == "<p>ours</p>"
    assert f"{tmp_path / FRONT_PAGE} is not the link publish makes" in capsys.readouterr().err
