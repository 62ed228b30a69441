"""The diffii REST client: a plain Python class for scripts and notebooks (`diffii submit`, `status`,
`jobs`, `download`, `cancel` and `preview` wrap it). Its errors are its own exceptions; it needs httpx,
nothing of the CLI or the service.

    from services.client import Client

    client = Client("http://127.0.0.1:8000", api_key)
    dataset = client.upload_dataset(Path("birds.zip"))
    job = client.create_job({"dataset_id": dataset["id"], "model": "tiny", "expansion": 2})
    client.wait(job["id"])
    client.download_archive(job["id"], Path("synthetic.zip"))
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from diffii_core.atomic import atomic_write
from services.common.statuses import TERMINAL_JOB_STATUSES

DEFAULT_SERVER = "http://127.0.0.1:8000"
# While waiting for a job, how long the server may stay unreachable (or answer 5xx) before giving up:
# a restart of the API must not end a wait for a job that keeps running on the workers.
UNREACHABLE_GRACE_S = 300.0


class ClientError(Exception):
    """Anything the client could not do; the message says what."""


class ApiError(ClientError):
    """The server answered with an error; `detail` is what it said."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"server said {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class Unreachable(ClientError):
    """The server did not answer (down, restarting, or the network)."""


class WaitTimeout(ClientError):
    """The job did not end in the time given; it keeps running on the server."""


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI validation errors: name each field
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p not in ("body", "query"))
                parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


def _exact_seed(job: dict[str, Any]) -> dict[str, Any]:
    """The API sends a job's seed as decimal digits (JavaScript's numbers would round a 63-bit
    seed); Python's integers hold it exactly, so the client hands callers an int, as before."""
    params = job.get("params")
    if isinstance(params, dict) and isinstance(params.get("seed"), str) and params["seed"].isdigit():
        params["seed"] = int(params["seed"])
    return job


class Client:
    """A thin REST client; every non-2xx answer raises an ApiError carrying the server's detail."""

    def __init__(self, server: str, api_key: str | None, timeout: float = 60.0) -> None:
        if not api_key:
            raise ClientError("no API key: pass --api-key or set DIFFII_API_KEY")
        self.server = server.rstrip("/")
        self.http = httpx.Client(
            base_url=self.server,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "diffii-client"},
            timeout=httpx.Timeout(timeout, connect=10.0),
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach the diffii server at {self.server}: {exc}") from exc
        if response.status_code >= 400:
            raise ApiError(response.status_code, _detail(response))
        return response

    def upload_dataset(self, archive: Path) -> dict[str, Any]:
        with archive.open("rb") as handle:
            files = {"file": (archive.name, handle, "application/octet-stream")}
            return self.request("POST", "/v1/datasets", files=files, timeout=None).json()

    def create_job(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        for attempt in range(3):
            try:
                return _exact_seed(self.request("POST", "/v1/jobs", json=body, headers=headers).json())
            except Unreachable:
                # The same key makes a retry after a lost answer return the job, not a second one.
                if attempt == 2:
                    raise
                time.sleep(1 + attempt)
        raise AssertionError("unreachable")

    def job(self, job_id: str) -> dict[str, Any]:
        return _exact_seed(self.request("GET", f"/v1/jobs/{job_id}").json())

    def jobs(self, status: str | None = None, limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
        """Your jobs, newest first, one page: {"jobs": [...], "next_cursor": ...}."""
        query: dict[str, Any] = {"limit": limit}
        if status:
            query["status"] = status
        if cursor:
            query["cursor"] = cursor
        page = self.request("GET", "/v1/jobs", params=query).json()
        page["jobs"] = [_exact_seed(job) for job in page.get("jobs", [])]
        return page

    def cancel(self, job_id: str) -> dict[str, Any]:
        return _exact_seed(self.request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def datasets(self, limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
        """Your datasets, newest first, one page: {"datasets": [...], "next_cursor": ...}."""
        query: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        return self.request("GET", "/v1/datasets", params=query).json()

    def delete_dataset(self, dataset_id: str) -> None:
        """Refused (ApiError 409) while a job of yours that has not ended uses the dataset."""
        self.request("DELETE", f"/v1/datasets/{dataset_id}")

    def wait(
        self,
        job_id: str,
        interval: float = 2.0,
        timeout: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        on_outage: Callable[[ClientError], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job ends and return it. An unreachable server or a 5xx is waited out for
        UNREACHABLE_GRACE_S (`on_outage` hears of each miss); WaitTimeout after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        outage: float | None = None
        while True:
            try:
                job = self.job(job_id)
            except (Unreachable, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status_code < 500:
                    raise
                outage = outage or time.monotonic()
                if time.monotonic() - outage > UNREACHABLE_GRACE_S:
                    raise
                if on_outage is not None:
                    on_outage(exc)
                time.sleep(min(10.0, max(interval, 1.0)))
                continue
            outage = None
            if on_update is not None:
                on_update(job)
            if job["status"] in TERMINAL_JOB_STATUSES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(
                    f"job {job_id} still {job['status']} after {timeout:g}s; it keeps running on the server"
                )
            time.sleep(interval)

    def previews(self, job_id: str) -> dict[str, bytes]:
        """The job's preview sheets (PNG) by class name."""
        listing = self.request("GET", f"/v1/jobs/{job_id}/preview").json()
        return {c["name"]: self.request("GET", c["url"]).content for c in listing["classes"]}

    def download_archive(self, job_id: str, out: Path) -> Path:
        """The job's archive, written whole at `out` or not at all."""
        response = self.request("GET", f"/v1/jobs/{job_id}/archive", follow_redirects=False)
        location = response.headers.get("location")
        if response.status_code not in (301, 302, 303, 307, 308) or not location:
            raise ClientError(f"expected a redirect to the archive, got {response.status_code}")
        # A presigned URL carries its own authorisation; our Authorization header would break it.
        url = str(self.http.base_url.join(location))
        try:
            with httpx.stream("GET", url, timeout=httpx.Timeout(300.0, connect=10.0)) as stream:
                if stream.status_code >= 400:
                    stream.read()
                    raise ApiError(stream.status_code, _detail(stream))
                with atomic_write(out) as handle:
                    for chunk in stream.iter_bytes(1024 * 1024):
                        handle.write(chunk)
        except httpx.TransportError as exc:
            raise ClientError(f"archive download failed: {exc}") from exc
        return out
