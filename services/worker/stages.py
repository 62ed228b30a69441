"""What each stage does with a claimed shard, and which shards it makes ready next.

Every stage finishes in one transaction that marks its shard succeeded (fenced by the claim) and
moves the job on. Each returns the shard ids to dispatch once that transaction has committed; if the
process dies before dispatching, those rows are `pending` and the sweeper sends them.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from sqlalchemy import select

from services.common import keys
from services.common.lifecycle import jobs, shards
from services.common.lifecycle.shards import LeaseLost
from services.common.lifecycle.table import Actor
from services.common.models import Dataset as DatasetRow
from services.common.models import Job, JobStatus, Shard, ShardKind
from services.common.storage import ObjectNotFound, make_storage
from services.worker.context import ShardContext, StopRequested

if TYPE_CHECKING:
    import torch

    from diffii_core.dataset import Dataset
    from diffii_core.learning.concepts import Concepts
    from diffii_core.methods import MethodSpec
    from diffii_core.params import JobParams
    from diffii_core.pipeline.steps import ClassPlan

log = logging.getLogger("diffii.worker")


def job_params(job: Job) -> JobParams:
    from diffii_core.params import JobParams

    return JobParams.model_validate(job.params)


def method(params: JobParams) -> MethodSpec:
    from diffii_core.methods import REGISTRY

    return REGISTRY[params.method]


def class_plans(job: Job) -> list[ClassPlan]:
    """The classes as the prepare stage recorded them in the job's manifest."""
    from diffii_core.pipeline.steps import ClassPlan

    return [ClassPlan(**c) for c in (job.manifest or {}).get("classes", [])]


def split_ranges(total: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most shard_size images, as even as possible."""
    if total <= 0:
        return []
    parts = math.ceil(total / shard_size)
    bounds = [round(i * total / parts) for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


# -- shared artifacts ---------------------------------------------------------------------------------


def _fetch_source(ctx: ShardContext, job: Job, folder: Path) -> Path:
    from diffii_core.errors import DatasetError

    settings = ctx.settings
    if job.dataset_id:
        with ctx.session() as s:
            row = s.get(DatasetRow, job.dataset_id)
            if row is None:
                raise DatasetError(f"dataset {job.dataset_id} no longer exists")
            key, filename = row.object_key, row.filename
        storage = ctx.storage
    else:
        uri = urlparse(job.dataset_uri or "")
        if uri.scheme != "s3" or not uri.netloc or not uri.path.strip("/"):
            raise DatasetError(f"dataset_uri {job.dataset_uri!r} is not s3://bucket/key")
        if uri.netloc not in settings.allowed_dataset_buckets:  # the API checks too; this is defence in depth
            raise DatasetError(f"bucket {uri.netloc!r} is not one the operator allowed")
        if settings.storage != "s3":
            raise DatasetError("s3:// datasets need the service to run with S3 storage")
        key, filename = uri.path.lstrip("/"), uri.path.rsplit("/", 1)[-1]
        storage = make_storage(settings.model_copy(update={"s3_bucket": uri.netloc}))
    # The user's own file name: the dataset reader's messages then name the file the user knows.
    name = Path(filename or key).name
    path = folder / "source" / (name if name not in ("", ".", "..") else "dataset.zip")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        storage.download_file(key, path)
    except ObjectNotFound:
        raise DatasetError(f"dataset archive {job.dataset_uri or key} was not found") from None
    return path


def job_dataset(ctx: ShardContext, job: Job) -> Dataset:
    from diffii_core.dataset import load_dataset

    def load() -> Dataset:
        folder = ctx.process.job_dir(job.id)
        return load_dataset(_fetch_source(ctx, job, folder), ctx.settings.make_dataset_limits())

    return ctx.process.datasets.get_or(job.id, load)


def job_concepts(ctx: ShardContext, job: Job, params: JobParams) -> Concepts | None:
    if not method(params).needs_concepts:
        return None
    from diffii_core.learning.concepts import Concepts

    def load() -> Concepts:
        folder = ctx.process.job_dir(job.id) / "concepts"
        folder.mkdir(parents=True, exist_ok=True)
        for key in ctx.storage.list(keys.concepts_prefix(job.id)):
            ctx.storage.download_file(key, folder / key.rsplit("/", 1)[-1])
        return Concepts.load(folder)  # ArtifactError when missing: a retryable failure

    return ctx.process.concepts.get_or(job.id, load)


def job_classifier(ctx: ShardContext, job: Job, params: JobParams, model: Any) -> Any:
    """Real-Filter's classifier of the real set: deterministic, so each process fits its own once."""
    from diffii_core.pipeline import steps

    def fit() -> Any:
        return steps.classifier(method(params), model, job_dataset(ctx, job), params)

    return ctx.process.pools.get_or((job.id, "classifier"), fit)


def class_pool(ctx: ShardContext, job: Job, params: JobParams, model: Any, concepts: Any) -> torch.Tensor:
    """The class's inversion pool: loaded if stored, else computed once and stored.

    Shards of one split class may compute it concurrently; the result is deterministic, so whichever
    write lands last is the same bytes.
    """
    from diffii_core.inversion.invert import load_pool, save_pool
    from diffii_core.pipeline import steps

    c = ctx.claim
    assert c.class_index is not None and c.class_name is not None
    key = keys.pool(job.id, c.class_index)

    def load() -> torch.Tensor:
        path = ctx.process.job_dir(job.id) / f"pool-{c.class_index}.safetensors"
        if ctx.storage.exists(key):
            ctx.storage.download_file(key, path)
            return load_pool(path)
        dataset = job_dataset(ctx, job)
        plan = class_plans(job)[c.class_index]
        if plan.name != c.class_name:
            raise RuntimeError(
                f"class {c.class_index} is {plan.name!r} in the manifest, not {c.class_name!r}"
            )
        pool = steps.invert(
            method(params), model, concepts, dataset, plan, params, batch_size=ctx.settings.batch_size
        )
        assert pool is not None  # called only for a method that inverts
        save_pool(pool, path)
        ctx.storage.put_bytes(key, path.read_bytes())
        return pool

    return ctx.process.pools.get_or((job.id, c.class_index), load)


# -- stages ---------------------------------------------------------------------------------------------


def prepare(ctx: ShardContext) -> list[str]:
    """Fetch and check the dataset, write the class manifest, create the job's other shards."""
    from diffii_core.pipeline import steps

    job = ctx.job()
    params = job_params(job)
    model = ctx.process.model(params.model)  # ModelError: the job fails at once
    dataset = job_dataset(ctx, job)  # DatasetError: the job fails at once
    ctx.raise_if_stopped()

    plans = steps.prepare(dataset, params)
    counts = [p.generated for p in plans]
    manifest = dataset.manifest()
    manifest["classes"] = [p.to_dict() for p in plans]
    settings = ctx.settings
    rows: list[Shard] = []

    def add(kind: ShardKind, **values: Any) -> None:
        rows.append(
            shards.new_shard(
                Actor.worker,
                job_id=job.id,
                seq=len(rows) + 1,
                kind=kind,
                max_attempts=settings.max_attempts,
                seed=params.seed,
                **values,
            )
        )

    learns = method(params).needs_concepts
    if learns:
        add(ShardKind.learn)
    for p in plans:
        for start, stop in split_ranges(p.generated, settings.shard_size):
            add(
                ShardKind.generate,
                class_index=p.index,
                class_name=p.name,
                start=start,
                stop=stop,
                images_total=stop - start,
            )
    add(ShardKind.package, images_total=sum(counts))

    if learns:
        status, first = JobStatus.learning, ShardKind.learn
    elif any(r.kind == ShardKind.generate for r in rows):
        status, first = JobStatus.generating, ShardKind.generate
    else:
        status, first = JobStatus.packaging, ShardKind.package
    with ctx.session() as s:
        jobs.lock(s, job.id)
        shards.succeed(s, ctx.claim, time.monotonic() - ctx.started)
        moved = jobs.move(
            s,
            job.id,
            "prepared",
            Actor.worker,
            status,
            manifest=manifest,
            model_revision=model.revision,
            images_total=sum(counts),
        )
        if not moved:
            raise StopRequested(job.id)  # cancelled meanwhile; the exception rolls all of this back
        s.add_all(rows)
        s.flush()
        return shards.make_ready(s, job.id, (first,))


def learn(ctx: ShardContext) -> list[str]:
    """Learn the job's concepts (tokens + one shared LoRA) and store them; then every class may start."""
    from diffii_core.pipeline import steps

    job = ctx.job()
    params = job_params(job)
    model = ctx.process.model(params.model)
    dataset = job_dataset(ctx, job)

    # Checkpoints go to storage too, so another worker resumes a long run after this one dies.
    checkpoints = ctx.process.job_dir(job.id) / "checkpoint"
    checkpoints.mkdir(parents=True, exist_ok=True)
    for key in ctx.storage.list(keys.checkpoint_prefix(job.id)):
        ctx.storage.download_file(key, checkpoints / key.rsplit("/", 1)[-1])
    every = params.concepts.checkpoint_every

    def progress(step: int, total: int) -> None:
        if step % every == 0 and step < total:
            for path in checkpoints.iterdir():
                if path.is_file() and not path.name.startswith("."):
                    ctx.storage.put_bytes(keys.checkpoint_prefix(job.id) + path.name, path.read_bytes())

    concepts = steps.concepts(
        method(params), model, dataset, params, checkpoint_dir=checkpoints, progress=progress,
        should_stop=ctx.should_stop,
    )  # fmt: skip
    assert concepts is not None  # the learn stage exists only for methods that need concepts
    folder = ctx.process.job_dir(job.id) / "concepts"
    for path in concepts.save(folder):
        ctx.storage.put_bytes(keys.concepts_prefix(job.id) + path.name, path.read_bytes())
    ctx.process.concepts[job.id] = concepts

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
    from diffii_core.learning.concepts import concepts_applied
    from diffii_core.pipeline import steps

    c = ctx.claim
    assert c.class_index is not None and c.class_name is not None
    job = ctx.job()
    params = job_params(job)
    plans = class_plans(job)
    plan = plans[c.class_index]

    # Resume: indices already stored by an earlier attempt are not made again.
    stored = keys.stored_indices(ctx.storage.list(keys.images_prefix(job.id, c.class_index)))
    missing = [i for i in range(c.start, c.stop) if i not in stored]
    ctx.images_done = (c.stop - c.start) - len(missing)
    ctx.beat()
    if missing:
        model = ctx.process.model(params.model)
        concepts = job_concepts(ctx, job, params)
        spec = method(params)
        with concepts_applied(model, concepts):
            pool = class_pool(ctx, job, params, model, concepts) if spec.inversion else None
            references = None
            if spec.references:
                references = steps.references(spec, job_dataset(ctx, job).classes[c.class_index])
            classifier = job_classifier(ctx, job, params, model) if spec.classifier else None
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


def store_previews(ctx: ShardContext, job: Job, plans: list[ClassPlan]) -> dict[str, bytes]:
    """Each class's preview sheet, stored first (the API serves them while the archive is still
    being written) and returned for the archive. Rebuilt on a retry: they are cheap and deterministic."""
    from diffii_core.output.preview import REAL_PER_SHEET, SYNTHETIC_PER_SHEET
    from diffii_core.pipeline import steps

    dataset = job_dataset(ctx, job)
    sheets = {}
    for plan in plans:
        synthetic = [
            ctx.storage.get_bytes(keys.image_png(job.id, plan.index, i))
            for i in range(min(plan.generated, SYNTHETIC_PER_SHEET))
        ]
        real = [item.open() for item in dataset.classes[plan.index].images[:REAL_PER_SHEET]]
        sheet = steps.preview(plan, real, synthetic)
        ctx.storage.put_bytes(keys.preview(job.id, plan.index), sheet, "image/png")
        sheets[plan.name] = sheet
    return sheets


class _SizeOf:
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


def package(ctx: ShardContext) -> list[str]:
    """Stream every image, metadata.jsonl and job.json into one zip (a multipart upload on S3)."""
    from diffii_core.output.archive import ArchiveWriter
    from diffii_core.pipeline import steps

    job = ctx.job()
    params = job_params(job)
    plans = class_plans(job)
    key = keys.archive(job.id)
    written = 0
    try:
        sheets = store_previews(ctx, job, plans)
        with ctx.storage.open_writer(key) as raw:
            handle = _SizeOf(raw)
            writer = ArchiveWriter(handle)  # type: ignore[arg-type]
            writer.add_previews(sheets)
            metadata = []
            for plan in plans:
                for index in range(plan.generated):
                    if written % 16 == 0:
                        ctx.images_done = written
                        if ctx.should_stop():
                            ctx.raise_if_stopped()
                    meta = json.loads(ctx.storage.get_bytes(keys.image_meta(job.id, plan.index, index)))
                    writer.add_image(
                        meta["file_name"], ctx.storage.get_bytes(keys.image_png(job.id, plan.index, index))
                    )
                    metadata.append(meta)
                    written += 1
            model = {"name": params.model, "revision": job.model_revision or ""}
            skipped = (job.manifest or {}).get("skipped", [])
            steps.package(writer, metadata, params, model, plans, skipped, job_id=job.id)
        with ctx.session() as s:
            jobs.lock(s, job.id)
            shards.succeed(s, ctx.claim, time.monotonic() - ctx.started, images_done=written)
            if not jobs.move(s, job.id, "packaged", Actor.worker, archive_key=key, archive_bytes=handle.size):
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
