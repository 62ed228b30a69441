"""`diffii preview`: write a job's or an archive's per-class preview sheets to a folder."""

from __future__ import annotations

import re
from pathlib import Path

import click

from diffii_core.atomic import atomic_write
from services.cli.client import client_errors, server_options
from services.client import Client


def _file_name(class_name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", class_name).strip("._") or "class"


@click.command()
@click.argument("source")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="folder for the sheets [default: ./preview-<archive name or job id>]",
)
@server_options
def preview(source: str, out: Path | None, server: str, api_key: str | None) -> None:
    """Write the preview sheets (a few real images beside synthetic ones, one PNG per class) of
    SOURCE: an archive made by `diffii augment` or downloaded from the service, or a job id (fetched
    from the server as soon as generation has ended, before the archive is ready)."""
    path = Path(source)
    if path.is_file():
        from diffii_core.output.preview import archive_previews

        try:
            sheets = archive_previews(path)
        except (OSError, KeyError, ValueError) as exc:
            raise click.ClickException(f"{path} is not a diffii archive: {exc}") from exc
        if not sheets:
            raise click.ClickException(f"{path} carries no preview sheets (made by an older diffii?)")
        name = path.name.split(".")[0]
    elif path.suffix or "/" in source:
        raise click.ClickException(f"no such archive: {source}")
    else:
        with client_errors(usage=True):
            client = Client(server, api_key)
        with client, client_errors():
            sheets = client.previews(source)
        name = source
    folder = out or Path(f"preview-{name}")
    folder.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for index, (class_name, png) in enumerate(sheets.items()):
        stem = _file_name(class_name)
        if stem in used:  # two class names that differ only in characters a file name cannot hold
            stem = f"{stem}-{index}"
        used.add(stem)
        target = folder / f"{stem}.png"
        with atomic_write(target) as handle:
            handle.write(png)
        click.echo(str(target))
    click.echo(f"{len(sheets)} preview sheets in {folder}", err=True)
