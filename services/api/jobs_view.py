"""Job rows -> API documents: status, parameters and progress summed over the job's shards."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.api.schemas import (
    ClassOut,
    DatasetReportOut,
    JobOut,
    LearningOut,
    ProgressOut,
    ShardOut,
    SkippedOut,
)
from services.common.manifest import JobManifest
from services.common.models import Job, JobStatus, Shard, ShardKind, ShardStatus
from services.common.timeutil import as_utc


def _shard_out(s: Shard) -> ShardOut:
    return ShardOut(
        kind=s.kind,
        class_name=s.class_name,
        class_index=s.class_index,
        start=s.start,
        stop=s.stop,
        status=s.status,
        attempts=s.attempts,
        max_attempts=s.max_attempts,
        images_done=s.images_done,
        images_total=s.images_total,
        error=s.error,
        not_before=as_utc(s.not_before),
        worker=s.worker,
        heartbeat_at=as_utc(s.heartbeat_at),
    )


LEARNED = (JobStatus.generating, JobStatus.packaging, JobStatus.succeeded)


def _learning(job: Job, shards: list[Shard]) -> LearningOut | None:
    """Step of steps over the job's learn shards (one per slice, each covering steps [start, stop)
    with images_done counting the steps it has done); null where the job has none."""
    learn = [s for s in shards if s.kind == ShardKind.learn]
    if not learn:
        return None
    steps = max(s.stop for s in learn) or int((job.params or {}).get("concepts", {}).get("steps") or 0)
    if job.status in LEARNED:
        return LearningOut(step=steps, steps=steps)
    return LearningOut(step=min(steps, max(s.start + s.images_done for s in learn)), steps=steps)


def _progress(job: Job, shards: list[Shard], with_detail: bool) -> ProgressOut:
    # The user-facing "shards" are the generate rows; prepare/learn/package show up as the stage.
    generate = [s for s in shards if s.kind == ShardKind.generate]
    images_total = job.images_total or sum(s.images_total for s in generate)
    return ProgressOut(
        stage=job.status,
        shards_done=sum(1 for s in generate if s.status == ShardStatus.succeeded),
        shards_total=len(generate),
        images_done=sum(s.images_done for s in generate),
        images_total=images_total,
        learning=_learning(job, shards),
        shards=[_shard_out(s) for s in generate] if with_detail else None,
        steps=[_shard_out(s) for s in shards if s.kind != ShardKind.generate] if with_detail else None,
    )


def _dataset_report(stored: dict | None) -> DatasetReportOut | None:
    manifest = JobManifest.read(stored)
    if manifest is None:
        return None
    classes = [ClassOut(name=c.name, images=c.images) for c in manifest.classes]
    return DatasetReportOut(
        classes=classes,
        images=sum(c.images for c in classes),
        skipped=[SkippedOut(path=s.path, reason=s.reason) for s in manifest.skipped],
    )


def job_out(job: Job, shards: list[Shard], *, with_detail: bool = True) -> JobOut:
    return JobOut(
        id=job.id,
        status=job.status,
        message=job.message,
        dataset_id=job.dataset_id,
        dataset_uri=job.dataset_uri,
        params=job.params,
        cancel_requested=job.cancel_requested,
        priority=job.priority or 0,
        archive_ready=job.archive_key is not None,
        created_at=as_utc(job.created_at),
        updated_at=as_utc(job.updated_at),
        finished_at=as_utc(job.finished_at),
        progress=_progress(job, shards, with_detail),
        dataset=_dataset_report(job.manifest) if with_detail else None,
    )


def shards_of(session: Session, job_ids: Iterable[str]) -> dict[str, list[Shard]]:
    """Every job's shards in one query, ordered the way the job runs them."""
    ids = list(job_ids)
    grouped: dict[str, list[Shard]] = defaultdict(list)
    if ids:
        for shard in session.scalars(select(Shard).where(Shard.job_id.in_(ids)).order_by(Shard.seq)):
            grouped[shard.job_id].append(shard)
    return grouped
