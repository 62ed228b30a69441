"""Method "auto" in the service: the recipe is chosen once, in the learn stage right after the concepts
are learned (`diffii_core.pipeline.choice`, the same function `diffii augment` calls), and kept in the
job's manifest (`ChoiceEntry`), where `job.job_params` reads the chosen candidate's parameters for the
generate and package stages. The shards planned at prepare stay valid whichever candidate wins: every
candidate makes the same count per class (floor(expansion x N), no borrowed images)."""

from __future__ import annotations

from sqlalchemy import update

from diffii_core.dataset import Dataset
from diffii_core.learning.concepts import Concepts
from diffii_core.models import LoadedModel
from diffii_core.params import AUTO, JobParams
from diffii_core.pipeline.choice import choose
from services.common.manifest import ChoiceEntry
from services.common.models import Job, JobStatus
from services.worker.context import ShardContext
from services.worker.job import job_manifest


def choose_recipe(
    ctx: ShardContext,
    job: Job,
    params: JobParams,
    model: LoadedModel,
    dataset: Dataset,
    concepts: Concepts | None,
) -> None:
    """Choose and store the recipe of a job of method "auto"; nothing for any other job, or when an
    earlier attempt of the learn stage stored it (the choice is deterministic: a retry would store the
    same)."""
    if params.method != AUTO:
        return
    manifest = job_manifest(job)
    if manifest.choice is not None:
        return
    made = choose(
        model, concepts, dataset, params, manifest.plans(), batch_size=ctx.settings.batch_size,
        should_stop=ctx.should_stop,
    )  # fmt: skip
    entry = ChoiceEntry(params=made.params.model_dump(mode="json"), record=made.record)
    stored = manifest.model_copy(update={"choice": entry}).stored()
    with ctx.session() as s:
        s.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.learning)
            .values(manifest=stored)
            .execution_options(synchronize_session=False)
        )
    ctx.raise_if_stopped()
