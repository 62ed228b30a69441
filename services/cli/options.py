"""The job options shared by `diffii augment` and `diffii submit`, and the request body they make."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from diffii_core.params import METHODS

F = TypeVar("F", bound=Callable[..., Any])

JOB_OPTIONS: list[Callable[[F], F]] = [
    click.option(
        "--method",
        type=click.Choice(METHODS),
        help="augmentation method [default: diff-ii]",
    ),
    click.option("--metaclass", help='dataset theme, e.g. "bird"'),
    click.option("--expansion", type=float, help="synthetic images per real image of a class"),
    click.option("--split-ratio", type=float, help="share of early timesteps that use the suffix"),
    click.option("--inference-steps", type=int, help="DDIM denoising steps"),
    click.option("--inversion-steps", type=int, help="DDIM inversion steps"),
    click.option("--guidance-scale", type=float, help="classifier-free guidance scale"),
    click.option("--suffix", "suffixes", multiple=True, help="prompt suffix (repeatable)"),
    click.option(
        "--seed", type=int, help="job seed [augment: 0; submit: the server picks one and reports it]"
    ),
    click.option("--model", help="model name from the server's list"),
    click.option("--resolution", type=int, help="image side in pixels"),
    click.option("--concept-steps", type=int, help="concept-learning optimiser steps"),
    click.option("--lora-rank", type=int, help="LoRA rank"),
    click.option("--tokens-per-class", type=int, help="learned tokens per class"),
    click.option("--learning-rate", type=float, help="concept-learning rate"),
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
        else:
            body[name] = list(value) if name in LIST_FIELDS else value
    if concepts:
        body["concepts"] = concepts
    return body
