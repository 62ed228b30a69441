"""Job parameters: one pydantic model shared by the CLI, the REST API and the workers.

Validation errors name the field, so the API's 422 and the CLI's message say what is wrong.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Method = Literal["diff-ii", "diff-mix", "diff-aug", "diff-gen", "real-guidance", "real-mix", "da-fusion"]
METHODS: tuple[str, ...] = (
    "diff-ii",
    "diff-mix",
    "diff-aug",
    "diff-gen",
    "real-guidance",
    "real-mix",
    "da-fusion",
)

# Published img2img strengths: Diff-Mix's default 0.5 (0.7 recommended), DA-Fusion's list drawn per image;
# diff-gen is text to image (strength 1).
DEFAULT_STRENGTH: dict[str, list[float]] = {
    "diff-mix": [0.5],
    "real-mix": [0.5],
    "diff-aug": [0.5],
    "real-guidance": [0.5],
    "da-fusion": [0.25, 0.5, 0.75, 1.0],
    "diff-gen": [1.0],
}
# Methods whose prompt is the plain class name on the base model: no concept learning, no inversion.
BASE_MODEL_METHODS: frozenset[str] = frozenset({"real-guidance", "real-mix"})
SOFT_LABEL_METHODS: frozenset[str] = frozenset({"diff-mix", "real-mix"})


def uses_concepts(method: str) -> bool:
    """Whether a method needs learned concepts (tokens + LoRA); real-guidance and real-mix do not."""
    return method not in BASE_MODEL_METHODS


def uses_inversion(method: str) -> bool:
    """Whether a method starts from a DDIM inversion pool (only Diff-II)."""
    return method == "diff-ii"


def uses_references(method: str) -> bool:
    """Whether a method starts from real reference images (the img2img / SDEdit methods)."""
    return method in {"diff-mix", "real-mix", "diff-aug", "real-guidance", "da-fusion"}


class ConceptParams(BaseModel):
    """Concept learning: placeholder tokens per class plus one LoRA shared by all classes."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(1000, ge=0, le=200_000, description="optimiser steps (published: 35000 on SD 1.5)")
    lora_rank: int = Field(10, ge=1, le=256, description="LoRA rank on every UNet attention projection")
    tokens_per_class: int = Field(1, ge=1, le=16, description="learned placeholder tokens per class")
    learning_rate: float = Field(5e-5, gt=0, le=1.0, description="AdamW learning rate (LoRA and tokens)")
    batch_size: int = Field(2, ge=1, le=64, description="training images per step")
    checkpoint_every: int = Field(500, ge=1, le=200_000, description="steps between resumable checkpoints")


# Rules across fields, stated in the JSON schema too (the REST API's OpenAPI document).
CROSS_FIELD_SCHEMA: dict[str, Any] = {
    "if": {"properties": {"method": {"const": "diff-gen"}}, "required": ["method"]},
    "then": {
        "properties": {"strength": {"anyOf": [{"type": "array", "items": {"const": 1}}, {"type": "null"}]}}
    },
}
TEXT = r"\S"  # at least one character that is not white space


class JobParams(BaseModel):
    """Everything that decides a job's images. Same parameters and seed give the same bytes."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=CROSS_FIELD_SCHEMA)

    method: Method = Field("diff-ii", description="augmentation method")
    metaclass: str = Field(
        "object", min_length=1, max_length=64, pattern=TEXT, description='dataset theme, e.g. "bird"'
    )
    expansion: float = Field(5.0, gt=0, le=100, description="synthetic images per real image of a class")
    split_ratio: float = Field(0.3, ge=0, le=1, description="share of early timesteps that use the suffix")
    inference_steps: int = Field(25, ge=1, le=1000, description="DDIM denoising steps")
    inversion_steps: int = Field(50, ge=1, le=1000, description="DDIM inversion steps (published: 200)")
    guidance_scale: float = Field(7.5, ge=1.0, le=50.0, description="classifier-free guidance scale")
    suffixes: list[Annotated[str, Field(min_length=1, max_length=200, pattern=TEXT)]] | None = Field(
        None, min_length=1, max_length=100, description="prompt suffixes; default: a list for the metaclass"
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="job seed; every image's seed derives from it")
    model: str = Field("tiny", min_length=1, max_length=200, description="model name from the model list")
    resolution: int | None = Field(
        None, ge=32, le=2048, multiple_of=8, description="image side in pixels; default: the model's own"
    )
    concepts: ConceptParams = Field(default_factory=ConceptParams)
    strength: list[Annotated[float, Field(gt=0, le=1)]] | None = Field(
        None,
        min_length=1,
        max_length=32,
        description="img2img strengths in (0, 1], one drawn per image; default: the method's published value",
    )
    kappa: float = Field(1.0, gt=0, le=1.0, description="soft-label mass of diff-mix / real-mix")
    gamma: float = Field(
        0.5, gt=0, le=10.0, description="soft-label exponent: target weight kappa * s**gamma"
    )
    resize_to_source: bool = Field(False, description="resize img2img outputs back to the reference's size")

    @field_validator("strength", mode="before")
    @classmethod
    def _strength_is_a_list(cls, value):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return [value]
        return value

    @model_validator(mode="after")
    def _strength_fits_method(self) -> JobParams:
        if self.strength is not None and self.method == "diff-gen" and any(s != 1.0 for s in self.strength):
            raise ValueError("diff-gen is text to image: strength must be 1 or left out")
        return self

    @field_validator("metaclass")
    @classmethod
    def _metaclass_is_words(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("metaclass must contain a word")
        return value

    @field_validator("suffixes")
    @classmethod
    def _suffixes_are_text(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("suffixes must hold at least one suffix, or be left out")
        if any(not s.strip() or len(s) > 200 for s in value):
            raise ValueError("each suffix must be 1 to 200 characters of text")
        return [" ".join(s.split()) for s in value]


def images_for_class(params: JobParams, n_real: int) -> int:
    """Output count for a class of n_real images: int(expansion * N_c), as the method specifies."""
    # The epsilon keeps 0.29 * 100 at 29: binary floats land just under whole numbers.
    return math.floor(params.expansion * n_real + 1e-9)


def strengths(params: JobParams) -> list[float]:
    """The strengths an image's strength is drawn from: the job's, else the method's published default."""
    if params.strength is not None:
        return list(params.strength)
    return list(DEFAULT_STRENGTH.get(params.method, [1.0]))
