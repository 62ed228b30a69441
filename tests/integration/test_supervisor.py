"""`diffii up` keeps serving when its worker dies, and never leaves a process behind when it dies."""

from __future__ import annotations

import io
import os
import signal
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import EXPECTED_IMAGES, JOB_PARAMS, JOB_TIMEOUT, Up, processes_with_home
from tests.service_helpers import auth, wait_until

pytestmark = pytest.mark.integration


def _run_job(u: Up, key: str, dataset_id: str, on_progress: Any = None) -> dict[str, bytes]:
    with httpx.Client(base_url=u.url, timeout=30) as client:
        job = client.post("/v1/jobs", headers=auth(key), json={**JOB_PARAMS, "dataset_id": dataset_id}).json()
        seen: dict[str, Any] = {}

        def done() -> bool:
            seen["job"] = client.get(f"/v1/jobs/{job['id']}", headers=auth(key)).json()
            if on_progress is not None:
                on_progress(seen["job"])
            return seen["job"]["status"] in ("succeeded", "failed", "cancelled")

        wait_until(done, JOB_TIMEOUT, "the job to end", interval=0.3)
        assert seen["job"]["status"] == "succeeded", f"{seen['job']}\n{u.text()[-3000:]}"
        archive = client.get(f"/v1/jobs/{job['id']}/archive", headers=auth(key), follow_redirects=True)
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
        return {name: zf.read(name) for name in zf.namelist() if name.endswith(".png")}


def test_a_killed_worker_is_restarted_and_the_job_ends_byte_identical(up: Up, tmp_path: Path) -> None:
    from diffii_core.sample_data import write_sample_archive

    key = up.key()
    archive = write_sample_archive(tmp_path / "sample.zip")
    with httpx.Client(base_url=up.url, timeout=30) as client, archive.open("rb") as fp:
        dataset_id = client.post("/v1/datasets", headers=auth(key), files={"file": ("s.zip", fp)}).json()[
            "id"
        ]

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


def test_a_killed_diffii_up_takes_its_children_with_it(up: Up) -> None:
    children = [pid for pid in processes_with_home(up.home) if pid != up.popen.pid]
    assert len(children) >= 3  # the API, the worker and its task process
    os.kill(up.popen.pid, signal.SIGKILL)  # no chance to clean up
    up.popen.wait()
    wait_until(lambda: not processes_with_home(up.home), 30, "every child of diffii up to exit")
