"""Fetching a job's dataset archive: an uploaded dataset from the service's own storage, or an
`s3://bucket/key` from a bucket the operator allowed."""

from __future__ import annotations

from pathlib import Path

from diffii_core.errors import DatasetError
from services.common.dataset_uri import parse_s3_uri
from services.common.models import Dataset as DatasetRow
from services.common.models import Job
from services.common.storage import ObjectNotFound, make_storage
from services.worker.context import ShardContext


def fetch_source(ctx: ShardContext, job: Job, folder: Path) -> Path:
    """Download the job's dataset archive under `folder`; DatasetError when it cannot be had."""
    settings = ctx.settings
    if job.dataset_id:
        with ctx.session() as s:
            row = s.get(DatasetRow, job.dataset_id)
            if row is None:
                raise DatasetError(f"dataset {job.dataset_id} no longer exists")
            key, filename = row.object_key, row.filename
        storage = ctx.storage
    else:
        uri = parse_s3_uri(job.dataset_uri or "")
        if uri is None:
            raise DatasetError(f"dataset_uri {job.dataset_uri!r} is not s3://bucket/key")
        if uri.bucket not in settings.allowed_dataset_buckets:  # the API checks too; this is defence in depth
            raise DatasetError(f"bucket {uri.bucket!r} is not one the operator allowed")
        if settings.storage != "s3":
            raise DatasetError("s3:// datasets need the service to run with S3 storage")
        key, filename = uri.key, uri.filename
        storage = make_storage(settings.model_copy(update={"s3_bucket": uri.bucket}))
    # The user's own file name: the dataset reader's messages then name the file the user knows.
    name = Path(filename or key).name
    path = folder / "source" / (name if name not in ("", ".", "..") else "dataset.zip")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        storage.download_file(key, path)
    except ObjectNotFound:
        raise DatasetError(f"dataset archive {job.dataset_uri or key} was not found") from None
    return path
