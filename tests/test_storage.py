"""Both storage backends behind one interface: local folder and S3 (moto's server, over HTTP)."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from services.common.storage import InvalidKey, ObjectNotFound, ObjectTooLarge, Storage
from services.common.storage_local import LocalStorage
from services.common.storage_s3 import MIN_PART_BYTES, S3Storage
from tests.service_helpers import s3_storage_kwargs

MIB = 1024 * 1024


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store", public_base_url="http://testserver", signing_secret="s")
    settings = request.getfixturevalue("s3_bucket_settings")
    # The smallest part S3 allows, so a multipart upload needs only a few MiB of test data.
    return S3Storage(**s3_storage_kwargs(settings), part_bytes=MIN_PART_BYTES)


def leftovers(storage: Storage) -> list[str]:
    """Anything a failed write could have left: objects, unfinished multipart uploads, temp files."""
    if isinstance(storage, S3Storage):
        uploads = storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", [])
        objects = storage.client.list_objects_v2(Bucket=storage.bucket).get("Contents", [])
        return [u["Key"] for u in uploads] + [o["Key"] for o in objects]
    assert isinstance(storage, LocalStorage)
    return [str(p.relative_to(storage.root)) for p in storage.root.rglob("*") if p.is_file()]


class Chunked(io.RawIOBase):
    """A stream that returns short reads and counts how much was pulled from it."""

    def __init__(self, data: bytes, chunk: int = 300_000) -> None:
        self.data, self.chunk, self.pos = data, chunk, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.chunk if n < 0 else min(n, self.chunk)
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out


def test_roundtrip_list_and_delete_prefix(storage: Storage, tmp_path: Path) -> None:
    storage.put_bytes("jobs/a/images/0/000000.png", b"one")
    storage.put_bytes("jobs/a/images/1/000000.png", b"two")
    storage.put_bytes("jobs/ab/archive.zip", b"other job")
    assert storage.get_bytes("jobs/a/images/1/000000.png") == b"two"
    assert storage.exists("jobs/a/images/0/000000.png")
    assert not storage.exists("jobs/a/images/9/000000.png")
    assert storage.list("jobs/a/") == ["jobs/a/images/0/000000.png", "jobs/a/images/1/000000.png"]

    storage.download_file("jobs/ab/archive.zip", tmp_path / "out" / "a.zip")
    assert (tmp_path / "out" / "a.zip").read_bytes() == b"other job"

    storage.put_bytes("jobs/a/images/0/000000.png", b"overwritten")  # deterministic keys overwrite
    assert storage.get_bytes("jobs/a/images/0/000000.png") == b"overwritten"

    storage.delete_prefix("jobs/a/")
    assert storage.list("jobs/") == ["jobs/ab/archive.zip"]
    with pytest.raises(ObjectNotFound):
        storage.get_bytes("jobs/a/images/0/000000.png")
    with pytest.raises(ObjectNotFound):
        storage.download_file("jobs/a/images/0/000000.png", tmp_path / "missing")


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "../escape", "a/../../b", "a//b", "a/./b", "a\\b", "a\x00b", ".tmp/x"]
)
def test_unsafe_keys_are_refused(storage: Storage, key: str) -> None:
    with pytest.raises(InvalidKey):
        storage.put_bytes(key, b"x")


def test_delete_prefix_refuses_everything(storage: Storage) -> None:
    with pytest.raises(InvalidKey):
        storage.delete_prefix("")


def test_upload_stream_multipart(storage: Storage) -> None:
    data = os.urandom(11 * MIB + 12345)  # three parts of 5 MiB
    size = storage.upload_stream("datasets/d/source.zip", Chunked(data), max_bytes=20 * MIB)
    assert size == len(data)
    assert (
        hashlib.sha256(storage.get_bytes("datasets/d/source.zip")).digest() == hashlib.sha256(data).digest()
    )
    if isinstance(storage, S3Storage):
        head = storage.client.head_object(Bucket=storage.bucket, Key="datasets/d/source.zip")
        assert head["ETag"].strip('"').endswith("-3"), "expected a 3-part multipart upload"


def test_upload_stream_over_the_cap_leaves_nothing(storage: Storage) -> None:
    data = os.urandom(7 * MIB)
    stream = Chunked(data)
    with pytest.raises(ObjectTooLarge):
        storage.upload_stream("datasets/d/source.zip", stream, max_bytes=6 * MIB)
    assert leftovers(storage) == []
    assert not storage.exists("datasets/d/source.zip")


def test_upload_stream_small_object(storage: Storage) -> None:
    assert storage.upload_stream("datasets/s/source.tar", io.BytesIO(b"tiny"), max_bytes=4) == 4
    assert storage.get_bytes("datasets/s/source.tar") == b"tiny"


def test_open_writer_streams_a_zip(storage: Storage) -> None:
    payload = os.urandom(6 * MIB)
    with storage.open_writer("jobs/j/archive.zip") as out, zipfile.ZipFile(out, "w") as zf:
        zf.writestr("classA/0.png", payload)
        zf.writestr("metadata.jsonl", b'{"file_name": "classA/0.png"}\n')
    with zipfile.ZipFile(io.BytesIO(storage.get_bytes("jobs/j/archive.zip"))) as zf:
        assert zf.read("classA/0.png") == payload
        assert zf.namelist() == ["classA/0.png", "metadata.jsonl"]


def test_open_writer_aborts_on_exception(storage: Storage) -> None:
    with (
        pytest.raises(RuntimeError, match="packaging failed"),
        storage.open_writer("jobs/j/archive.zip") as out,
    ):
        out.write(os.urandom(6 * MIB))  # past one part: a multipart upload is in progress
        raise RuntimeError("packaging failed")
    assert leftovers(storage) == []


def test_open_writer_is_invisible_until_finished(storage: Storage) -> None:
    storage.put_bytes("jobs/j/archive.zip", b"old")
    with storage.open_writer("jobs/j/archive.zip") as out:
        out.write(b"new and longer")
        assert storage.get_bytes("jobs/j/archive.zip") == b"old"
    assert storage.get_bytes("jobs/j/archive.zip") == b"new and longer"


def test_ensure_twice_leaves_a_store_that_check_accepts_and_that_keeps_objects(storage: Storage) -> None:
    storage.put_bytes("jobs/e/kept", b"before")
    storage.ensure()
    storage.ensure()  # idempotent: a second start of the service finds the store as it left it
    storage.check()  # raises StorageError when the store is unreachable (see the missing-bucket test)
    assert storage.get_bytes("jobs/e/kept") == b"before"
    assert storage.list("jobs/e/") == ["jobs/e/kept"]


def test_s3_check_fails_for_a_missing_bucket(moto_s3: dict[str, Any]) -> None:
    from services.common.storage import StorageError

    storage = S3Storage(**s3_storage_kwargs({**moto_s3, "s3_bucket": "no-such-bucket-here"}))
    with pytest.raises(StorageError):
        storage.check()


def test_s3_presigned_url_for_the_public_endpoint(s3_bucket_settings: dict[str, Any]) -> None:
    public = s3_bucket_settings["s3_endpoint_url"].replace("127.0.0.1", "localhost")
    storage = S3Storage(**s3_storage_kwargs({**s3_bucket_settings, "s3_public_endpoint_url": public}))
    storage.put_bytes("jobs/j/archive.zip", b"zip bytes")
    url = storage.presigned_url("jobs/j/archive.zip", expires=60, filename="chouette ✓.zip")
    assert url.startswith(f"{public}/{storage.bucket}/jobs/j/archive.zip?")
    assert "X-Amz-Signature=" in url and "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == b"zip bytes"
    disposition = response.headers["content-disposition"]
    assert "filename*=UTF-8''chouette%20%E2%9C%93.zip" in disposition


def test_s3_delete_prefix_aborts_orphan_uploads(s3_bucket_settings: dict[str, Any]) -> None:
    storage = S3Storage(**s3_storage_kwargs(s3_bucket_settings))
    # What a worker killed mid-upload leaves behind.
    storage.client.create_multipart_upload(Bucket=storage.bucket, Key="jobs/k/archive.zip")
    storage.delete_prefix("jobs/k/")
    assert leftovers(storage) == []


def test_s3_ensure_creates_the_bucket(moto_s3: dict[str, Any]) -> None:
    settings = {**moto_s3, "s3_bucket": "made-by-ensure"}
    S3Storage(**s3_storage_kwargs(settings)).ensure()
    client = boto3.client(
        "s3",
        endpoint_url=settings["s3_endpoint_url"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    assert "made-by-ensure" in [b["Name"] for b in client.list_buckets()["Buckets"]]
