"""A vendor's yum repository for tests: createrepo_c metadata, ``repomd.xml.asc`` and packages
signed the way XCP-ng signs its own (an RSA key, ``rpmsign --addsign``, an armored detached
signature of ``repomd.xml``), with a key made here for the test.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Vendor:
    home: Path  # its GnuPG home
    fingerprint: str
    public_key: Path  # the armored public key file a target names

    def gpg(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["gpg", "--homedir", str(self.home), "--batch", *map(str, args)],
            capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip

    def sign_rpms(self, *rpms: Path) -> None:
        subprocess.run(
            [
                "rpmsign", "--addsign", "--define", f"_gpg_name {self.fingerprint}",
                "--define", f"_gpg_path {self.home}", "--define", f"__gpg {shutil.which('gpg')}",
                *map(str, rpms),
            ],
            capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip

    def sign_metadata(self, repo: Path) -> Path:
        repomd = repo / "repodata" / "repomd.xml"
        signature = repomd.with_name("repomd.xml.asc")
        signature.unlink(missing_ok=True)
        self.gpg("--armor", "--detach-sign", "--output", signature, repomd)
        return signature

    def stop(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"], check=False)


def make_vendor(directory: Path, name: str = "Test Vendor") -> Vendor:
    """A new RSA signing key in its own GnuPG home, and its exported public key."""
    home = directory / "gnupg"
    home.mkdir(parents=True, mode=0o700)
    uid = f"{name} <signing@{name.lower().replace(' ', '-')}.invalid>"
    run = ["gpg", "--homedir", str(home), "--batch", "--passphrase", ""]
    subprocess.run(
        [*run, "--quick-gen-key", uid, "rsa2048", "sign", "never"],
        capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    listed = subprocess.run(
        [*run, "--with-colons", "--list-keys", uid], capture_output=True, text=True, check=True
    ).stdout
    fingerprint = next(
        line.split(":")[9] for line in listed.splitlines() if line.startswith("fpr:")
    )
    public_key = directory / "RPM-GPG-KEY-test"
    exported = subprocess.run(
        [*run, "--armor", "--export", fingerprint], capture_output=True, text=True, check=True
    ).stdout
    public_key.write_text(exported)
    return Vendor(home, fingerprint, public_key)


def signed_repository(directory: Path, rpms: list[Path], vendor: Vendor | None) -> Path:
    """``directory`` as a yum repository of ``rpms`` (copies), packages and metadata signed by
    ``vendor`` (unsigned without one)."""
    directory.mkdir(parents=True, exist_ok=True)
    copies = []
    for rpm in rpms:
        copies.append(directory / rpm.name)
        shutil.copy2(rpm, copies[-1])
    if vendor is not None:
        vendor.sign_rpms(*copies)
    subprocess.run(["createrepo_c", "--quiet", str(directory)], check=True)
    if vendor is not None:
        vendor.sign_metadata(directory)
    return directory


def key_yaml(vendor: Vendor, indent: str = "      ") -> str:
    """A yum source's ``key:`` naming ``vendor``'s key (its file's absolute path)."""
    return (
        f"{indent}key:\n{indent}  file: {vendor.public_key}\n"
        f"{indent}  fingerprint: {vendor.fingerprint}\n"
    )


def yum_target_spec(
    directory: Path,
    *,
    repos: list[str],
    release: str,
    trust: str,
    evr: str | None = None,
    requires: str = "exact",
) -> Path:
    """``directory/ng.yaml``: one XCP-ng style target ``ng`` reading kernel-devel from
    ``repos``; ``trust`` is its source's ``key:`` (:func:`key_yaml`) or ``insecure:`` line."""
    directory.mkdir(parents=True, exist_ok=True)
    listed = "".join(f"          - {repo}\n" for repo in repos)
    glob = f'        evr: "{evr}"\n' if evr else ""
    (directory / "ng.yaml").write_text(
        "targets:\n  ng:\n    name: XCP-ng style\n    arch: x86_64\n    kernel:\n"
        f"      package: kernel-devel\n      release: {release}\n      requires: {requires}\n"
        f"      source:\n        yum:\n{listed}{glob}{trust}"
        "    container:\n      family: centos7-x86_64\n    consumer: el7\n"
    )
    return directory
