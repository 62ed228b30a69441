"""Dataset input: an ImageFolder tree (`<class name>/<image>`) from a folder, .zip, .tar or .tar.gz.

Everything is read into memory and nothing is written: uploads come from strangers, so every member
is checked (names, links, counts, sizes) before its bytes are trusted, and every image is decoded once
here so that a job never starts on a dataset that would fail half way.

Rules (also in docs/ARCHITECTURE.md and the "Dataset in" section of the service spec):

- A class is a top-level folder holding at least one file; images nested deeper belong to it.
  Class index = position in ``sorted(class names)``, as torchvision's ImageFolder does.
- Names are NFC-normalised; zip names may be UTF-8 (flagged or not) or cp437.
- If every member lies under one single top-level folder that holds only folders, that folder is
  a wrapper (the user zipped the dataset's parent folder) and is removed.
- ``__MACOSX``, ``Thumbs.db``, ``desktop.ini`` and dot-files are operating-system noise: ignored and
  reported nowhere. Other non-image files, files outside any class folder, undecodable images,
  images over the pixel limit and duplicate names are *skipped* and reported in ``Dataset.skipped``.
- Anything unsafe or over a limit raises :class:`DatasetError`, as does a class left without images.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import lzma
import os
import re
import stat
import struct
import tarfile
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from PIL import Image

from diffii_core.errors import DatasetError

__all__ = [
    "DEFAULT_LIMITS",
    "IMAGE_SUFFIXES",
    "ClassInfo",
    "Dataset",
    "DatasetLimits",
    "DatasetSummary",
    "ImageItem",
    "Skipped",
    "SourceFormat",
    "detect_format",
    "inspect_archive",
    "load_dataset",
]

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})

SourceFormat = Literal["folder", "zip", "tar", "tar.gz"]

# Decoders are restricted to the accepted formats: a file is judged by its content, and Pillow's
# rarer decoders (a larger attack surface) never see uploaded bytes.
_PIL_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
_NOISE_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini"})
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
_READ_CHUNK = 1 << 20
# Python's zipfile inflates bzip2/LZMA members without an output bound, so one small read can
# expand to gigabytes before any size check runs; the common tools all write Stored or Deflate.
_ZIP_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
_ZIP_METHOD_NAMES = {9: "deflate64", zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "LZMA", 93: "zstd"}
# zipfile parses the whole central directory into Python objects before we can count entries,
# so its declared size is bounded first: a generous budget per entry plus slack.
_ZIP_DIRECTORY_BYTES_PER_MEMBER = 1024
_ZIP_DIRECTORY_SLACK = 1 << 20
# A tar stream carries headers (512 bytes, more for long or non-ASCII names) besides member data.
_TAR_HEADER_BYTES_PER_MEMBER = 4096
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112
_MAX_REASONS_IN_ERROR = 5


@dataclass(frozen=True)
class DatasetLimits:
    """Operator limits. The defaults suit "5 to a few hundred images per class" with room to spare."""

    max_archive_bytes: int = 2 * 1024**3
    max_members: int = 50_000  # entries in an archive / files and folders in a folder
    max_member_bytes: int = 64 * 1024**2  # one uncompressed member
    max_total_bytes: int = 4 * 1024**3  # all uncompressed members together (zip bombs)
    max_pixels: int = 40_000_000  # width * height of one image, checked before decoding
    max_classes: int = 10_000

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DatasetLimits.{name} must be a positive integer, got {value!r}")


DEFAULT_LIMITS = DatasetLimits()


@dataclass
class ImageItem:
    """One usable image: its original bytes, and the size that :meth:`open` returns."""

    class_name: str
    path: str  # "<class>/<file>" (or "<class>/<sub folder>/<file>"), POSIX, NFC, wrapper removed
    data: bytes = field(repr=False)
    width: int
    height: int

    def open(self) -> Image.Image:
        """The image as 8-bit RGB, upright (EXIF orientation applied), transparency over white."""
        return _decode_rgb(self.data)


@dataclass
class ClassInfo:
    name: str
    index: int
    images: list[ImageItem]


@dataclass
class Skipped:
    """A file left out. ``path`` is where it lies in the source (NFC, POSIX), wrapper folder included."""

    path: str
    reason: str


@dataclass
class Dataset:
    classes: list[ClassInfo]
    skipped: list[Skipped]

    @property
    def images(self) -> int:
        return sum(len(c.images) for c in self.classes)

    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def manifest(self) -> dict:
        return {
            "classes": [{"name": c.name, "images": len(c.images)} for c in self.classes],
            "images": self.images,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
        }


@dataclass
class DatasetSummary:
    """What :func:`inspect_archive` finds without decoding: image *files* per class, not usable images."""

    format: SourceFormat
    class_names: list[str]  # sorted; position = class index
    image_files: dict[str, int]  # class name -> files with an image suffix
    skipped: list[Skipped]  # structural skips only (non-image files, root files, duplicates)


# ----------------------------------------------------------------------------------------------
# Public entry points


def load_dataset(source: str | Path, limits: DatasetLimits = DEFAULT_LIMITS) -> Dataset:
    """Read and check a dataset folder or archive; decode every image once to prove it usable.

    Raises DatasetError when the source is unsafe, over a limit, has no class, or leaves a class
    without a usable image. Files that cannot be used are listed in ``Dataset.skipped``.
    """
    path = Path(source)
    label = _label(path)
    fmt = detect_format(path, limits)
    members = _read_members(path, fmt, limits, label, read_data=True)
    layout = _arrange(members, limits, label)

    skipped = list(layout.skipped)
    classes: list[ClassInfo] = []
    empty: list[str] = []
    for index, name in enumerate(layout.class_names):
        images: list[ImageItem] = []
        for rel, member in layout.files[name]:
            assert member.data is not None  # read_data=True reads every image-suffix file in a class
            item_or_reason = _make_item(name, rel, member.data, limits)
            if isinstance(item_or_reason, ImageItem):
                images.append(item_or_reason)
            else:
                skip = Skipped(member.source_path, item_or_reason)
                skipped.append(skip)
                layout.class_skips.setdefault(name, []).append(skip)
        if not images:
            empty.append(name)
        classes.append(ClassInfo(name=name, index=index, images=images))
    if empty:
        raise DatasetError(_empty_classes_message(label, empty, layout.class_skips))
    skipped.sort(key=lambda s: s.path)
    return Dataset(classes=classes, skipped=skipped)


def inspect_archive(source: str | Path, limits: DatasetLimits = DEFAULT_LIMITS) -> DatasetSummary:
    """Apply every structural check of :func:`load_dataset` and list the classes, decoding nothing.

    Cheap enough for an upload request: zip and folder member bytes are not read at all (a tar is
    streamed through once). Undecodable images and the pixel limit are only caught by load_dataset.
    """
    path = Path(source)
    label = _label(path)
    fmt = detect_format(path, limits)
    layout = _arrange(_read_members(path, fmt, limits, label, read_data=False), limits, label)
    empty = [name for name in layout.class_names if not layout.files[name]]
    if empty:
        raise DatasetError(_empty_classes_message(label, empty, layout.class_skips))
    return DatasetSummary(
        format=fmt,
        class_names=list(layout.class_names),
        image_files={name: len(layout.files[name]) for name in layout.class_names},
        skipped=sorted(layout.skipped, key=lambda s: s.path),
    )


def detect_format(source: str | Path, limits: DatasetLimits = DEFAULT_LIMITS) -> SourceFormat:
    """The source's format: "folder", "zip", "tar" or "tar.gz", judged by content, never by suffix."""
    path = Path(source)
    label = _label(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DatasetError(f"dataset {label!r} does not exist") from None
    except OSError as exc:
        raise DatasetError(f"dataset {label!r} cannot be read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        return "folder"
    if not stat.S_ISREG(st.st_mode):
        raise DatasetError(f"dataset {label!r} is neither a regular file nor a folder")
    if st.st_size > limits.max_archive_bytes:
        raise DatasetError(
            f"archive {label!r} is {st.st_size:,} bytes, over the limit of "
            f"{limits.max_archive_bytes:,} bytes (max_archive_bytes)"
        )
    if st.st_size == 0:
        raise DatasetError(f"{label!r} is an empty file, not a zip or tar archive")
    try:
        with path.open("rb") as fp:
            head = fp.read(1024)
    except OSError as exc:
        raise DatasetError(f"archive {label!r} cannot be read: {exc.strerror or exc}") from None

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
    raise DatasetError(f"{label!r} is not a zip or tar archive{_what_is_it(head)}")


# ----------------------------------------------------------------------------------------------
# Reading members


@dataclass
class _Member:
    source_path: str  # NFC POSIX path as found in the source, for reports
    parts: tuple[str, ...]
    is_dir: bool
    data: bytes | None = None  # read only for image-suffix files that can belong to a class
    skip_reason: str | None = None  # set by a reader for an entry it leaves out (reported, not used)


class _Budget:
    """Counts members and bytes across the whole source, raising at the first limit crossed."""

    def __init__(self, limits: DatasetLimits, label: str) -> None:
        self.limits = limits
        self.label = label
        self.members = 0
        self.declared_bytes = 0
        self.read_bytes = 0

    def add_members(self, count: int = 1) -> None:
        self.members += count
        if self.members > self.limits.max_members:
            raise DatasetError(
                f"{self.label!r} has more than {self.limits.max_members:,} entries (max_members); "
                f"counted {self.members:,}"
            )

    def add_file(self, path: str, size: int) -> None:
        if size > self.limits.max_member_bytes:
            raise DatasetError(
                f"{self.label!r}: member {path!r} is {size:,} bytes uncompressed, over the limit of "
                f"{self.limits.max_member_bytes:,} bytes (max_member_bytes)"
            )
        self.declared_bytes += size
        self._check_total(self.declared_bytes)

    def add_read(self, size: int) -> None:
        self.read_bytes += size
        self._check_total(self.read_bytes)

    def _check_total(self, total: int) -> None:
        if total > self.limits.max_total_bytes:
            raise DatasetError(
                f"{self.label!r} holds more than {self.limits.max_total_bytes:,} bytes uncompressed "
                f"(max_total_bytes); counted {total:,} so far"
            )

    def read(self, fp: _Readable, path: str) -> bytes:
        data = _read_capped(fp, self.limits.max_member_bytes)
        if data is None:
            # Only reachable when a size header lied or a file grew after it was measured.
            raise DatasetError(
                f"{self.label!r}: member {path!r} holds more than {self.limits.max_member_bytes:,} "
                "bytes uncompressed (max_member_bytes), more than its header declares"
            )
        self.add_read(len(data))
        return data


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def _read_capped(fp: _Readable, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of ``fp``; None once the stream proves longer (reads limit + 1 at most)."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = fp.read(min(_READ_CHUNK, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)


def _read_members(
    path: Path, fmt: SourceFormat, limits: DatasetLimits, label: str, *, read_data: bool
) -> list[_Member]:
    budget = _Budget(limits, label)
    if fmt == "folder":
        return _folder_members(path, budget, read_data=read_data)
    if fmt == "zip":
        return _zip_members(path, budget, read_data=read_data)
    return _tar_members(path, fmt, budget, read_data=read_data)


def _wants_data(parts: tuple[str, ...]) -> bool:
    # Root files never become images (unwrapping only removes a level when no file lies there).
    return len(parts) >= 2 and not _is_noise(parts) and _suffix(parts[-1]) in IMAGE_SUFFIXES


def _zip_members(path: Path, budget: _Budget, *, read_data: bool) -> list[_Member]:
    label = budget.label
    _check_zip_directory(path, budget.limits, label)
    try:
        zf = zipfile.ZipFile(path)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        OSError,
        EOFError,
        ValueError,
        struct.error,
        NotImplementedError,
        IndexError,
    ) as exc:
        raise DatasetError(f"{label!r} is not a readable zip archive: {exc}") from None
    members: list[_Member] = []
    with zf:
        infos = zf.infolist()
        budget.add_members(len(infos))
        for info in infos:
            raw_name = _zip_name(info)
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind == stat.S_IFLNK:
                raise DatasetError(
                    f"{label!r}: member {raw_name!r} is a symbolic link; links are not allowed"
                )
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise DatasetError(
                    f"{label!r}: member {raw_name!r} is a device, FIFO or socket, not a file or folder"
                )
            parts = _safe_parts(raw_name, label, archive=True)
            source_path = "/".join(parts)
            is_dir = raw_name.endswith(("/", "\\")) or kind == stat.S_IFDIR
            if not parts:
                continue
            if is_dir:
                members.append(_Member(source_path, parts, is_dir=True))
                continue
            budget.add_file(source_path, info.file_size)
            data = None
            if _wants_data(parts):
                _check_zip_member_readable(info, source_path, label)
                if read_data:
                    data = _read_zip_member(zf, info, source_path, budget)
            members.append(_Member(source_path, parts, is_dir=False, data=data))
    return members


def _check_zip_member_readable(info: zipfile.ZipInfo, path: str, label: str) -> None:
    if info.flag_bits & 0x1:
        raise DatasetError(f"{label!r}: member {path!r} is encrypted; upload an archive without a password")
    if info.compress_type not in _ZIP_METHODS:
        method = _ZIP_METHOD_NAMES.get(info.compress_type, f"method {info.compress_type}")
        raise DatasetError(
            f"{label!r}: member {path!r} uses {method} compression; only stored and deflate zip members "
            "are accepted (the default of every common zip tool)"
        )


def _read_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: str, budget: _Budget) -> bytes:
    label = budget.label
    try:
        with zf.open(info) as fp:
            return budget.read(fp, path)
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        OSError,
        ValueError,
        NotImplementedError,
        RuntimeError,
    ) as exc:
        raise DatasetError(f"{label!r}: member {path!r} is damaged and cannot be read: {exc}") from None


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


class _CappedStream:
    """A decompressed tar stream that refuses to yield more than ``cap`` bytes (gzip bombs, and tar
    headers such as pax records, which tarfile reads into memory whatever size they claim)."""

    def __init__(self, fp: _Readable, cap: int, label: str, limits: DatasetLimits) -> None:
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


def _tar_members(path: Path, fmt: SourceFormat, budget: _Budget, *, read_data: bool) -> list[_Member]:
    label = budget.label
    limits = budget.limits
    cap = limits.max_total_bytes + limits.max_members * _TAR_HEADER_BYTES_PER_MEMBER + 1024 * 20
    members: list[_Member] = []
    damaged = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError)
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
                    member = _tar_member(tf, info, budget, read_data=read_data)
                    if member is not None:
                        members.append(member)
    except damaged as exc:
        raise DatasetError(f"{label!r} is a damaged or truncated {fmt} archive: {exc}") from None
    return members


def _tar_member(
    tf: tarfile.TarFile, info: tarfile.TarInfo, budget: _Budget, *, read_data: bool
) -> _Member | None:
    label = budget.label
    raw_name = _fix_undecodable(info.name)
    if info.issym() or info.islnk():
        kind = "symbolic" if info.issym() else "hard"
        raise DatasetError(
            f"{label!r}: member {raw_name!r} is a {kind} link (to {info.linkname!r}); links are not allowed"
        )
    if info.ischr() or info.isblk() or info.isfifo():
        raise DatasetError(f"{label!r}: member {raw_name!r} is a device or FIFO, not a file or folder")
    if not (info.isreg() or info.isdir()):
        raise DatasetError(f"{label!r}: member {raw_name!r} has unsupported tar type {info.type!r}")
    parts = _safe_parts(raw_name, label, archive=True)
    if not parts:
        return None
    source_path = "/".join(parts)
    if info.isdir():
        return _Member(source_path, parts, is_dir=True)
    # A tar header's size cannot lie: it fixes where the next header starts.
    budget.add_file(source_path, info.size)
    data = None
    if read_data and _wants_data(parts):
        fp = tf.extractfile(info)  # stream mode: must be read now, before the next header
        assert fp is not None  # a regular member always has a file object
        data = budget.read(fp, source_path)
    return _Member(source_path, parts, is_dir=False, data=data)


def _open_tar_stream(fp: _Readable, fmt: SourceFormat, label: str) -> tarfile.TarFile:
    try:
        # Stream mode ("r|"): one forward pass, nothing seeks back through the decompressor.
        return tarfile.open(fileobj=fp, mode="r|", encoding="utf-8", errors="surrogateescape")
    except tarfile.ReadError as exc:
        inner = "a gzip file that does not hold a tar archive" if fmt == "tar.gz" else "not a tar archive"
        raise DatasetError(f"{label!r} is {inner} ({exc})") from None


def _folder_members(root: Path, budget: _Budget, *, read_data: bool) -> list[_Member]:
    label = budget.label
    try:
        root_real = root.resolve(strict=True)
    except OSError as exc:
        raise DatasetError(f"folder {label!r} cannot be read: {exc.strerror or exc}") from None
    members: list[_Member] = []
    # Depth-first with sorted names, on an explicit stack: deep trees must not hit the recursion limit.
    stack: list[tuple[Path, tuple[str, ...]]] = [(root_real, ())]
    while stack:
        directory, prefix = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            shown = "/".join(prefix) or "."
            raise DatasetError(f"folder {label!r}: cannot list {shown!r}: {exc.strerror or exc}") from None
        subdirs: list[tuple[Path, tuple[str, ...]]] = []
        for entry in entries:
            parts = (*prefix, unicodedata.normalize("NFC", _fix_undecodable(entry.name)))
            if _is_noise(parts):
                continue
            budget.add_members()
            rel = "/".join(parts)
            target = Path(entry.path)
            try:
                linked = entry.is_symlink()
                if linked:
                    target = target.resolve()
                    if target != root_real and root_real not in target.parents:
                        raise DatasetError(
                            f"folder {label!r}: {rel!r} is a symbolic link pointing outside the dataset "
                            "folder; links must stay inside it"
                        )
                st = target.stat() if linked else entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                raise DatasetError(f"folder {label!r}: {rel!r} is a broken symbolic link") from None
            except OSError as exc:
                raise DatasetError(f"folder {label!r}: cannot read {rel!r}: {exc.strerror or exc}") from None
            if stat.S_ISDIR(st.st_mode):
                if linked:
                    # Following would read images twice (under two classes) or loop for ever.
                    reason = "symbolic link to a folder inside the dataset, not followed"
                    members.append(_Member(rel, parts, is_dir=False, skip_reason=reason))
                    continue
                members.append(_Member(rel, parts, is_dir=True))
                subdirs.append((target, parts))
            elif stat.S_ISREG(st.st_mode):
                budget.add_file(rel, st.st_size)
                data = None
                if read_data and _wants_data(parts):
                    try:
                        with target.open("rb") as fp:
                            data = budget.read(fp, rel)
                    except OSError as exc:
                        raise DatasetError(
                            f"folder {label!r}: cannot read {rel!r}: {exc.strerror or exc}"
                        ) from None
                members.append(_Member(rel, parts, is_dir=False, data=data))
            else:
                # Opening a FIFO would block for ever; devices are never dataset content.
                raise DatasetError(
                    f"folder {label!r}: {rel!r} is a device, FIFO or socket, not a file or folder"
                )
        stack.extend(reversed(subdirs))
    return members


# ----------------------------------------------------------------------------------------------
# Names and layout


def _safe_parts(name: str, label: str, *, archive: bool) -> tuple[str, ...]:
    """Path components of a member name, NFC; DatasetError for anything that could leave the tree."""
    if "\x00" in name:
        raise DatasetError(f"{label!r}: member {name!r} has a NUL character in its name")
    # Windows tools write backslashes as separators, and extractors on Windows honour them, so
    # "..\\x" is as much a traversal as "../x".
    posix = name.replace("\\", "/") if archive else name
    if posix.startswith("/"):
        raise DatasetError(f"{label!r}: member {name!r} has an absolute path; paths must be relative")
    if _DRIVE_LETTER.match(posix):
        raise DatasetError(f"{label!r}: member {name!r} starts with a drive letter; paths must be relative")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DatasetError(f"{label!r}: member {name!r} contains '..' (path traversal)")
    return tuple(unicodedata.normalize("NFC", p) for p in parts)


def _fix_undecodable(name: str) -> str:
    """Tar and POSIX names are bytes; names that are not UTF-8 are read as Latin-1 rather than lost."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("latin-1")
    return name


def _is_noise(parts: Iterable[str]) -> bool:
    return any(p.startswith(".") or p.casefold() in _NOISE_NAMES for p in parts)


def _suffix(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


@dataclass
class _Layout:
    class_names: list[str]
    files: dict[str, list[tuple[str, _Member]]]  # class -> (class-relative path "<class>/...", member)
    skipped: list[Skipped]
    class_skips: dict[str, list[Skipped]]


def _arrange(members: list[_Member], limits: DatasetLimits, label: str) -> _Layout:
    members = [m for m in members if not _is_noise(m.parts)]
    skipped = [Skipped(m.source_path, m.skip_reason) for m in members if m.skip_reason is not None]
    members = [m for m in members if m.skip_reason is None]
    files = [m for m in members if not m.is_dir]
    strip = 0
    if files and len({m.parts[0] for m in members}) == 1 and all(len(m.parts) >= 3 for m in files):
        strip = 1

    found: dict[str, list[tuple[str, _Member]]] = {}
    class_skips: dict[str, list[Skipped]] = {}
    seen: set[str] = set()
    for member in files:
        parts = member.parts[strip:]
        if len(parts) == 1:
            skipped.append(Skipped(member.source_path, "file at the top level, outside any class folder"))
            continue
        name = parts[0]
        images = found.setdefault(name, [])
        rel = "/".join(parts)
        reason = None
        if rel in seen:
            reason = "same name as an earlier member (after Unicode NFC normalisation); the first is kept"
        elif _suffix(parts[-1]) not in IMAGE_SUFFIXES:
            kind = _suffix(parts[-1]) or "no suffix"
            reason = f"not an image file ({kind}); accepted: {', '.join(sorted(IMAGE_SUFFIXES))}"
        seen.add(rel)
        if reason is None:
            images.append((rel, member))
        else:
            skip = Skipped(member.source_path, reason)
            skipped.append(skip)
            class_skips.setdefault(name, []).append(skip)

    # Folders with no file at all are left out, but said, so a missing class is not a mystery.
    for member in members:
        parts = member.parts[strip:]
        if member.is_dir and len(parts) == 1 and parts[0] not in found:
            skipped.append(Skipped(member.source_path + "/", "empty folder, not used as a class"))

    if not found:
        raise DatasetError(_no_class_message(label, members, skipped))
    if len(found) > limits.max_classes:
        raise DatasetError(
            f"{label!r} has {len(found):,} class folders, over the limit of {limits.max_classes:,} "
            "(max_classes)"
        )
    names = sorted(found)
    return _Layout(
        class_names=names,
        files={n: sorted(found[n], key=lambda pair: pair[0]) for n in names},
        skipped=skipped,
        class_skips=class_skips,
    )


def _no_class_message(label: str, members: list[_Member], skipped: list[Skipped]) -> str:
    expected = f"expected <class name>/<image> with images {', '.join(sorted(IMAGE_SUFFIXES))}"
    if not members:
        return f"{label!r} holds no files: no class folder with images ({expected})"
    root_files = [s.path for s in skipped if "/" not in s.path]
    hint = ""
    if root_files:
        shown = ", ".join(repr(p) for p in root_files[:_MAX_REASONS_IN_ERROR])
        more = (
            f" and {len(root_files) - _MAX_REASONS_IN_ERROR} more"
            if len(root_files) > _MAX_REASONS_IN_ERROR
            else ""
        )
        hint = f"; found only files outside any folder: {shown}{more}"
    return f"{label!r} has no class folder with images ({expected}){hint}"


def _empty_classes_message(label: str, empty: list[str], class_skips: dict[str, list[Skipped]]) -> str:
    pieces = []
    for name in empty:
        skips = class_skips.get(name, [])
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in skips[:_MAX_REASONS_IN_ERROR])
        if len(skips) > _MAX_REASONS_IN_ERROR:
            reasons += f"; and {len(skips) - _MAX_REASONS_IN_ERROR} more"
        pieces.append(f"class {name!r} has no usable image ({reasons or 'no image files'})")
    return f"{label!r}: " + ". ".join(pieces)


def _label(path: Path) -> str:
    # The name only: server-side paths of uploads are nobody's business in an error message.
    return path.name or str(path)


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


# ----------------------------------------------------------------------------------------------
# Images


def _make_item(class_name: str, rel: str, data: bytes, limits: DatasetLimits) -> ImageItem | str:
    """The ImageItem, or the reason the file is skipped."""
    try:
        rgb = _decode_rgb(data, max_pixels=limits.max_pixels)
    except _TooManyPixels as exc:
        return (
            f"image is {exc.width}x{exc.height} = {exc.width * exc.height:,} pixels, over the limit of "
            f"{limits.max_pixels:,} pixels (max_pixels)"
        )
    except Image.DecompressionBombError as exc:
        return f"image is too large to decode safely: {exc}"
    except Image.UnidentifiedImageError:
        return "not a decodable JPEG, PNG, WebP or BMP image"
    except Exception as exc:  # decoders raise many types on hostile bytes; each is just a bad file
        return f"damaged image, cannot be decoded: {exc or type(exc).__name__}"
    return ImageItem(class_name=class_name, path=rel, data=data, width=rgb.width, height=rgb.height)


class _TooManyPixels(Exception):
    def __init__(self, width: int, height: int) -> None:
        super().__init__(f"{width}x{height}")
        self.width = width
        self.height = height


def _decode_rgb(data: bytes, max_pixels: int | None = None) -> Image.Image:
    with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as im:
        width, height = im.size  # from the header: nothing decoded yet
        if max_pixels is not None and width * height > max_pixels:
            raise _TooManyPixels(width, height)
        im.load()
        orientation = _orientation(im)
        rgb = _to_rgb(im)
    method = _TRANSPOSE.get(orientation)
    return rgb.transpose(method) if method is not None else rgb


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block leaves the picture as stored, it does not lose it
        return 1
    return value if isinstance(value, int) else 1


def _to_rgb(im: Image.Image) -> Image.Image:
    """A new 8-bit RGB image: 16/32-bit greys scaled (not clipped), transparency laid over white."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow's own conversion clips at 255, turning a 16-bit photograph white.
        grey = np.clip(np.asarray(im, dtype=np.int64), 0, 65535)
        grey8 = ((grey * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey8).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        # White, not black: transparent pixels often hold arbitrary colour, and white is the
        # usual "no background" of cut-out product and icon images.
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return im.convert("RGB")
