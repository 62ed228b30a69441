"""POST /v1/datasets: receive an archive under the size cap, check its structure, store it, list its classes.

The request never decodes an image and never holds the archive in memory: the body streams to a temp
file, the structural check (`inspect_archive`: size, member names and traversal, counts, file
signatures) runs in a worker thread, and the file streams on to storage. Decoding happens in the
job's prepare stage, whose skipped files and class errors show in the job's status.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from diffii_core.errors import DatasetError
from services.api.deps import OwnerDep, SessionDep, SettingsDep, StorageDep, UploaderDep
from services.api.pagination import CURSOR_PATTERN, decode_cursor, encode_cursor
from services.api.schemas import (
    ID_PATTERN,
    INVALID,
    UNAUTHORIZED,
    ClassOut,
    DatasetOut,
    DatasetPage,
    Problem,
    SkippedOut,
    problem,
)
from services.api.settings import ApiSettings
from services.api.upload import new_temp_dir, receive_file
from services.common import keys, quotas, retention
from services.common.db import session_scope
from services.common.models import Dataset, new_id
from services.common.storage import Storage, StorageError
from services.common.timeutil import as_utc

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=UNAUTHORIZED)

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": ".zip, .tar or .tar.gz in ImageFolder layout: <class>/<image>",
                        }
                    },
                }
            }
        },
    }
}


def _skipped_entry(item: Any) -> SkippedOut:
    if isinstance(item, dict):
        return SkippedOut(path=str(item.get("path", "")), reason=str(item.get("reason", "")))
    if hasattr(item, "path") and hasattr(item, "reason"):
        return SkippedOut(path=str(item.path), reason=str(item.reason))
    if isinstance(item, tuple | list) and len(item) == 2:
        return SkippedOut(path=str(item[0]), reason=str(item[1]))
    return SkippedOut(path="", reason=str(item))


def _validate(path: Path, settings: ApiSettings) -> tuple[str, list[ClassOut], list[SkippedOut]]:
    """The engine's structural check, under the same limits the worker reads the dataset with."""
    from diffii_core.dataset import inspect_archive

    summary = inspect_archive(path, settings.make_dataset_limits())
    classes = [ClassOut(name=name, images=summary.image_files[name]) for name in summary.class_names]
    return summary.format, classes, [_skipped_entry(item) for item in summary.skipped]


def _display_name(filename: str) -> str:
    """The uploaded file's own name (errors quote it), made safe to use as a local file name."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch if ch.isprintable() else "_" for ch in name).strip(" .")
    return name[:200] or "dataset"


def _store(storage: Storage, key: str, path: Path, max_bytes: int) -> None:
    with path.open("rb") as handle:
        storage.upload_stream(key, handle, max_bytes=max_bytes)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    openapi_extra=UPLOAD_BODY,
    responses={
        400: problem("not a usable dataset, or a malformed multipart body (the message says why)"),
        413: {
            "model": Problem,
            "description": "archive over the size limit, or over the owner's max_stored_bytes quota "
            "(then the body is a QuotaProblem: limit, limit_value, requested)",
        },
        415: problem("not a multipart/form-data request"),
        422: {**INVALID, "description": "no multipart field named 'file'"},
        503: problem("storage failed; nothing was kept"),
    },
)
async def upload_dataset(
    request: Request, owner_id: UploaderDep, settings: SettingsDep, storage: StorageDep
) -> DatasetOut:
    """Upload an archive (multipart field `file`); its structure is checked before anything is stored."""

    def check_quota(size: int) -> None:
        with session_scope(request.app.state.session_factory) as session:
            limit = quotas.limits(session, owner_id, settings.default_limits())
            quotas.check_upload(session, owner_id, size, limit)

    await run_in_threadpool(check_quota, 1)  # already full: refused before the body is read
    with new_temp_dir() as tmp:
        received = await receive_file(request, Path(tmp), settings.upload_cap)
        await run_in_threadpool(check_quota, received.size)  # before storing; insert() checks again
        named = Path(tmp) / "named"
        named.mkdir()
        source = received.path.rename(named / _display_name(received.filename))
        try:
            ext, classes, skipped = await run_in_threadpool(_validate, source, settings)
        except DatasetError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc

        dataset_id = new_id()
        key = keys.dataset_source(dataset_id, ext)
        prefix = keys.dataset_prefix(dataset_id)
        try:
            await run_in_threadpool(_store, storage, key, source, settings.upload_cap)
            row = Dataset(
                id=dataset_id,
                owner_id=owner_id,
                object_key=key,
                filename=_display_name(received.filename),
                bytes=received.size,
                images=sum(c.images for c in classes),
                classes=[c.model_dump() for c in classes],
                skipped=[s.model_dump() for s in skipped],
            )

            def insert() -> None:
                # The quota's last word: checked under the owner's lock in the insert's transaction,
                # so parallel uploads cannot all pass a check that saw none of the others.
                with session_scope(request.app.state.session_factory) as session:
                    limit = quotas.limits(session, owner_id, settings.default_limits())
                    quotas.check_upload(session, owner_id, received.size, limit)
                    session.add(row)

            await run_in_threadpool(insert)
        except BaseException:
            # No row without its object and no object without its row.
            await run_in_threadpool(storage.delete_prefix, prefix)
            raise
    return DatasetOut(
        id=row.id,
        filename=row.filename,
        classes=classes,
        images=row.images,
        bytes=row.bytes,
        skipped=skipped,
        created_at=as_utc(row.created_at),
    )


DatasetId = Annotated[str, PathParam(pattern=ID_PATTERN, description="the dataset's id")]
NOT_FOUND = {404: problem("no such dataset for this API key")}


def _dataset_out(row: Dataset) -> DatasetOut:
    return DatasetOut(
        id=row.id,
        filename=row.filename,
        classes=[ClassOut(**c) for c in row.classes],
        images=row.images,
        bytes=row.bytes,
        skipped=[_skipped_entry(s) for s in row.skipped],
        created_at=as_utc(row.created_at),
    )


def _owned(session: Session, owner_id: str, dataset_id: str) -> Dataset:
    """The caller's dataset, or 404: another owner's is indistinguishable from a missing one."""
    row = session.get(Dataset, dataset_id)
    if row is None or row.owner_id != owner_id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"dataset {dataset_id} not found")
    return row


@router.get("", response_model=DatasetPage)
def list_datasets(
    owner_id: OwnerDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        str | None, Query(pattern=CURSOR_PATTERN, description="`next_cursor` of the previous page")
    ] = None,
) -> DatasetPage:
    """The caller's datasets, newest first; follow `next_cursor` until it is null."""
    query = select(Dataset).where(Dataset.owner_id == owner_id)
    if cursor:
        created_at, dataset_id = decode_cursor(cursor)
        query = query.where(
            or_(
                Dataset.created_at < created_at,
                and_(Dataset.created_at == created_at, Dataset.id < dataset_id),
            )
        )
    order = (Dataset.created_at.desc(), Dataset.id.desc())
    rows = list(session.scalars(query.order_by(*order).limit(limit + 1)))
    page, more = rows[:limit], len(rows) > limit
    return DatasetPage(
        datasets=[_dataset_out(row) for row in page],
        next_cursor=encode_cursor(page[-1].created_at, page[-1].id) if more else None,
    )


@router.get("/{dataset_id}", response_model=DatasetOut, responses=NOT_FOUND)
def get_dataset(dataset_id: DatasetId, owner_id: OwnerDep, session: SessionDep) -> DatasetOut:
    """A dataset the caller uploaded: its classes and the files that were skipped."""
    return _dataset_out(_owned(session, owner_id, dataset_id))


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={
        204: {"description": "the dataset and its stored archive are gone"},
        **NOT_FOUND,
        409: problem("a job that has not ended uses the dataset (the jobs are named)"),
        503: problem("storage failed; the dataset is kept, retry"),
    },
)
def delete_dataset(
    dataset_id: DatasetId, owner_id: OwnerDep, session: SessionDep, storage: StorageDep
) -> Response:
    """Remove an uploaded dataset: its stored archive, then its row. Ended jobs that used it keep
    their images and archives, with `dataset_id` null."""
    _owned(session, owner_id, dataset_id)
    try:
        removed = retention.delete_dataset(session, storage, dataset_id)
    except retention.DatasetInUse as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except StorageError as exc:
        log.warning("could not delete the objects of dataset %s: %s", dataset_id, exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"storage failed, dataset {dataset_id} kept; retry: {exc}"
        ) from None
    if not removed:  # deleted by a concurrent request meanwhile
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"dataset {dataset_id} not found")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
