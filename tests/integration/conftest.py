"""A whole service per test: API (uvicorn) and Celery workers as separate processes, on a fresh
Postgres database, Redis (a queue of its own), and a fresh bucket on moto's S3 server.

Short leases, heartbeats and sweep intervals make recovery observable in seconds. Jobs use the
`tiny` model with few steps, so a job takes seconds of compute.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.pdeathsig import die_with_parent
from services.common.statuses import TERMINAL_JOB_STATUSES
from tests.service_helpers import answers, auth, free_port, wait_until


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A conftest's `pytestmark` marks nothing; every test in this folder needs the real components.
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.integration)


CLI = "from services.cli.main import main; main()"
ROOT = Path(__file__).resolve().parents[2]

# Small but complete: 12 real images in 4 classes (one with a single image) -> 24 outputs.
JOB_PARAMS: dict[str, Any] = {
    "model": "tiny",
    "expansion": 2,
    "seed": 7,
    "inference_steps": 8,
    "inversion_steps": 8,
    "concepts": {"steps": 10},
    # The one-image class borrows two images: every service test also covers a filled pool.
    "fill_pool_to": 3,
}
EXPECTED_IMAGES = 24
# Long enough a learning run to kill a worker in, with a checkpoint to resume from.
LONG_LEARNING: dict[str, Any] = {"concepts": {"steps": 30, "checkpoint_every": 10}}
JOB_TIMEOUT = 900.0  # a wait, not a measure: a loaded 2-core machine needs minutes per job


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def kill_group(self, signum: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.kill_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)
        self.kill_group(signal.SIGKILL)  # task processes too, whatever the parent did
        self.popen.wait()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


@dataclass
class Cluster:
    tmp: Path
    env: dict[str, str]
    database_url: str
    sessions: Any
    storage: Any
    procs: list[Proc] = field(default_factory=list)
    api_url: str = ""

    # -- processes -----------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        log = self.tmp / f"{name}.log"
        handle = log.open("wb")
        popen = subprocess.Popen(
            argv,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
            preexec_fn=die_with_parent,  # a killed test run leaves no API or worker behind
        )
        handle.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_api(self, port: int | None = None) -> str:
        port = port or free_port()
        proc = self._spawn("api", [sys.executable, "-c", CLI, "serve", "--port", str(port)], self.env)
        self.api_url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"API exited:\n{proc.tail()}")
            try:
                return httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 60, "API readiness", interval=0.2)
        return self.api_url

    def start_worker(self, name: str = "w1", faults: str = "", **settings: str) -> Proc:
        """A Celery worker process; `faults` installs tests/fault_worker.py's rules around it."""
        env = {**self.env, "DIFFII_WORK_DIR": str(self.tmp / f"work-{name}")}
        env.update({f"DIFFII_{k.upper()}": v for k, v in settings.items()})
        app = "services.worker.celery_app"
        if faults:
            env["DIFFII_TEST_FAULTS"], app = faults, "tests.fault_worker"
        argv = [
            sys.executable, "-m", "celery", "-A", app, "worker",
            "--pool=prefork", "--concurrency=1", f"--queues={self.env['DIFFII_QUEUE']}",
            f"--hostname={name}@%h", "--without-gossip", "--without-mingle", "--loglevel=info",
        ]  # fmt: skip
        return self._spawn(f"worker-{name}", argv, env)

    def start_sweeper(self, name: str, interval: float = 0.5) -> Proc:
        argv = [sys.executable, "-c", CLI, "sweeper", "--interval", str(interval)]
        return self._spawn(f"sweeper-{name}", argv, self.env)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in self.procs)

    # -- the API -------------------------------------------------------------------------------------

    def new_key(self, owner: str | None = None) -> str:
        from services.common.auth import create_key
        from services.common.db import session_scope

        with session_scope(self.sessions) as session:
            return create_key(session, owner or f"owner-{uuid.uuid4().hex[:8]}").key

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, timeout=30, follow_redirects=False)

    def upload_sample(self, key: str) -> str:
        from diffii_core.sample_data import write_sample_archive

        archive = write_sample_archive(self.tmp / f"sample-{uuid.uuid4().hex[:6]}.zip")
        with self.http() as client, archive.open("rb") as fp:
            r = client.post("/v1/datasets", headers=auth(key), files={"file": ("sample.zip", fp)})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def submit(self, key: str, dataset_id: str, **params: Any) -> str:
        body = {**JOB_PARAMS, **params, "dataset_id": dataset_id}
        with self.http() as client:
            r = client.post("/v1/jobs", headers=auth(key), json=body)
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def job(self, key: str, job_id: str) -> dict[str, Any]:
        with self.http() as client:
            r = client.get(f"/v1/jobs/{job_id}", headers=auth(key))
        assert r.status_code == 200, r.text
        return r.json()

    def wait_job(
        self,
        key: str,
        job_id: str,
        until: Callable[[dict[str, Any]], bool] = lambda j: j["status"] in TERMINAL_JOB_STATUSES,
        timeout: float = JOB_TIMEOUT,
    ) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def check() -> bool:
            seen["job"] = self.job(key, job_id)
            return until(seen["job"])

        try:
            wait_until(check, timeout, f"job {job_id} condition", interval=0.25)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; last state {seen.get('job')}\n{self.logs()}") from None
        return seen["job"]

    # -- storage -------------------------------------------------------------------------------------

    def images(self, job_id: str) -> dict[str, bytes]:
        """Every stored image and metadata object of a job: "class/index.ext" -> bytes."""
        prefix = f"jobs/{job_id}/images/"
        return {key[len(prefix) :]: self.storage.get_bytes(key) for key in self.storage.list(prefix)}


@contextlib.contextmanager
def make_cluster(
    make_pg_database: Callable[[], str], redis_url: str, bucket_settings: dict[str, Any], tmp_path: Path
) -> Iterator[Cluster]:
    """A fresh database, queue and bucket; every process started in it is stopped at the end."""
    from services.common.db import dispose, make_session_factory
    from services.common.migrate import upgrade_to_head
    from services.common.storage_s3 import S3Storage
    from tests.service_helpers import s3_storage_kwargs

    database_url = make_pg_database()
    upgrade_to_head(database_url)
    queue = f"it-{uuid.uuid4().hex[:10]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFII_")}
    env.update(
        {
            "DIFFII_HOME": str(tmp_path / "home"),
            "DIFFII_DATABASE_URL": database_url,
            "DIFFII_BROKER_URL": redis_url,
            "DIFFII_QUEUE": queue,
            "DIFFII_QUEUES": f'["{queue}"]',
            "DIFFII_SIGNING_SECRET": "integration-signing-secret",
            # Short leases so recovery tests wait seconds. A loaded machine starving a live
            # worker's heartbeat thread past the lease costs nothing: the worker resumes its own
            # expired attempt (lifecycle.shards._resume), so attempt counts stay exact.
            "DIFFII_LEASE_SECONDS": "10",
            "DIFFII_HEARTBEAT_SECONDS": "2",
            "DIFFII_SWEEP_SECONDS": "1",
            "DIFFII_RESEND_AFTER_SECONDS": "3",
            "DIFFII_MAX_ATTEMPTS": "3",
            "DIFFII_RETRY_BASE_SECONDS": "0.5",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({f"DIFFII_{k.upper()}": str(v) for k, v in bucket_settings.items()})
    sessions = make_session_factory(database_url)
    c = Cluster(
        tmp=tmp_path,
        env=env,
        database_url=database_url,
        sessions=sessions,
        storage=S3Storage(**s3_storage_kwargs(bucket_settings)),
    )
    try:
        yield c
    finally:
        c.stop_all()
        dispose(sessions)


@pytest.fixture
def cluster(
    make_pg_database: Callable[[], str], redis_url: str, s3_bucket_settings: dict[str, Any], tmp_path: Path
) -> Iterator[Cluster]:
    with make_cluster(make_pg_database, redis_url, s3_bucket_settings, tmp_path) as c:
        yield c


@dataclass(frozen=True)
class ReferenceJob:
    images: dict[str, bytes]  # every stored image and metadata object (Cluster.images)
    archive: bytes


@pytest.fixture(scope="session")
def reference_job(
    make_pg_database: Callable[[], str],
    redis_url: str,
    moto_s3: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> ReferenceJob:
    """An undisturbed run of the sample dataset (1 worker, default batch and shard size), made in a
    cluster of its own, so no test's result depends on which test ran first."""
    from services.common import keys
    from services.common.storage_s3 import S3Storage
    from tests.service_helpers import s3_storage_kwargs

    bucket = {**moto_s3, "s3_bucket": f"ref-{uuid.uuid4().hex[:16]}"}
    S3Storage(**s3_storage_kwargs(bucket)).ensure()
    with make_cluster(make_pg_database, redis_url, bucket, tmp_path_factory.mktemp("reference")) as c:
        c.start_api()
        c.start_worker("ref")
        key = c.new_key()
        job_id = c.submit(key, c.upload_sample(key))
        job = c.wait_job(key, job_id)
        assert job["status"] == "succeeded", f"{job}\n{c.logs()}"
        return ReferenceJob(images=c.images(job_id), archive=c.storage.get_bytes(keys.archive(job_id)))


@pytest.fixture(scope="session")
def reference_images(reference_job: ReferenceJob) -> dict[str, bytes]:
    return reference_job.images


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    wait_until(predicate, timeout, what, interval=0.2)


def now() -> float:
    return time.monotonic()


@dataclass
class Up:
    popen: subprocess.Popen[bytes]
    home: Path
    url: str
    log: Path
    env: dict[str, str]
    jobs: list[dict[str, Any]] = field(default_factory=list)  # each run_job's last state

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def readyz(self) -> tuple[int, dict[str, Any]]:
        r = httpx.get(f"{self.url}/readyz", timeout=5)
        return r.status_code, r.json()

    def key(self, owner: str = "me") -> str:
        return subprocess.run(
            [sys.executable, "-c", CLI, "admin", "create-key", "--owner", owner],
            env=self.env, cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip

    def worker_pid(self) -> int:
        state = json.loads((self.home / "supervisor.json").read_text())
        return int(state["children"]["worker"]["pid"])

    def upload_sample(self, key: str, folder: Path) -> str:
        from diffii_core.sample_data import write_sample_archive

        archive = write_sample_archive(folder / f"sample-{uuid.uuid4().hex[:6]}.zip")
        with httpx.Client(base_url=self.url, timeout=30) as client, archive.open("rb") as fp:
            r = client.post("/v1/datasets", headers=auth(key), files={"file": ("s.zip", fp)})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def run_job(
        self,
        key: str,
        dataset_id: str,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        params: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], dict[str, bytes]]:
        """Submit JOB_PARAMS (updated by `params`), poll until it ends (on_progress sees each state);
        the job's last state and its archive's images (none unless it succeeded)."""
        body = {**JOB_PARAMS, **(params or {}), "dataset_id": dataset_id}
        with httpx.Client(base_url=self.url, timeout=30) as client:
            r = client.post("/v1/jobs", headers=auth(key), json=body)
            assert r.status_code == 202, r.text
            job_id, seen = r.json()["id"], {}

            def done() -> bool:
                seen["job"] = client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
                if on_progress is not None:
                    on_progress(seen["job"])
                return seen["job"]["status"] in TERMINAL_JOB_STATUSES

            wait_until(done, JOB_TIMEOUT, "the job to end", interval=0.3)
            self.jobs.append(seen["job"])
            if seen["job"]["status"] != "succeeded":
                return seen["job"], {}
            archive = client.get(f"/v1/jobs/{job_id}/archive", headers=auth(key), follow_redirects=True)
        with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
            images = {name: zf.read(name) for name in zf.namelist() if name.endswith(".png")}
        return seen["job"], images


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    """`diffii up` on its embedded defaults (SQLite, SQLite broker, local objects) in its own process."""
    with running_up(tmp_path) as u:
        yield u


@contextlib.contextmanager
def running_up(tmp_path: Path, **settings: str) -> Iterator[Up]:
    """`diffii up` on its embedded defaults (SQLite, SQLite broker, local objects) in its own process;
    `settings` are DIFFII_* overrides (lease_seconds="600")."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFII_")}
    # Short leases so the killed worker's shard is re-run within seconds.
    env.update(
        DIFFII_HOME=str(home), PYTHONUNBUFFERED="1", DIFFII_LEASE_SECONDS="10", DIFFII_HEARTBEAT_SECONDS="2",
        DIFFII_SWEEP_SECONDS="1", DIFFII_RESEND_AFTER_SECONDS="3", DIFFII_RETRY_BASE_SECONDS="1",
    )  # fmt: skip
    env.update({f"DIFFII_{k.upper()}": v for k, v in settings.items()})
    port = free_port()
    log = tmp_path / "up.log"
    with log.open("wb") as handle:
        popen = subprocess.Popen(
            [sys.executable, "-c", CLI, "up", "--port", str(port)],
            env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    u = Up(popen, home, f"http://127.0.0.1:{port}", log, env)

    try:
        wait_until(answers(f"{u.url}/readyz", popen, log), 120, "diffii up readiness", interval=0.3)
        yield u
    finally:
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGTERM)
            popen.wait(timeout=60)
        for pid in processes_with_home(home):  # only if the test failed half-way
            os.kill(pid, signal.SIGKILL)


def processes_with_home(home: Path) -> list[int]:
    """Processes whose environment names this DIFFII_HOME (the API, the worker and its children)."""
    marker = f"DIFFII_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
