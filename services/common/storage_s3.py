"""The S3 object store (AWS, MinIO, any S3-compatible endpoint) through boto3.

Large writes use multipart uploads with bounded memory (one part at a time). A multipart upload is
completed only when the writer finishes cleanly and aborted otherwise, so a failed or oversized
upload leaves neither an object nor billable orphan parts.
"""

from __future__ import annotations

import functools
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from diffii_core.atomic import atomic_path
from services.common.storage_base import (
    ObjectNotFound,
    ObjectTooLarge,
    StorageError,
    content_disposition,
    validate_key,
    validate_prefix,
)

MIN_PART_BYTES = 5 * 1024 * 1024  # S3's minimum for every part but the last
DEFAULT_PART_BYTES = 8 * 1024 * 1024
_MISSING_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


def _is_missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in _MISSING_CODES


class _MultipartUpload:
    """Parts of one object, started lazily so a small object becomes a single PUT."""

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self.client, self.bucket, self.key = client, bucket, key
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    def add_part(self, data: bytes) -> None:
        if self.upload_id is None:
            self.upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key)["UploadId"]
        number = len(self.parts) + 1
        response = self.client.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=data
        )
        self.parts.append({"PartNumber": number, "ETag": response["ETag"]})

    def finish(self, tail: bytes) -> None:
        if self.upload_id is None:
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=tail)
            return
        if tail:
            self.add_part(tail)
        self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": self.parts}
        )

    def abort(self) -> None:
        if self.upload_id is not None:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
            self.upload_id = None


class _PartWriter(io.RawIOBase):
    """A write-only, non-seekable file object that uploads each full part as it fills.

    zipfile handles non-seekable outputs (data descriptors), so ArchiveWriter can stream to it.
    """

    def __init__(self, upload: _MultipartUpload, part_bytes: int) -> None:
        super().__init__()
        self._upload = upload
        self._part_bytes = part_bytes
        self._buffer = bytearray()
        self._position = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._buffer += view
        self._position += len(view)
        while len(self._buffer) >= self._part_bytes:
            self._upload.add_part(bytes(self._buffer[: self._part_bytes]))
            del self._buffer[: self._part_bytes]
        return len(view)

    def finish(self) -> None:
        self._upload.finish(bytes(self._buffer))
        self._buffer.clear()


class S3Storage:
    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        region: str = "us-east-1",
        addressing_style: str = "path",
        part_bytes: int = DEFAULT_PART_BYTES,
    ) -> None:
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"part_bytes must be at least {MIN_PART_BYTES} (S3's minimum part size)")
        self.bucket = bucket
        self.region = region
        self.part_bytes = part_bytes
        client_kwargs: dict[str, Any] = {
            "region_name": region,
            "aws_access_key_id": access_key_id,
            "aws_secret_access_key": secret_access_key,
            "config": Config(
                signature_version="s3v4",
                s3={"addressing_style": addressing_style},
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
            ),
        }
        session = _shared_session()
        with _session_lock:  # boto3 sessions are not thread-safe; the clients they make are
            self.client = session.client("s3", endpoint_url=endpoint_url, **client_kwargs)
            # Presigned URLs embed the host in the signature, so they are signed for the endpoint the
            # client will use (e.g. http://localhost:9000), not the in-cluster one (http://minio:9000).
            self.presign_client = (
                session.client("s3", endpoint_url=public_endpoint_url, **client_kwargs)
                if public_endpoint_url
                else self.client
            )

    def _call(self, what: str, key: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            if _is_missing(exc) and key:
                raise ObjectNotFound(key) from exc
            raise StorageError(f"S3 {what} of {key or self.bucket!r} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"S3 {what} of {key or self.bucket!r} failed: {exc}") from exc

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        validate_key(key)
        extra = {"ContentType": content_type} if content_type else {}
        self._call("put", key, self.client.put_object, Key=key, Body=data, **extra)

    def upload_stream(self, key: str, fileobj: BinaryIO, max_bytes: int | None = None) -> int:
        validate_key(key)
        upload = _MultipartUpload(self.client, self.bucket, key)
        total = 0
        try:
            while True:
                part = _read_up_to(fileobj, self.part_bytes)
                total += len(part)
                if max_bytes is not None and total > max_bytes:
                    raise ObjectTooLarge(key, max_bytes)
                if len(part) < self.part_bytes:
                    upload.finish(part)
                    return total
                upload.add_part(part)
        except BaseException:
            upload.abort()
            raise

    @contextmanager
    def open_writer(self, key: str) -> Iterator[BinaryIO]:
        validate_key(key)
        upload = _MultipartUpload(self.client, self.bucket, key)
        writer = _PartWriter(upload, self.part_bytes)
        try:
            yield cast(BinaryIO, writer)
            writer.finish()
        except BaseException:
            upload.abort()
            raise

    def get_bytes(self, key: str) -> bytes:
        validate_key(key)
        return self._call("get", key, self.client.get_object, Key=key)["Body"].read()

    def download_file(self, key: str, path: Path) -> None:
        validate_key(key)
        with atomic_path(path) as tmp:
            self._call("download", key, self.client.download_file, Key=key, Filename=str(tmp))

    def exists(self, key: str) -> bool:
        validate_key(key)
        try:
            self._call("head", key, self.client.head_object, Key=key)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        keys: list[str] = []
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(item["Key"] for item in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"S3 list of {prefix!r} failed: {exc}") from exc
        return sorted(keys)

    def delete(self, key: str) -> None:
        validate_key(key)
        self._call("delete", key, self.client.delete_object, Key=key)

    def delete_prefix(self, prefix: str) -> None:
        validate_prefix(prefix)
        keys = self.list(prefix)
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            self._call("delete", prefix, self.client.delete_objects, Delete={"Objects": batch, "Quiet": True})
        self._abort_uploads(prefix)

    def _abort_uploads(self, prefix: str) -> None:
        # Parts of an upload a killed process never finished would otherwise linger unseen.
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for upload in page.get("Uploads", []):
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )

    def presigned_url(self, key: str, expires: int = 300, filename: str | None = None) -> str:
        validate_key(key)
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = content_disposition(filename)
        return self.presign_client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires)

    def check(self) -> None:
        self._call("head-bucket", "", self.client.head_bucket)

    def ensure(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if not _is_missing(exc):
                raise StorageError(f"S3 bucket {self.bucket!r} is not reachable: {exc}") from exc
        extra: dict[str, Any] = {}
        if self.region and self.region != "us-east-1":
            extra["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self.client.create_bucket(Bucket=self.bucket, **extra)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StorageError(f"cannot create S3 bucket {self.bucket!r}: {exc}") from exc


_session_lock = threading.Lock()


@functools.cache
def _shared_session() -> boto3.session.Session:
    # Building a session loads botocore's service models from disk; one per process is enough.
    return boto3.session.Session()


def _read_up_to(fileobj: BinaryIO, size: int) -> bytes:
    """Read exactly `size` bytes unless the stream ends first (raw streams may return short reads)."""
    chunks = []
    remaining = size
    while remaining > 0:
        chunk = fileobj.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
