"""Object storage: one interface, two backends (a local folder, or S3 through boto3).

Keys are deterministic (see docs/ARCHITECTURE.md), so a re-run overwrites instead of duplicating.
Writers never leave half objects behind: the local backend renames a finished temp file into
place, S3 completes a multipart upload only on success and aborts it otherwise.

The interface, errors and key rules live in storage_base (which the backends import); this module
re-exports them and chooses the backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.common.storage_base import (
    CHUNK_BYTES,
    MAX_KEY_BYTES,
    InvalidKey,
    ObjectNotFound,
    ObjectTooLarge,
    Storage,
    StorageError,
    content_disposition,
    validate_key,
    validate_prefix,
)

if TYPE_CHECKING:
    from services.common.settings import CommonSettings

__all__ = [
    "CHUNK_BYTES",
    "MAX_KEY_BYTES",
    "InvalidKey",
    "ObjectNotFound",
    "ObjectTooLarge",
    "Storage",
    "StorageError",
    "content_disposition",
    "make_storage",
    "validate_key",
    "validate_prefix",
]


def make_storage(settings: CommonSettings) -> Storage:
    """The backend the settings choose.

    Local "presigned" links need the API's public URL and signing secret; they are read from the
    settings when present (ApiSettings has them), so a worker's storage simply cannot presign.
    """
    if settings.storage == "s3":
        from services.common.storage_s3 import S3Storage

        return S3Storage(
            bucket=settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            public_endpoint_url=settings.s3_public_endpoint_url,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
            region=settings.s3_region,
            addressing_style=settings.s3_addressing_style,
        )
    from services.common.storage_local import LocalStorage

    assert settings.storage_dir is not None
    base_url = getattr(settings, "public_url", None)
    secret_getter = getattr(settings, "signing_secret_value", None)
    return LocalStorage(
        settings.storage_dir,
        public_base_url=base_url,
        signing_secret=secret_getter() if callable(secret_getter) else None,
    )
