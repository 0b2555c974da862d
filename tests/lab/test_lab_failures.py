"""The lab's own failures are clear: a guest that never boots, a module that does not load, a
lost channel, Ctrl-C.  Each leaves no QEMU process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab import drbdlab, vm
from tests.lab.guest import GuestImage
from tests.lab.labpool import HOSTS

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]


def test_a_guest_that_never_boots_fails_with_its_console_and_both_vms_gone(
    lab_image: GuestImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blank = tmp_path / "blank.ext4"
    with blank.open("wb") as disk:
        disk.truncate(64 * drbdlab.MIB)  # no file system: the initramfs cannot mount it
    broken = GuestImage(lab_image.kernel, lab_image.initrd, blank, lab_image.release)
    monkeypatch.setattr(vm, "BOOT_TIMEOUT", 45.0)
    directory = tmp_path / "pair"
    with (
        pytest.raises(vm.LabError) as failed,
        vm.running_pair(broken, directory, HOSTS),
    ):
        pytest.fail("the pair came up without a root file system")
    message = str(failed.value)
    assert "timed out after 45 s waiting for the guest to boot" in message
    assert "last console lines of xcp1" in message
    assert "lab initramfs: cannot mount /dev/vda" in message
    assert vm.qemu_processes_of(directory) == []


SIGNATURE_MARKER = b"~Module signature appended~\n"


def unsigned(module: bytes) -> bytes:
    """The module without Debian's appended signature (an altered signed module is refused
    for its signature, before its version magic is read)."""
    if not module.endswith(SIGNATURE_MARKER):
        return module
    # struct module_signature: 12 bytes before the marker, the signature's length last.
    end = len(module) - len(SIGNATURE_MARKER)
    length = int.from_bytes(module[end - 4 : end], "big")
    return module[: end - 12 - length]


@pytest.fixture(scope="module")
def spare(lab_image: GuestImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[vm.Pair]:
    directory = tmp_path_factory.mktemp("spare")
    with vm.running_pair(lab_image, directory, HOSTS) as pair:
        yield pair
    assert vm.qemu_processes_of(directory) == []


def test_a_module_that_does_not_load_names_its_file_and_the_kernels_message(
    spare: vm.Pair, lab_image: GuestImage
) -> None:
    guest = spare["xcp1"]
    release = lab_image.release
    # The kernel's own drbd.ko as if built for another configuration of the same release:
    # with modversions the kernel compares the version magic after the release.
    modules = lab_image.kernel.parents[1] / "lib" / "modules" / release
    built = unsigned((modules / "kernel/drivers/block/drbd/drbd.ko").read_bytes())
    magic = f"vermagic={release} SMP preempt ".encode()
    assert magic in built
    foreign = built.replace(magic, magic.replace(b"preempt", b"preemqt"), 1)
    bad = f"/lib/modules/{release}/updates/drbd.ko"
    drbdlab.put(guest, bad, foreign)
    guest.ok("depmod")
    with pytest.raises(AssertionError) as failed:
        drbdlab.load_module(guest, "drbd")
    message = str(failed.value)
    assert f"module file: {bad}" in message
    assert f"version magic '{release} SMP preemqt" in message  # the kernel's own words
    guest.ok(f"rm -f {bad} && depmod")


def test_a_lost_channel_is_an_error_with_the_console(spare: vm.Pair) -> None:
    guest = spare["xcp2"]
    assert guest.process is not None
    guest.process.kill()
    guest.process.wait(timeout=10)
    with pytest.raises(vm.LabError) as failed:
        guest.sh("true", timeout=20)
    message = str(failed.value)
    assert "xcp2:" in message
    assert "QEMU exited" in message or "command channel was lost" in message
    assert "last console lines of xcp2" in message


def test_ctrl_c_leaves_no_qemu_behind(lab_image: GuestImage, tmp_path: Path) -> None:
    directory = tmp_path / "interrupted"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from tests.lab import guest, vm\n"
        "from tests.lab.labpool import HOSTS\n"
        f"with vm.running_pair(guest.guest_image(), Path({str(directory)!r}), HOSTS):\n"
        "    print('booted', flush=True)\n"
        "    time.sleep(600)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ) as child:
        assert child.stdout is not None
        try:
            assert child.stdout.readline().strip() == "booted"
            assert len(vm.qemu_processes_of(directory)) == 2
            child.send_signal(signal.SIGINT)
            child.wait(timeout=60)
        finally:
            child.kill()
            child.wait()
    deadline = time.monotonic() + 10
    while vm.qemu_processes_of(directory) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert vm.qemu_processes_of(directory) == []
