"""Receive one multipart file field straight from the request stream into a temp file, under a cap.

FastAPI's UploadFile would spool the whole body (to disk) before the endpoint runs, so an oversized
upload would be written out in full before it could be refused. Parsing the stream here stops
reading, and answers 413, the moment the file part passes the cap.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request, status
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file itself
MAX_OTHER_FIELD_BYTES = 64 * 1024


@dataclass
class ReceivedFile:
    path: Path
    filename: str
    size: int


def _too_large(max_bytes: int) -> HTTPException:
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE, f"the dataset archive exceeds the limit of {max_bytes} bytes"
    )


def _missing_file() -> HTTPException:
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        [
            {
                "loc": ["body", "file"],
                "msg": "Field required: a multipart file field named 'file'",
                "type": "missing",
            }
        ],
    )


class _FilePartSink:
    """python-multipart callbacks that write the `file` part to disk and ignore the rest."""

    def __init__(self, directory: Path, field: str, max_bytes: int) -> None:
        self.directory, self.field, self.max_bytes = directory, field, max_bytes
        self.path = directory / "upload"
        self.handle: Any = None
        self.found = False
        self.filename = ""
        self.size = 0
        self._other_bytes = 0
        self._in_file = False
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda data, start, end: self._header_field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self._headers = {}
        self._in_file = False

    def on_header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name == self.field and not self.found:
            self.found = True
            self._in_file = True
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace")
            self.handle = self.path.open("wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        length = end - start
        if self._in_file:
            self.size += length
            if self.size > self.max_bytes:
                raise _too_large(self.max_bytes)
            self.handle.write(data[start:end])
        else:
            self._other_bytes += length
            if self._other_bytes > MAX_OTHER_FIELD_BYTES:
                raise HTTPException(
                    status.HTTP_413_CONTENT_TOO_LARGE, "form fields other than 'file' are too large"
                )

    def on_part_end(self) -> None:
        if self._in_file:
            self.handle.close()
            self._in_file = False

    def close(self) -> None:
        if self.handle is not None and not self.handle.closed:
            self.handle.close()


async def receive_file(
    request: Request, directory: Path, max_bytes: int, field: str = "file"
) -> ReceivedFile:
    """Stream the multipart field `field` of the request into `directory`; 413 past max_bytes."""
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            "send the dataset as multipart/form-data with the archive in a field named 'file'",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD:
        raise _too_large(max_bytes)

    sink = _FilePartSink(directory, field, max_bytes)
    parser = MultipartParser(boundary, sink.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"malformed multipart body: {exc}") from exc
    finally:
        sink.close()
    if not sink.found:
        raise _missing_file()
    return ReceivedFile(path=sink.path, filename=sink.filename, size=sink.size)


def new_temp_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="diffii-upload-")
