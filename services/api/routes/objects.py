"""GET /v1/objects/{key}: the local store's answer to S3 presigned URLs (no API key; the link is the key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import FileResponse

from services.api.deps import SettingsDep, StorageDep
from services.common.signing import verify_object_signature
from services.common.storage import StorageError, content_disposition
from services.common.storage_local import LocalStorage

router = APIRouter(tags=["objects"])


@router.get("/v1/objects/{key:path}", response_class=FileResponse, include_in_schema=False)
def get_object(
    key: str,
    settings: SettingsDep,
    storage: StorageDep,
    expires: Annotated[int, Query()],
    sig: Annotated[str, Query(max_length=128)],
    filename: Annotated[str | None, Query(max_length=255)] = None,
) -> FileResponse:
    if not isinstance(storage, LocalStorage):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "object links are served by the object store")
    if not verify_object_signature(settings.signing_secret_value(), key, expires, sig, filename):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the download link is invalid or has expired")
    try:
        path = storage.path_for(key)
    except StorageError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "object not found") from exc
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, "object not found")
    headers = {"Content-Disposition": content_disposition(filename)} if filename else None
    return FileResponse(path, headers=headers, media_type="application/octet-stream")
