"""Tar members (plain or gzip), read in one forward pass with the decompressed stream capped."""

from __future__ import annotations

import contextlib
import gzip
import lzma
import tarfile
import zlib
from pathlib import Path
from typing import Literal

from diffii_core.dataset.detect import SourceFormat
from diffii_core.dataset.limits import Budget, DatasetLimits
from diffii_core.dataset.members import Member, Readable, read_head
from diffii_core.dataset.names import fix_undecodable, safe_parts, wants_bytes
from diffii_core.errors import DatasetError

# A tar stream carries headers (512 bytes, more for long or non-ASCII names) besides member data.
_TAR_HEADER_BYTES_PER_MEMBER = 4096
_DAMAGED = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError)


class _CappedStream:
    """A decompressed tar stream that refuses to yield more than ``cap`` bytes (gzip bombs, and tar
    headers such as pax records, which tarfile reads into memory whatever size they claim)."""

    def __init__(self, fp: Readable, cap: int, label: str, limits: DatasetLimits) -> None:
        self._fp = fp
        self._cap = cap
        self._count = 0
        self._label = label
        self._limits = limits

    def read(self, n: int = -1, /) -> bytes:
        room = self._cap - self._count + 1
        data = self._fp.read(room if n is None or n < 0 else min(n, room))
        self._count += len(data)
        if self._count > self._cap:
            raise DatasetError(
                f"{self._label!r} decompresses to more than {self._cap:,} bytes: over max_total_bytes "
                f"({self._limits.max_total_bytes:,}) plus room for the headers of max_members "
                f"({self._limits.max_members:,}) entries"
            )
        return data


def tar_members(
    path: Path, fmt: SourceFormat, budget: Budget, content: Literal["data", "head"]
) -> list[Member]:
    label = budget.label
    limits = budget.limits
    cap = limits.max_total_bytes + limits.max_members * _TAR_HEADER_BYTES_PER_MEMBER + 1024 * 20
    members: list[Member] = []
    try:
        with path.open("rb") as raw:
            unpacked = (
                gzip.GzipFile(fileobj=raw, mode="rb") if fmt == "tar.gz" else contextlib.nullcontext(raw)
            )
            with (
                unpacked as stream,
                _open_tar_stream(_CappedStream(stream, cap, label, limits), fmt, label) as tf,
            ):
                for info in tf:
                    budget.add_members()
                    member = _tar_member(tf, info, budget, content)
                    if member is not None:
                        members.append(member)
    except _DAMAGED as exc:
        raise DatasetError(f"{label!r} is a damaged or truncated {fmt} archive: {exc}") from None
    return members


def _tar_member(
    tf: tarfile.TarFile, info: tarfile.TarInfo, budget: Budget, content: Literal["data", "head"]
) -> Member | None:
    label = budget.label
    raw_name = fix_undecodable(info.name)
    if info.issym() or info.islnk():
        kind = "symbolic" if info.issym() else "hard"
        raise DatasetError(
            f"{label!r}: member {raw_name!r} is a {kind} link (to {info.linkname!r}); links are not allowed"
        )
    if info.ischr() or info.isblk() or info.isfifo():
        raise DatasetError(f"{label!r}: member {raw_name!r} is a device or FIFO, not a file or folder")
    if not (info.isreg() or info.isdir()):
        raise DatasetError(f"{label!r}: member {raw_name!r} has unsupported tar type {info.type!r}")
    parts = safe_parts(raw_name, label, archive=True)
    if not parts:
        return None
    source_path = "/".join(parts)
    if info.isdir():
        return Member(source_path, parts, is_dir=True)
    # A tar header's size cannot lie: it fixes where the next header starts.
    budget.add_file(source_path, info.size)
    if not wants_bytes(parts):
        return Member(source_path, parts, is_dir=False)
    fp = tf.extractfile(info)  # stream mode: must be read now, before the next header
    assert fp is not None  # a regular member always has a file object
    if content == "data":
        return Member(source_path, parts, is_dir=False, data=budget.read(fp, source_path))
    return Member(source_path, parts, is_dir=False, head=read_head(fp))


def _open_tar_stream(fp: Readable, fmt: SourceFormat, label: str) -> tarfile.TarFile:
    try:
        # Stream mode ("r|"): one forward pass, nothing seeks back through the decompressor.
        return tarfile.open(fileobj=fp, mode="r|", encoding="utf-8", errors="surrogateescape")
    except tarfile.ReadError as exc:
        inner = "a gzip file that does not hold a tar archive" if fmt == "tar.gz" else "not a tar archive"
        raise DatasetError(f"{label!r} is {inner} ({exc})") from None
