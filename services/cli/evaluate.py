"""`diffii evaluate`: real only against real plus each synthetic archive, over several seeds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


@click.command()
@click.argument("train", type=click.Path(exists=True, path_type=Path))
@click.argument("test", type=click.Path(exists=True, path_type=Path))
@click.argument("archives", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--backbone",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="a transformers image-classification model directory (default: the world backbone)",
)
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--resolution", type=click.IntRange(min=8), default=32, show_default=True)
@click.option(
    "--p",
    "probability",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="probability that a real sample is replaced by a synthetic one of its class",
)
@click.option(
    "--long-tail/--no-long-tail",
    default=None,
    help="draw synthetic classes ∝ 1/(n_c+1) (default: when class sizes differ 10x or more)",
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of a table")
def evaluate(
    train: Path,
    test: Path,
    archives: tuple[Path, ...],
    backbone: Path | None,
    seeds: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    resolution: int,
    probability: float,
    long_tail: bool | None,
    as_json: bool,
) -> None:
    """Train a classifier on TRAIN alone and on TRAIN plus each ARCHIVE; report accuracy on TEST."""
    from tqdm import tqdm

    from diffii_core.errors import DiffiiError
    from diffii_core.evaluate.classifier import TrainConfig
    from diffii_core.evaluate.run import evaluate as run
    from diffii_core.evaluate.run import format_table
    from diffii_core.world.datasets import waterbirds_groups

    if backbone is None:
        from diffii_core.world import shipped_backbone

        backbone = shipped_backbone()
    bars: list[tqdm] = []

    def progress(name: str, total: int):
        bar = tqdm(total=total, desc=f"training ({name})", unit="epoch", file=sys.stderr)
        bars.append(bar)
        return bar.update

    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, resolution=resolution
    )
    try:
        report = run(
            train,
            test,
            list(archives),
            backbone=backbone,
            seeds=seeds,
            config=config,
            probability=probability,
            long_tail=long_tail,
            test_groups=waterbirds_groups(test) if test.is_dir() else None,
            progress=progress,
        )
    except DiffiiError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        for bar in bars:
            bar.close()
    click.echo(json.dumps(report, sort_keys=True) if as_json else format_table(report))
