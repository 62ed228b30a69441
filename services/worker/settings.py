"""Worker settings (`DIFFII_*` environment variables), on top of the shared ones.

Time limits must stay below the broker's visibility timeout: otherwise Redis hands a still-running
task to a second worker. Validation enforces soft < hard < visibility timeout.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from services.common.lifecycle.retry import RetryPolicy
from services.common.settings import CommonSettings


class WorkerSettings(CommonSettings):
    concurrency: int = Field(1, ge=1, le=64, description="task processes per worker (one per GPU)")
    queues: list[str] = Field(default_factory=lambda: ["diffii"], description="queues this worker consumes")
    lease_seconds: float = Field(
        60.0, gt=0, description="a running shard without heartbeat for this long is lost"
    )
    heartbeat_seconds: float = Field(10.0, gt=0, description="heartbeat interval; well below lease_seconds")
    max_attempts: int = Field(3, ge=1, le=100, description="attempts per shard before the job fails")
    retry_base_seconds: float = Field(
        5.0, ge=0, description="backoff after a shard's first failed attempt; doubles each time (jittered)"
    )
    retry_max_seconds: float = Field(300.0, ge=0, description="the longest backoff between two attempts")
    retry_budget_seconds: float = Field(
        3600.0, gt=0, description="no new attempt of a shard once its first began this long ago"
    )
    shard_size: int = Field(
        50, ge=1, description="max images per generate shard (larger classes split); fair share's time slice"
    )
    learn_slice_seconds: float = Field(
        60.0,
        ge=0,
        description="concept learning runs in slices of about this long, each its own learn shard that "
        "ends at the first optimiser step after it (checkpointed), so fair share can give the worker to "
        "another owner between slices; 0: one slice",
    )
    learn_slice_steps: int = Field(
        0, ge=0, description="if above 0, a slice ends after this many optimiser steps instead (tests)"
    )
    batch_size: int = Field(8, ge=1, le=256, description="images per denoising batch")
    soft_time_limit: float = Field(6 * 3600, gt=0, description="seconds; the task gets an exception")
    time_limit: float = Field(6 * 3600 + 300, gt=0, description="seconds; the task process is killed")
    visibility_timeout: float = Field(
        8 * 3600, gt=0, description="Redis: seconds before an unacked task returns"
    )
    sweep: bool = Field(True, description="run the recovery sweep in this worker's main process")
    sweep_seconds: float = Field(15.0, gt=0, description="interval of the recovery sweep in each worker")
    resend_after_seconds: float = Field(
        60.0, gt=0, description="an admitted (queued) shard not claimed for this long has its message re-sent"
    )
    preload_models: list[str] | None = Field(
        None, description="models loaded in every task process at start; default: every listed model"
    )
    worker_instance: str = Field(
        "",
        pattern=r"^[A-Za-z0-9_-]*$",
        description="set by `diffii up`'s supervisor for each worker start, so that it can release the "
        "shards of a worker it saw die (task processes name themselves <host>:<pid>@<instance>)",
    )
    work_dir: Path | None = Field(None, description="local scratch (datasets, pools); default {home}/work")

    @model_validator(mode="after")
    def _check_limits(self) -> WorkerSettings:
        if not self.soft_time_limit < self.time_limit < self.visibility_timeout:
            raise ValueError("need soft_time_limit < time_limit < visibility_timeout")
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError("heartbeat_seconds must be below lease_seconds")
        if self.work_dir is None:
            self.work_dir = self.home / "work"
        return self

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            base_seconds=self.retry_base_seconds,
            max_seconds=self.retry_max_seconds,
            budget_seconds=self.retry_budget_seconds,
        )

    def models_to_preload(self) -> list[str]:
        return list(self.models) if self.preload_models is None else list(self.preload_models)
