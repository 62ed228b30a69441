"""Worker settings (`DIFFII_*` environment variables), on top of the shared ones.

Time limits must stay below the broker's visibility timeout: otherwise Redis hands a still-running
task to a second worker. Validation enforces soft < hard < visibility timeout.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, model_validator

from services.common.settings import CommonSettings

# Test-only fault injection, e.g. "fail:generate:square" (every attempt of the class's generate shards
# raises) or "delay:generate:0.5" (sleep after each stored image, so a test can kill a worker mid-shard).
# Several rules are separated by ";". Never set in production.
_FAULT = re.compile(r"^(fail|delay):(prepare|learn|generate|package):(.+)$")


class WorkerSettings(CommonSettings):
    concurrency: int = Field(1, ge=1, le=64, description="task processes per worker (one per GPU)")
    queues: list[str] = Field(default_factory=lambda: ["diffii"], description="queues this worker consumes")
    lease_seconds: float = Field(
        60.0, gt=0, description="a running shard without heartbeat for this long is lost"
    )
    heartbeat_seconds: float = Field(10.0, gt=0, description="heartbeat interval; well below lease_seconds")
    max_attempts: int = Field(3, ge=1, le=100, description="attempts per shard before the job fails")
    shard_size: int = Field(200, ge=1, description="max images per generate shard (larger classes are split)")
    batch_size: int = Field(8, ge=1, le=256, description="images per denoising batch")
    soft_time_limit: float = Field(6 * 3600, gt=0, description="seconds; the task gets an exception")
    time_limit: float = Field(6 * 3600 + 300, gt=0, description="seconds; the task process is killed")
    visibility_timeout: float = Field(
        8 * 3600, gt=0, description="Redis: seconds before an unacked task returns"
    )
    sweep: bool = Field(True, description="run the recovery sweep in this worker's main process")
    sweep_seconds: float = Field(15.0, gt=0, description="interval of the recovery sweep in each worker")
    resend_after_seconds: float = Field(
        60.0, gt=0, description="a committed shard not claimed for this long has its message re-sent"
    )
    preload_models: list[str] | None = Field(
        None, description="models loaded in every task process at start; default: every listed model"
    )
    work_dir: Path | None = Field(None, description="local scratch (datasets, pools); default {home}/work")
    fault_injection: str = Field("", description="TEST ONLY: see _FAULT above")

    @model_validator(mode="after")
    def _check_limits(self) -> WorkerSettings:
        if not self.soft_time_limit < self.time_limit < self.visibility_timeout:
            raise ValueError("need soft_time_limit < time_limit < visibility_timeout")
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError("heartbeat_seconds must be below lease_seconds")
        for rule in self.fault_rules():
            if not _FAULT.match(rule):
                raise ValueError(f"fault_injection rule {rule!r} is not kind:stage:argument")
        if self.work_dir is None:
            self.work_dir = self.home / "work"
        return self

    def fault_rules(self) -> list[str]:
        return [r.strip() for r in self.fault_injection.split(";") if r.strip()]

    def fault(self, action: str, stage: str) -> list[str]:
        """Arguments of the injected faults of this action and stage (empty in production)."""
        out = []
        for rule in self.fault_rules():
            m = _FAULT.match(rule)
            if m and m.group(1) == action and m.group(2) == stage:
                out.append(m.group(3))
        return out

    def models_to_preload(self) -> list[str]:
        return list(self.models) if self.preload_models is None else list(self.preload_models)
