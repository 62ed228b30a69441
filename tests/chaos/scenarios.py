"""Fault scenarios on the real components, shared by tests/integration/test_chaos.py and
bench/chaos.py. Each runs one job on a private Postgres, a private Redis and moto's S3 behind a TCP
proxy, injects its fault while the job generates, and compares the stored images with an
undisturbed run's: lost, duplicated and changed images, and the time from healing the fault to the
job's next stored image.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from services.common.pdeathsig import die_with_parent
from services.common.statuses import TERMINAL_JOB_STATUSES
from tests.chaos.components import PrivatePostgres, PrivateRedis, TcpProxy
from tests.integration.conftest import CLI, JOB_PARAMS, ROOT, Cluster, make_cluster
from tests.service_helpers import free_port, s3_storage_kwargs, wait_until

# Slow generation (a pause after each image, batches of 2), so a fault lands mid-shard; a backoff
# that outlasts a 30 s outage within the attempts.
WORKER = {"batch_size": "2"}
FAULTS = "delay:generate:0.3"
CHAOS_ENV = {"DIFFII_RETRY_BASE_SECONDS": "4", "DIFFII_MAX_ATTEMPTS": "6", "DIFFII_RETRY_MAX_SECONDS": "30"}
JOB_TIMEOUT = 900.0


@dataclass
class Outcome:
    scenario: str
    jobs: int = 1
    completed: int = 0
    lost: int = 0
    duplicated: int = 0
    changed: int = 0
    recover_s: float | None = None
    detail: str = ""

    @property
    def failed(self) -> int:
        return (self.jobs - self.completed) + (1 if self.lost or self.duplicated or self.changed else 0)


@dataclass
class Stack:
    """The private components, the moto server behind its proxy, and the reference images."""

    root: Path
    postgres: PrivatePostgres
    redis: PrivateRedis
    proxy: TcpProxy
    moto_port: int
    reference: dict[str, bytes] = field(default_factory=dict)

    def bucket_settings(self) -> dict[str, Any]:
        from services.common.storage_s3 import S3Storage

        settings = {
            "storage": "s3", "s3_endpoint_url": f"http://127.0.0.1:{self.proxy.port}",
            "s3_bucket": f"chaos-{uuid.uuid4().hex[:12]}", "s3_addressing_style": "path",
            "s3_access_key_id": "testing", "s3_secret_access_key": "testing", "s3_region": "us-east-1",
        }  # fmt: skip
        S3Storage(**s3_storage_kwargs(settings)).ensure()
        return settings

    @contextlib.contextmanager
    def cluster(self, name: str) -> Iterator[Cluster]:
        folder = self.root / f"{name}-{uuid.uuid4().hex[:6]}"
        folder.mkdir(parents=True)
        with make_cluster(self.postgres.create_database, self.redis.url, self.bucket_settings(), folder) as c:
            c.env.update(CHAOS_ENV)
            yield c


@contextlib.contextmanager
def stack(root: Path) -> Iterator[Stack]:
    """Start every private component (and moto's server), run the reference job, stop them all."""
    root.mkdir(parents=True, exist_ok=True)
    moto_port = free_port()
    moto_log = (root / "moto.log").open("wb")
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
        stdout=moto_log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
    )  # fmt: skip
    postgres = redis = proxy = None
    try:
        wait_until(
            lambda: _answers(f"http://127.0.0.1:{moto_port}/moto-api/"), 60, "moto start", interval=0.2
        )
        postgres, redis, proxy = PrivatePostgres(), PrivateRedis(root / "redis"), TcpProxy(moto_port)
        s = Stack(root, postgres, redis, proxy, moto_port)
        with s.cluster("reference") as c:
            c.start_api()
            c.start_worker("ref", faults=FAULTS, **WORKER)
            key = c.new_key()
            job = _wait(c, key, c.submit(key, c.upload_sample(key)))
            if job.get("status") != "succeeded":
                raise RuntimeError(f"the reference job did not succeed: {job}\n{c.logs()}")
            s.reference = c.images(job["id"])
        yield s
    finally:
        for part in (proxy, redis, postgres):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.down() if isinstance(part, TcpProxy) else part.close()
        moto.terminate()
        moto.wait(timeout=30)
        moto_log.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.TransportError:
        return False


def _job(c: Cluster, key: str, job_id: str) -> dict[str, Any] | None:
    """The job over the API, or None while the API (or the database behind it) is unreachable."""
    try:
        with httpx.Client(base_url=c.api_url, timeout=10) as client:
            r = client.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"})
    except httpx.TransportError:
        return None
    return r.json() if r.status_code == 200 else None


def _wait(
    c: Cluster, key: str, job_id: str, until: Callable[[dict[str, Any]], bool] | None = None
) -> dict[str, Any]:
    until = until or (lambda j: j["status"] in TERMINAL_JOB_STATUSES)
    seen: dict[str, Any] = {"id": job_id}

    def check() -> bool:
        job = _job(c, key, job_id)
        if job is not None:
            seen.update(job)
        return job is not None and until(job)

    wait_until(check, JOB_TIMEOUT, f"job {job_id}", interval=0.3)
    return seen


def _mid_generation(job: dict[str, Any]) -> bool:
    return any(s["status"] == "running" and s["images_done"] >= 1 for s in job["progress"]["shards"] or [])


def _images_done(c: Cluster, job_id: str) -> int:
    from sqlalchemy import func, select

    from services.common.models import Shard

    with contextlib.suppress(Exception), c.sessions() as s:
        return int(s.scalar(select(func.sum(Shard.images_done)).where(Shard.job_id == job_id)) or 0)
    return -1


def _compare(out: Outcome, images: dict[str, bytes], reference: dict[str, bytes]) -> None:
    """Lost, duplicated and changed images against the undisturbed run's."""
    out.lost = len(set(reference) - set(images)) if out.completed else 0
    out.duplicated = len(set(images) - set(reference))
    out.changed = sum(1 for k in set(images) & set(reference) if images[k] != reference[k])


def _judge(
    name: str, s: Stack, c: Cluster, job: dict[str, Any], healed: float, progressed: float | None
) -> Outcome:
    out = Outcome(name, completed=int(job.get("status") == "succeeded"))
    _compare(out, c.images(job["id"]) if out.completed else {}, s.reference)
    out.recover_s = None if progressed is None else round(progressed - healed, 1)
    if out.failed:
        out.detail = f"{job.get('status')}: {job.get('message')}\n{c.logs()}"
    return out


def run(s: Stack, name: str, fault: Callable[[Stack, Cluster], Any], *, sweepers: int = 0) -> Outcome:
    """Run one job through a fault: `fault` breaks something and returns once it is healed."""
    with s.cluster(name) as c:
        c.start_api()
        settings = {**WORKER, **({"sweep": "false"} if sweepers else {})}
        c.start_worker("w1", faults=FAULTS, **settings)
        for i in range(sweepers):
            c.start_sweeper(str(i))
        key = c.new_key()
        job_id = c.submit(key, c.upload_sample(key))
        _wait(c, key, job_id, _mid_generation)
        before = _images_done(c, job_id)
        fault(s, c)
        healed = time.monotonic()
        progressed: list[float] = []

        def moved(job: dict[str, Any]) -> bool:
            if not progressed and (job["status"] == "succeeded" or _images_done(c, job_id) > before):
                progressed.append(time.monotonic())
            return job["status"] in TERMINAL_JOB_STATUSES

        job = _wait(c, key, job_id, moved)
        return _judge(name, s, c, job, healed, progressed[0] if progressed else None)


# -- the faults ----------------------------------------------------------------------------------------


def restart_postgres(s: Stack, c: Cluster) -> None:
    s.postgres.stop("fast")  # every connection is cut
    time.sleep(5)
    s.postgres.start()


def restart_redis(s: Stack, c: Cluster) -> None:
    s.redis.stop()
    time.sleep(5)
    s.redis.start()


def s3_down_30s(s: Stack, c: Cluster) -> None:
    s.proxy.down()
    time.sleep(30)
    s.proxy.up()


def kill_worker(s: Stack, c: Cluster) -> None:
    victim = next(p for p in c.procs if p.name == "worker-w1")
    victim.kill_group()  # SIGKILL: no cleanup, no ack
    victim.popen.wait()
    settings = {
        **WORKER,
        **({"sweep": "false"} if any(p.name.startswith("sweeper") for p in c.procs) else {}),
    }
    c.start_worker("w2", faults=FAULTS, **settings)


def restart_api_while_a_client_polls(s: Stack) -> Outcome:
    """`diffii submit --wait` polls while the API goes away for 5 s and comes back on its port."""
    from diffii_core.sample_data import write_sample_dataset

    with s.cluster("api-restart") as c:
        port = free_port()
        c.start_api(port)
        c.start_worker("w1", faults=FAULTS, **WORKER)
        key = c.new_key()
        out = c.tmp / "archive.zip"
        argv = [
            sys.executable, "-c", CLI, "submit", str(write_sample_dataset(c.tmp / "data")), "--wait",
            "--out", str(out), "--poll-interval", "0.3",
            *[arg for k, v in _cli_params().items() for arg in (f"--{k.replace('_', '-')}", str(v))],
        ]  # fmt: skip
        env = {**c.env, "DIFFII_API_URL": c.api_url, "DIFFII_API_KEY": key}
        client = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            job_id = _wait_for_row(c)
            wait_until(lambda: _images_done(c, job_id) >= 1, JOB_TIMEOUT, "generation to start", interval=0.3)
            api = next(p for p in c.procs if p.name == "api")
            api.stop()
            time.sleep(5)
            c.procs.remove(api)
            # The worker never stopped, so the job's progress says nothing here: what recovers is the
            # API, from its restart to the first status poll it answers again.
            healed = time.monotonic()
            c.start_api(port)
            wait_until(lambda: _job(c, key, job_id) is not None, JOB_TIMEOUT, "a status poll answered")
            progressed = time.monotonic()
            output = client.communicate(timeout=JOB_TIMEOUT)[0].decode(errors="replace")
        finally:
            if client.poll() is None:
                client.kill()
        job = _job(c, key, job_id) or {"id": job_id}
        outcome = _judge("api_restart_while_polling", s, c, job, healed, progressed)
        if client.returncode != 0 or not out.is_file():
            outcome.completed = 0
            outcome.detail = f"the polling client failed ({client.returncode}):\n{output[-2000:]}"
        return outcome


def _cli_params() -> dict[str, Any]:
    p = JOB_PARAMS
    return {
        "model": p["model"], "expansion": p["expansion"], "seed": p["seed"],
        "inference_steps": p["inference_steps"], "inversion_steps": p["inversion_steps"],
        "concept_steps": p["concepts"]["steps"], "fill_pool_to": p["fill_pool_to"],
    }  # fmt: skip


def _wait_for_row(c: Cluster) -> str:
    from sqlalchemy import select

    from services.common.models import Job

    found: list[str] = []

    def created() -> bool:
        with c.sessions() as s:
            found.extend(s.scalars(select(Job.id)).all())
        return bool(found)

    wait_until(created, 120, "the client's job", interval=0.3)
    return found[0]


def up_worker_sigkill_mid_learning(root: Path) -> Outcome:
    """`diffii up` on its embedded defaults and its default 60 s lease: the worker is SIGKILLed while
    it learns concepts. Its supervisor releases the shard at once; recover_s is from the kill to the
    learn shard running again. The images must equal those of the same job run undisturbed."""
    import os
    import signal

    from tests.integration.conftest import LONG_LEARNING, running_up

    folder = root / f"up-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True)
    product_defaults = {
        "lease_seconds": "60", "heartbeat_seconds": "10", "sweep_seconds": "15",
        "resend_after_seconds": "60", "retry_base_seconds": "5",
    }  # fmt: skip
    with running_up(folder, **product_defaults) as u:
        key = u.key()
        dataset_id = u.upload_sample(key, folder)
        marks: dict[str, float] = {}

        def kill_then_watch(job: dict[str, Any]) -> None:
            learn = next((s for s in job["progress"]["steps"] or [] if s["kind"] == "learn"), None)
            if learn is None or learn["status"] != "running":
                return
            if "killed" not in marks:
                os.kill(u.worker_pid(), signal.SIGKILL)
                marks["killed"] = time.monotonic()
            elif learn["attempts"] >= 2 and "running" not in marks:
                marks["running"] = time.monotonic()

        job, images = u.run_job(key, dataset_id, kill_then_watch, LONG_LEARNING)
        _, reference = u.run_job(key, dataset_id, params=LONG_LEARNING)
        out = Outcome(
            "up_sigkill_mid_learning", completed=int(job["status"] == "succeeded" and "killed" in marks)
        )
        _compare(out, images, reference)
        if "running" in marks:
            out.recover_s = round(marks["running"] - marks["killed"], 1)
        if out.failed or "released 1 shard(s)" not in u.text():
            out.completed = 0
            out.detail = f"{job.get('status')} killed={'killed' in marks}\n{u.text()[-3000:]}"
        return out


# Scenarios that bring their own services (`diffii up`) and need no Stack.
STANDALONE: dict[str, Callable[[Path], Outcome]] = {
    "up_sigkill_mid_learning": up_worker_sigkill_mid_learning,
}

SCENARIOS: dict[str, Callable[[Stack], Outcome]] = {
    "postgres_restart": lambda s: run(s, "postgres_restart", restart_postgres),
    "redis_restart": lambda s: run(s, "redis_restart", restart_redis),
    "s3_down_30s": lambda s: run(s, "s3_down_30s", s3_down_30s),
    "worker_sigkill": lambda s: run(s, "worker_sigkill", kill_worker),
    "api_restart_while_polling": restart_api_while_a_client_polls,
    "two_sweepers": lambda s: run(s, "two_sweepers", kill_worker, sweepers=2),
    **{name: (lambda s, f=f: f(s.root)) for name, f in STANDALONE.items()},
}
