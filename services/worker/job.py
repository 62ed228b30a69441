"""A job row as the library reads it: its parameters and its classes' plans."""

from __future__ import annotations

from diffii_core.params import JobParams
from services.common.manifest import JobManifest
from services.common.models import Job


def job_params(job: Job) -> JobParams:
    """The parameters the job's images are made with: for method "auto", once its learn stage has
    chosen (services/worker/choice.py), the chosen candidate's."""
    manifest = JobManifest.read(job.manifest)
    if manifest is not None and manifest.choice is not None:
        return JobParams.model_validate(manifest.choice.params)
    return JobParams.model_validate(job.params)


def job_manifest(job: Job) -> JobManifest:
    """The manifest the prepare stage wrote (every later stage runs after it)."""
    manifest = JobManifest.read(job.manifest)
    if manifest is None:
        raise RuntimeError(f"job {job.id} has no manifest: its prepare stage has not run")
    return manifest
