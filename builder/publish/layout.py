"""The names a published repository and its clients agree on, in one place: the repository
id, the key file, the family folders, the ``.repo`` files and how one reads, the front page.

``publish`` writes them, ``verify`` checks them, and ``deploy`` installs them on dom0; a
dom0 that gets its ``.repo`` file from either sees one repository, under one id.
"""

from __future__ import annotations

from builder.specs import Consumer

REPO_ID = "xcp-drbd-builder"
KEY_FILE_NAME = f"RPM-GPG-KEY-{REPO_ID}"  # beside the repository, and what dom0 imports
INSTALLED_KEY_FILE = f"/etc/pki/rpm-gpg/{KEY_FILE_NAME}"
INSTALLED_REPO_FILE = f"/etc/yum.repos.d/{REPO_ID}.repo"
METADATA_EXPIRE = "1h"  # served .repo files: a module for a kernel update is found within the hour
FRONT_PAGE = "index.html"  # at the root: what a browser pointed at the repository URL gets
PROVENANCE_DIR = "provenance"  # signed build statements: packages/provenance, and REPO/provenance


def family_path(consumer: Consumer, basearch: str) -> str:
    """The folder of one consumer family and architecture: ``el5/i386``."""
    return f"{consumer.value}/{basearch}"


def repo_file_name(consumer: Consumer) -> str:
    """The ``.repo`` file publish serves for one consumer family."""
    return f"xcp-drbd-{consumer.value}.repo"


def baseurl(base_url: str, consumer: Consumer, basearch: str = "$basearch") -> str:
    return f"{base_url.rstrip('/')}/{family_path(consumer, basearch)}/"


def render_repo_file(
    *,
    name: str,
    baseurl: str,
    gpgkey: str,
    repo_gpgcheck: bool = True,
    metadata_expire: str | None = None,
    comment: str = "",
) -> str:
    """A ``.repo`` file: package signatures always checked, metadata signatures unless a
    pool explicitly allows a dom0 without pygpgme to go without (``repo_gpgcheck=0``)."""
    expire = f"metadata_expire={metadata_expire}\n" if metadata_expire else ""
    return (
        f"{comment}"
        f"[{REPO_ID}]\n"
        f"name={name}\n"
        f"baseurl={baseurl}\n"
        "enabled=1\n"
        "gpgcheck=1\n"
        f"repo_gpgcheck={1 if repo_gpgcheck else 0}\n"
        f"gpgkey={gpgkey}\n"
        f"{expire}"
    )


def served_repo_file(base_url: str, consumer: Consumer) -> str:
    """The ``.repo`` file served for a consumer family: packages and metadata both checked."""
    base = base_url.rstrip("/")
    return render_repo_file(
        name=f"DRBD for Xen dom0 ({consumer.value}, $basearch)",
        baseurl=baseurl(base, consumer),
        gpgkey=f"{base}/{KEY_FILE_NAME}",
        metadata_expire=METADATA_EXPIRE,
    )
