"""Faults on the real components while a job runs: Postgres restarted, Redis restarted, the S3
endpoint down for 30 s, the API restarted while a client polls, two sweepers at once. Each job must
complete with exactly the images of an undisturbed run (a SIGKILLed worker: test_recovery.py).
Postgres and Redis are private instances these tests start and stop; the shared ones are untouched.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.scenarios import SCENARIOS, Stack, stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with stack(tmp_path_factory.mktemp("chaos")) as s:
        yield s


@pytest.mark.parametrize(
    "name", ["postgres_restart", "redis_restart", "s3_down_30s", "api_restart_while_polling", "two_sweepers"]
)
def test_the_job_survives_the_fault_byte_identical(chaos: Stack, name: str) -> None:
    outcome = SCENARIOS[name](chaos)
    assert outcome.completed == 1, outcome.detail
    assert (outcome.lost, outcome.duplicated, outcome.changed) == (0, 0, 0), outcome
    assert outcome.recover_s is not None  # it made progress again after the fault healed
