"""Client commands: `diffii submit`, `status`, `jobs`, `download`, `cancel`, `datasets` (REST calls over
httpx).

Server and key come from --server/--api-key or DIFFII_API_URL/DIFFII_API_KEY. An HTTP error prints
the server's `detail` and exits non-zero.
"""

from __future__ import annotations

import functools
import json
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from services.cli.options import job_body, job_options
from services.client import DEFAULT_SERVER, Client, ClientError
from services.common.statuses import JobStatus

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
STORED_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}  # already compressed: deflating wastes time
F = TypeVar("F", bound=Callable[..., Any])


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
        with client_errors(usage=True):
            client = Client(server, api_key)
        with client, client_errors():
            return fn(*args, client=client, **kwargs)

    return wrapper  # type: ignore[return-value]


@contextmanager
def client_errors(usage: bool = False) -> Iterator[None]:
    """The client's errors as the command's: its message, exit status 1 (2 for a usage error)."""
    try:
        yield
    except ClientError as exc:
        raise (click.UsageError if usage else click.ClickException)(str(exc)) from exc


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
    done, total, unit = bar_counts(p)
    if unit == "step":
        return f"{p['stage']}: step {done}/{total}"
    return (
        f"{p['stage']}: shards {p['shards_done']}/{p['shards_total']}, "
        f"images {p['images_done']}/{p['images_total']}"
    )


def bar_counts(progress: dict[str, Any]) -> tuple[int, int, str]:
    """(done, total, unit) for the bar: concept learning's steps while the job learns, else images."""
    learning = progress.get("learning")
    if progress["stage"] == "learning" and learning:
        return learning["step"], learning["steps"], "step"
    return progress["images_done"], progress["images_total"], "img"


def wait_for(client: Client, job_id: str, interval: float, timeout: float | None = None) -> dict[str, Any]:
    """Client.wait with a progress bar."""
    from tqdm import tqdm

    bar = tqdm(total=0, unit="img", desc="queued", dynamic_ncols=True)

    def update(job: dict[str, Any]) -> None:
        p = job["progress"]
        done, total, bar.unit = bar_counts(p)
        if total and bar.total != total:
            bar.reset(total)  # learning's steps, then the images: the rate starts again
        bar.n = done
        bar.set_description(p["stage"])
        bar.set_postfix_str(f"shards {p['shards_done']}/{p['shards_total']}")
        bar.refresh()

    def outage(exc: ClientError) -> None:
        bar.set_description(f"server unreachable, retrying ({str(exc)[:60]})")

    try:
        return client.wait(job_id, interval, timeout, on_update=update, on_outage=outage)
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
    job = client.create_job({**body, "dataset_id": uploaded["id"]})
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
    type=click.Choice([s.value for s in JobStatus]),
)
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--cursor", help="next_cursor of a previous page")
@connection_options
def jobs(client: Client, status_filter: str | None, limit: int, cursor: str | None) -> None:
    """List your jobs, newest first."""
    page = client.jobs(status_filter, limit, cursor)
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
    job = client.cancel(job_id)
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
