"""Job parameters: one pydantic model shared by the CLI, the REST API and the workers.

Validation errors name the field, so the API's 422 and the CLI's message say what is wrong.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from diffii_core.dataset.names import control_character
from diffii_core.methods import METHODS
from diffii_core.methods.spec import SAMPLERS, MethodSpec

# "auto": diffii's own choice among candidate recipes per dataset (`diffii_core.pipeline.choice`).
AUTO = "auto"
Method = Literal[(*METHODS, AUTO)]  # type: ignore[valid-type]  # the registry's names, in the API schema too
Preset = Literal["published", "quick"]
# Models for trials and tests: the quick preset keeps them fast unless a job asks for "published".
QUICK_MODELS: frozenset[str] = frozenset({"tiny", "tiny-v", "world"})
# What differs between the published recipe (SD 1.5, Diff-Mix / Diff-II code) and the quick preset.
PRESETS: dict[str, dict[str, Any]] = {
    "published": {
        "inversion_steps": 200,
        "inversion_schedule": "published",
        "concepts": {"steps": 35_000, "batch_size": 2, "gradient_accumulation": 4},
    },
    "quick": {
        "inversion_steps": 50,
        "inversion_schedule": "to-denoise-start",
        "concepts": {"steps": 1000, "batch_size": 2, "gradient_accumulation": 1},
    },
}

# A model's own quick recipe, over the preset's and the method's. The world model's UNet is small
# (attention 64 wide) and learns a concept in about a thousand steps of batch 8, not the published
# 35,000 at 5e-5: its tokens take the usual textual-inversion rate and its LoRA the usual LoRA rate.
# With one rate of 1e-3 for both, the LoRA overdrew the images under CFG 7.5; on the 13,000-step model,
# 300 steps left the concept short. Its text encoder (3 layers, trained on one caption grammar) cannot
# put a whole species into the one word before "bird": with one token the crest and tail, which its
# captions name after the word, were drawn at chance; eight tokens hold all four attributes
# (bench/faithfulness.py on dataset seeds 1 and 2, not the gate's; docs/world.md). A
# method with a token count of its own (DA-Fusion's 4) keeps it.
MODEL_PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    ("world", "quick"): {
        "concepts": {
            "steps": 1000,
            "batch_size": 8,
            "learning_rate": 5e-3,
            "lora_learning_rate": 1e-4,
            "tokens_per_class": 8,
        },
        # Per method, over the field defaults. Diff-II's guidance was chosen on development draws and
        # confirmed on report draws (docs/results.md); the baselines keep their published 7.5.
        "methods": {"diff-ii": {"guidance_scale": 4.0}},
    },
}


class ConceptParams(BaseModel):
    """Concept learning: placeholder tokens per class plus one LoRA shared by all classes."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(
        35_000, ge=0, le=200_000, description="optimiser steps (preset: 35000 published, 1000 quick)"
    )
    lora_rank: int = Field(10, ge=1, le=256, description="LoRA rank on every UNet attention projection")
    tokens_per_class: int = Field(
        1,
        ge=1,
        le=16,
        description="learned placeholder tokens per class (default: the method's, else the model's)",
    )
    learning_rate: float = Field(
        5e-5, gt=0, le=1.0, description="AdamW learning rate of the tokens, and of the LoRA unless set apart"
    )
    lora_learning_rate: float | None = Field(
        None,
        gt=0,
        le=1.0,
        description="AdamW learning rate of the LoRA; default: learning_rate (published: one rate for both)",
    )
    batch_size: int = Field(2, ge=1, le=64, description="training images per forward pass")
    gradient_accumulation: int = Field(
        4, ge=1, le=64, description="passes per optimiser step (published: 2 x 4 = an effective batch of 8)"
    )
    grad_clip: float = Field(1.0, gt=0, le=1e6, description="gradient-norm clip of the LoRA parameters")
    sampling: Literal["auto", "uniform", "balanced"] = Field(
        "auto",
        description="which images a step sees: uniform, class-balanced, or auto (balanced when class "
        "sizes differ by more than 10x: the long-tail recipe)",
    )
    placeholder_init: Literal["metaclass", "random"] = Field(
        "metaclass", description="start each placeholder at the metaclass word's embedding (published)"
    )
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="autocast for training: auto = bf16 on GPUs that have it, else fp16; none on CPU"
    )
    checkpoint_every: int = Field(500, ge=1, le=200_000, description="steps between resumable checkpoints")


def _chosen_first(spec: MethodSpec, req: Any) -> Any:
    raise ValueError("method 'auto' makes no image itself: its chosen candidate does (pipeline.choice)")


# What `method: "auto"` is before its choice: it learns the concepts its candidates share (tokens and
# one LoRA) and makes no image itself. Not in the registry: no job runs it as a method.
AUTO_SPEC = MethodSpec(
    name=AUTO,
    summary="diffii's choice per dataset among recipes that share the learned concepts",
    generate=_chosen_first,
    sampler="ddim",
)
# Fields each candidate of "auto" sets for itself (from its recipe, else its method's and model's
# defaults), and fields the candidates do not take (fill_pool_to, which only Diff-II reads, would give
# the shares borrowed images): a job with method "auto" leaves all of them at these, their defaults.
AUTO_SETS = ("strength", "sampler", "guidance_scale")
AUTO_UNUSED = ("fill_pool_to", "filter_attempts", "class_prompts")
AUTO_DEFAULTS: dict[str, Any] = {
    "strength": None,
    "sampler": "ddim",
    "guidance_scale": 7.5,
    "fill_pool_to": 0,
    "filter_attempts": 4,
    "class_prompts": None,
}


# Rules across fields, stated in the JSON schema too (the REST API's OpenAPI document).
# Methods that start from no real image (the default, diff-ii, among them) take no strength but 1;
# methods without an inversion pool take no fill_pool_to but 0; "auto" leaves AUTO_DEFAULTS' fields.
NO_REFERENCE_METHODS = [name for name, spec in METHODS.items() if not spec.references]
REFERENCE_METHODS = [name for name in METHODS if name not in NO_REFERENCE_METHODS]


def _no_pool_to_fill(methods: list[str]) -> dict[str, Any]:
    """The fill_pool_to rule for the named methods (those of them without an inversion pool)."""
    without = [m for m in methods if not METHODS[m].inversion]
    if not without:
        return {}
    return {
        "if": {"properties": {"method": {"enum": without}}, "required": ["method"]},
        "then": {"properties": {"fill_pool_to": {"const": 0}}},
    }


CROSS_FIELD_SCHEMA: dict[str, Any] = {
    "if": {
        "anyOf": [
            {"not": {"required": ["method"]}},
            {"properties": {"method": {"enum": NO_REFERENCE_METHODS}}, "required": ["method"]},
        ]
    },
    "then": {
        "properties": {"strength": {"anyOf": [{"type": "array", "items": {"const": 1}}, {"type": "null"}]}},
        **_no_pool_to_fill(NO_REFERENCE_METHODS),
    },
    # One if/then/else, nested rather than two rules under allOf: client generators read a top-level
    # allOf as a composed type, and they pass over if/then. Past the reference methods, only "auto".
    "else": {
        "if": {"properties": {"method": {"enum": REFERENCE_METHODS}}, "required": ["method"]},
        "then": _no_pool_to_fill(REFERENCE_METHODS),
        "else": {
            "properties": {
                name: {"type": "null"} if value is None else {"const": value}
                for name, value in AUTO_DEFAULTS.items()
            }
        },
    },
}
# Text with no control character (NUL, newlines, escapes: they would reach prompts and
# metadata.jsonl), holding at least one character that is not white space.
_PRINTED = r"[^\x00-\x1f\x7f-\x9f]"
NAME = rf"^{_PRINTED}*$"
TEXT = rf"^{_PRINTED}*[^\s\x00-\x1f\x7f-\x9f]{_PRINTED}*$"


class JobParams(BaseModel):
    """Everything that decides a job's images. Same parameters and seed give the same bytes."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=CROSS_FIELD_SCHEMA)

    method: Method = Field(
        "diff-ii",
        description="augmentation method, or auto: the recipe that scores best on the job's own real "
        "images (docs/methods.md#auto-a-recipe-chosen-per-dataset)",
    )
    preset: Preset = Field(
        "published",
        description="defaults for steps and schedules: published (the papers' recipe) or quick (trials); "
        "default: quick for tiny/world, published for every other model",
    )
    metaclass: str = Field(
        "object", min_length=1, max_length=64, pattern=TEXT, description='dataset theme, e.g. "bird"'
    )
    expansion: float = Field(5.0, gt=0, le=100, description="synthetic images per real image of a class")
    split_ratio: float = Field(0.3, ge=0, le=1, description="share of early timesteps that use the suffix")
    inference_steps: int = Field(25, ge=1, le=1000, description="denoising steps")
    sampler: Literal[SAMPLERS] = Field(  # type: ignore[valid-type]
        "ddim", description="denoising sampler; default: the method's (Diff-II ddim, baselines dpm-solver++)"
    )
    inversion_steps: int = Field(200, ge=1, le=1000, description="DDIM inversion steps (preset: 200 / 50)")
    inversion_schedule: Literal["published", "to-denoise-start"] = Field(
        "published",
        description="published: diffusers' inverse DDIM timesteps (to t=996 for 200 steps); "
        "to-denoise-start: end exactly where denoising starts",
    )
    guidance_scale: float = Field(
        7.5,
        ge=1.0,
        le=50.0,
        description="classifier-free guidance scale; default: 7.5, 4 for diff-ii on world",
    )
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
    resize_to_source: bool = Field(True, description="resize img2img outputs back to the reference's size")
    image_geometry: Literal["squash", "crop"] = Field(
        "squash", description="how a real image becomes the model's square: squash (published) or crop"
    )
    class_prompts: (
        dict[
            Annotated[str, Field(min_length=1, max_length=255, pattern=NAME)],
            Annotated[str, Field(min_length=1, max_length=200, pattern=TEXT)],
        ]
        | None
    ) = Field(
        None,
        description="class folder -> name used in prompts; default: the folder name without its "
        "number prefix, '_' as spaces",
    )
    filter_attempts: int = Field(4, ge=1, le=32, description="real-filter: draws per image until one passes")
    fill_pool_to: int = Field(
        0,
        ge=0,
        le=64,
        description="diff-ii: a class with fewer real images than this fills its inversion pool up to this "
        "many with other classes' images, inverted and denoised under its own concept, and pairs each of "
        "its own inversions with the pool (0: never; a class of one image then starts from noise, as "
        "published)",
    )

    @model_validator(mode="before")
    @classmethod
    def _preset_and_method_defaults(cls, data: Any) -> Any:
        """Fill what the user left out from the preset and the method, so a stored job reads back alike."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        model, method_name = data.get("model", "tiny"), data.get("method", "diff-ii")
        quick = isinstance(model, str) and model in QUICK_MODELS
        preset = data.setdefault("preset", "quick" if quick else "published")
        values = PRESETS.get(preset) if isinstance(preset, str) else None
        method = (
            (AUTO_SPEC if method_name == AUTO else METHODS.get(method_name))
            if isinstance(method_name, str)
            else None
        )
        if values is None or method is None:
            return data  # the field validators name the bad value
        for key in ("inversion_steps", "inversion_schedule"):
            data.setdefault(key, values[key])
        data.setdefault("sampler", method.sampler)
        model_preset = MODEL_PRESETS.get((model, preset), {}) if isinstance(model, str) else {}
        for key, value in model_preset.get("methods", {}).get(method_name, {}).items():
            data.setdefault(key, value)
        concepts = data.get("concepts") or {}
        if isinstance(concepts, ConceptParams):
            concepts = concepts.model_dump(exclude_unset=True)
        if isinstance(concepts, dict):
            own = model_preset.get("concepts", {})
            mine = {"tokens_per_class": method.tokens_per_class} if method.tokens_per_class else {}
            concepts = {**values["concepts"], **own, **mine, **concepts}
            data["concepts"] = concepts
        return data

    @field_validator("metaclass", "suffixes", "class_prompts", mode="before")
    @classmethod
    def _no_control_characters(cls, value: Any) -> Any:
        """Name the character, which the schema's pattern alone would not."""
        texts = [value] if isinstance(value, str) else []
        if isinstance(value, list):
            texts = [v for v in value if isinstance(v, str)]
        elif isinstance(value, dict):
            texts = [t for pair in value.items() for t in pair if isinstance(t, str)]
        for text in texts:
            if (found := control_character(text)) is not None:
                raise ValueError(f"{text[:40]!r} has a {found}; text may hold no control character")
        return value

    @field_validator("class_prompts")
    @classmethod
    def _class_prompts_are_text(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        # The same rule as the schema's (1 to 200 characters, not all space), then spaces collapsed.
        bad = [k for k, v in value.items() if not v.split() or len(v) > 200]
        cleaned = {k: " ".join(v.split()) for k, v in value.items()}
        if bad:
            raise ValueError(f"class prompt names must be 1 to 200 characters of text (not for {bad[:3]})")
        return cleaned

    @field_validator("strength", mode="before")
    @classmethod
    def _strength_is_a_list(cls, value):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return [value]
        return value

    @model_validator(mode="after")
    def _auto_leaves_the_candidates_fields(self) -> JobParams:
        if self.method != AUTO:
            return self
        given = [f for f in AUTO_SETS if getattr(self, f) != AUTO_DEFAULTS[f]]
        if given:
            raise ValueError(f"method auto sets {', '.join(given)} per candidate: leave it out")
        unused = [f for f in AUTO_UNUSED if getattr(self, f) != AUTO_DEFAULTS[f]]
        if unused:
            raise ValueError(f"method auto's candidates take no {', '.join(unused)}: leave it out")
        return self

    @model_validator(mode="after")
    def _strength_fits_method(self) -> JobParams:
        refs = self.spec.references
        if (
            self.method != AUTO
            and self.strength is not None
            and not refs
            and any(s != 1.0 for s in self.strength)
        ):
            raise ValueError(f"{self.method} starts from no real image: strength must be 1 or left out")
        return self

    @model_validator(mode="after")
    def _fill_pool_fits_method(self) -> JobParams:
        if self.fill_pool_to and not self.spec.inversion and self.method != AUTO:
            raise ValueError(f"{self.method} has no inversion pool: fill_pool_to must be 0 or left out")
        return self

    @property
    def spec(self) -> MethodSpec:
        """The method's registry entry: what it needs before it runs, how it prompts, samples and labels
        (for "auto", `AUTO_SPEC`: the concepts its candidates share, and no image of its own)."""
        return AUTO_SPEC if self.method == AUTO else METHODS[self.method]

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
