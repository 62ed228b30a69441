"""What each stage does with a claimed shard, and which shards it makes ready next.

Every stage finishes in one transaction that marks its shard succeeded (fenced by the claim) and
moves the job on. Each returns the shard ids to dispatch once that transaction has committed; if the
process dies before dispatching, those rows are `pending` and the sweeper sends them.

The library's steps do the work (`diffii_core.pipeline.steps`, the same ones `diffii augment` runs);
around them: `caches` (a job's artifacts per process), `checkpoints` (concept learning's, in
storage), `packaging` (the archive), `shard_plan` (the shards prepare creates).
"""

from __future__ import annotations

import json
import logging
import time

from sqlalchemy import select

from diffii_core.learning.concepts import concepts_applied
from diffii_core.pipeline import steps
from services.common import keys
from services.common.lifecycle import jobs, shards
from services.common.lifecycle.shards import LeaseLost
from services.common.lifecycle.table import Actor
from services.common.manifest import ClassEntry, JobManifest
from services.common.models import Job, JobStatus, ShardKind
from services.worker import checkpoints, choice
from services.worker.caches import class_pool, job_classifier, job_concepts, job_dataset
from services.worker.context import ShardContext, StopRequested
from services.worker.job import job_manifest, job_params
from services.worker.packaging import write_archive
from services.worker.shard_plan import job_shards

log = logging.getLogger("diffii.worker")


def prepare(ctx: ShardContext) -> list[str]:
    """Fetch and check the dataset, write the class manifest, create the job's other shards."""
    job = ctx.job()
    params = job_params(job)
    model = ctx.process.model(params.model)  # ModelError: the job fails at once
    dataset = job_dataset(ctx, job)  # DatasetError: the job fails at once
    ctx.raise_if_stopped()

    found = dataset.manifest()
    manifest = JobManifest(
        classes=[ClassEntry.from_plan(p) for p in steps.prepare(dataset, params)],
        images=found["images"],
        skipped=found["skipped"],
    )
    settings = ctx.settings
    rows, status, first = job_shards(
        job.id, manifest.classes, learns=params.spec.needs_concepts, shard_size=settings.shard_size,
        max_attempts=settings.max_attempts, seed=params.seed,
    )  # fmt: skip
    with ctx.session() as s:
        jobs.lock(s, job.id)
        shards.succeed(s, ctx.claim, time.monotonic() - ctx.started)
        moved = jobs.move(
            s,
            job.id,
            "prepared",
            Actor.worker,
            status,
            manifest=manifest.stored(),
            model_revision=model.revision,
            images_total=sum(c.generated for c in manifest.classes),
        )
        if not moved:
            raise StopRequested(job.id)  # cancelled meanwhile; the exception rolls all of this back
        s.add_all(rows)
        s.flush()
        return shards.make_ready(s, job.id, (first,))


def learn(ctx: ShardContext) -> list[str]:
    """Learn the job's concepts (tokens + one shared LoRA) and store them; then every class may start."""
    job = ctx.job()
    params = job_params(job)
    model = ctx.process.model(params.model)
    dataset = job_dataset(ctx, job)

    folder = checkpoints.restore(ctx, job.id)
    concepts = steps.learn_or_load_concepts(
        params.spec, model, dataset, params, checkpoint_dir=folder,
        progress=checkpoints.uploader(ctx, job.id, folder, params.concepts.checkpoint_every),
        should_stop=ctx.should_stop,
    )  # fmt: skip
    assert concepts is not None  # the learn stage exists only for methods that need concepts
    for path in concepts.save(ctx.process.job_dir(job.id) / "concepts"):
        ctx.storage.put_bytes(keys.concepts_prefix(job.id) + path.name, path.read_bytes())
    ctx.process.concepts[job.id] = concepts
    choice.choose_recipe(ctx, job, params, model, dataset, concepts)  # method "auto" only

    with ctx.session() as s:
        jobs.lock(s, job.id)
        shards.succeed(s, ctx.claim, time.monotonic() - ctx.started)
        ready = shards.make_ready(s, job.id, (ShardKind.generate,))
        target = JobStatus.generating if ready else JobStatus.packaging
        if not jobs.move(s, job.id, "learned", Actor.worker, target):
            raise StopRequested(job.id)  # cancelled meanwhile; the exception rolls all of this back
        return ready or shards.make_ready(s, job.id, (ShardKind.package,))


def _missing_runs(missing: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for i in missing:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def generate(ctx: ShardContext) -> list[str]:
    """Images [start, stop) of one class, each stored under its deterministic key as it is made."""
    c = ctx.claim
    assert c.class_index is not None and c.class_name is not None
    job = ctx.job()
    params = job_params(job)
    plans = job_manifest(job).plans()
    plan = plans[c.class_index]
    if plan.name != c.class_name:
        raise RuntimeError(f"class {c.class_index} is {plan.name!r} in the manifest, not {c.class_name!r}")

    # Resume: indices already stored by an earlier attempt are not made again.
    stored = keys.stored_indices(ctx.storage.list(keys.images_prefix(job.id, c.class_index)))
    missing = [i for i in range(c.start, c.stop) if i not in stored]
    ctx.images_done = (c.stop - c.start) - len(missing)
    ctx.beat()
    if missing:
        model = ctx.process.model(params.model)
        concepts = job_concepts(ctx, job, params)
        spec = params.spec
        with concepts_applied(model, concepts):
            # Each is None where the job's method does not use it (the step decides).
            pool = class_pool(ctx, job, params, model, concepts, plan)
            references = steps.reference_images(spec, job_dataset(ctx, job).classes[c.class_index])
            classifier = job_classifier(ctx, job, params, model)
            batch = ctx.settings.batch_size
            for start, stop in _missing_runs(missing):
                for image in steps.generate(
                    model, params, plan, [p.name for p in plans], start=start, stop=stop, batch_size=batch,
                    concepts=concepts, pool=pool, references=references, classifier=classifier,
                    should_stop=ctx.should_stop,
                ):  # fmt: skip
                    ctx.storage.put_bytes(
                        keys.image_png(job.id, c.class_index, image.index), image.png, "image/png"
                    )
                    ctx.storage.put_bytes(
                        keys.image_meta(job.id, c.class_index, image.index),
                        json.dumps(image.metadata, ensure_ascii=False, sort_keys=True).encode(),
                        "application/json",
                    )
                    ctx.images_done += 1
                    if ctx.images_done % batch == 0:
                        ctx.beat()

    with ctx.session() as s:
        return shards.finish_generate(s, c, time.monotonic() - ctx.started)


def package(ctx: ShardContext) -> list[str]:
    """Stream every image, metadata.jsonl and job.json into one zip (a multipart upload on S3)."""
    job = ctx.job()
    manifest = job_manifest(job)
    key = keys.archive(job.id)
    try:
        skipped = [s.model_dump() for s in manifest.skipped]
        written, size = write_archive(ctx, job, job_params(job), manifest.plans(), skipped)
        with ctx.session() as s:
            jobs.lock(s, job.id)
            shards.succeed(s, ctx.claim, time.monotonic() - ctx.started, images_done=written)
            if not jobs.move(s, job.id, "packaged", Actor.worker, archive_key=key, archive_bytes=size):
                raise StopRequested(job.id)
    except (StopRequested, LeaseLost):
        # Cancelled or failed while packaging: no archive may outlive that decision. The writer
        # discarded an unfinished one; this removes one finished just before the stop. After a lost
        # lease the archive may be another worker's finished result, so only when the job did not succeed.
        with ctx.session() as s:
            status = s.scalar(select(Job.status).where(Job.id == job.id))
        if status in (JobStatus.cancelling, JobStatus.cancelled, JobStatus.failed):
            try:
                ctx.storage.delete(key)
            except Exception:
                log.warning("could not delete the archive of a stopped job", exc_info=True)
        raise
    log.info("job succeeded", extra={"images": written, "archive_key": key})
    return []


STAGES = {
    ShardKind.prepare: prepare,
    ShardKind.learn: learn,
    ShardKind.generate: generate,
    ShardKind.package: package,
}
