"""The job's archive, streamed from the stored images into one zip (a multipart upload on S3), and
the classes' preview sheets."""

from __future__ import annotations

import json
from typing import Any

from diffii_core.output.archive import ArchiveWriter
from diffii_core.output.preview import REAL_PER_SHEET, SYNTHETIC_PER_SHEET
from diffii_core.params import JobParams
from diffii_core.pipeline import steps
from diffii_core.pipeline.steps import ClassPlan
from services.common import keys
from services.common.models import Job
from services.worker.caches import job_dataset
from services.worker.context import ShardContext
from services.worker.job import job_manifest


class SizeCounter:
    """Passes a writer through and keeps the size of what was written (the owner's stored-bytes
    quota counts archives). The furthest position reached: zipfile seeks back to patch headers."""

    def __init__(self, inner: Any) -> None:
        self._inner, self.size, self._written = inner, 0, 0

    def write(self, data: Any) -> int:
        written = self._inner.write(data)
        self._written += len(data)
        try:
            position = self._inner.tell()
        except (AttributeError, OSError):
            position = self._written  # a stream that cannot seek only ever appends
        self.size = max(self.size, position)
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def store_previews(ctx: ShardContext, job: Job, plans: list[ClassPlan]) -> dict[str, bytes]:
    """Each class's preview sheet, stored first (the API serves them while the archive is still
    being written) and returned for the archive. Rebuilt on a retry: they are cheap and deterministic."""
    dataset = job_dataset(ctx, job)
    sheets = {}
    for plan in plans:
        synthetic = [
            ctx.storage.get_bytes(keys.image_png(job.id, plan.index, i))
            for i in range(min(plan.generated, SYNTHETIC_PER_SHEET))
        ]
        real = [item.open() for item in dataset.classes[plan.index].images[:REAL_PER_SHEET]]
        sheet = steps.render_preview(plan, real, synthetic)
        ctx.storage.put_bytes(keys.preview(job.id, plan.index), sheet, "image/png")
        sheets[plan.name] = sheet
    return sheets


def write_archive(
    ctx: ShardContext, job: Job, params: JobParams, plans: list[ClassPlan], skipped: list[dict[str, str]]
) -> tuple[int, int]:
    """Previews, every stored image, metadata.jsonl and job.json into the job's archive; returns
    (images written, archive bytes). Checks for a stop every 16 images."""
    written = 0
    sheets = store_previews(ctx, job, plans)
    with ctx.storage.open_writer(keys.archive(job.id)) as raw:
        handle = SizeCounter(raw)
        writer = ArchiveWriter(handle)  # type: ignore[arg-type]
        metadata = []
        for plan in plans:
            for index in range(plan.generated):
                if written % 16 == 0:
                    ctx.images_done = written
                    if ctx.should_stop():
                        ctx.raise_if_stopped()
                meta = json.loads(ctx.storage.get_bytes(keys.image_meta(job.id, plan.index, index)))
                png = ctx.storage.get_bytes(keys.image_png(job.id, plan.index, index))
                writer.add_image(meta["file_name"], png)
                metadata.append(meta)
                written += 1
        model = {"name": params.model, "revision": job.model_revision or ""}
        chosen = job_manifest(
            job
        ).choice  # method "auto": every candidate's score, as `diffii augment` writes
        extra = {"choice": chosen.record} if chosen is not None else {}
        steps.package(writer, sheets, metadata, params, model, plans, skipped, job_id=job.id, **extra)
    return written, handle.size
