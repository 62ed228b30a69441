"""The job options shared by `diffii augment` and `diffii submit`, and the request body they make."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from diffii_core.methods import METHODS
from diffii_core.methods.spec import SAMPLERS
from diffii_core.params import AUTO

F = TypeVar("F", bound=Callable[..., Any])


def _read_suffixes(ctx: click.Context, param: click.Parameter, path: Path | None) -> list[str] | None:
    """A JSON list of strings, or plain text with one suffix per line."""
    if path is None:
        return None
    text = path.read_text(encoding="utf-8")
    try:
        value = json.loads(text)
    except ValueError:
        value = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise click.BadParameter(f"{path} holds no suffixes: a JSON list of strings or one per line")
    return value


def _read_class_names(ctx: click.Context, param: click.Parameter, path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise click.BadParameter(f"{path} is not JSON: {exc}") from exc
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise click.BadParameter(f"{path} must map class folder names to the names used in prompts")
    return value


_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)

JOB_OPTIONS: list[Callable[[F], F]] = [
    click.option(
        "--method",
        type=click.Choice((*METHODS, AUTO)),
        help="augmentation method; auto: the recipe that scores best on the dataset [default: diff-ii]",
    ),
    click.option(
        "--preset",
        type=click.Choice(["published", "quick"]),
        help="steps and schedules: the papers' recipe, or quick for trials [default: quick for tiny]",
    ),
    click.option("--metaclass", help='dataset theme, e.g. "bird"'),
    click.option("--expansion", type=float, help="synthetic images per real image of a class"),
    click.option("--split-ratio", type=float, help="share of early timesteps that use the suffix"),
    click.option("--inference-steps", type=int, help="denoising steps"),
    click.option("--sampler", type=click.Choice(SAMPLERS), help="denoising sampler [default: the method's]"),
    click.option("--inversion-steps", type=int, help="DDIM inversion steps"),
    click.option("--guidance-scale", type=float, help="classifier-free guidance scale"),
    click.option(
        "--fill-pool-to",
        type=int,
        help="diff-ii: fill a smaller class's inversion pool to this many with other classes' images "
        "[default: 0, never]",
    ),
    click.option("--suffix", "suffixes", multiple=True, help="prompt suffix (repeatable)"),
    click.option(
        "--suffixes-file",
        type=_FILE,
        callback=_read_suffixes,
        help="prompt suffixes from a file: a JSON list, or one per line (the published lists)",
    ),
    click.option(
        "--class-names",
        "class_prompts",
        type=_FILE,
        callback=_read_class_names,
        help="JSON file mapping class folders to the names used in prompts (classes.json)",
    ),
    click.option(
        "--image-geometry",
        type=click.Choice(["squash", "crop"]),
        help="real image to the model's square: squash (published) or centre crop",
    ),
    click.option(
        "--seed", type=int, help="job seed [augment: 0; submit: the server picks one and reports it]"
    ),
    click.option("--model", help="model name from the server's list"),
    click.option("--resolution", type=int, help="image side in pixels"),
    click.option("--concept-steps", type=int, help="concept-learning optimiser steps"),
    click.option("--lora-rank", type=int, help="LoRA rank"),
    click.option("--tokens-per-class", type=int, help="learned tokens per class"),
    click.option("--learning-rate", type=float, help="concept-learning rate (the LoRA too, unless set)"),
    click.option("--lora-learning-rate", type=float, help="concept-learning rate of the LoRA apart"),
    click.option("--concept-batch-size", type=int, help="concept-learning images per pass"),
    click.option("--gradient-accumulation", type=int, help="concept-learning passes per optimiser step"),
    click.option(
        "--concept-sampling",
        type=click.Choice(["auto", "uniform", "balanced"]),
        help="concept-learning image draw [default: auto: balanced for long-tailed data]",
    ),
    click.option(
        "--mixed-precision",
        type=click.Choice(["auto", "no", "bf16", "fp16"]),
        help="concept-learning autocast [default: auto]",
    ),
    click.option(
        "--strength",
        "strength",
        type=float,
        multiple=True,
        help="img2img strength in (0, 1]; repeat to draw one per image [default: the method's]",
    ),
    click.option("--kappa", type=float, help="soft-label mass (diff-mix, real-mix)"),
    click.option("--gamma", type=float, help="soft-label exponent (diff-mix, real-mix)"),
    click.option(
        "--resize-to-source/--no-resize-to-source",
        default=None,
        help="resize img2img outputs back to the reference image's size",
    ),
]
LIST_FIELDS = {"suffixes", "strength"}
CONCEPT_FIELDS = {
    "concept_steps": "steps",
    "lora_rank": "lora_rank",
    "tokens_per_class": "tokens_per_class",
    "learning_rate": "learning_rate",
    "lora_learning_rate": "lora_learning_rate",
    "concept_batch_size": "batch_size",
    "gradient_accumulation": "gradient_accumulation",
    "concept_sampling": "sampling",
    "mixed_precision": "mixed_precision",
}


def job_options(fn: F) -> F:
    for option in reversed(JOB_OPTIONS):
        fn = option(fn)
    return fn


def job_body(options: dict[str, Any]) -> dict[str, Any]:
    """Only what the user set; the server fills in (and reports) every default."""
    body: dict[str, Any] = {}
    concepts: dict[str, Any] = {}
    for name, value in options.items():
        if value is None or value == ():
            continue
        if name in CONCEPT_FIELDS:
            concepts[CONCEPT_FIELDS[name]] = value
        elif name in LIST_FIELDS or name == "suffixes_file":
            key = "suffixes" if name == "suffixes_file" else name
            body[key] = [*body.get(key, []), *value]  # --suffix and --suffixes-file add up
        else:
            body[name] = value
    if concepts:
        body["concepts"] = concepts
    return body
