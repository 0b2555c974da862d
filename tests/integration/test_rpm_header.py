"""read_info against rpmfile (which decodes every tag) on packages rpmbuild really made."""

from __future__ import annotations

from pathlib import Path

import pytest
import rpmfile

from builder.errors import InputError
from builder.rpm.header import read_info
from tests.rpmfactory import build_rpms

pytestmark = pytest.mark.integration


def test_read_info_reads_what_rpmfile_reads(tmp_path: Path) -> None:
    rpms = build_rpms(tmp_path, ["pkg", "pkg-sub"], version="2.5", release="3.el7", arch="x86_64")
    for path in rpms:
        info = read_info(path)
        with path.open("rb") as stream:
            (start, end), headers = rpmfile.headers.get_headers(stream)
        assert (info.name, info.version, info.release, info.arch) == (
            headers["name"].decode(),
            "2.5",
            "3.el7",
            "x86_64",
        )
        assert info.header_offset == start
        assert info.payload_offset == end
        assert info.sigmd5 == headers.get("sigmd5")
        assert info.payload_digest == headers["payloaddigest"][0].decode()
        assert info.compressor == headers.get("archive_compression", b"gzip").decode()


def test_a_truncated_header_is_refused(tmp_path: Path) -> None:
    (path,) = build_rpms(tmp_path, ["pkg"], arch="x86_64")
    cut = tmp_path / "cut.rpm"
    cut.write_bytes(path.read_bytes()[: read_info(path).payload_offset - 100])
    with pytest.raises(InputError, match="ends inside its headers"):
        read_info(cut)
