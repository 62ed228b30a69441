"""The tasks: thin adapters from a broker message (a shard id) to the runner. Names are the contract
(docs/ARCHITECTURE.md): the API sends them by name without importing this module."""

from __future__ import annotations

from services.worker.celery_app import app, settings


@app.task(name="diffii.prepare")
def prepare(shard_id: str) -> str:
    from services.worker.runner import run_shard

    return run_shard(shard_id, "prepare")


@app.task(name="diffii.learn")
def learn(shard_id: str) -> str:
    from services.worker.runner import run_shard

    return run_shard(shard_id, "learn")


@app.task(name="diffii.generate")
def generate(shard_id: str) -> str:
    from services.worker.runner import run_shard

    return run_shard(shard_id, "generate")


@app.task(name="diffii.package")
def package(shard_id: str) -> str:
    from services.worker.runner import run_shard

    return run_shard(shard_id, "package")


@app.task(name="diffii.sweep")
def sweep() -> dict[str, list[str]]:
    """The recovery sweep as a task, for operators who prefer Celery beat to the built-in timer."""
    from dataclasses import asdict

    from services.worker.process import current
    from services.worker.sweeper import sweep as run

    return asdict(
        run(current().sessions, resend_after=settings.resend_after_seconds, policy=settings.retry_policy())
    )
