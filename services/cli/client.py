"""Client commands: `diffii submit`, `status`, `jobs`, `download`, `cancel`, `datasets` (REST calls over
httpx).

Server and key come from --server/--api-key or DIFFII_API_URL/DIFFII_API_KEY. An HTTP error prints
the server's `detail` and exits non-zero.
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx

from diffii_core.atomic import atomic_write
from services.cli.options import job_body, job_options

DEFAULT_SERVER = "http://127.0.0.1:8000"
TERMINAL = {"succeeded", "failed", "cancelled"}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
STORED_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}  # already compressed: deflating wastes time
F = TypeVar("F", bound=Callable[..., Any])


class ApiError(click.ClickException):
    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"server said {status_code}: {detail}")
        self.status_code = status_code


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


class Unreachable(click.ClickException):
    """The server did not answer (down, restarting, or the network)."""


# While waiting for a job, how long the server may stay unreachable (or answer 5xx) before giving up:
# a restart of the API must not end a wait for a job that keeps running on the workers.
UNREACHABLE_GRACE_S = 300.0


class Client:
    """A thin REST client; every non-2xx answer becomes an ApiError carrying the server's detail."""

    def __init__(self, server: str, api_key: str | None, timeout: float = 60.0) -> None:
        if not api_key:
            raise click.UsageError("no API key: pass --api-key or set DIFFII_API_KEY")
        self.server = server.rstrip("/")
        self.http = httpx.Client(
            base_url=self.server,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "diffii-cli"},
            timeout=httpx.Timeout(timeout, connect=10.0),
        )

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

    def create_job(self, body: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key}
        for attempt in range(3):
            try:
                return self.request("POST", "/v1/jobs", json=body, headers=headers).json()
            except click.ClickException as exc:
                # The same key makes a retry after a lost answer return the job, not a second one.
                if isinstance(exc, ApiError) or attempt == 2:
                    raise
                time.sleep(1 + attempt)
        raise AssertionError("unreachable")

    def job(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/jobs/{job_id}").json()

    def datasets(self, limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
        """One page of the caller's datasets, newest first: {datasets, next_cursor}."""
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        return self.request("GET", "/v1/datasets", params=params).json()

    def delete_dataset(self, dataset_id: str) -> None:
        self.request("DELETE", f"/v1/datasets/{dataset_id}")

    def previews(self, job_id: str) -> dict[str, bytes]:
        """The job's preview sheets (PNG) by class name."""
        listing = self.request("GET", f"/v1/jobs/{job_id}/preview").json()
        return {c["name"]: self.request("GET", c["url"]).content for c in listing["classes"]}

    def download_archive(self, job_id: str, out: Path) -> Path:
        response = self.request("GET", f"/v1/jobs/{job_id}/archive", follow_redirects=False)
        location = response.headers.get("location")
        if response.status_code not in (301, 302, 303, 307, 308) or not location:
            raise click.ClickException(f"expected a redirect to the archive, got {response.status_code}")
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
            raise click.ClickException(f"archive download failed: {exc}") from exc
        return out


def server_options(fn: F) -> F:
    """--server and --api-key, passed on as they are (for a command that may not need a server)."""
    fn = click.option("--api-key", envvar="DIFFII_API_KEY", help="API key [env DIFFII_API_KEY]")(fn)
    return click.option(
        "--server",
        envvar="DIFFII_API_URL",
        default=DEFAULT_SERVER,
        show_default=True,
        help="API base URL [env DIFFII_API_URL]",
    )(fn)


def connection_options(fn: F) -> F:
    @server_options
    @functools.wraps(fn)
    def wrapper(*args: Any, server: str, api_key: str | None, **kwargs: Any) -> Any:
        return fn(*args, client=Client(server, api_key), **kwargs)

    return wrapper  # type: ignore[return-value]


# -- dataset packing ----------------------------------------------------------------------------------


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


@contextmanager
def dataset_archive(path: Path) -> Iterator[Path]:
    """The archive to upload: the file itself, or a folder zipped into a temp file (removed after)."""
    if path.is_file():
        if not _is_archive(path):
            raise click.BadParameter(f"{path} is not a .zip, .tar or .tar.gz archive", param_hint="DATASET")
        yield path
        return
    if not path.is_dir():
        raise click.BadParameter(f"{path} does not exist", param_hint="DATASET")
    with tempfile.TemporaryDirectory(prefix="diffii-submit-") as tmp:
        archive = Path(tmp) / f"{path.resolve().name or 'dataset'}.zip"
        count = 0
        with zipfile.ZipFile(archive, "w") as zf:
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                rel = file.relative_to(path)
                if any(part.startswith(".") for part in rel.parts):
                    continue
                method = (
                    zipfile.ZIP_STORED if file.suffix.lower() in STORED_SUFFIXES else zipfile.ZIP_DEFLATED
                )
                zf.write(file, rel.as_posix(), compress_type=method)
                count += 1
        if not count:
            raise click.BadParameter(f"{path} holds no files", param_hint="DATASET")
        yield archive


# -- progress -----------------------------------------------------------------------------------------


def describe_progress(job: dict[str, Any]) -> str:
    p = job["progress"]
    return (
        f"{p['stage']}: shards {p['shards_done']}/{p['shards_total']}, "
        f"images {p['images_done']}/{p['images_total']}"
    )


def wait_for(client: Client, job_id: str, interval: float, timeout: float | None = None) -> dict[str, Any]:
    from tqdm import tqdm

    deadline = None if timeout is None else time.monotonic() + timeout
    bar = tqdm(total=0, unit="img", desc="queued", dynamic_ncols=True)
    try:
        outage: float | None = None
        while True:
            try:
                job = client.job(job_id)
            except (Unreachable, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status_code < 500:
                    raise
                outage = outage or time.monotonic()
                if time.monotonic() - outage > UNREACHABLE_GRACE_S:
                    raise
                bar.set_description(f"server unreachable, retrying ({exc.format_message()[:60]})")
                time.sleep(min(10.0, max(interval, 1.0)))
                continue
            outage = None
            p = job["progress"]
            if p["images_total"] and bar.total != p["images_total"]:
                bar.total = p["images_total"]
            bar.n = p["images_done"]
            bar.set_description(p["stage"])
            bar.set_postfix_str(f"shards {p['shards_done']}/{p['shards_total']}")
            bar.refresh()
            if job["status"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise click.ClickException(
                    f"job {job_id} still {job['status']} after {timeout:g}s; it keeps running on the server"
                )
            time.sleep(interval)
    finally:
        bar.close()


def _default_out(job_id: str) -> Path:
    return Path.cwd() / f"diffii-{job_id}.zip"


# -- commands -----------------------------------------------------------------------------------------


@click.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@job_options
@click.option("--wait", is_flag=True, help="poll with a progress bar until the job ends, then download")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="archive path for --wait")
@click.option("--poll-interval", type=click.FloatRange(0.1, 600), default=2.0, show_default=True)
@click.option("--wait-timeout", type=click.FloatRange(min=0), help="give up waiting after this many seconds")
@connection_options
def submit(
    client: Client,
    dataset: Path,
    wait: bool,
    out: Path | None,
    poll_interval: float,
    wait_timeout: float | None,
    **options: Any,
) -> None:
    """Upload DATASET (a folder in ImageFolder layout, or a .zip/.tar/.tar.gz) and start a job.

    Prints the job id. With --wait, shows progress and downloads the archive when it succeeds.
    """
    body = job_body(options)
    with dataset_archive(dataset) as archive:
        click.echo(f"uploading {archive.name} ({archive.stat().st_size:,} bytes)", err=True)
        uploaded = client.upload_dataset(archive)
    classes = ", ".join(f"{c['name']} ({c['images']})" for c in uploaded["classes"])
    click.echo(f"dataset {uploaded['id']}: {uploaded['images']} images in {classes}", err=True)
    for skipped in uploaded.get("skipped", []):
        click.echo(f"  skipped {skipped['path']}: {skipped['reason']}", err=True)
    job = client.create_job({**body, "dataset_id": uploaded["id"]}, idempotency_key=uuid.uuid4().hex)
    click.echo(f"job {job['id']} {job['status']} (seed {job['params']['seed']})", err=True)
    click.echo(job["id"])
    if not wait:
        return
    final = wait_for(client, job["id"], poll_interval, wait_timeout)
    _finish(client, final, out or _default_out(final["id"]))


def _finish(client: Client, job: dict[str, Any], out: Path) -> None:
    if job["status"] != "succeeded":
        raise click.ClickException(f"job {job['id']} {job['status']}: {job.get('message') or 'no message'}")
    path = client.download_archive(job["id"], out)
    click.echo(f"archive saved to {path} ({path.stat().st_size:,} bytes)", err=True)


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="print the raw JSON document")
@connection_options
def status(client: Client, job_id: str, as_json: bool) -> None:
    """Show a job's status and per-shard progress."""
    job = client.job(job_id)
    if as_json:
        click.echo(json.dumps(job, indent=2))
        return
    click.echo(f"job {job['id']}: {job['status']}" + (f" - {job['message']}" if job.get("message") else ""))
    click.echo(f"  {describe_progress(job)}")
    for shard in job["progress"].get("shards") or []:
        line = (
            f"  [{shard['class_index']}] {shard['class_name']} {shard['start']}-{shard['stop']}:"
            f" {shard['status']}, images {shard['images_done']}/{shard['images_total']},"
            f" attempts {shard['attempts']}"
        )
        if shard.get("error"):
            line += f", error: {shard['error']}"
        click.echo(line)
    if job.get("archive_ready"):
        click.echo(f"  archive ready: diffii download {job['id']}")


@click.command()
@click.option(
    "--status",
    "status_filter",
    type=click.Choice(
        ["queued", "preparing", "learning", "generating", "packaging", "succeeded", "failed", "cancelled"]
    ),
)
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--cursor", help="next_cursor of a previous page")
@connection_options
def jobs(client: Client, status_filter: str | None, limit: int, cursor: str | None) -> None:
    """List your jobs, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if status_filter:
        params["status"] = status_filter
    if cursor:
        params["cursor"] = cursor
    page = client.request("GET", "/v1/jobs", params=params).json()
    for job in page["jobs"]:
        p = job["progress"]
        click.echo(
            f"{job['id']}  {job['status']:<10}  {job['created_at'][:19]}  "
            f"images {p['images_done']}/{p['images_total']}"
        )
    if not page["jobs"]:
        click.echo("no jobs", err=True)
    if page.get("next_cursor"):
        click.echo(f"more: diffii jobs --cursor {page['next_cursor']}", err=True)


@click.command()
@click.argument("job_id")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="[default: ./diffii-<job>.zip]")
@connection_options
def download(client: Client, job_id: str, out: Path | None) -> None:
    """Download a finished job's archive."""
    path = client.download_archive(job_id, out or _default_out(job_id))
    click.echo(f"archive saved to {path} ({path.stat().st_size:,} bytes)", err=True)
    click.echo(str(path))


@click.command()
@click.argument("job_id")
@connection_options
def cancel(client: Client, job_id: str) -> None:
    """Cancel a job; running shards stop after their current batch."""
    job = client.request("POST", f"/v1/jobs/{job_id}/cancel").json()
    if job["status"] == "cancelled":
        click.echo(f"job {job['id']} cancelled")
    else:
        click.echo(f"job {job['id']}: cancel requested; running shards stop after their current batch")


@click.group()
def datasets() -> None:
    """Your uploaded datasets: list them, delete those no job needs."""


@datasets.command("list")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--cursor", help="next_cursor of a previous page")
@connection_options
def list_datasets(client: Client, limit: int, cursor: str | None) -> None:
    """List your datasets, newest first."""
    page = client.datasets(limit, cursor)
    for d in page["datasets"]:
        click.echo(
            f"{d['id']}  {d['created_at'][:19]}  {len(d['classes'])} classes, {d['images']} images, "
            f"{d['bytes']:,} bytes  {d['filename']}"
        )
    if not page["datasets"]:
        click.echo("no datasets", err=True)
    if page.get("next_cursor"):
        click.echo(f"more: diffii datasets list --cursor {page['next_cursor']}", err=True)


@datasets.command("delete")
@click.argument("dataset_id")
@connection_options
def delete_dataset(client: Client, dataset_id: str) -> None:
    """Delete a dataset and its stored archive (refused while a job that has not ended uses it)."""
    client.delete_dataset(dataset_id)
    click.echo(f"dataset {dataset_id} deleted")


__all__ = ["cancel", "datasets", "download", "jobs", "status", "submit"]
