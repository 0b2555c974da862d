"""The front page through the real ``publish`` (rpmsign, createrepo_c, gpg), read at the
repository URL by a real browser: headless chromium, with no network but 127.0.0.1.

Screenshots at a phone's width and a desktop's are kept under ``$XDB_TEST_OUTPUT`` (default
``test-output/`` at the repository root), named after the test.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.publish import layout
from tests.integration import test_publish
from tests.integration.test_publish import ROOT, Keys, run_publish
from tests.rpmfactory import build_rpms, write_build
from tests.support.htmlpage import Page
from tests.support.http import serve_directory

pytestmark = pytest.mark.integration

keys = test_publish.keys  # the signing keys publish's tests make, as a fixture of this module

OUTPUT = Path(os.environ.get("XDB_TEST_OUTPUT") or ROOT / "test-output")
TITLE = f"DRBD for Xen dom0: {layout.REPO_ID}"
# What a hostile spec file or manifest would like to run: each would change the title.
SPEC_NAME = "XCP-ng <script>document.title='pwned'</script> \"lab\" & 'co'"
KERNEL = '4.19.0+1"><img src=x onerror="document.title=\'pwned too\'">'
XEN = "2.6.32.12-0.7.1.xs1.4.90.530.170661xen"


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        reason = "chromium is not installed: apt-get install chromium (the Debian package)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI installs it, so this is a failure, not a skip")
        pytest.skip(reason)
    return found


@dataclass(frozen=True)
class Browser:
    program: str
    profile: Path

    def run(self, url: str, *options: str) -> subprocess.CompletedProcess[str]:
        """One headless chromium run on ``url``: a throwaway profile, no name resolves (the
        page must load nothing from elsewhere), a bounded time."""
        command = [
            self.program,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={self.profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            "--no-proxy-server",
            "--no-first-run",
            "--disable-extensions",
            "--disable-sync",
            "--disable-background-networking",
            "--disable-component-update",
            "--hide-scrollbars",
            *options,
            url,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
        return result

    def dom(self, url: str, width: int) -> str:
        return self.run(url, f"--window-size={width},900", "--dump-dom").stdout

    def screenshot(self, url: str, path: Path, width: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        self.run(url, f"--window-size={width},900", f"--screenshot={path}")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"


def make_build(
    artifacts: Path,
    work: Path,
    target: str,
    build_name: str,
    packages: list[tuple[list[str], str, str, str]],
    **recorded: object,
) -> None:
    """A finished build whose manifest records what a real one does (kernel, image, inputs,
    trust); ``packages`` are (names, version, release, arch) of the RPMs it made."""
    rpms = [
        rpm
        for names, version, release, arch in packages
        for rpm in build_rpms(work, names, version=version, release=release, arch=arch)
    ]
    consumer, basearch = ("el5", "i386") if packages[0][3] == "i686" else ("el7", "x86_64")
    directory = write_build(
        artifacts, target, build_name, rpms, consumer=consumer, basearch=basearch
    )
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest.update(
        {
            "build_name": build_name,
            "drbd_version": build_name.split("+", 1)[0],
            "image": "sha256:" + "4f" * 32,
            "source_date_epoch": 1735689600,
            "inputs": {
                "tool": "xcp-drbd-builder test",
                "kernel_source": {"origin": "https://vendor.example/base/", "sha256": "a" * 64},
                "kernel_rpm": {"nvra": "kernel-devel.x86_64", "sha256": "b" * 64},
                "drbd_source": {"file": "drbd.tar.gz", "sha256": "c" * 64},
            },
            "trust": {"kernel_rpm": "vendor-signature 34AC2EB6", "drbd_source": "first-use"},
            **recorded,
        }
    )
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1))


def hostile_specs(base: Path) -> Path:
    """A spec directory with one more target, whose name a browser must show as text."""
    specs = base / "specs"
    specs.mkdir()
    target = {
        "name": SPEC_NAME,
        "arch": "x86_64",
        "basearch": "x86_64",
        "kernel": {
            "package": "kernel-devel",
            "release": "4.19.0+1",
            "source": {"rpm": "https://vendor.example/kernel-devel-4.19.19-8.0.31.x86_64.rpm"},
        },
        "container": {"family": "centos7-x86_64"},
        "consumer": "el7",
    }
    (specs / "targets.yaml").write_text(json.dumps({"targets": {"lab-8.3": target}}))
    return specs


def test_a_browser_at_the_repository_url_sees_every_module_and_no_injected_markup(
    chromium: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    keys: Keys,
) -> None:
    artifacts, work, repo = tmp_path / "artifacts", tmp_path / "rpms", tmp_path / "repo"
    el5 = ([f"drbd-km-{XEN}", "drbd"], "8.4.1", "1", "i686")
    make_build(artifacts, work, "xcp-1.5", "8.4.1", [el5])
    make_build(
        artifacts, work, "xcp-ng-8.3", "9.2.18+k4.19.19-8.0.29.xcpng8.3",
        [(["kmod-drbd"], "9.2.18_4.19.0+1", "1.0.29", "x86_64"),
         (["drbd-utils"], "9.22.0", "1", "x86_64")],
        kernel_release="4.19.0+1", kernel_evr="4.19.19-8.0.29.xcpng8.3",
    )  # fmt: skip
    browser = Browser(chromium, tmp_path / "chromium-profile")
    with serve_directory(repo) as url:
        first = run_publish(artifacts, repo, keys, "--base-url", url)
        assert first.returncode == 0, first.stderr
        page = repo / layout.FRONT_PAGE
        assert os.readlink(page) == f"current/{layout.FRONT_PAGE}"
        before = page.resolve()
        old_page = before.read_bytes()

        # A second publish: another kernel for xcp-ng-8.3, and a target a spec file names
        # with markup in it, built for a kernel release a manifest records with markup.
        make_build(
            artifacts, work, "xcp-ng-8.3", "9.2.18+k4.19.19-8.0.30.xcpng8.3",
            [(["kmod-drbd"], "9.2.18_4.19.0+1", "1.0.30", "x86_64")],
            kernel_release="4.19.0+1", kernel_evr="4.19.19-8.0.30.xcpng8.3",
        )  # fmt: skip
        make_build(
            artifacts, work, "lab-8.3", "9.2.18",
            [(["kmod-drbd"], "9.2.18_4.19.0+1", "1.0.31.lab", "x86_64")],
            kernel_release=KERNEL, kernel_evr="4.19.19-8.0.31", image=f"<script>{KERNEL}",
        )  # fmt: skip
        specs = hostile_specs(tmp_path)
        second = run_publish(artifacts, repo, keys, "--base-url", url, "--specs", str(specs))
        assert second.returncode == 0, second.stderr
        # The page moved with the switch; the old version's page is as it was.
        assert page.resolve() != before
        assert before.read_bytes() == old_page

        dom = Page(browser.dom(f"{url}/", 1280))  # the repository URL itself
        name = request.node.name
        browser.screenshot(f"{url}/", OUTPUT / f"{name}-phone.png", PHONE_WIDTH)
        browser.screenshot(f"{url}/", OUTPUT / f"{name}-desktop.png", 1280)
    with serve_directory(phone_layout_probe(page, tmp_path / "probe")) as probe:
        width = Page(browser.dom(f"{probe}/frame.html", 1280)).title

    # No script ran: neither the one in the spec file's name nor the onerror in the kernel.
    assert dom.title == TITLE
    assert "script" not in dom.tags
    assert "img" not in dom.tags
    assert SPEC_NAME in dom.all_text
    assert KERNEL in dom.all_text

    kmod = "kmod-drbd-9.2.18_4.19.0+1"
    assert sorted(dom.rows) == [
        ["lab-8.3", "9.2.18", KERNEL, "4.19.19-8.0.31", f"{kmod}-1.0.31.lab", "x86_64"],
        ["xcp-1.5", "8.4.1", XEN, "not recorded", f"drbd-km-{XEN}-8.4.1-1", "i686"],
        ["xcp-ng-8.3", "9.2.18", "4.19.0+1", "4.19.19-8.0.29.xcpng8.3", f"{kmod}-1.0.29", "x86_64"],
        ["xcp-ng-8.3", "9.2.18", "4.19.0+1", "4.19.19-8.0.30.xcpng8.3", f"{kmod}-1.0.30", "x86_64"],
    ]

    # Every link leads into the repository, to a file that is there; nothing is loaded.
    for tag, attribute, value in dom.attributes:
        if attribute in ("src", "srcset", "action", "poster", "data"):
            pytest.fail(f"the page loads {value} ({tag} {attribute})")
        if attribute == "href" and not value.startswith("#"):
            assert not re.match(r"^[a-z][a-z0-9+.-]*:|^//", value, re.I), value
            assert (repo / urllib.parse.unquote(value)).is_file(), f"{value} leads nowhere"
        for found in re.findall(r"https?://[^\s\"'<>]+", value):
            assert found.startswith(url), f"{tag} {attribute} refers to {found}"
    # (URLs in the text, such as a kernel source's origin, are what a build recorded.)
    assert "url(" not in dom.all_text and "@import" not in dom.all_text  # the inline style

    # The page's command that shows the key's fingerprint prints it, with this machine's
    # GnuPG 2.2, exactly as the page writes it unspaced.
    commands = {
        html.unescape(line).split("   #")[0]
        for line in page.read_text().splitlines()
        if line.startswith("gpg --quiet")
    }
    assert len(commands) == 1, commands
    home = tmp_path / "dom0-gnupg"
    home.mkdir(mode=0o700)
    command = commands.pop().replace(layout.INSTALLED_KEY_FILE, str(repo / layout.KEY_FILE_NAME))
    shown = subprocess.run(
        ["bash", "-c", command], env={**os.environ, "GNUPGHOME": str(home)},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert shown.stdout == f"{keys.fingerprint}\n", shown
    assert f"print it unspaced: {keys.fingerprint}" in dom.all_text

    # At a phone's width the page does not scroll sideways: the table scrolls in its box.
    scroll_width, client_width = (int(n) for n in width.split("x"))
    assert 300 < client_width <= PHONE_WIDTH, width
    assert scroll_width <= client_width, width


PHONE_WIDTH = 412
FRAME = f"""<!DOCTYPE html>
<html><head><title>probe</title></head><body style="margin:0">
<iframe id="page" src="index.html" style="width:{PHONE_WIDTH}px;height:900px;border:0"></iframe>
<script>
window.addEventListener("load", () => {{
  const page = document.getElementById("page").contentDocument.documentElement;
  document.title = page.scrollWidth + "x" + page.clientWidth;
}});
</script></body></html>
"""


def phone_layout_probe(page: Path, directory: Path) -> Path:
    """The page in a frame as wide as a phone, beside a copy of it, so that the frame's
    script (same origin) can read the page's layout: a headless window is never narrower
    than 500 pixels, and the page itself runs no script."""
    directory.mkdir()
    shutil.copyfile(page, directory / "index.html")
    (directory / "frame.html").write_text(FRAME)
    return directory
