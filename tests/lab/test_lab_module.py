"""Our module, built by the tool, published, installed the dom0 way, loaded by a real kernel.

The packages are :mod:`tests.lab.published`'s: the DRBD 9-shaped test source (its module only
has to load and say which it is) or a real DRBD 9 release, with drbd-utils. One guest, xcp1,
boots the root with what the dom0 brings (the vendor's kernel package and base, stand-ins
that provide what our packages require of them; yum, which is Debian's dnf, curl and gpg) and
reaches the repository through QEMU's user network, whose only way out leads to 127.0.0.1.
There the runbook's own ``install`` step runs: it fetches the key and shows its fingerprint,
imports it, installs the ``.repo`` file and the packages with yum (gpgcheck=1,
repo_gpgcheck=1), whose scriptlets run depmod in the running system, checks the resource file
with the installed drbdadm and loads the module.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab import drbdlab, guest, vm
from tests.lab.labpool import HOSTS
from tests.lab.published import REAL_SOURCE, VERSION

pytestmark = [pytest.mark.lab, pytest.mark.docker]


@pytest.fixture(scope="module")
def booted(
    installed_image: guest.GuestImage,
    published: tuple[Path, str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[vm.Guest]:
    _rendered, url, _build = published
    work = tmp_path_factory.mktemp("module-guest")
    # xcp1 of the lab's pair, alone: its two links lead nowhere, its third to the repository.
    ports = vm.free_udp_ports(4)
    links = {"mgmt": (ports[0], ports[1]), "repl": (ports[2], ports[3])}
    host = vm.Guest(
        HOSTS[0], installed_image, work / "xcp1", links, repository=urllib.parse.urlsplit(url).port
    )
    host.accel = vm.accelerator(installed_image, work / "kvm-probe")
    host.prepare(installed_image.root)
    try:
        host.start()
        yield host
    finally:
        host.stop()


def test_the_install_step_installs_from_the_published_repository_and_loads_our_module(
    booted: vm.Guest, published: tuple[Path, str, Path], lab_output: Path
) -> None:
    rendered, _url, _build = published
    drbdlab.deploy_files(booted, rendered)
    install = drbdlab.runbook(booted, "install", timeout=1200)
    (lab_output / "module-install-step.log").write_text(install.stdout + install.stderr)
    install.check("xcp1: the runbook's install step")
    # The key came from the repository, its fingerprint was shown to compare, and that key is
    # the one rpm now trusts (rpm names it by the fingerprint's last eight digits).
    shown = re.findall(r"^ +([0-9A-F]{40})$", install.stdout, re.M)
    assert shown, install.stdout
    imported = booted.ok("rpm -q gpg-pubkey --qf '%{VERSION}\\n'").split()
    assert [fingerprint[-8:].lower() for fingerprint in shown] == imported
    release = booted.ok("uname -r").strip()
    ours = f"/lib/modules/{release}/extra/drbd/drbd.ko"
    # The package put it there and its scriptlet indexed it for its kernel.
    owner = booted.ok(f"rpm -qf {ours}").strip()
    assert owner.startswith(f"kmod-drbd-{VERSION}_"), owner
    assert drbdlab.load_module(booted, "drbd") == ours
    log = drbdlab.kernel_log(booted)
    (lab_output / f"module-{VERSION}-kernel.log").write_text(log)
    if REAL_SOURCE:
        # DRBD's own greeting, with the release it was built from.
        assert f"drbd: initialized. Version: {VERSION} " in log, log[-3000:]
    else:
        assert "drbd: test module loaded" in log
    # Its depmod.d lines put it first, under XCP-ng 8.3's search order.
    assert booted.ok("cat /etc/depmod.d/00-xcpng-override.conf").strip() == "search override"
    assert booted.ok("rpm -qf /etc/depmod.d/drbd.conf").strip() == owner
    overrides = booted.ok("cat /etc/depmod.d/drbd.conf")
    assert re.search(rf"^override\s+drbd\s+{re.escape(release)}\s+extra/drbd$", overrides, re.M)
    # Not the kernel's own DRBD 8.4, whose file is still there.
    assert booted.ok(f"test -e /lib/modules/{release}/kernel/drivers/block/drbd/drbd.ko; echo $?")
    assert "drbd: initialized. Version: 8.4" not in log
    assert booted.ok("grep -c '^drbd ' /proc/modules").strip() == "1"
    # The userland the module requires came from the same repository.
    assert booted.ok("rpm -q --qf '%{NAME}\\n' drbd-utils").strip() == "drbd-utils"
