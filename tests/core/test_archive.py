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
