"""Load and scale figures of the service (run through bench/service.py --load / --scale).

- load: status-poll latency. While a job runs, GET /v1/jobs/{id} is sent at a fixed rate (open loop:
  a request's time starts at its scheduled send time, so a stalled server cannot hide its queue) for
  a fixed duration; prints the achieved rate, errors, p50/p99 (target p99 < 50 ms).
- scale: scale-out efficiency of 1, 2, 4, 8 workers on a simulated-compute model (each image a
  fixed sleep; tests/fault_worker.py `simulate`), so the control plane's own overhead is what is
  measured: efficiency = (images x seconds per image / workers) / the generate phase's wall time
  (target >= 0.9 at 8 workers).

Both need Postgres and Redis (--database-url, --broker-url): the embedded SQLite broker polls.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from services.common.pdeathsig import die_with_parent
from services.common.statuses import TERMINAL_JOB_STATUSES

ROOT = Path(__file__).resolve().parents[1]
CLI = "from services.cli.main import main; main()"
SIM_PARAMS = {"model": "tiny", "seed": 1, "expansion": 5, "concepts": {"steps": 0}, "inference_steps": 2,
              "inversion_steps": 2}  # fmt: skip


class Service:
    """An API and N workers (processes) on the given Postgres, Redis and a local object folder."""

    def __init__(self, tmp: Path, database_url: str, broker_url: str, extra: dict[str, str]) -> None:
        from services.common.migrate import upgrade_to_head

        self.tmp = tmp
        upgrade_to_head(database_url)
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFII_")}
        self.env.update(
            DIFFII_HOME=str(tmp / "home"), DIFFII_DATABASE_URL=database_url, DIFFII_BROKER_URL=broker_url,
            DIFFII_QUEUE=queue, DIFFII_QUEUES=f'["{queue}"]', DIFFII_STORAGE="local",
            DIFFII_STORAGE_DIR=str(tmp / "objects"), DIFFII_SIGNING_SECRET="bench", PYTHONPATH=str(ROOT),
            DIFFII_SWEEP_SECONDS="2",
            DIFFII_RATE_LIMIT_PER_SECOND="0",  # one key polls at the offered rate: measure the server
            **extra,
        )  # fmt: skip
        self.procs: list[subprocess.Popen[bytes]] = []
        self.url = ""

    def spawn(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("wb")
        # Own session (a signal meant for the bench does not hit them), but gone with the bench even
        # when it is killed: a timed-out run left its API and workers behind on the shared database.
        proc = subprocess.Popen(argv, env=env or self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=die_with_parent)  # fmt: skip
        self.procs.append(proc)
        return proc

    def start_api(self, workers: int = 1) -> None:
        from tests.service_helpers import free_port, wait_until

        port = free_port()
        self.spawn(
            [sys.executable, "-c", CLI, "serve", "--port", str(port), "--workers", str(workers)], "api"
        )
        self.url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 120, "API readiness", interval=0.3)

    def start_workers(self, n: int, faults: str = "") -> None:
        from tests.service_helpers import wait_until

        app = "tests.fault_worker" if faults else "services.worker.celery_app"
        logs = []
        for i in range(n):
            env = {**self.env, "DIFFII_TEST_FAULTS": faults, "DIFFII_WORK_DIR": str(self.tmp / f"work{i}")}
            argv = [sys.executable, "-m", "celery", "-A", app, "worker", "--pool=solo",
                    f"--queues={self.env['DIFFII_QUEUE']}", f"--hostname=w{i}@%h", "--without-gossip",
                    "--without-mingle", "--loglevel=info"]  # fmt: skip
            self.spawn(argv, f"worker{i}", env)
            logs.append(self.tmp / f"worker{i}.log")
        wait_until(lambda: all(b"ready." in p.read_bytes() for p in logs), 300, "workers", interval=0.5)

    def key(self) -> str:
        return subprocess.run(
            [sys.executable, "-c", CLI, "admin", "create-key", "--owner", f"bench-{uuid.uuid4().hex[:6]}"],
            env=self.env, cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip

    def submit(self, headers: dict[str, str], params: dict[str, Any]) -> str:
        from diffii_core.sample_data import write_sample_archive

        archive = write_sample_archive(self.tmp / f"sample-{uuid.uuid4().hex[:6]}.zip")
        with httpx.Client(base_url=self.url, headers=headers, timeout=60) as client, archive.open("rb") as fp:
            dataset_id = client.post("/v1/datasets", files={"file": ("d.zip", fp)}).json()["id"]
            return client.post("/v1/jobs", json={**params, "dataset_id": dataset_id}).json()["id"]

    def wait(self, headers: dict[str, str], job_id: str, timeout: float = 1800) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, headers=headers, timeout=60) as client:
            while time.monotonic() < deadline:
                job = client.get(f"/v1/jobs/{job_id}").json()
                if job["status"] in TERMINAL_JOB_STATUSES:
                    return job
                time.sleep(0.5)
        raise SystemExit(f"job {job_id} did not end within {timeout:g}s")

    def stop(self) -> None:
        import signal

        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


CONNECTIONS = 32  # the load client's pool size


class _Connection:
    """One keep-alive HTTP/1.1 connection: a request is a few bytes written and a response read."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def get(self, request: bytes) -> int:
        self.writer.write(request)
        status = int((await self.reader.readline()).split(b" ", 2)[1])
        length, chunked = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            while size := int((await self.reader.readline()).split(b";")[0], 16):
                await self.reader.readexactly(size + 2)
            await self.reader.readline()
        else:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


async def _open_loop(
    url: str, path: str, headers: dict[str, str], rate: float, seconds: float
) -> dict[str, Any]:
    parsed = httpx.URL(url)
    host, port = parsed.host, parsed.port or 80
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    loop = asyncio.get_running_loop()
    # A bounded pool, as a real client has: beyond CONNECTIONS in flight a request waits for a free
    # connection (its wait counts: latency runs from the scheduled send). Opening one per late
    # request instead piles hundreds of sockets on a stalled server and measures the pile-up.
    idle: asyncio.Queue[_Connection] = asyncio.Queue()
    opened = 0
    total = int(rate * seconds)
    start = loop.time() + 0.5
    latencies: list[float] = []
    failures: dict[str, int] = {}  # what went wrong instead of a 200, and how often

    async def one(due: float) -> None:
        await asyncio.sleep(max(0.0, due - loop.time()))
        # A request waits for no free connection: it opens one, so the server's queue is what shows.
        nonlocal opened
        if idle.empty() and opened < CONNECTIONS:
            opened += 1
            conn = None
        else:
            conn = await idle.get()
        try:
            if conn is None:
                conn = _Connection(*await asyncio.open_connection(host, port))
            status = await asyncio.wait_for(conn.get(request), timeout=10)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            if conn is not None:
                conn.close()
            opened -= 1  # the next request opens a fresh one
            failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
            return
        idle.put_nowait(conn)
        if status == 200:
            latencies.append((loop.time() - due) * 1000)
        else:
            failures[f"HTTP {status}"] = failures.get(f"HTTP {status}", 0) + 1

    await asyncio.gather(*(one(start + i / rate) for i in range(total)))
    elapsed = loop.time() - start
    while not idle.empty():
        idle.get_nowait().close()
    latencies.sort()
    return {
        "requests": total,
        "achieved_rate": round(len(latencies) / elapsed, 1),
        "errors": sum(failures.values()),
        "failures": failures,
        "p50_ms": round(statistics.median(latencies), 2) if latencies else None,
        "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))], 2) if latencies else None,
    }


def poll_latency(url: str, path: str, headers: dict[str, str], rate: float, seconds: float) -> dict[str, Any]:
    """Open-loop GETs at `rate` per second for `seconds`; latencies in ms from each scheduled send.

    The client is one asyncio loop writing raw HTTP/1.1 on keep-alive sockets, so on a 2-core
    machine it takes as little CPU as it can from the API it measures: measured at 50 requests/s,
    0.7 ms of client CPU a request, where the 16 httpx threads it replaces took 3.7 to 4.2 ms (at
    200/s, most of a core)."""
    return asyncio.run(_open_loop(url, path, headers, rate, seconds))


def run_load(
    database_url: str, broker_url: str, rate: float, seconds: float, api_workers: int = 1
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="diffii-load-") as tmp:
        svc = Service(Path(tmp), database_url, broker_url, {})
        try:
            svc.start_api(api_workers)
            # A job that keeps a worker busy the whole time (simulated compute: no CPU taken from the API).
            svc.start_workers(1, faults="simulate:generate:2")
            headers = {"Authorization": f"Bearer {svc.key()}"}
            job_id = svc.submit(headers, SIM_PARAMS)
            api = svc.procs[0].pid
            cpu_before = group_cpu_seconds(api)
            figures = poll_latency(svc.url, f"/v1/jobs/{job_id}", headers, rate, seconds)
            spent = group_cpu_seconds(api) - cpu_before
            figures["api_cpu_ms"] = round(1000 * spent / figures["requests"], 2)
            return figures
        finally:
            svc.stop()


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user + system, reaped children included) of the processes in a process group:
    the API with its uvicorn workers. What a status poll costs, apart from how long it waits."""
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ...
            ticks += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def generate_phase(database_url: str, job_id: str) -> tuple[float, list[int]]:
    """Wall time from the first generate shard's start to the last one's end, and each one's images."""
    from sqlalchemy import select

    from services.common.db import dispose, make_session_factory
    from services.common.models import Shard, ShardKind
    from services.common.timeutil import as_utc

    sessions = make_session_factory(database_url)
    try:
        with sessions() as s:
            rows = list(
                s.scalars(select(Shard).where(Shard.job_id == job_id, Shard.kind == ShardKind.generate))
            )
        first = min(as_utc(r.started_at) for r in rows if r.started_at)
        last = max(as_utc(r.finished_at) for r in rows if r.finished_at)
        return (last - first).total_seconds(), [r.images_total for r in rows]
    finally:
        dispose(sessions)


def best_schedule(shard_seconds: list[float], workers: int) -> float:
    """The makespan of these shards on `workers` with no overhead at all: longest first, each to the
    least loaded worker (optimal for shards of one size, as here). Its ratio to the ideal is the
    most a job cut this way can reach: 31 shards on 8 workers need 4 rounds, where 3.9 would do."""
    loads = [0.0] * workers
    for seconds in sorted(shard_seconds, reverse=True):
        loads[loads.index(min(loads))] += seconds
    return max(loads)


def run_scale(
    database_url: str, broker_url: str, per_image: float, counts: list[int], expansion: float = 20
) -> list[dict[str, Any]]:
    params = {**SIM_PARAMS, "expansion": expansion}
    rows = []
    for n in counts:
        with tempfile.TemporaryDirectory(prefix="diffii-scale-") as tmp:
            svc = Service(Path(tmp), database_url, broker_url, {"DIFFII_SHARD_SIZE": "2"})
            try:
                svc.start_api()
                svc.start_workers(n, faults=f"simulate:generate:{per_image}")
                headers = {"Authorization": f"Bearer {svc.key()}"}
                job = svc.wait(headers, svc.submit(headers, params))
                if job["status"] != "succeeded":
                    raise SystemExit(f"{n} workers: job {job['status']}: {job.get('message')}")
                wall, sizes = generate_phase(database_url, job["id"])
            finally:
                svc.stop()
        ideal = sum(sizes) * per_image / n
        ceiling = ideal / best_schedule([k * per_image for k in sizes], n)
        rows.append({"workers": n, "images": sum(sizes), "shards": len(sizes),
                     "generate_wall_s": round(wall, 2), "ideal_s": round(ideal, 2),
                     "efficiency": round(ideal / wall, 3), "ceiling": round(ceiling, 3)})  # fmt: skip
    return rows
