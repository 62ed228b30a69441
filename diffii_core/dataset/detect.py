"""Which kind of source a path is: a folder, a zip or a tar (plain or gzip), judged by content."""

from __future__ import annotations

import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Literal

from diffii_core.dataset.limits import DEFAULT_LIMITS, DatasetLimits
from diffii_core.errors import DatasetError

SourceFormat = Literal["folder", "zip", "tar", "tar.gz"]


def label(path: Path) -> str:
    # The name only: server-side paths of uploads are nobody's business in an error message.
    return path.name or str(path)


def detect_format(source: str | Path, limits: DatasetLimits = DEFAULT_LIMITS) -> SourceFormat:
    """The source's format: "folder", "zip", "tar" or "tar.gz", judged by content, never by suffix."""
    path = Path(source)
    name = label(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DatasetError(f"dataset {name!r} does not exist") from None
    except OSError as exc:
        raise DatasetError(f"dataset {name!r} cannot be read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        return "folder"
    if not stat.S_ISREG(st.st_mode):
        raise DatasetError(f"dataset {name!r} is neither a regular file nor a folder")
    if st.st_size > limits.max_archive_bytes:
        raise DatasetError(
            f"archive {name!r} is {st.st_size:,} bytes, over the limit of "
            f"{limits.max_archive_bytes:,} bytes (max_archive_bytes)"
        )
    if st.st_size == 0:
        raise DatasetError(f"{name!r} is an empty file, not a zip or tar archive")
    try:
        with path.open("rb") as fp:
            head = fp.read(1024)
    except OSError as exc:
        raise DatasetError(f"archive {name!r} cannot be read: {exc.strerror or exc}") from None

    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "tar.gz"  # whether a tar lies inside is checked while reading
    if head[257:262] == b"ustar":
        return "tar"
    if zipfile.is_zipfile(path):  # data before the zip (self-extracting archives)
        return "zip"
    if _is_v7_tar(head):
        return "tar"
    raise DatasetError(f"{name!r} is not a zip or tar archive{_what_is_it(head)}")


def _is_v7_tar(head: bytes) -> bool:
    """Pre-POSIX tars have no magic; a header whose checksum adds up is proof enough."""
    if len(head) < 512:
        return False
    block = head[:512]
    if block == bytes(512):
        return len(head) >= 1024 and head[512:1024] == bytes(512)  # an empty tar: two zero blocks
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def _what_is_it(head: bytes) -> str:
    known = {
        b"BZh": "a bzip2-compressed file",
        b"\xfd7zXZ\x00": "an xz-compressed file",
        b"(\xb5/\xfd": "a zstd-compressed file",
        b"7z\xbc\xaf\x27\x1c": "a 7z archive",
        b"Rar!": "a RAR archive",
    }
    for magic, what in known.items():
        if head.startswith(magic):
            return f" (it is {what}); accepted: .zip, .tar, .tar.gz"
    return "; accepted: .zip, .tar, .tar.gz"
