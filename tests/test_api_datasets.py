"""POST /v1/datasets: classes listed on upload; every bad dataset refused clearly with nothing stored."""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.common.models import Dataset
from services.common.storage import Storage, make_storage
from tests.dataset_builders import good_members, png, tar_bytes, zip_bytes
from tests.service_helpers import auth

# Small limits so each limit is crossed by a tiny archive.
LIMITS = {
    "max_member_bytes": 1_000_000,
    "max_total_bytes": 3_000_000,
    "max_pixels": 1_000,
    "max_members": 20,
}

BAD_DATASETS: dict[str, tuple[str, bytes, str]] = {
    # case: (file name, bytes, words the error must contain)
    "not-an-archive": ("notes.zip", b"hello, I am plain text", "is not a zip or tar archive"),
    "empty-file": ("empty.zip", b"", "empty"),
    "no-class-folder": ("flat.zip", zip_bytes({"1.png": png(), "readme.txt": b"x"}), "no class folder"),
    "dot-dot": ("evil.zip", zip_bytes({"a/1.png": png(), "../evil/1.png": png()}), "path traversal"),
    "absolute-path": ("abs.zip", zip_bytes({"a/1.png": png(), "/etc/a/1.png": png()}), "absolute path"),
    "symlink": (
        "link.tar",
        tar_bytes({"a/1.png": png()}, {"a/l.png": (tarfile.SYMTYPE, "/etc/passwd")}),
        "symbolic link",
    ),
    "hardlink": (
        "hard.tar.gz",
        tar_bytes({"a/1.png": png()}, {"a/h.png": (tarfile.LNKTYPE, "a/1.png")}, gz=True),
        "hard link",
    ),
    "zip-bomb-member": (
        "bomb.zip",
        zip_bytes({"a/1.png": png(), "a/big.png": b"\0" * 2_000_000}),
        "over the limit of 1,000,000 bytes (max_member_bytes)",
    ),
    "zip-bomb-total": (
        "bombs.zip",
        zip_bytes({"a/1.png": png(), **{f"a/b{i}.png": b"\0" * 900_000 for i in range(4)}}),
        "max_total_bytes",
    ),
    "too-many-members": ("many.zip", zip_bytes({f"a/{i}.png": png() for i in range(30)}), "max_members"),
    "no-image-signature": ("bad.zip", zip_bytes({"a/1.png": b"not a png"}), "class 'a' has no usable image"),
}


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, api_client_factory: Callable[..., Any]) -> tuple[Any, Storage]:
    overrides: dict[str, Any] = {"dataset_limits": LIMITS}
    if request.param == "s3":
        overrides.update(request.getfixturevalue("s3_bucket_settings"))
    client, settings = api_client_factory(**overrides)
    return client, make_storage(settings)


def stored_keys(storage: Storage) -> list[str]:
    return storage.list("datasets/")


def test_upload_lists_classes_and_stores_the_archive(
    backend: tuple[Any, Storage], make_api_key: Any, pg_session_factory: Any
) -> None:
    client, storage = backend
    archive = zip_bytes({**good_members(), "blue jay/broken.png": b"garbage", "README.md": b"hi"})
    response = client.post(
        "/v1/datasets", headers=auth(make_api_key()), files={"file": ("birds.zip", archive)}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["classes"] == [{"name": "blue jay", "images": 2}, {"name": "черный.дрозд", "images": 1}]
    assert body["images"] == 3
    assert body["bytes"] == len(archive)
    assert body["filename"] == "birds.zip"
    assert {s["path"] for s in body["skipped"]} == {"blue jay/broken.png", "README.md"}
    assert all(s["reason"] for s in body["skipped"])

    key = f"datasets/{body['id']}/source.zip"
    assert stored_keys(storage) == [key]
    assert storage.get_bytes(key) == archive
    with pg_session_factory() as session:
        row = session.get(Dataset, body["id"])
        assert row is not None and row.object_key == key and row.images == 3


def test_upload_checks_structure_only_and_leaves_decoding_to_the_job(
    backend: tuple[Any, Storage], make_api_key: Any
) -> None:
    client, storage = backend
    # A PNG signature on truncated bytes and an image over max_pixels (1,000): only decoding can
    # tell, which the job's prepare stage does; the upload answers without it.
    archive = zip_bytes({"a/1.png": png(), "a/cut.png": png()[:40], "b/huge.png": png(size=64)})
    response = client.post("/v1/datasets", headers=auth(make_api_key()), files={"file": ("d.zip", archive)})
    assert response.status_code == 201, response.text
    assert response.json()["classes"] == [{"name": "a", "images": 2}, {"name": "b", "images": 1}]
    assert storage.get_bytes(f"datasets/{response.json()['id']}/source.zip") == archive


def test_a_bad_dataset_limits_setting_is_refused_naming_the_field(
    api_client_factory: Callable[..., Any],
) -> None:
    with pytest.raises(ValueError, match=r"unknown dataset limit\(s\) max_pixel;"):
        api_client_factory(dataset_limits={"max_pixel": 5})


def test_the_upload_cap_defaults_to_the_archive_limit(
    api_client_factory: Callable[..., Any], make_api_key: Any
) -> None:
    client, settings = api_client_factory(dataset_limits={"max_archive_bytes": 10_000})
    assert settings.upload_cap == 10_000
    archive = zip_bytes({f"a/{i}.png": png(size=64, color=(i, 0, 0)) for i in range(60)}, 0)
    response = client.post("/v1/datasets", headers=auth(make_api_key()), files={"file": ("big.zip", archive)})
    assert response.status_code == 413
    assert "10000 bytes" in response.json()["detail"]


def test_tar_gz_upload_is_stored_under_its_kind(backend: tuple[Any, Storage], make_api_key: Any) -> None:
    client, storage = backend
    archive = tar_bytes(good_members(), gz=True)
    # The name says .zip; the content decides the key's suffix.
    response = client.post("/v1/datasets", headers=auth(make_api_key()), files={"file": ("x.zip", archive)})
    assert response.status_code == 201, response.text
    assert stored_keys(storage) == [f"datasets/{response.json()['id']}/source.tar.gz"]


@pytest.mark.parametrize("case", list(BAD_DATASETS))
def test_bad_dataset_is_refused_and_nothing_is_stored(
    backend: tuple[Any, Storage], make_api_key: Any, pg_session_factory: Any, case: str
) -> None:
    client, storage = backend
    key = make_api_key()
    filename, data, words = BAD_DATASETS[case]
    response = client.post("/v1/datasets", headers=auth(key), files={"file": (filename, data)})
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert words in detail
    assert filename in detail  # the message names the user's file, not a server temp path
    assert stored_keys(storage) == []
    with pg_session_factory() as session:
        assert session.query(Dataset).filter(Dataset.filename == filename).count() == 0


def test_upload_over_the_cap_is_413(api_client_factory: Callable[..., Any], make_api_key: Any) -> None:
    client, settings = api_client_factory(max_upload_bytes=10_000)
    archive = zip_bytes({f"a/{i}.png": png(size=64, color=(i, 0, 0)) for i in range(60)}, 0)
    assert len(archive) > 10_000
    response = client.post("/v1/datasets", headers=auth(make_api_key()), files={"file": ("big.zip", archive)})
    assert response.status_code == 413
    assert "10000 bytes" in response.json()["detail"]
    assert make_storage(settings).list("datasets/") == []


def test_upload_without_a_file_field_is_422_naming_it(api: Any, make_api_key: Any) -> None:
    response = api.post("/v1/datasets", headers=auth(make_api_key()), files={"other": ("a.zip", b"x")})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "file"]


def test_upload_that_is_not_multipart_is_415(api: Any, make_api_key: Any) -> None:
    response = api.post("/v1/datasets", headers=auth(make_api_key()), content=b"PK\x03\x04")
    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["detail"]


def test_upload_leaves_no_temp_files(
    api_client_factory: Callable[..., Any], make_api_key: Any, tmp_path: Path
) -> None:
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("diffii-upload-*"))
    client, _ = api_client_factory()
    client.post(
        "/v1/datasets", headers=auth(make_api_key()), files={"file": ("b.zip", zip_bytes(good_members()))}
    )
    client.post("/v1/datasets", headers=auth(make_api_key()), files={"file": ("x.zip", b"junk")})
    assert set(Path(tempfile.gettempdir()).glob("diffii-upload-*")) == before
