"""The archive's layout is the writer's: images first, then preview.html, metadata.jsonl, job.json."""

from __future__ import annotations

import io
import zipfile

import pytest

from diffii_core.output.archive import FIXED_TIME, ArchiveWriter


def test_members_are_images_then_preview_metadata_and_job_in_that_order():
    buffer = io.BytesIO()
    writer = ArchiveWriter(buffer)
    writer.add_image("a/0.png", b"png-a")
    writer.add_image("b/0.png", b"png-b")
    writer.finish({"a": b"sheet"}, [{"file_name": "a/0.png"}], {"params": {}})
    with zipfile.ZipFile(buffer) as zf:
        assert zf.namelist() == ["a/0.png", "b/0.png", "preview.html", "metadata.jsonl", "job.json"]
        assert {info.date_time for info in zf.infolist()} == {FIXED_TIME}


def test_a_name_is_written_once():
    writer = ArchiveWriter(io.BytesIO())
    writer.add_image("a/0.png", b"x")
    with pytest.raises(ValueError, match="already holds"):
        writer.add_image("a/0.png", b"y")


class _Unseekable(io.RawIOBase):
    """A target like an S3 multipart upload: bytes go out, nothing comes back."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[no-untyped-def]
        self.data += bytes(b)
        return len(b)


def _write(target) -> None:  # type: ignore[no-untyped-def]
    writer = ArchiveWriter(target)
    writer.add_image("a/0.png", b"png-a")
    writer.finish({"a": b"sheet"}, [{"file_name": "a/0.png"}], {"params": {}})


def test_a_file_and_a_stream_get_the_same_archive_bytes():
    file, stream = io.BytesIO(), _Unseekable()
    _write(file)
    _write(stream)
    assert file.getvalue() == bytes(stream.data)
    with zipfile.ZipFile(file) as zf:
        assert zf.read("a/0.png") == b"png-a"
