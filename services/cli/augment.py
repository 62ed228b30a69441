"""`diffii augment`: the whole method in this process, dataset in, archive out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from services.cli.options import job_body, job_options


def _models(model_paths: tuple[str, ...]) -> dict[str, str]:
    """The services' model table (built-ins, DIFFII_MODELS merged over them), then --model-path."""
    from diffii_core.model_registry import model_table

    try:
        models = model_table(os.environ.get("DIFFII_MODELS"))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    for item in model_paths:
        name, sep, where = item.partition("=")
        if not sep or not name or not where:
            raise click.BadParameter(f"{item!r} is not NAME=PATH_OR_HUB_ID", param_hint="--model-path")
        models[name] = where
    return models


def _params(options: dict[str, Any]):
    from pydantic import ValidationError

    from diffii_core.params import JobParams

    try:
        return JobParams.model_validate(job_body(options))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors(include_url=False)
        )
        raise click.UsageError(f"invalid job parameters: {problems}") from exc


@click.command()
@click.argument("dataset", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="archive to write"
)
@job_options
@click.option(
    "--batch-size",
    type=click.IntRange(1, 256),
    default=8,
    show_default=True,
    help="images per network call (changes speed and memory, never the images)",
)
@click.option("--device", help="torch device [default: cuda when present, else cpu]")
@click.option(
    "--model-path",
    "model_paths",
    multiple=True,
    metavar="NAME=PATH",
    help="add a model: a diffusers directory or hub id (repeatable)",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="keep concept-learning checkpoints here; a rerun resumes",
)
@click.option(
    "--concepts-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="save the learned concepts here, or reuse them when present (ours, or the published "
    "Diff-Mix layout: learned_embeds*.bin + pytorch_lora_weights.safetensors)",
)
@click.option("--quiet", is_flag=True, help="no progress bars")
def augment(
    dataset: Path,
    out: Path,
    batch_size: int,
    device: str | None,
    model_paths: tuple[str, ...],
    work_dir: Path | None,
    concepts_dir: Path | None,
    quiet: bool,
    **options: Any,
) -> None:
    """Expand DATASET (a folder, .zip or .tar(.gz) in ImageFolder layout) into a synthetic archive."""
    params = _params(options)
    models = _models(model_paths)
    from tqdm import tqdm

    from diffii_core.errors import DiffiiError
    from diffii_core.pipeline.augment import augment as run

    bars: list[tqdm] = []

    def progress(stage: str, total: int):
        bar = tqdm(total=total, desc=f"{stage:<18}", unit="it", disable=quiet, dynamic_ncols=True)
        bars.append(bar)
        return bar.update

    try:
        summary = run(
            dataset,
            out,
            params,
            models=models,
            device=device,
            batch_size=batch_size,
            work_dir=work_dir,
            concepts_dir=concepts_dir,
            progress=progress,
        )
    except DiffiiError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        for bar in bars:
            bar.close()
    click.echo(
        f"wrote {summary.out}: {summary.images} images for {summary.classes} classes "
        f"from {summary.real_images} real images, seed {params.seed}, in {summary.seconds:.1f} s"
    )
    if summary.chosen is not None:
        click.echo(f"method auto chose {summary.chosen} (scores in the archive's job.json)")
    for skipped in summary.skipped:
        click.echo(f"skipped {skipped['path']}: {skipped['reason']}", err=True)
