"""The job and shard lifecycle: the one place that changes a job's or a shard's status.

`table` holds every transition and who may cause it; `jobs` and `shards` apply them as conditional
UPDATEs; `retry` decides which failures are retried and when. The API, the worker's stages and
runner, the dispatcher and the sweeper call these functions and write no status themselves.
"""

from services.common.lifecycle.retry import Failure, RetryPolicy, classify
from services.common.lifecycle.table import (
    JOB_TRANSITIONS,
    SHARD_TRANSITIONS,
    Actor,
    IllegalTransition,
    Transition,
)

__all__ = [
    "JOB_TRANSITIONS",
    "SHARD_TRANSITIONS",
    "Actor",
    "Failure",
    "IllegalTransition",
    "RetryPolicy",
    "Transition",
    "classify",
]
