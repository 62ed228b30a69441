"""Jobs: create (idempotent), read with progress, list (keyset pages), cancel, fetch the archive."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import RedirectResponse
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from diffii_core.params import JobParams
from diffii_core.planning import images_for_class, job_cost
from services.api.deps import CredentialsDep, OwnerDep, SessionDep, SettingsDep, StorageDep, as_owner
from services.api.jobs_view import job_out, shards_of
from services.api.pagination import CURSOR_PATTERN, decode_cursor, encode_cursor
from services.api.schemas import (
    ID_PATTERN,
    UNAUTHORIZED,
    ArchiveLink,
    JobOut,
    JobPage,
    JobRequest,
    PreviewList,
    PreviewOut,
    QuotaProblem,
    problem,
)
from services.api.settings import ApiSettings
from services.common import keys, quotas
from services.common.dataset_uri import parse_s3_uri
from services.common.dispatch import dispatch
from services.common.lifecycle import jobs as lifecycle
from services.common.lifecycle.shards import new_shard
from services.common.lifecycle.table import Actor
from services.common.manifest import JobManifest
from services.common.models import Dataset, Job, JobStatus, ShardKind
from services.common.statuses import TERMINAL_JOB_STATUSES
from services.common.storage import Storage

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=UNAUTHORIZED)

JobId = Annotated[str, Path(pattern=ID_PATTERN, description="the job's id")]
NOT_FOUND = {404: problem("no such job for this API key")}
STORAGE_DOWN = {503: problem("object storage failed; retry")}
BINARY = {"schema": {"type": "string", "format": "binary"}}


def _field_error(field: str, msg: str) -> HTTPException:
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT, [{"loc": ["body", field], "msg": msg, "type": "value_error"}]
    )


def _request_hash(body: JobRequest) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def owned_job(session: Session, owner_id: str, job_id: str) -> Job:
    """The caller's job, or 404: another owner's job is indistinguishable from a missing one."""
    job = session.scalar(select(Job).where(Job.id == job_id, Job.owner_id == owner_id))
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return job


def _check_request(session: Session, body: JobRequest, owner_id: str, settings: ApiSettings) -> list[int]:
    """Refuses what the server cannot run; returns the real image count of each class (if known)."""
    if body.model not in settings.models:
        names = ", ".join(sorted(settings.models)) or "none"
        raise _field_error("model", f"unknown model {body.model!r}; this server offers: {names}")
    max_classes = settings.make_dataset_limits().max_classes
    if body.class_prompts is not None and len(body.class_prompts) > max_classes:
        raise _field_error(
            "class_prompts",
            f"{len(body.class_prompts):,} class prompts, over the limit of {max_classes:,} (max_classes)",
        )
    if body.dataset_uri is not None:
        uri = parse_s3_uri(body.dataset_uri)
        assert uri is not None  # the schema already checked the shape
        if uri.bucket not in settings.allowed_dataset_buckets:
            raise _field_error("dataset_uri", f"bucket {uri.bucket!r} is not one this server may read")
    if body.dataset_id is not None:
        # A share lock until the job is committed: a concurrent DELETE of the dataset waits, then
        # sees the job (retention.delete_dataset).
        dataset = session.scalar(
            select(Dataset).where(Dataset.id == body.dataset_id).with_for_update(read=True)
        )
        if dataset is None or dataset.owner_id != owner_id:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"dataset {body.dataset_id} not found")
        return [int(c["images"]) for c in dataset.classes]
    return []


def _refuse_empty(params: JobParams, class_images: list[int]) -> None:
    """422 for a job whose expansion makes no image in any class (the planner's own count)."""
    if class_images and not any(images_for_class(params, n) for n in class_images):
        largest = max(class_images)
        raise _field_error(
            "expansion",
            f"this job would make no image: expansion {params.expansion:g} x {largest} real images "
            f"(the largest class) rounds down to 0; an expansion of at least {1 / max(largest, 1):.4g} "
            "makes one",
        )


def _replay(session: Session, job: Job, request_hash: str, response: Response) -> JobOut:
    if job.request_hash != request_hash:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"Idempotency-Key already used for job {job.id} with a different request body",
        )
    response.status_code = status.HTTP_200_OK
    response.headers["Idempotent-Replayed"] = "true"
    return job_out(job, shards_of(session, [job.id])[job.id])


def _dispatch(session: Session) -> None:
    """An admission pass: the new job's shard, or the slots a cancel freed, may go to the broker now."""
    try:
        dispatch(session)
    except Exception:
        # The rows are committed; the sweeper's admission pass sends pending shards, so nothing is lost.
        log.exception("admission pass failed; the sweeper will admit the pending shards")
        session.rollback()


QUOTA_RESPONSES = {
    422: {
        "description": "invalid parameters (a validation error), or over max_job_cost or max_stored_bytes",
        "content": {
            "application/json": {
                "schema": {
                    "anyOf": [
                        {"$ref": "#/components/schemas/HTTPValidationError"},
                        {"$ref": "#/components/schemas/QuotaProblem"},
                    ]
                }
            }
        },
    },
    429: {
        "model": QuotaProblem,
        "description": "over max_active_jobs (jobs queued or running); retry after Retry-After seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}},
    },
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "a retry with the same Idempotency-Key: the original job"},
        400: problem("the body could not be read (not UTF-8)"),
        404: problem("dataset not found"),
        409: problem("Idempotency-Key reused with a different body"),
        413: problem("the JSON body is over max_json_bytes (the limit and the size are named)"),
        **QUOTA_RESPONSES,
    },
)
def create_job(
    body: JobRequest,
    response: Response,
    owner_id: OwnerDep,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> JobOut:
    """Start a job on an uploaded dataset (`dataset_id`) or an allowed `s3://` archive (`dataset_uri`)."""
    request_hash = _request_hash(body)

    def previous() -> Job | None:
        if idempotency_key is None:
            return None
        return session.scalar(
            select(Job).where(Job.owner_id == owner_id, Job.idempotency_key == idempotency_key)
        )

    if (existing := previous()) is not None:
        return _replay(session, existing, request_hash, response)

    class_images = _check_request(session, body, owner_id, settings)
    seed = int(body.seed) if body.seed is not None else secrets.randbits(63)
    params = body.job_params(seed)
    _refuse_empty(params, class_images)
    limits = quotas.limits(session, owner_id, settings.default_limits())
    quotas.check_job(session, owner_id, job_cost(params, class_images), limits, settings.quota_retry_after)
    job = Job(
        owner_id=owner_id,
        dataset_id=body.dataset_id,
        dataset_uri=body.dataset_uri,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        params=params.model_dump(mode="json"),
        priority=body.priority,
        status=lifecycle.initial_status(),
    )
    prepare = new_shard(Actor.api, job=job, seq=0, kind=ShardKind.prepare, seed=seed)
    session.add_all([job, prepare])
    try:
        session.commit()
    except IntegrityError:
        # Two requests with one Idempotency-Key raced; the unique constraint let one through.
        session.rollback()
        if (existing := previous()) is None:
            raise
        return _replay(session, existing, request_hash, response)

    _dispatch(session)
    session.refresh(job)
    return job_out(job, shards_of(session, [job.id])[job.id])


@router.get("", response_model=JobPage)
def list_jobs(
    owner_id: OwnerDep,
    session: SessionDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        str | None, Query(pattern=CURSOR_PATTERN, description="`next_cursor` of the previous page")
    ] = None,
) -> JobPage:
    """The caller's jobs, newest first; follow `next_cursor` until it is null."""
    query = select(Job).where(Job.owner_id == owner_id)
    if status_filter is not None:
        query = query.where(Job.status == status_filter)
    if cursor:
        created_at, job_id = decode_cursor(cursor)
        query = query.where(
            or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id))
        )
    rows = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    page, more = rows[:limit], len(rows) > limit
    shards = shards_of(session, [job.id for job in page])
    return JobPage(
        jobs=[job_out(job, shards[job.id], with_detail=False) for job in page],
        next_cursor=encode_cursor(page[-1].created_at, page[-1].id) if more else None,
    )


@router.get("/{job_id}", response_model=JobOut, responses=NOT_FOUND)
async def get_job(job_id: JobId, request: Request, credentials: CredentialsDep) -> Response:
    """Status, parameters and progress, with one entry per generation shard."""

    # The poll clients run in a loop: one thread hop, and the document serialised once (returning
    # the model would have FastAPI validate it against response_model again).
    def status_json(session: Session, owner_id: str) -> bytes:
        job = owned_job(session, owner_id, job_id)
        return job_out(job, shards_of(session, [job.id])[job.id]).model_dump_json().encode()

    return Response(await as_owner(request, credentials, status_json), media_type="application/json")


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    responses={**NOT_FOUND, 409: problem("the job has already ended")},
)
def cancel_job(job_id: JobId, owner_id: OwnerDep, session: SessionDep) -> JobOut:
    """Stop the job. With no shard running it is `cancelled` at once; otherwise it is `cancelling`
    until its running shards stop at their next batch boundary, then `cancelled`. Images of shards
    that finished stay stored (no archive is made) until the job is deleted or retention removes them.
    Cancelling a job that is already `cancelling` returns it unchanged."""
    job = owned_job(session, owner_id, job_id)
    session.commit()
    if lifecycle.request_cancel(session, job.id) is None:
        session.refresh(job)
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job.id} has already ended: {job.status.value}")
    _dispatch(session)  # the job's queued shards left their slots to other work
    session.refresh(job)
    return job_out(job, shards_of(session, [job.id])[job.id])


@router.get(
    "/{job_id}/archive",
    status_code=status.HTTP_307_TEMPORARY_REDIRECT,
    response_class=RedirectResponse,
    responses={
        307: {
            "description": "redirect to a short-lived download URL of the archive (no API key needed)",
            "headers": {
                "Location": {
                    "description": "the signed URL: object storage's, or this API's /v1/objects/ link",
                    "schema": {"type": "string", "format": "uri"},
                }
            },
        },
        200: {
            "description": "the archive (zip), where a client follows the redirect",
            "content": {"application/zip": BINARY},
        },
        **NOT_FOUND,
        409: problem("the archive does not exist (yet), or retention removed it"),
        **STORAGE_DOWN,
    },
)
def get_archive(
    job_id: JobId, owner_id: OwnerDep, session: SessionDep, settings: SettingsDep, storage: StorageDep
) -> RedirectResponse:
    """Redirect to the synthetic dataset archive (zip) once the job has succeeded."""
    url = _archive_url(owned_job(session, owner_id, job_id), settings, storage)
    return RedirectResponse(url, status_code=status.HTTP_307_TEMPORARY_REDIRECT)


def _archive_url(job: Job, settings: ApiSettings, storage: Storage) -> str:
    if job.archive_key is None:
        raise _not_there(job, "archive was", "without an archive", "the archive is not ready")
    return storage.presigned_url(
        job.archive_key, expires=settings.presign_ttl, filename=f"diffii-{job.id}.zip"
    )


@router.get(
    "/{job_id}/archive/link",
    response_model=ArchiveLink,
    responses={
        **NOT_FOUND,
        409: problem("the archive does not exist (yet), or retention removed it"),
        **STORAGE_DOWN,
    },
)
def get_archive_link(
    job_id: JobId, owner_id: OwnerDep, session: SessionDep, settings: SettingsDep, storage: StorageDep
) -> ArchiveLink:
    """The archive's signed link as JSON, for a browser to navigate to (the console's download): a page
    cannot read a redirect's Location, and with S3 storage the link is another origin."""
    url = _archive_url(owned_job(session, owner_id, job_id), settings, storage)
    return ArchiveLink(url=url, expires_in=settings.presign_ttl)


def _stored_previews(storage: Storage, job: Job) -> list[PreviewOut]:
    manifest = JobManifest.read(job.manifest)
    stored = set(storage.list(keys.preview_prefix(job.id)))
    return [
        PreviewOut(index=c.index, name=c.name, url=f"/v1/jobs/{job.id}/preview/{c.index}")
        for c in (manifest.classes if manifest else [])
        if keys.preview(job.id, c.index) in stored
    ]


def _not_there(job: Job, removed: str, ended: str, pending: str) -> HTTPException:
    """409 for an artifact a job has not (or no longer) got, saying why."""
    if job.expired_at is not None:
        detail = f"job {job.id}'s {removed} removed on {job.expired_at:%Y-%m-%d} (retention)"
    elif job.status in TERMINAL_JOB_STATUSES:
        detail = f"job {job.id} ended {job.status.value} {ended}"
    else:
        detail = f"{pending}: job {job.id} is {job.status.value}"
    return HTTPException(status.HTTP_409_CONFLICT, detail)


# Why a job that has not ended has no preview sheet yet, by its state; packaging draws them first.
PREVIEW_PENDING = {
    JobStatus.packaging: "its preview sheets are being drawn (the first step of packaging); retry shortly",
    JobStatus.cancelling: "it is stopping and will have no preview sheets",
}
PREVIEW_LATER = "previews are drawn once every image is generated, when packaging starts"


def _no_preview(job: Job) -> HTTPException:
    if job.expired_at is None and job.status not in TERMINAL_JOB_STATUSES:
        reason = PREVIEW_PENDING.get(job.status, PREVIEW_LATER)
        return HTTPException(status.HTTP_409_CONFLICT, f"job {job.id} is {job.status.value}: {reason}")
    return _not_there(job, "images were", "with no preview sheets stored", "")


PREVIEW_CONFLICT = {409: problem("the previews do not exist (yet): the job's state says why"), **STORAGE_DOWN}


@router.get("/{job_id}/preview", response_model=PreviewList, responses={**NOT_FOUND, **PREVIEW_CONFLICT})
def list_previews(job_id: JobId, owner_id: OwnerDep, session: SessionDep, storage: StorageDep) -> PreviewList:
    """Per class, a sheet of a few real images beside synthetic ones, made once every image is
    generated (before the archive is written): look before downloading the archive."""
    job = owned_job(session, owner_id, job_id)
    previews = _stored_previews(storage, job)
    if not previews:
        raise _no_preview(job)
    return PreviewList(job_id=job.id, classes=previews)


@router.get(
    "/{job_id}/preview/{class_index}",
    response_class=Response,
    responses={
        200: {"content": {"image/png": BINARY}, "description": "the class's preview sheet"},
        404: problem("no such job for this API key, or no such class"),
        **PREVIEW_CONFLICT,
    },
)
def get_preview(
    job_id: JobId,
    class_index: Annotated[int, Path(ge=0, le=1_000_000, description="the class's index (job.json)")],
    owner_id: OwnerDep,
    session: SessionDep,
    storage: StorageDep,
) -> Response:
    """One class's preview sheet (PNG)."""
    from services.common.storage import ObjectNotFound

    job = owned_job(session, owner_id, job_id)
    manifest = JobManifest.read(job.manifest)
    if manifest is not None and class_index >= len(manifest.classes):
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"job {job.id} has {len(manifest.classes)} classes; no class {class_index}",
        )
    try:
        png = storage.get_bytes(keys.preview(job.id, class_index))
    except ObjectNotFound:
        raise _no_preview(job) from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={
        204: {"description": "the job, its images and its archive are gone"},
        **NOT_FOUND,
        409: problem("the job has not ended; cancel it first"),
        503: problem("storage failed; nothing was removed from the job's rows"),
    },
)
def delete_job(job_id: JobId, owner_id: OwnerDep, session: SessionDep, storage: StorageDep) -> Response:
    """Remove an ended job: its stored objects (images, pools, archive), then the job itself."""
    from services.common.retention import delete_job as remove
    from services.common.storage import StorageError

    job = owned_job(session, owner_id, job_id)
    if job.status not in TERMINAL_JOB_STATUSES:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"job {job.id} is {job.status.value}; cancel it before deleting it"
        )
    try:
        removed = remove(session, storage, job.id)
    except StorageError as exc:
        log.warning("could not delete the objects of job %s: %s", job.id, exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"storage failed, job {job.id} kept; retry: {exc}"
        ) from None
    if not removed:  # deleted by a concurrent request meanwhile
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
