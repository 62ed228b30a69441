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
from collections.abc import Callable

from sqlalchemy import select

from diffii_core.learning.concepts import concepts_applied
from diffii_core.learning.training import SliceEnded
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
        max_attempts=settings.max_attempts, seed=params.seed, learn_steps=params.concepts.steps,
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
    """One slice of concept learning (tokens + one shared LoRA); the last one stores the concepts, and
    then every class may start.

    Each learn shard is a slice: it resumes the stored checkpoint and learns until the slice is over
    (`slice_over`). A slice that ends short of the last step stores its checkpoint and hands the
    worker back (`shards.next_slice`: the next slice pending for the admission pass, the job still
    `learning`). The one that reaches the last step stores the concepts and ends the stage
    (`finish_learning`). A stop is seen before every micro-batch."""
    job = ctx.job()
    params = job_params(job)
    model = ctx.process.model(params.model)
    dataset = job_dataset(ctx, job)

    folder = checkpoints.restore(ctx, job.id)
    upload = checkpoints.uploader(ctx, job.id, folder, params.concepts.checkpoint_every)

    def progress(step: int, total: int) -> None:
        ctx.images_done = step - ctx.claim.start  # a learn shard's images_done counts its steps
        upload(step, total)

    try:
        concepts = steps.learn_or_load_concepts(
            params.spec, model, dataset, params, checkpoint_dir=folder, progress=progress,
            should_stop=ctx.should_stop, slice_over=slice_over(ctx),
        )  # fmt: skip
    except SliceEnded as ended:
        checkpoints.upload(ctx, job.id, folder)
        with ctx.session() as s:
            ready = shards.next_slice(s, ctx.claim, ended.step, time.monotonic() - ctx.started)
            if ready is None:
                raise StopRequested(job.id) from None
            return ready
    assert concepts is not None  # the learn stage exists only for methods that need concepts
    for path in concepts.save(ctx.process.job_dir(job.id) / "concepts"):
        ctx.storage.put_bytes(keys.concepts_prefix(job.id) + path.name, path.read_bytes())
    ctx.process.concepts[job.id] = concepts
    choice.choose_recipe(ctx, job, params, model, dataset, concepts)  # method "auto" only
    ctx.images_done = params.concepts.steps - ctx.claim.start
    return finish_learning(ctx, job.id)


def slice_over(ctx: ShardContext) -> Callable[[int], bool] | None:
    """When this slice ends: at the first optimiser step after `learn_slice_seconds` from now (the
    model loaded, the checkpoint fetched), or after `learn_slice_steps` steps where that is set;
    None: learning runs to its end."""
    settings = ctx.settings
    began = time.monotonic()
    if settings.learn_slice_steps:
        first: list[int] = []

        def by_steps(step: int) -> bool:
            first[:] = first or [step]
            return step - first[0] + 1 >= settings.learn_slice_steps

        return by_steps
    if settings.learn_slice_seconds > 0:
        return lambda step: time.monotonic() - began >= settings.learn_slice_seconds
    return None


def finish_learning(ctx: ShardContext, job_id: str) -> list[str]:
    """The last slice is done (with its steps), and the job moves on to generating (or packaging)."""
    with ctx.session() as s:
        jobs.lock(s, job_id)
        shards.succeed(s, ctx.claim, time.monotonic() - ctx.started, images_done=ctx.images_done or 0)
        ready = shards.make_ready(s, job_id, (ShardKind.generate,))
        target = JobStatus.generating if ready else JobStatus.packaging
        if not jobs.move(s, job_id, "learned", Actor.worker, target):
            raise StopRequested(job_id)  # cancelled meanwhile; the exception rolls all of this back
        return ready or shards.make_ready(s, job_id, (ShardKind.package,))


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
