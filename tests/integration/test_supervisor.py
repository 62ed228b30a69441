"""`diffii up` keeps serving when its worker dies, and never leaves a process behind when it dies."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    EXPECTED_IMAGES,
    LONG_LEARNING,
    Up,
    processes_with_home,
    running_up,
)
from tests.service_helpers import wait_until

pytestmark = pytest.mark.integration


def _run_job(
    u: Up, key: str, dataset_id: str, on_progress: Any = None, params: dict[str, Any] | None = None
) -> dict[str, bytes]:
    job, images = u.run_job(key, dataset_id, on_progress, params)
    assert job["status"] == "succeeded", f"{job}\n{u.text()[-3000:]}"
    return images


def test_a_killed_worker_is_restarted_and_the_job_ends_byte_identical(up: Up, tmp_path: Path) -> None:
    key = up.key()
    dataset_id = up.upload_sample(key, tmp_path)
    killed: list[int] = []

    def kill_mid_generation(job: dict[str, Any]) -> None:
        if not killed and any(s["images_done"] >= 1 for s in job["progress"]["shards"] or []):
            killed.append(up.worker_pid())
            os.kill(killed[0], signal.SIGKILL)  # as the OOM killer would

    disturbed = _run_job(up, key, dataset_id, kill_mid_generation)
    assert killed, "the job ended before the worker could be killed"
    assert f"worker exited with -{signal.SIGKILL.value}; restarting in" in up.text()
    status, body = up.readyz()
    assert status == 200
    worker = body["supervisor"]["children"]["worker"]
    assert worker["restarts"] == 1 and worker["last_exit"] == -signal.SIGKILL and worker["pid"] != killed[0]
    assert up.popen.poll() is None  # the API kept serving throughout

    undisturbed = _run_job(up, key, dataset_id)
    assert len(disturbed) == EXPECTED_IMAGES
    assert disturbed == undisturbed


# A learning run long enough to kill the worker in; little else (12 images, 4 steps).
SMALL_LONG_LEARNING = {**LONG_LEARNING, "expansion": 1, "inference_steps": 4, "inversion_steps": 4}


def test_a_worker_killed_mid_learning_has_its_shard_released_by_the_supervisor(tmp_path: Path) -> None:
    """With a 10-minute lease, only the supervisor's release can heal the job in time: the learn
    shard's second attempt says so, and the images equal an undisturbed run's."""
    with running_up(tmp_path, lease_seconds="600", heartbeat_seconds="5") as u:
        key = u.key()
        dataset_id = u.upload_sample(key, tmp_path)
        killed: list[int] = []

        def kill_mid_learning(job: dict[str, Any]) -> None:
            learning = [s for s in job["progress"]["steps"] or [] if s["kind"] == "learn"]
            if not killed and learning and learning[0]["status"] == "running":
                killed.append(u.worker_pid())
                os.kill(killed[0], signal.SIGKILL)

        disturbed = _run_job(u, key, dataset_id, kill_mid_learning, SMALL_LONG_LEARNING)
        assert killed, "the job ended before the worker could be killed"
        learn = next(s for s in u.jobs[-1]["progress"]["steps"] if s["kind"] == "learn")
        assert learn["attempts"] == 2, learn
        assert "released by diffii up" in (learn["error"] or ""), learn  # not "worker ... lost" (the lease)
        assert "diffii up: released 1 shard(s) of the dead worker" in u.text()
        undisturbed = _run_job(u, key, dataset_id, params=SMALL_LONG_LEARNING)
    assert len(disturbed) == EXPECTED_IMAGES // 2
    assert disturbed == undisturbed


def test_a_killed_diffii_up_takes_its_children_with_it(up: Up) -> None:
    children = [pid for pid in processes_with_home(up.home) if pid != up.popen.pid]
    assert len(children) >= 3  # the API, the worker and its task process
    os.kill(up.popen.pid, signal.SIGKILL)  # no chance to clean up
    up.popen.wait()
    wait_until(lambda: not processes_with_home(up.home), 30, "every child of diffii up to exit")
