"""`diffii world`: the procedural bird domain, its pretrained model, the oracle and the quality gates."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


@click.group()
def world() -> None:
    """The diffii world: a procedural fine-grained domain and a small SD-shaped model trained on it."""
    import torch

    # Denormal floats in the small networks' backward passes slow CPU kernels about 3x. Flushing them
    # is process-wide state, so it is set here, in the command's own process, never by the library.
    torch.set_flush_denormal(True)


@world.command()
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path),
    default=Path("world-train"),
    show_default=True,
    help="checkpoints and the latent cache; a rerun resumes from here",
)
@click.option("--stage", type=click.Choice(["vae", "unet", "oracle", "backbone", "export"]), required=True)
@click.option("--steps", type=click.IntRange(min=1), help="train until this step (vae, unet, oracle)")
@click.option(
    "--max-minutes", type=click.FloatRange(min=0.1), help="stop this leg after so long (checkpointed)"
)
@click.option("--out", type=click.Path(path_type=Path), help="export: the model directory to write")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="torch threads (default: all cores)")
def train(
    work_dir: Path,
    stage: str,
    steps: int | None,
    max_minutes: float | None,
    out: Path | None,
    seed: int,
    threads: int | None,
) -> None:
    """Pretrain the world model in resumable legs: vae, then unet, then export; or the oracle."""
    import torch
    from tqdm import tqdm

    from diffii_core.world import oracle
    from diffii_core.world.train import Recipe, export, train_unet, train_vae

    if threads:
        torch.set_num_threads(threads)
    work_dir.mkdir(parents=True, exist_ok=True)
    recipe = Recipe(seed=seed)
    max_seconds = max_minutes * 60 if max_minutes else None
    if stage == "export":
        if out is None:
            raise click.BadParameter("export needs --out DIR", param_hint="--out")
        manifest = export(work_dir, recipe, out)
        click.echo(f"wrote {out} (vae {manifest['vae_steps']} steps, unet {manifest['unet_steps']} steps)")
        return
    if steps is None:
        raise click.BadParameter(f"the {stage} stage needs --steps", param_hint="--steps")
    bar = tqdm(total=steps, desc=stage, file=sys.stderr, mininterval=5)
    every = 50

    def progress(name: str, step: int, total: int, figures: dict[str, float]) -> None:
        bar.n = step
        bar.set_postfix({k: f"{v:.4g}" for k, v in figures.items()}, refresh=False)
        bar.refresh()
        if step % every == 0:
            print(json.dumps({"stage": name, "step": step, **figures}), flush=True)

    if stage == "vae":
        reached = train_vae(work_dir, recipe, steps, max_seconds=max_seconds, progress=progress)
    elif stage == "unet":
        reached = train_unet(work_dir, recipe, steps, max_seconds=max_seconds, progress=progress)
    elif stage == "oracle":
        from diffii_core.world import ORACLE_DIR

        out = out or ORACLE_DIR
        reached = oracle.train_oracle(work_dir, out, steps, seed=seed, progress=progress)
    else:
        from diffii_core.world import BACKBONE_DIR
        from diffii_core.world.backbone import train_backbone

        reached = train_backbone(work_dir, out or BACKBONE_DIR, steps, seed=seed, progress=progress)
    bar.close()
    click.echo(f"{stage}: step {reached} of {steps} (checkpoint in {work_dir})")


@world.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--classes",
    type=click.IntRange(min=2),
    default=10,
    show_default=True,
    help="evaluation species (classes) in the dataset",
)
@click.option(
    "--shots", type=click.IntRange(min=1), default=5, show_default=True, help="training images per class"
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--test-per-class", type=click.IntRange(min=1), default=50, show_default=True)
@click.option(
    "--imbalance", type=click.FloatRange(min=1), help="long tail: counts from SHOTS down to SHOTS/R"
)
@click.option(
    "--waterbirds", type=click.FloatRange(0.5, 1), help="share of training images on their group's background"
)
def dataset(
    out: Path,
    classes: int,
    shots: int,
    seed: int,
    test_per_class: int,
    imbalance: float | None,
    waterbirds: float | None,
) -> None:
    """Write a world dataset: OUT/train, OUT/test (ImageFolder), OUT/classes.json, OUT/backgrounds.json."""
    from diffii_core.world.datasets import WorldDatasetSpec, write_world_dataset

    spec = WorldDatasetSpec(
        classes=classes,
        shots=shots,
        seed=seed,
        test_per_class=test_per_class,
        imbalance=imbalance,
        waterbirds=waterbirds,
    )
    try:
        body = write_world_dataset(out, spec)
    except (ValueError, FileExistsError) as exc:
        raise click.UsageError(str(exc)) from exc
    train = sum(c["train_images"] for c in body["classes"])
    click.echo(
        f"wrote {out}: {len(body['classes'])} classes, {train} training and "
        f"{len(body['classes']) * test_per_class} test images"
    )


@world.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of a table")
@click.option("--samples", type=click.IntRange(min=8), default=200, show_default=True, help="images per gate")
@click.option(
    "--model-dir", type=click.Path(path_type=Path, file_okay=False), help="default: the shipped model"
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--skip-faithfulness", is_flag=True, help="skip the Diff-II run (the slowest gate)")
@click.option(
    "--guidance",
    type=click.FloatRange(min=1.0),
    default=7.5,
    show_default=True,
    help="classifier-free guidance of every gate that samples (text to image, Diff-II)",
)
@click.option(
    "--vae-checkpoint",
    "vae_work_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="instead: the VAE gate on the vae.pt checkpoint in this training folder",
)
def check(
    as_json: bool,
    samples: int,
    model_dir: Path | None,
    seed: int,
    skip_faithfulness: bool,
    guidance: float,
    vae_work_dir: Path | None,
) -> None:
    """Measure the world model's quality gates with the oracle."""
    from diffii_core.world.check import TARGETS, run_checks, vae_report

    def say(text: str) -> None:
        click.echo(text, err=True)

    if vae_work_dir is not None:
        report = {**vae_report(vae_work_dir, samples=samples), "targets": TARGETS}
    else:
        report = run_checks(
            model_dir,
            samples=samples,
            seed=seed,
            say=say,
            faithfulness=not skip_faithfulness,
            guidance_scale=guidance,
        )
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
        return
    for key, value in report.items():
        if isinstance(value, float):
            target = report["targets"].get(key)
            verdict = (
                "" if target is None else f"  (target >= {target}: {'met' if value >= target else 'NOT met'})"
            )
            click.echo(f"{key:36s} {value:8.3f}{verdict}")


@world.command()
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--what", type=click.Choice(["species", "samples"]), default="species", show_default=True)
@click.option("--rows", type=click.IntRange(min=1), default=12, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def sheet(out: Path, what: str, rows: int, seed: int) -> None:
    """A contact sheet PNG: real images per evaluation species, or the world model's samples of them."""
    from diffii_core.output.preview import grid
    from diffii_core.world import domain

    pool = domain.evaluation_species()
    species = [pool[i * len(pool) // rows] for i in range(min(rows, len(pool)))]  # spread over the pool
    contexts = range(len(domain.CONTEXTS))
    if what == "species":
        lines = [
            (s.name, [domain.sample_image(s, domain.image_rng(seed, s.index, c), c)[0] for c in contexts])
            for s in species
        ]
    else:
        from PIL import Image

        from diffii_core.models import load_model
        from diffii_core.world.check import text_to_image

        model = load_model("world", device="cpu")
        prompts = [domain.caption(s, c) for s in species for c in contexts]
        made = text_to_image(model, prompts, seed)
        n = len(domain.CONTEXTS)
        lines = [
            (s.name, [Image.fromarray(a) for a in made[i * n : (i + 1) * n]]) for i, s in enumerate(species)
        ]
    out.parent.mkdir(parents=True, exist_ok=True)
    grid(lines).save(out)
    click.echo(f"wrote {out}")


@world.command()
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--classes", type=click.IntRange(min=2), default=5, show_default=True)
@click.option("--shots", type=click.IntRange(min=1), default=5, show_default=True)
@click.option(
    "--concept-steps", type=click.IntRange(min=0), help="concept-learning steps [default: the world preset's]"
)
@click.option("--seed", type=int, default=0, show_default=True)
def demo(out: Path, classes: int, shots: int, concept_steps: int | None, seed: int) -> None:
    """Diff-II on a small world dataset with the world model: OUT/data, OUT/synthetic.zip, OUT/sheet.png."""
    from diffii_core.params import JobParams
    from diffii_core.pipeline.augment import augment
    from diffii_core.world.datasets import WorldDatasetSpec, write_world_dataset
    from diffii_core.world.sheets import real_vs_synthetic

    data = out / "data"
    if not (data / "train").exists():
        write_world_dataset(
            data, WorldDatasetSpec(classes=classes, shots=shots, seed=seed, test_per_class=10)
        )
    params = JobParams.model_validate(
        {
            "model": "world",
            "metaclass": "bird",
            "seed": seed,
            **({"concepts": {"steps": concept_steps}} if concept_steps is not None else {}),
        }
    )
    summary = augment(data / "train", out / "synthetic.zip", params, batch_size=16)
    real_vs_synthetic(data / "train", out / "synthetic.zip").save(out / "sheet.png")
    click.echo(f"wrote {out / 'synthetic.zip'} ({summary.images} images) and {out / 'sheet.png'}")
