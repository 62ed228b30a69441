"""A job's artifacts as a worker process keeps them between the shards it runs: the decoded dataset,
the learned concepts, the classes' inversion pools and Real-Filter's classifier.

Each is made once per process and job: fetched from storage where a stage stored it, else computed
by the library's step (which says whether the job's method uses it at all: None when not).
"""

from __future__ import annotations

from typing import Any

import torch

from diffii_core.dataset import Dataset, load_dataset
from diffii_core.inversion.invert import load_pool, save_pool
from diffii_core.learning.concepts import Concepts
from diffii_core.models import LoadedModel
from diffii_core.params import JobParams
from diffii_core.pipeline import steps
from diffii_core.pipeline.steps import ClassPlan
from services.common import keys
from services.common.models import Job
from services.worker.context import ShardContext
from services.worker.job import job_manifest
from services.worker.sources import fetch_source


def job_dataset(ctx: ShardContext, job: Job) -> Dataset:
    def load() -> Dataset:
        folder = ctx.process.job_dir(job.id)
        return load_dataset(fetch_source(ctx, job, folder), ctx.settings.make_dataset_limits())

    return ctx.process.datasets.get_or(job.id, load)


def job_concepts(ctx: ShardContext, job: Job, params: JobParams) -> Concepts | None:
    """The concepts the learn stage stored, checked against the job's classes and method."""
    spec = params.spec
    if not spec.needs_concepts:  # then the job has no learn stage, and nothing is stored to fetch
        return None

    def load() -> Concepts:
        folder = ctx.process.job_dir(job.id) / "concepts"
        folder.mkdir(parents=True, exist_ok=True)
        for key in ctx.storage.list(keys.concepts_prefix(job.id)):
            ctx.storage.download_file(key, folder / key.rsplit("/", 1)[-1])
        # Never learned here: missing concepts are an ArtifactError, a retryable failure.
        return steps.load_concepts(spec, folder, [c.name for c in job_manifest(job).classes], params)

    return ctx.process.concepts.get_or(job.id, load)


def job_classifier(ctx: ShardContext, job: Job, params: JobParams, model: LoadedModel) -> Any:
    """Real-Filter's classifier of the real set: deterministic, so each process fits its own once."""

    def fit() -> Any:
        return steps.fit_classifier(params.spec, model, job_dataset(ctx, job), params)

    return ctx.process.pools.get_or((job.id, "classifier"), fit)


def class_pool(
    ctx: ShardContext,
    job: Job,
    params: JobParams,
    model: LoadedModel,
    concepts: Concepts | None,
    plan: ClassPlan,
) -> torch.Tensor | None:
    """The class's inversion pool: loaded if stored, else computed once and stored.

    Shards of one split class may compute it concurrently; the result is deterministic, so whichever
    write lands last is the same bytes.
    """
    key = keys.pool(job.id, plan.index)

    def load() -> torch.Tensor | None:
        path = ctx.process.job_dir(job.id) / f"pool-{plan.index}.safetensors"
        if ctx.storage.exists(key):
            ctx.storage.download_file(key, path)
            return load_pool(path)
        dataset = job_dataset(ctx, job)
        pool = steps.invert(
            params.spec, model, concepts, dataset, plan, params, batch_size=ctx.settings.batch_size
        )
        if pool is not None:  # None: the method does not start from inversions
            save_pool(pool, path)
            ctx.storage.put_bytes(key, path.read_bytes())
        return pool

    return ctx.process.pools.get_or((job.id, plan.index), load)
