"""Zip members: names as their author meant them, links and odd compressions refused, sizes bounded."""

from __future__ import annotations

import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Literal

from diffii_core.dataset.limits import Budget, DatasetLimits
from diffii_core.dataset.members import Member, read_head
from diffii_core.dataset.names import safe_parts, wants_bytes
from diffii_core.errors import DatasetError

# Python's zipfile inflates bzip2/LZMA members without an output bound, so one small read can
# expand to gigabytes before any size check runs; the common tools all write Stored or Deflate.
_ZIP_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
_ZIP_METHOD_NAMES = {9: "deflate64", zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "LZMA", 93: "zstd"}
# zipfile parses the whole central directory into Python objects before we can count entries,
# so its declared size is bounded first: a generous budget per entry plus slack.
_ZIP_DIRECTORY_BYTES_PER_MEMBER = 1024
_ZIP_DIRECTORY_SLACK = 1 << 20
_OPEN_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    OSError,
    EOFError,
    ValueError,
    struct.error,
    NotImplementedError,
    IndexError,
)
_READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    RuntimeError,
)


def zip_members(path: Path, budget: Budget, content: Literal["data", "head"]) -> list[Member]:
    label = budget.label
    _check_zip_directory(path, budget.limits, label)
    try:
        zf = zipfile.ZipFile(path)
    except _OPEN_ERRORS as exc:
        raise DatasetError(f"{label!r} is not a readable zip archive: {exc}") from None
    members: list[Member] = []
    with zf:
        infos = zf.infolist()
        budget.add_members(len(infos))
        for info in infos:
            member = _zip_member(zf, info, budget, content)
            if member is not None:
                members.append(member)
    return members


def _zip_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: Budget, content: Literal["data", "head"]
) -> Member | None:
    label = budget.label
    raw_name = _zip_name(info)
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise DatasetError(f"{label!r}: member {raw_name!r} is a symbolic link; links are not allowed")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise DatasetError(
            f"{label!r}: member {raw_name!r} is a device, FIFO or socket, not a file or folder"
        )
    parts = safe_parts(raw_name, label, archive=True)
    source_path = "/".join(parts)
    if not parts:
        return None
    if raw_name.endswith(("/", "\\")) or kind == stat.S_IFDIR:
        return Member(source_path, parts, is_dir=True)
    budget.add_file(source_path, info.file_size)
    if not wants_bytes(parts):
        return Member(source_path, parts, is_dir=False)
    _check_zip_member_readable(info, source_path, label)
    try:
        with zf.open(info) as fp:
            if content == "data":
                return Member(source_path, parts, is_dir=False, data=budget.read(fp, source_path))
            return Member(source_path, parts, is_dir=False, head=read_head(fp))
    except _READ_ERRORS as exc:
        raise DatasetError(
            f"{label!r}: member {source_path!r} is damaged and cannot be read: {exc}"
        ) from None


def _check_zip_member_readable(info: zipfile.ZipInfo, path: str, label: str) -> None:
    if info.flag_bits & 0x1:
        raise DatasetError(f"{label!r}: member {path!r} is encrypted; upload an archive without a password")
    if info.compress_type not in _ZIP_METHODS:
        method = _ZIP_METHOD_NAMES.get(info.compress_type, f"method {info.compress_type}")
        raise DatasetError(
            f"{label!r}: member {path!r} uses {method} compression; only stored and deflate zip members "
            "are accepted (the default of every common zip tool)"
        )


def _check_zip_directory(path: Path, limits: DatasetLimits, label: str) -> None:
    """Refuse oversized central directories before zipfile turns each entry into an object."""
    try:
        with path.open("rb") as fp:
            fp.seek(0, os.SEEK_END)
            size = fp.tell()
            tail_len = min(size, 22 + 0xFFFF + 20)
            fp.seek(size - tail_len)
            tail = fp.read(tail_len)
            at = tail.rfind(b"PK\x05\x06")
            if at < 0 or len(tail) - at < 22:
                return  # zipfile will report the damage
            entries, directory_bytes = struct.unpack_from("<HI", tail, at + 10)
            locator = at - 20
            if locator >= 0 and tail[locator : locator + 4] == b"PK\x06\x07":
                (record_at,) = struct.unpack_from("<Q", tail, locator + 8)
                if record_at < size:
                    fp.seek(record_at)
                    record = fp.read(56)
                    if len(record) == 56 and record[:4] == b"PK\x06\x06":
                        entries, directory_bytes = struct.unpack_from("<QQ", record, 32)
    except OSError as exc:
        raise DatasetError(f"archive {label!r} cannot be read: {exc.strerror or exc}") from None
    if entries > limits.max_members:
        raise DatasetError(
            f"{label!r} has {entries:,} entries, over the limit of {limits.max_members:,} (max_members)"
        )
    budget = limits.max_members * _ZIP_DIRECTORY_BYTES_PER_MEMBER + _ZIP_DIRECTORY_SLACK
    if directory_bytes > budget:
        raise DatasetError(
            f"{label!r} has a {directory_bytes:,}-byte zip directory, more than {limits.max_members:,} "
            f"entries (max_members) can need ({budget:,} bytes)"
        )


def _zip_name(info: zipfile.ZipInfo) -> str:
    """The member name as its author meant it: UTF-8 when flagged or evidently UTF-8, else cp437."""
    name = info.orig_filename  # before zipfile cuts at NUL, so that trick is seen and refused
    if info.flag_bits & 0x800:
        return name
    try:
        raw = name.encode("cp437")
    except UnicodeEncodeError:  # a newer zipfile already applied the Unicode Path extra field
        return name
    unicode_path = _zip_unicode_path(info.extra, raw)
    if unicode_path is not None:
        return unicode_path
    if raw.isascii():
        return name
    try:
        # Many tools (Info-ZIP on Linux, macOS) write UTF-8 without the flag. Valid multi-byte UTF-8
        # is vanishingly unlikely in genuine cp437 text, so it decides.
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return name


def _zip_unicode_path(extra: bytes, raw_name: bytes) -> str | None:
    """The Info-ZIP Unicode Path extra field (0x7075), if present and written for this very name."""
    at = 0
    while at + 4 <= len(extra):
        header_id, size = struct.unpack_from("<HH", extra, at)
        body = extra[at + 4 : at + 4 + size]
        if header_id == 0x7075 and len(body) >= 5 and body[0] == 1:
            (crc,) = struct.unpack_from("<I", body, 1)
            if crc == zlib.crc32(raw_name):
                try:
                    return body[5:].decode("utf-8")
                except UnicodeDecodeError:
                    return None
        at += 4 + size
    return None
