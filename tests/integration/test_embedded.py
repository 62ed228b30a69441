"""The same flow on the embedded defaults: `diffii up` (SQLite state, SQLite broker, local folder),
driven by the CLI client as a user would, with no server installed."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.integration.conftest import CLI, EXPECTED_IMAGES, ROOT, processes_with_home
from tests.service_helpers import answers, free_port, wait_until

pytestmark = pytest.mark.integration


def test_diffii_up_runs_a_job_end_to_end(tmp_path: Path) -> None:
    from diffii_core.sample_data import write_sample_dataset

    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFII_")}
    env.update(DIFFII_HOME=str(home), PYTHONUNBUFFERED="1")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-c", CLI, "up", "--port", str(port)],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip

    try:
        wait_until(answers(f"{url}/readyz", up, tmp_path / "up.log"), 90, "diffii up readiness", interval=0.3)
        key = subprocess.run(
            [sys.executable, "-c", CLI, "admin", "create-key", "--owner", "me"],
            env=env, cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        dataset = write_sample_dataset(tmp_path / "data")
        out = tmp_path / "out" / "archive.zip"
        client_env = {**env, "DIFFII_API_URL": url, "DIFFII_API_KEY": key}
        submitted = subprocess.run(
            [
                sys.executable, "-c", CLI, "submit", str(dataset), "--model", "tiny", "--seed", "7",
                "--expansion", "2", "--concept-steps", "10", "--inference-steps", "8",
                "--inversion-steps", "8",
                "--wait", "--out", str(out), "--poll-interval", "0.5",
            ],
            env=client_env, cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr[-3000:] + (tmp_path / "up.log").read_text()[-3000:]

        with zipfile.ZipFile(io.BytesIO(out.read_bytes())) as zf:
            pngs = [n for n in zf.namelist() if n.endswith(".png")]
            lines = zf.read("metadata.jsonl").decode().splitlines()
            assert json.loads(zf.read("job.json"))["params"]["seed"] == 7
        assert len(pngs) == len(set(pngs)) == len(lines) == EXPECTED_IMAGES
        assert (home / "diffii.db").is_file() and (home / "broker.db").is_file()
        assert list((home / "objects" / "jobs").glob("*/archive.zip"))
    finally:
        os.killpg(up.pid, signal.SIGTERM)  # `diffii up` stops everything it started
        try:
            up.wait(timeout=40)
        finally:
            log.close()
    assert up.returncode == 0
    assert not processes_with_home(home), "diffii up left processes behind"
