"""The REST client (`services.client`) and the `diffii` client and admin commands that wrap it, against a real
uvicorn server (in a thread) on Postgres."""

from __future__ import annotations

import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from click.testing import CliRunner
from sqlalchemy import select

from services.api.app import create_app
from services.cli.client import bar_counts, cancel, describe_progress, download, jobs, status, submit
from services.cli.server import admin
from services.client import ApiError, Client, ClientError, Unreachable, WaitTimeout
from services.common.auth import authenticate
from services.common.db import session_scope
from services.common.models import Job, JobStatus, utcnow
from services.common.storage import make_storage
from tests.dataset_builders import good_members
from tests.service_helpers import free_port, wait_until


@pytest.fixture
def live_api(api_settings_factory: Any) -> Iterator[tuple[str, Any]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = api_settings_factory(host="127.0.0.1", port=port, public_base_url=url)
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 15, "uvicorn start")
    yield url, settings
    server.should_exit = True
    thread.join(15)


@pytest.fixture
def client_env(live_api: tuple[str, Any], make_api_key: Any) -> dict[str, str]:
    return {"DIFFII_API_URL": live_api[0], "DIFFII_API_KEY": make_api_key()}


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    root = tmp_path / "birds"
    for name, data in good_members().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / ".DS_Store").write_bytes(b"noise")
    return root


def _birds_zip(tmp_path: Path) -> Path:
    archive = tmp_path / "birds.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in good_members().items():
            zf.writestr(name, data)
    return archive


def run(command: Any, args: list[str], env: dict[str, str]) -> Any:
    return CliRunner().invoke(command, args, env=env, catch_exceptions=False)


def job_row(pg_session_factory: Any, job_id: str) -> Job:
    with pg_session_factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def finish_job(pg_session_factory: Any, settings: Any, job_id: str, data: bytes) -> None:
    key = f"jobs/{job_id}/archive.zip"
    make_storage(settings).put_bytes(key, data)
    with session_scope(pg_session_factory) as session:
        job = session.get(Job, job_id)
        job.status, job.archive_key, job.finished_at = JobStatus.succeeded, key, utcnow()


def test_submit_folder_with_options_then_status_jobs_cancel(
    client_env: dict[str, str], dataset_dir: Path, pg_session_factory: Any
) -> None:
    options = ["--metaclass", "bird", "--expansion", "2", "--suffix", "in snow", "--suffix", "at dusk"]
    options += ["--seed", "7", "--concept-steps", "10", "--lora-rank", "4", "--learning-rate", "0.001"]
    options += ["--lora-learning-rate", "0.0002"]
    result = run(submit, [str(dataset_dir), *options], client_env)
    assert result.exit_code == 0, result.output
    job_id = result.stdout.strip().splitlines()[-1]
    assert "3 images in blue jay (2), черный.дрозд (1)" in result.output

    params = job_row(pg_session_factory, job_id).params
    assert params["metaclass"] == "bird" and params["expansion"] == 2 and params["seed"] == 7
    assert params["suffixes"] == ["in snow", "at dusk"]
    assert params["concepts"]["steps"] == 10 and params["concepts"]["lora_rank"] == 4
    assert params["concepts"]["learning_rate"] == 0.001
    assert params["concepts"]["lora_learning_rate"] == 0.0002

    shown = run(status, [job_id], client_env)
    assert shown.exit_code == 0 and f"job {job_id}: queued" in shown.output
    listed = run(jobs, ["--limit", "5"], client_env)
    assert listed.exit_code == 0 and job_id in listed.output

    cancelled = run(cancel, [job_id], client_env)
    assert cancelled.exit_code == 0 and f"job {job_id} cancelled" in cancelled.output
    assert job_row(pg_session_factory, job_id).status == JobStatus.cancelled
    again = run(cancel, [job_id], client_env)
    assert again.exit_code == 1
    assert "server said 409" in again.output and "already ended: cancelled" in again.output


def test_submit_wait_polls_and_downloads_the_archive(
    client_env: dict[str, str],
    live_api: tuple[str, Any],
    dataset_dir: Path,
    pg_session_factory: Any,
    tmp_path: Path,
) -> None:
    settings = live_api[1]
    stop = threading.Event()

    with pg_session_factory() as session:
        owner = authenticate(session, client_env["DIFFII_API_KEY"])
        assert owner is not None
        owner_id = owner.id

    def fake_worker() -> None:
        # Stands in for the workers: finishes this owner's first job, with an archive.
        while not stop.is_set():
            with pg_session_factory() as session:
                job_id = session.scalar(select(Job.id).where(Job.owner_id == owner_id))
            if job_id:
                finish_job(pg_session_factory, settings, job_id, b"archive bytes")
                return
            stop.wait(0.05)

    thread = threading.Thread(target=fake_worker, daemon=True)
    thread.start()
    out = tmp_path / "result" / "synthetic.zip"
    try:
        result = run(
            submit,
            [
                str(dataset_dir),
                "--seed",
                "99",
                "--wait",
                "--poll-interval",
                "0.1",
                "--wait-timeout",
                "120",
                "--out",
                str(out),
            ],
            client_env,
        )
    finally:
        stop.set()
        thread.join(5)
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == b"archive bytes"
    assert f"archive saved to {out}" in result.output


def test_download_and_submit_of_an_archive_file(
    client_env: dict[str, str], live_api: tuple[str, Any], pg_session_factory: Any, tmp_path: Path
) -> None:
    archive = _birds_zip(tmp_path)
    submitted = run(submit, [str(archive), "--seed", "5"], client_env)
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip().splitlines()[-1]

    early = run(download, [job_id, "--out", str(tmp_path / "x.zip")], client_env)
    assert early.exit_code == 1 and "server said 409" in early.output
    assert not (tmp_path / "x.zip").exists()

    finish_job(pg_session_factory, live_api[1], job_id, b"the archive")
    got = run(download, [job_id, "--out", str(tmp_path / "x.zip")], client_env)
    assert got.exit_code == 0, got.output
    assert (tmp_path / "x.zip").read_bytes() == b"the archive"


def test_errors_show_the_server_detail(client_env: dict[str, str], dataset_dir: Path, tmp_path: Path) -> None:
    bad_param = run(submit, [str(dataset_dir), "--expansion", "0"], client_env)
    assert bad_param.exit_code == 1
    assert "server said 422" in bad_param.output and "expansion" in bad_param.output

    bad_nested = run(submit, [str(dataset_dir), "--lora-rank", "999"], client_env)
    assert bad_nested.exit_code == 1 and "concepts.lora_rank" in bad_nested.output

    (tmp_path / "notes.txt").write_text("hello")
    not_archive = run(submit, [str(tmp_path / "notes.txt")], client_env)
    assert not_archive.exit_code == 2 and "not a .zip, .tar or .tar.gz" in not_archive.output

    bad_key = run(status, ["abc"], {**client_env, "DIFFII_API_KEY": "dfi_x_wrong"})
    assert bad_key.exit_code == 1 and "server said 401: invalid or revoked API key" in bad_key.output

    missing = run(status, ["abc"], client_env)
    assert missing.exit_code == 1 and "server said 404: job abc not found" in missing.output

    no_key = run(status, ["abc"], {"DIFFII_API_URL": client_env["DIFFII_API_URL"], "DIFFII_API_KEY": ""})
    assert no_key.exit_code == 2 and "no API key" in no_key.output

    down = run(status, ["abc"], {**client_env, "DIFFII_API_URL": f"http://127.0.0.1:{free_port()}"})
    assert down.exit_code == 1 and "cannot reach the diffii server" in down.output


def test_admin_create_key_prints_a_working_key_once(
    pg_url: str, live_api: tuple[str, Any], pg_session_factory: Any
) -> None:
    result = CliRunner().invoke(
        admin, ["create-key", "--owner", "cli-team"], env={"DIFFII_DATABASE_URL": pg_url}
    )
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert key.startswith("dfi_") and len(key) > 40
    listed = run(jobs, [], {"DIFFII_API_URL": live_api[0], "DIFFII_API_KEY": key})
    assert listed.exit_code == 0, listed.output

    second = CliRunner().invoke(
        admin, ["create-key", "--owner", "cli-team"], env={"DIFFII_DATABASE_URL": pg_url}
    )
    assert second.stdout.strip() != key  # a new key for the same owner


def test_admin_ensure_storage_creates_the_bucket(moto_s3: dict[str, Any]) -> None:
    env = {f"DIFFII_{k.upper()}": str(v) for k, v in {**moto_s3, "s3_bucket": "made-by-admin"}.items()}
    result = CliRunner().invoke(admin, ["ensure-storage"], env=env)
    assert result.exit_code == 0, result.output
    assert "storage ready: s3://made-by-admin" in result.output


def test_preview_of_a_job_writes_its_sheets(
    client_env: dict[str, str], live_api: tuple[str, Any], pg_session_factory: Any, tmp_path: Path
) -> None:
    from services.cli.preview import preview

    archive = _birds_zip(tmp_path)
    job_id = run(submit, [str(archive)], client_env).stdout.strip().splitlines()[-1]
    early = run(preview, [job_id, "--out", str(tmp_path / "early")], client_env)
    assert early.exit_code == 1 and "server said 409" in early.output

    with session_scope(pg_session_factory) as session:
        session.get(Job, job_id).manifest = {
            "classes": [
                {"index": i, "name": name, "images": 1, "generated": 1, "sources": ["x.png"]}
                for i, name in enumerate(("cat/ey", "b"))
            ],
            "images": 2,
        }
    storage = make_storage(live_api[1])
    for index in (0, 1):
        storage.put_bytes(f"jobs/{job_id}/preview/{index}.png", b"sheet %d" % index, "image/png")
    got = run(preview, [job_id, "--out", str(tmp_path / "sheets")], client_env)
    assert got.exit_code == 0, got.output
    assert (tmp_path / "sheets" / "cat_ey.png").read_bytes() == b"sheet 0"
    assert (tmp_path / "sheets" / "b.png").read_bytes() == b"sheet 1"


# -- the client as a Python class (what the commands above wrap) -----------------------------------------


def test_the_client_raises_its_own_exceptions_with_the_servers_detail(
    client_env: dict[str, str], dataset_dir: Path, tmp_path: Path
) -> None:
    url, key = client_env["DIFFII_API_URL"], client_env["DIFFII_API_KEY"]
    with pytest.raises(ClientError, match="no API key"):
        Client(url, "")
    with Client(url, key) as client:
        with pytest.raises(ApiError) as missing:
            client.job("abc")
        assert missing.value.status_code == 404 and missing.value.detail == "job abc not found"
        with pytest.raises(ApiError) as bad:
            client.create_job({"dataset_id": "nope", "expansion": 0})
        assert bad.value.status_code == 422 and "expansion" in bad.value.detail
        uploaded = client.upload_dataset(_birds_zip(tmp_path))
        job = client.create_job({"dataset_id": uploaded["id"], "model": "tiny"}, idempotency_key="k1")
        again = client.create_job({"dataset_id": uploaded["id"], "model": "tiny"}, idempotency_key="k1")
        assert again["id"] == job["id"]  # the same key: the same job, not a second one
        assert [j["id"] for j in client.jobs()["jobs"]] == [job["id"]]
        with pytest.raises(WaitTimeout, match="keeps running on the server"):
            client.wait(job["id"], interval=0.1, timeout=0)  # nothing runs it: no worker here
        assert client.cancel(job["id"])["status"] == "cancelled"
        assert client.wait(job["id"], interval=0.1)["status"] == "cancelled"
    with Client(f"http://127.0.0.1:{free_port()}", key) as down, pytest.raises(Unreachable):
        down.job("abc")


def test_the_client_works_without_click() -> None:
    # A notebook installs the library and httpx, not the CLI: the client must not need click.
    code = (
        "import sys; sys.modules['click'] = None; "  # any `import click` now fails
        "from services.client import ApiError, Client; c = Client('http://127.0.0.1:9', 'k'); "
        "assert issubclass(ApiError, Exception); "
        "assert 'services.cli' not in {m.rpartition('.')[0] for m in sys.modules}; print('ok')"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_datasets_list_and_delete(
    client_env: dict[str, str], dataset_dir: Path, pg_session_factory: Any
) -> None:
    from services.cli.client import datasets

    job_id = run(submit, [str(dataset_dir)], client_env).stdout.strip().splitlines()[-1]
    dataset_id = job_row(pg_session_factory, job_id).dataset_id
    listed = run(datasets, ["list"], client_env)
    assert listed.exit_code == 0 and dataset_id in listed.output and "2 classes, 3 images" in listed.output

    refused = run(datasets, ["delete", dataset_id], client_env)
    assert refused.exit_code == 1 and "server said 409" in refused.output and job_id in refused.output
    assert run(cancel, [job_id], client_env).exit_code == 0
    deleted = run(datasets, ["delete", dataset_id], client_env)
    assert deleted.exit_code == 0 and f"dataset {dataset_id} deleted" in deleted.output
    assert dataset_id not in run(datasets, ["list"], client_env).output
    again = run(datasets, ["delete", dataset_id], client_env)
    assert again.exit_code == 1 and "server said 404" in again.output


def test_the_bar_counts_learning_steps_while_the_job_learns_then_images() -> None:
    learning = {"stage": "learning", "shards_done": 0, "shards_total": 3, "images_done": 0,
                "images_total": 30, "learning": {"step": 120, "steps": 1000}}  # fmt: skip
    assert bar_counts(learning) == (120, 1000, "step")
    assert describe_progress({"progress": learning}) == "learning: step 120/1000"
    generating = {**learning, "stage": "generating", "images_done": 7}
    assert bar_counts(generating) == (7, 30, "img")
    assert describe_progress({"progress": generating}) == "generating: shards 0/3, images 7/30"
