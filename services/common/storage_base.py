"""What every storage backend shares: the interface, its errors, and the rules for keys.

The backends (storage_local, storage_s3) import this module and nothing else of the storage layer;
services.common.storage picks a backend. So no module of the layer imports one that imports it back.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable
from urllib.parse import quote

CHUNK_BYTES = 1024 * 1024
MAX_KEY_BYTES = 1024  # S3's limit
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class StorageError(Exception):
    """The object store failed or refused an operation."""


class InvalidKey(StorageError, ValueError):
    """A key that is empty, too long, absolute, or climbs out of the store."""


class ObjectNotFound(StorageError, LookupError):
    def __init__(self, key: str) -> None:
        super().__init__(f"object not found: {key}")
        self.key = key


class ObjectTooLarge(StorageError):
    def __init__(self, key: str, max_bytes: int) -> None:
        super().__init__(f"object {key} exceeds the limit of {max_bytes} bytes")
        self.key = key
        self.max_bytes = max_bytes


def validate_key(key: str) -> str:
    """Return the key if it is a safe relative object name, raise InvalidKey otherwise."""
    if not isinstance(key, str) or not key:
        raise InvalidKey("object key must be a non-empty string")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidKey(f"object key is longer than {MAX_KEY_BYTES} bytes")
    if key.startswith("/") or "\\" in key or _CONTROL.search(key):
        raise InvalidKey(f"object key {key!r} must be relative, without backslashes or control characters")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise InvalidKey(f"object key {key!r} has an empty, '.' or '..' segment")
    if parts[0].startswith(".tmp"):
        raise InvalidKey(f"object key {key!r} uses the reserved '.tmp' prefix")
    return key


def validate_prefix(prefix: str) -> str:
    """A prefix must name a folder-like part of the key space; "" (everything) is refused."""
    if not prefix:
        raise InvalidKey("prefix must not be empty")
    validate_key(prefix.rstrip("/") or "/")
    return prefix


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback and the UTF-8 name (RFC 6266), for any Unicode filename."""
    ascii_name = filename.encode("ascii", "replace").decode("ascii").replace('"', "_").replace("?", "_")
    ascii_name = _CONTROL.sub("_", ascii_name).replace("\\", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


@runtime_checkable
class Storage(Protocol):
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None: ...

    def upload_stream(self, key: str, fileobj: BinaryIO, max_bytes: int | None = None) -> int:
        """Copy fileobj to key in chunks; returns the size. Over max_bytes: ObjectTooLarge, nothing kept."""
        ...

    def open_writer(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A streamed writer; the object appears only if the block exits without an exception."""
        ...

    def get_bytes(self, key: str) -> bytes: ...

    def download_file(self, key: str, path: Path) -> None: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> list[str]: ...

    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> None: ...

    def presigned_url(self, key: str, expires: int = 300, filename: str | None = None) -> str: ...

    def check(self) -> None:
        """Readiness: raises StorageError when the store cannot be reached or written."""
        ...

    def ensure(self) -> None:
        """Create the bucket or folder if missing (the deployment's one-shot setup step)."""
        ...
