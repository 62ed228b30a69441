"""A job row as the library reads it: its parameters and its classes' plans."""

from __future__ import annotations

from diffii_core.params import JobParams
from services.common.manifest import JobManifest
from services.common.models import Job


def job_params(job: Job) -> JobParams:
    return JobParams.model_validate(job.params)


def job_manifest(job: Job) -> JobManifest:
    """The manifest the prepare stage wrote (every later stage runs after it)."""
    manifest = JobManifest.read(job.manifest)
    if manifest is None:
        raise RuntimeError(f"job {job.id} has no manifest: its prepare stage has not run")
    return manifest
