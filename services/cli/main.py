"""The `diffii` command. Each group of sub-commands lives in its own module and imports its heavy
dependencies (torch, FastAPI, Celery) only when it runs, so `diffii --help` stays fast."""

from __future__ import annotations

import click

from services.cli.augment import augment
from services.cli.client import cancel, datasets, download, jobs, status, submit
from services.cli.evaluate import evaluate
from services.cli.preview import preview
from services.cli.quota import quota
from services.cli.runtime import sweeper, up, worker
from services.cli.server import admin, migrate, serve
from services.cli.world import world


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="diffii")
def cli() -> None:
    """diffii: expand small labelled image datasets with Diff-II synthetic images."""


for command in (
    augment,
    submit,
    status,
    jobs,
    download,
    cancel,
    datasets,
    serve,
    worker,
    sweeper,
    up,
    migrate,
    admin,
    world,
    evaluate,
    preview,
):
    cli.add_command(command)
admin.add_command(quota)  # here, not in server.py: quota.py uses server's schema check


def main() -> None:
    from diffii_core.threads import quiet_openmp

    quiet_openmp()  # before any command loads torch; the processes it starts inherit it
    cli()
