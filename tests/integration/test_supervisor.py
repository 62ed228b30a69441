"""`diffii up` keeps serving when its worker dies, and never leaves a process behind when it dies."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import CLI, EXPECTED_IMAGES, JOB_PARAMS, JOB_TIMEOUT, ROOT
from tests.integration.test_embedded import _processes_with_home
from tests.service_helpers import auth, free_port, wait_until

pytestmark = pytest.mark.integration


@dataclass
class Up:
    popen: subprocess.Popen[bytes]
    home: Path
    url: str
    log: Path
    env: dict[str, str]

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def readyz(self) -> tuple[int, dict[str, Any]]:
        r = httpx.get(f"{self.url}/readyz", timeout=5)
        return r.status_code, r.json()

    def worker_pid(self) -> int:
        state = json.loads((self.home / "supervisor.json").read_text())
        return int(state["children"]["worker"]["pid"])


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFII_")}
    # Short leases so the killed worker's shard is re-run within seconds.
    env.update(
        DIFFII_HOME=str(home), PYTHONUNBUFFERED="1", DIFFII_LEASE_SECONDS="10", DIFFII_HEARTBEAT_SECONDS="2",
        DIFFII_SWEEP_SECONDS="1", DIFFII_RESEND_AFTER_SECONDS="3", DIFFII_RETRY_BASE_SECONDS="1",
    )  # fmt: skip
    port = free_port()
    log = tmp_path / "up.log"
    with log.open("wb") as handle:
        popen = subprocess.Popen(
            [sys.executable, "-c", CLI, "up", "--port", str(port)],
            env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    u = Up(popen, home, f"http://127.0.0.1:{port}", log, env)

    def ready() -> bool:
        assert popen.poll() is None, u.text()
        try:
            return u.readyz()[0] == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, 120, "diffii up readiness", interval=0.3)
        yield u
    finally:
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGTERM)
            popen.wait(timeout=60)
        for pid in _processes_with_home(home):  # only if the test failed half-way
            os.kill(pid, signal.SIGKILL)


def _key(u: Up) -> str:
    return subprocess.run(
        [sys.executable, "-c", CLI, "admin", "create-key", "--owner", "me"],
        env=u.env, cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


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

    key = _key(up)
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
    children = [pid for pid in _processes_with_home(up.home) if pid != up.popen.pid]
    assert len(children) >= 3  # the API, the worker and its task process
    os.kill(up.popen.pid, signal.SIGKILL)  # no chance to clean up
    up.popen.wait()
    wait_until(lambda: not _processes_with_home(up.home), 30, "every child of diffii up to exit")
